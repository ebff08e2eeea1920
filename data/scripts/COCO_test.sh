#!/usr/bin/env bash
# Download the MS COCO 2017 test images and their image info into ROOT (default ./data/coco):
#
#     ROOT/test2017/  ROOT/annotations/image_info_test-dev2017.json (and image_info_test2017.json)
#
# the layout of coco2017_testdev_dataset (eval.py --dataset coco2017_testdev_dataset
# --output_coco_json writes detections to submit to the evaluation server). About 6.2 GB.
# Resumes and reruns like COCO.sh; settings in data/scripts/coco_download.sh.
#
#     bash data/scripts/COCO_test.sh [ROOT]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/coco_download.sh"

# path under COCO_BASE_URL                   bytes        md5                               folder
# (the size of the image info archive is taken from the server)
COCO_FILES="
annotations/image_info_test2017.zip          -            85da7065e5e600ebfee8af1edb634eb5  annotations
zips/test2017.zip                            6646970404   77ad2c53ac5d0aea611d422c0938fb35  test2017
"

coco_fetch_all "${1:-./data/coco}"

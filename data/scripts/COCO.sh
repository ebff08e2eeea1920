#!/usr/bin/env bash
# Download MS COCO 2017 train/val images and annotations into ROOT (default ./data/coco):
#
#     ROOT/train2017/  ROOT/val2017/  ROOT/annotations/instances_{train,val}2017.json
#
# the layout of `train.py --data ROOT` / `eval.py --val_data ROOT` and of coco2017_dataset.
# About 19 GB download, 20 GB unpacked. Interrupted downloads resume on the next run; a rerun
# after success downloads nothing. Mirrors: COCO_BASE_URL=... (see data/scripts/coco_download.sh
# for this and the other settings).
#
#     bash data/scripts/COCO.sh [ROOT]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/coco_download.sh"

# path under COCO_BASE_URL                   bytes        md5                               folder
COCO_FILES="
annotations/annotations_trainval2017.zip     252907541    f4bbac642086de4f52a3fdda2de5fa2c  annotations
zips/val2017.zip                             815585330    442b8da7639aecaf257c1dceb8ba8c80  val2017
zips/train2017.zip                           19336861798  cced6f7f71b7629ddf16f17bbcfab6b2  train2017
"

coco_fetch_all "${1:-./data/coco}"

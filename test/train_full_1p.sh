#!/usr/bin/env bash
# YOLACT accuracy run on one card (ASCEND_DEVICE_ID, default 0): the whole schedule, then eval.py on the final checkpoint.
#   bash test/train_full_1p.sh [/path/to/coco | --data_path=/path/to/coco] [--node_device=cpu|cuda|npu] [train.py flags]
# Without a data path it uses the synthetic dataset and the demo config. See test/common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
yolact_launch full 1p "$@"

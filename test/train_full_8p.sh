#!/usr/bin/env bash
# YOLACT accuracy run on RANK_SIZE cards (default 8, torchrun): the whole schedule, then eval.py on the final checkpoint.
#   bash test/train_full_8p.sh [/path/to/coco | --data_path=/path/to/coco] [--node_device=cpu|cuda|npu] [train.py flags]
# Without a data path it uses the synthetic dataset and the demo config. See test/common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
yolact_launch full 8p "$@"

#!/usr/bin/env bash
# YOLACT throughput run on RANK_SIZE cards (default 8, torchrun): a fixed short run without validation.
#   bash test/train_performance_8p.sh [/path/to/coco | --data_path=/path/to/coco] [--node_device=cpu|cuda|npu] [train.py flags]
# Without a data path it uses the synthetic dataset and the demo config. See test/common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
yolact_launch perf 8p "$@"

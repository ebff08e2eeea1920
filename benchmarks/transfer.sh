#!/usr/bin/env bash
# Transfer, measured: fine-tuning a trained checkpoint on a new small dataset against training the
# same config from scratch for the same iterations. The new dataset is the synthetic generator's
# "transfer" variant (other colours and backgrounds, three of the shapes under other names: coin,
# tile, badge), written as labelme files and converted, the route a user's own data takes.
#
#   bash benchmarks/transfer.sh [CHECKPOINT]     # default: the newest demo checkpoint (bash run_demo.sh)
#
# Knobs: TRANSFER_ITERS (300), TRANSFER_IMAGES (500 labelme files, a fifth of them for validation),
# TRANSFER_OUT (transfer_output), TRANSFER_WORKERS (2). Prints both mAP tables, then one line each.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=yolact_resnet18_synthetic_config
NAME=yolact_resnet18_synthetic
ITERS=${TRANSFER_ITERS:-300}
IMAGES=${TRANSFER_IMAGES:-500}
OUT=${TRANSFER_OUT:-transfer_output}
WORKERS=${TRANSFER_WORKERS:-2}
PY=.venv/bin/python
[ -x "$PY" ] || PY=python

latest() {
    $PY -c 'import sys; from utils.functions import SavePath; print(SavePath.get_latest(sys.argv[1], sys.argv[2], include_interrupt=False) or "")' "$1" "$2"
}

CKPT=${1:-$(latest demo_output/weights "$NAME")}
[ -n "$CKPT" ] && [ -f "$CKPT" ] || { echo "error: no checkpoint to fine-tune from (run bash run_demo.sh, or pass one)" >&2; exit 1; }

val=$(( IMAGES / 5 ))
$PY -m data.synthetic --format labelme --variant transfer --out "$OUT/labelme" --train $(( IMAGES - val )) --val "$val"
$PY -m data.labelme2coco "$OUT/labelme" "$OUT/coco" --val_fraction 0.2 --force

for run in scratch finetune; do
    start_from=()
    [ "$run" = finetune ] && start_from=(--finetune "$CKPT")
    rm -rf "${OUT:?}/$run"
    start=$(date +%s)
    $PY train.py --config "$CONFIG" --data "$OUT/coco" --node_device cpu --seed 0 --amp --batch_size 8 \
        --num_workers "$WORKERS" --max_iter "$ITERS" --save_interval 100000 --validation_epoch -1 \
        --save_folder "$OUT/$run/weights/" --log_folder "$OUT/$run/logs/" --log_interval 50 "${start_from[@]}"
    echo "$run: training took $(( $(date +%s) - start )) s"
    $PY eval.py --trained_model "$(latest "$OUT/$run/weights" "$NAME")" --data "$OUT/coco" --node_device cpu \
        --no_bar > "$OUT/$run/eval.txt"
done

for run in scratch finetune; do
    echo; echo "== $run ($ITERS iterations)"; cat "$OUT/$run/eval.txt"
done
echo
$PY - "$OUT" <<'PY'
import sys
from evaluation.coco_results import parse_map_table
for run in ('scratch', 'finetune'):
    maps = parse_map_table(open(f'{sys.argv[1]}/{run}/eval.txt').read())
    print(f"{run:>8}: box mAP {maps['box']['all']:.2f}, mask mAP {maps['mask']['all']:.2f}")
PY

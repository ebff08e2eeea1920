#!/usr/bin/env bash
# The embedded default, end to end on the CPU of a fresh machine:
#   environment -> synthetic dataset -> train the demo config -> box/mask mAP (per class, with
#   precision-recall and confusion plots) -> plot + pictures.
# A thin wrapper over the commands users run (python -m data.synthetic, train.py, eval.py).
# Running it again reuses the environment, the dataset, a finished training run and its outputs.
#
# Knobs (environment variables):
#   DEMO_ITERS     training iterations (default: the config's, 2000)  DEMO_BATCH  batch size (8)
#   DEMO_TRAIN     synthetic training images (2000)       DEMO_VAL     validation images (200)
#   DEMO_DATA      dataset folder (data/synthetic)        DEMO_OUT     output folder (demo_output)
#   DEMO_WORKERS   data loading processes (0)             DEMO_VAL_EPOCHS  epochs between validations (3)
#   DEMO_FRESH=1   retrain (and re-evaluate, redraw) even if DEMO_OUT has a finished run
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=yolact_resnet18_synthetic_config
NAME=yolact_resnet18_synthetic
DEMO_ITERS=${DEMO_ITERS:-}
DEMO_BATCH=${DEMO_BATCH:-8}
DEMO_TRAIN=${DEMO_TRAIN:-2000}
DEMO_VAL=${DEMO_VAL:-200}
DEMO_DATA=${DEMO_DATA:-data/synthetic}
DEMO_OUT=${DEMO_OUT:-demo_output}
DEMO_WORKERS=${DEMO_WORKERS:-0}
DEMO_VAL_EPOCHS=${DEMO_VAL_EPOCHS:-3}

step() { printf '\n==> %s\n' "$*"; }
demo_start=$(date +%s)

step "1/5 environment (.venv)"
bash scripts/setup_env.sh
PY=.venv/bin/python

step "2/5 synthetic dataset in $DEMO_DATA ($DEMO_TRAIN train / $DEMO_VAL val images)"
$PY -m data.synthetic --out "$DEMO_DATA" --train "$DEMO_TRAIN" --val "$DEMO_VAL"

step "3/5 training $CONFIG on the CPU (--amp: bf16 where the CPU runs it natively and faster at this size, else float32)"
weights="$DEMO_OUT/weights"
logs="$DEMO_OUT/logs"
if [ "${DEMO_FRESH:-0}" = 1 ]; then rm -rf "$weights" "$logs"; fi
mkdir -p "$weights" "$logs"
resume=()
iters=()
[ -n "$DEMO_ITERS" ] && iters=(--max_iter "$DEMO_ITERS")
# The newest <config>_<epoch>_<iter>.pth (never the best validation's copy, <config>_best.pth).
latest() {
    $PY - "$weights" "$NAME" <<'PY'
import sys
from utils.functions import SavePath
print(SavePath.get_latest(sys.argv[1], sys.argv[2], include_interrupt=False) or '')
PY
}
if [ -n "$(latest)" ]; then
    echo "found a previous run in $weights: resuming it (DEMO_FRESH=1 starts over)"
    resume=(--resume latest)
fi
start=$(date +%s)
$PY train.py --config "$CONFIG" --data "$DEMO_DATA" --node_device cpu --seed 0 --amp \
    --batch_size "$DEMO_BATCH" --num_workers "$DEMO_WORKERS" "${iters[@]}" \
    --save_folder "$weights/" --log_folder "$logs/" --save_interval 500 \
    --validation_epoch "$DEMO_VAL_EPOCHS" --validation_size "$DEMO_VAL" --log_interval 20 \
    "${resume[@]}"
echo "training took $(( $(date +%s) - start )) s"
final=$(latest)
[ -n "$final" ] || { echo "error: no checkpoint in $weights" >&2; exit 1; }

# Outputs newer than the checkpoint were made from it: a rerun shows them instead of redoing them.
up_to_date() { [ "${DEMO_FRESH:-0}" != 1 ] && [ "$1" -nt "$final" ]; }

step "4/5 box and mask mAP of $final on $DEMO_DATA/val"
if up_to_date "$DEMO_OUT/eval.txt" && up_to_date "$DEMO_OUT/eval/metrics.json"; then
    echo "found the evaluation of this checkpoint (DEMO_FRESH=1 redoes it):"
    cat "$DEMO_OUT/eval.txt"
else
    $PY eval.py --trained_model "$final" --config "$CONFIG" --val_data "$DEMO_DATA" --node_device cpu \
        --results_dir "$DEMO_OUT/eval" > "$DEMO_OUT/eval.txt.part"
    mv "$DEMO_OUT/eval.txt.part" "$DEMO_OUT/eval.txt"
    cat "$DEMO_OUT/eval.txt"
fi
map_line=$($PY - "$DEMO_OUT/eval/metrics.json" <<'PY'
import sys
from evaluation.report import read_metrics
m = read_metrics(sys.argv[1])
print(f"box mAP {m['box']['AP']}, mask mAP {m['mask']['AP']} over {m['images']} images")
PY
)

step "5/5 plot and pictures"
if up_to_date "$DEMO_OUT/predictions.png"; then
    echo "found the plot and pictures of this checkpoint (DEMO_FRESH=1 redoes them)"
else
    $PY -m utils.logger plot "$logs/$NAME.log" "$DEMO_OUT/loss_map.png"
    samples="$DEMO_OUT/samples"
    rm -rf "$samples" "$DEMO_OUT/predictions"
    mkdir -p "$samples"
    for f in $(ls "$DEMO_DATA/val" | sort | head -n 16); do cp "$DEMO_DATA/val/$f" "$samples/"; done
    $PY eval.py --trained_model "$final" --config "$CONFIG" --node_device cpu \
        --score_threshold 0.3 --top_k 10 --images "$samples:$DEMO_OUT/predictions"
    $PY -m deploy.visualize grid "$DEMO_OUT/predictions" "$DEMO_OUT/predictions.png" --columns 4
fi

cat <<DONE

Demo finished in $(( $(date +%s) - demo_start )) s. Outputs:
  checkpoint        $final
  mAP               $map_line
  mAP tables        $DEMO_OUT/eval.txt   (per class: $DEMO_OUT/eval/metrics.json)
  PR curves         $DEMO_OUT/eval/pr_curve.png
  confusion matrix  $DEMO_OUT/eval/confusion_matrix.png
  training log      $logs/$NAME.log
  loss / mAP plot   $DEMO_OUT/loss_map.png
  predictions       $DEMO_OUT/predictions.png   (one file per image in $DEMO_OUT/predictions/)
DONE

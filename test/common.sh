#!/usr/bin/env bash
# The one implementation behind test/train_{full,performance}_{1p,8p}.sh (sourced, not run):
# argument parsing, interpreter/device/dataset choice, the training and eval commands, and the
# Ascend-style summary. A launch script is `source common.sh; yolact_launch <full|perf> <1p|8p> "$@"`.
#
# Arguments of every script:
#   [DATA_PATH]            first argument, or --data_path=DATA_PATH: a COCO 2017 root (train2017/,
#                          val2017/, annotations/instances_{train,val}2017.json) or a folder written
#                          by `python -m data.synthetic`. Without one the synthetic shapes dataset
#                          (data/synthetic, generated once) and the demo config are used.
#   --node_device=DEV      cpu, cuda or npu (else env NODE_DEVICE; default npu if torch_npu
#                          imports, else cuda if available, else cpu)
#   --config=NAME          default yolact_base_config (COCO) / yolact_resnet18_synthetic_config
#   --batch_size=N         per process (default 8)
#   --max_iter=N           single-card-equivalent iterations, divided by global batch / 8 as in
#                          train.py (performance default: 2000 on COCO, 20 real iterations on
#                          synthetic data; full default: the config's schedule)
#   --num_workers=N        data loading processes per training process
#   anything else          passed on to train.py (after the scripts' own flags, so it wins)
# Environment: PYTHON (interpreter; default .venv/bin/python, else python3), NODE_DEVICE,
#   ASCEND_DEVICE_ID (1p card, default 0), RANK_SIZE (8p: processes per node, default 8),
#   8p on several nodes (torchrun's names): NNODES (default 1; MIN:MAX with RDZV_ENDPOINT),
#   NODE_RANK (this node, 0..NNODES-1), MASTER_ADDR / MASTER_PORT (node 0's address; one node:
#   127.0.0.1 and a free port), RDZV_ENDPOINT=HOST:PORT (elastic: c10d rendezvous instead of
#   MASTER_*), RDZV_ID (default yolact), MAX_RESTARTS (torchrun --max-restarts; > 0 adds
#   --resume=auto so restarted workers continue from the newest checkpoint),
#   ASCEND_HOME (CANN root, for env_npu.sh), SYNTHETIC_DIR (default
#   data/synthetic), SYNTHETIC_TRAIN / SYNTHETIC_VAL (image counts of a generated synthetic set),
#   EVAL_ARGS (extra eval.py flags, full runs), YOLACT_OUTPUT_DIR (default test/output).
# Several nodes: run the same command on every node; the output folder (checkpoints above all)
#   must be one folder shared by all nodes. Only global rank 0 writes checkpoints and logs; the
#   node that ran it evaluates (full runs) and prints the summary; the other nodes say so and stop.
# Output in test/output/<device id>/: train_<id>.log (console; train_<id>_node<R>.log on several
#   nodes), eval_<id>.log and eval_<id>_metrics/ (eval.py's metrics.json and plots; full runs),
#   <CaseName>.log (key = value summary), <CaseName>/weights (checkpoints) and <CaseName>/logs
#   (train.py's JSON-lines log). A performance run clears its own <CaseName>/ first; a full run
#   keeps it, so `--resume=latest` continues an earlier full run.

YOLACT_TEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
YOLACT_ROOT="$(dirname "${YOLACT_TEST_DIR}")"

YOLACT_NETWORK=YOLACT
YOLACT_BATCH_SIZE=8
YOLACT_SEED=1234
YOLACT_COCO_CONFIG=yolact_base_config
YOLACT_SYNTHETIC_CONFIG=yolact_resnet18_synthetic_config
# Performance runs: the Ascend scripts' 2000 single-card-equivalent iterations on COCO; on the
# synthetic data a short run of real iterations (enough to get past train.py's fps warm-up).
YOLACT_PERF_ITERS_COCO=2000
YOLACT_PERF_ITERS_SYNTHETIC=20
# Iterations are counted for this global batch (REFERENCE_BATCH of training/schedule.py).
YOLACT_REFERENCE_BATCH=8

_yl_say() { echo "[${YOLACT_NETWORK}] $*"; }
_yl_err() { echo "[${YOLACT_NETWORK}] error: $*" >&2; }

_yl_usage() {
    cat <<EOF
usage: bash $(basename "$0") [DATA_PATH | --data_path=DATA_PATH] [--node_device=cpu|cuda|npu]
       [--config=NAME] [--batch_size=N] [--max_iter=N] [--num_workers=N] [train.py flags...]
Without a data path the synthetic dataset and ${YOLACT_SYNTHETIC_CONFIG} are used.
See test/common.sh for the environment variables and the output files.
EOF
}

_yl_is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

# Sets YL_DATA_PATH, YL_NODE_DEVICE, YL_CONFIG, YL_BATCH_SIZE, YL_MAX_ITER, YL_NUM_WORKERS and
# YL_EXTRA (the train.py pass-through). Returns 2 on a usage error, 3 after --help.
_yl_parse_args() {
    YL_DATA_PATH="" YL_NODE_DEVICE="" YL_CONFIG="" YL_BATCH_SIZE="" YL_MAX_ITER="" YL_NUM_WORKERS=""
    YL_EXTRA=()
    local arg name value prev_takes_value=0
    while [ $# -gt 0 ]; do
        arg="$1"
        shift
        case "${arg}" in
            -h|--help) _yl_usage; return 3 ;;
            --) YL_EXTRA+=("$@"); break ;;
            --data_path|--data|--node_device|--config|--batch_size|--max_iter|--num_workers)
                if [ $# -eq 0 ]; then _yl_err "${arg} needs a value"; return 2; fi
                name="${arg#--}" value="$1"
                shift ;;
            --data_path=*|--data=*|--node_device=*|--config=*|--batch_size=*|--max_iter=*|--num_workers=*)
                name="${arg%%=*}" name="${name#--}" value="${arg#*=}" ;;
            -*)
                YL_EXTRA+=("${arg}")
                # `--flag value` of a train.py flag: the next bare word is its value.
                [[ "${arg}" == *=* ]] && prev_takes_value=0 || prev_takes_value=1
                continue ;;
            *)
                if [ "${prev_takes_value}" = 1 ]; then
                    YL_EXTRA+=("${arg}")
                elif [ -z "${YL_DATA_PATH}" ]; then
                    YL_DATA_PATH="${arg}"
                else
                    _yl_err "unexpected argument '${arg}' (the data path is already ${YL_DATA_PATH})"
                    return 2
                fi
                prev_takes_value=0
                continue ;;
        esac
        prev_takes_value=0
        case "${name}" in
            data_path|data) YL_DATA_PATH="${value}" ;;
            node_device) YL_NODE_DEVICE="${value}" ;;
            config) YL_CONFIG="${value}" ;;
            batch_size|max_iter|num_workers)
                if ! _yl_is_uint "${value}"; then
                    _yl_err "--${name} must be a non-negative integer, got '${value}'"
                    return 2
                fi
                case "${name}" in
                    batch_size) YL_BATCH_SIZE="${value}" ;;
                    max_iter) YL_MAX_ITER="${value}" ;;
                    num_workers) YL_NUM_WORKERS="${value}" ;;
                esac ;;
        esac
    done
    if [ "${YL_BATCH_SIZE:-1}" -lt 1 ]; then
        _yl_err "--batch_size must be at least 1"
        return 2
    fi
    return 0
}

# YL_PYTHON: $PYTHON, else the project's .venv, else python3.
_yl_pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        YL_PYTHON="${PYTHON}"
    elif [ -x "${YOLACT_ROOT}/.venv/bin/python" ]; then
        YL_PYTHON="${YOLACT_ROOT}/.venv/bin/python"
    else
        YL_PYTHON=python3
    fi
    if ! command -v "${YL_PYTHON}" >/dev/null 2>&1; then
        _yl_err "python interpreter '${YL_PYTHON}' not found (set PYTHON=/path/to/python)"
        return 1
    fi
}

_yl_cann_installed() { [ -f "${ASCEND_HOME:-/usr/local/Ascend}/ascend-toolkit/set_env.sh" ]; }

# YL_DEVICE: cpu | cuda | npu; sources env_npu.sh for npu.
_yl_pick_device() {
    YL_DEVICE="${YL_NODE_DEVICE:-${NODE_DEVICE:-}}"
    if [ -z "${YL_DEVICE}" ]; then
        # torch_npu only imports with the CANN libraries on the path: probe with them when present.
        YL_DEVICE="$(
            if _yl_cann_installed; then source "${YOLACT_TEST_DIR}/env_npu.sh" >/dev/null 2>&1; fi
            "${YL_PYTHON}" -c 'from utils.device import default_device_type; print(default_device_type())' \
                2>/dev/null | tail -n 1
        )"
        if [ -z "${YL_DEVICE}" ]; then
            _yl_err "could not detect the device with ${YL_PYTHON} (is torch installed?); pass --node_device="
            return 1
        fi
        _yl_say "device: ${YL_DEVICE} (detected; override with --node_device= or NODE_DEVICE)"
    fi
    case "${YL_DEVICE}" in
        cpu|cuda|npu) ;;
        *:*) _yl_err "--node_device takes cpu, cuda or npu without a card index; choose the card with" \
                     "ASCEND_DEVICE_ID (1p), got '${YL_DEVICE}'"; return 2 ;;
        *) _yl_err "unknown device '${YL_DEVICE}': use cpu, cuda or npu"; return 2 ;;
    esac
    if [ "${YL_DEVICE}" = npu ]; then
        # shellcheck disable=SC1091
        source "${YOLACT_TEST_DIR}/env_npu.sh"
    fi
}

# Resolve the data location against the caller's directory (before the cd to the repository).
_yl_resolve_data() {
    if [ -n "${YL_DATA_PATH}" ]; then
        if [ ! -d "${YL_DATA_PATH}" ]; then
            _yl_err "data path not found: ${YL_DATA_PATH} (expected a COCO root with train2017/, val2017/," \
                    "annotations/instances_{train,val}2017.json)"
            return 2
        fi
        YL_DATA_ROOT="$(cd "${YL_DATA_PATH}" && pwd)"
        YL_SYNTHETIC_DIR=""
        YL_CONFIG="${YL_CONFIG:-${YOLACT_COCO_CONFIG}}"
    else
        mkdir -p "${SYNTHETIC_DIR:-${YOLACT_ROOT}/data/synthetic}" || return 1
        YL_SYNTHETIC_DIR="$(cd "${SYNTHETIC_DIR:-${YOLACT_ROOT}/data/synthetic}" && pwd)"
        YL_CONFIG="${YL_CONFIG:-${YOLACT_SYNTHETIC_CONFIG}}"
    fi
}

# Generate the synthetic set if needed (a no-op when it is there); train.py --data and eval.py
# --val_data read its layout as they read a COCO root. Run in the repository root.
_yl_prepare_synthetic() {
    local dir="${YL_SYNTHETIC_DIR}"
    _yl_say "no data path given: training on the synthetic shapes dataset in ${dir} with ${YL_CONFIG}" \
            "(pass a COCO root as the first argument or --data_path= to train on COCO)"
    local gen=("${YL_PYTHON}" -m data.synthetic --out "${dir}")
    [ -n "${SYNTHETIC_TRAIN:-}" ] && gen+=(--train "${SYNTHETIC_TRAIN}")
    [ -n "${SYNTHETIC_VAL:-}" ] && gen+=(--val "${SYNTHETIC_VAL}")
    if ! "${gen[@]}"; then
        _yl_err "could not generate the synthetic dataset in ${dir}"
        return 1
    fi
    YL_DATA_ROOT="${dir}"
}

# Print the command (shell-quoted) and run it with its output also in $1; returns its status.
_yl_run_logged() {
    local log="$1"
    shift
    echo "+ $(printf '%q ' "$@")" | tee -a "${log}"
    # tee ignores Ctrl-C so that the interrupted program can still print (train.py saves an
    # interrupt checkpoint and says how to resume) instead of dying on a broken pipe.
    "$@" 2>&1 | (trap '' INT; exec tee -a "${log}")
    return "${PIPESTATUS[0]}"
}

# NNODES / NODE_RANK / MASTER_* / RDZV_* / MAX_RESTARTS checked; YL_MAX_NODES: the most nodes.
_yl_check_nodes() {
    local nnodes="${NNODES:-1}" node_rank="${NODE_RANK:-0}"
    if [[ "${nnodes}" =~ ^([0-9]+):([0-9]+)$ ]]; then
        if [ -z "${RDZV_ENDPOINT:-}" ]; then
            _yl_err "NNODES=${nnodes} (a MIN:MAX range) needs RDZV_ENDPOINT=HOST:PORT (elastic rendezvous)"
            return 2
        fi
        YL_MAX_NODES="${BASH_REMATCH[2]}"
    elif _yl_is_uint "${nnodes}" && [ "${nnodes}" -ge 1 ]; then
        YL_MAX_NODES="${nnodes}"
    else
        _yl_err "NNODES must be a node count or MIN:MAX, got '${nnodes}'"
        return 2
    fi
    if ! _yl_is_uint "${node_rank}" || [ "${node_rank}" -ge "${YL_MAX_NODES}" ]; then
        _yl_err "NODE_RANK must be 0..$(( YL_MAX_NODES - 1 )) for NNODES=${nnodes}, got '${node_rank}'"
        return 2
    fi
    if [ "${YL_MAX_NODES}" -gt 1 ] && [ -z "${RDZV_ENDPOINT:-}" ] && [ -z "${MASTER_ADDR:-}" ]; then
        _yl_err "NNODES=${nnodes}: set MASTER_ADDR (and MASTER_PORT) to node 0's address, or RDZV_ENDPOINT"
        return 2
    fi
    if ! _yl_is_uint "${MAX_RESTARTS:-0}"; then
        _yl_err "MAX_RESTARTS must be a non-negative integer, got '${MAX_RESTARTS}'"
        return 2
    fi
}

# launcher: torchrun for this node's RANK_SIZE ($1) processes, static or elastic rendezvous.
_yl_torchrun_launcher() {
    launcher=("${YL_PYTHON}" -u -m torch.distributed.run --nnodes="${NNODES:-1}" --nproc_per_node="$1")
    [ "${MAX_RESTARTS:-0}" != 0 ] && launcher+=(--max-restarts="${MAX_RESTARTS}")
    if [ -n "${RDZV_ENDPOINT:-}" ]; then
        launcher+=(--rdzv_backend=c10d --rdzv_endpoint="${RDZV_ENDPOINT}" --rdzv_id="${RDZV_ID:-yolact}")
    elif [ "${YL_MAX_NODES}" -gt 1 ] || [ -n "${MASTER_PORT:-}" ]; then
        launcher+=(--node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}"
                   --master_port="${MASTER_PORT:-29500}")
    else
        launcher+=(--standalone)  # a free port: several jobs can share the machine
    fi
}

# Process layout for <1p|8p>: YL_RANK_SIZE (this node's processes), YL_DEVICE_ID, YL_MAX_NODES,
# YL_WORLD_SIZE. torchrun's variables must not leak into a 1p run (they would win in train.py).
_yl_process_layout() {
    if [ "$1" = 1p ]; then
        YL_RANK_SIZE=1
        YL_DEVICE_ID="${ASCEND_DEVICE_ID:-0}"
        if ! _yl_is_uint "${YL_DEVICE_ID}"; then
            _yl_err "ASCEND_DEVICE_ID must be a card index, got '${YL_DEVICE_ID}'"
            return 2
        fi
        YL_MAX_NODES=1
        export RANK_SIZE=1 RANK_ID=0 ASCEND_DEVICE_ID="${YL_DEVICE_ID}"
        unset WORLD_SIZE RANK LOCAL_RANK
    else
        YL_RANK_SIZE="${RANK_SIZE:-8}"
        if ! _yl_is_uint "${YL_RANK_SIZE}" || [ "${YL_RANK_SIZE}" -lt 1 ]; then
            _yl_err "RANK_SIZE must be a positive process count, got '${YL_RANK_SIZE}'"
            return 2
        fi
        _yl_check_nodes || return
        # One process per card, chosen by torchrun's LOCAL_RANK; global rank 0 reports.
        YL_DEVICE_ID=0
        export RANK_SIZE="${YL_RANK_SIZE}"
        unset RANK_ID ASCEND_DEVICE_ID WORLD_SIZE RANK LOCAL_RANK
    fi
    # Global batch, autoscaling and the summary follow the world size, not the per-node count.
    YL_WORLD_SIZE=$(( YL_RANK_SIZE * YL_MAX_NODES ))
}

# Batch, data workers and iterations of a <full|perf> run: YL_BATCH, YL_WORKERS, YL_ITERS.
_yl_run_settings() {
    YL_BATCH="${YL_BATCH_SIZE:-${YOLACT_BATCH_SIZE}}"
    YL_WORKERS="${YL_NUM_WORKERS}"
    if [ -z "${YL_WORKERS}" ]; then
        YL_WORKERS=$(( $(nproc 2>/dev/null || echo 8) / YL_RANK_SIZE ))
        (( YL_WORKERS > 8 )) && YL_WORKERS=8
        (( YL_WORKERS < 1 )) && YL_WORKERS=1
    fi
    YL_ITERS="${YL_MAX_ITER}"
    if [ "$1" = perf ] && [ -z "${YL_ITERS}" ]; then
        if [ -n "${YL_SYNTHETIC_DIR}" ]; then
            # train.py divides by global batch / 8: ask for the single-card equivalent of N real ones.
            local global=$(( YL_WORLD_SIZE * YL_BATCH ))
            YL_ITERS=$(( (YOLACT_PERF_ITERS_SYNTHETIC * global + YOLACT_REFERENCE_BATCH - 1)
                         / YOLACT_REFERENCE_BATCH ))
        else
            YL_ITERS="${YOLACT_PERF_ITERS_COCO}"
        fi
    fi
    return 0
}

# The case name and output files of a <full|perf> run under $2: YL_CASE, YL_OUT, YL_RUN_DIR,
# YL_TRAIN_LOG, YL_EVAL_LOG; a performance run starts from an empty case folder.
_yl_output_paths() {
    local mode="$1" output_root="$2" kind=acc
    [ "${mode}" = perf ] && kind=perf
    YL_CASE="${YOLACT_NETWORK}_bs${YL_BATCH}_${YL_WORLD_SIZE}p_${kind}"
    YL_OUT="${output_root}/${YL_DEVICE_ID}"
    YL_RUN_DIR="${YL_OUT}/${YL_CASE}"
    local node_tag="" node_rank=0
    [ "${YL_MAX_NODES}" -gt 1 ] && node_rank="${NODE_RANK:-0}" node_tag="_node${NODE_RANK:-0}"
    YL_TRAIN_LOG="${YL_OUT}/train_${YL_DEVICE_ID}${node_tag}.log"
    YL_EVAL_LOG="${YL_OUT}/eval_${YL_DEVICE_ID}.log"
    YL_EVAL_METRICS="${YL_OUT}/eval_${YL_DEVICE_ID}_metrics"
    if [ "${mode}" = perf ] && [ "${node_rank}" = 0 ]; then
        rm -rf "${YL_RUN_DIR}"  # node 0 only: the folder is shared, and the others may have started
    fi
    mkdir -p "${YL_RUN_DIR}/weights" "${YL_RUN_DIR}/logs" || return
    rm -f "${YL_TRAIN_LOG}" "${YL_EVAL_LOG}" "${YL_OUT}/${YL_CASE}.log"
    rm -rf "${YL_EVAL_METRICS}"
}

# train.py for a <full|perf> <1p|8p> run, under torchrun for 8p; fails with train.py's status.
_yl_train() {
    local mode="$1" scale="$2"
    local train_args=(train.py --config="${YL_CONFIG}" --data="${YL_DATA_ROOT}" --batch_size="${YL_BATCH}"
                      --num_workers="${YL_WORKERS}" --seed="${YOLACT_SEED}" --node_device="${YL_DEVICE}"
                      --save_folder="${YL_RUN_DIR}/weights" --log_folder="${YL_RUN_DIR}/logs")
    [ -n "${YL_ITERS}" ] && train_args+=(--max_iter="${YL_ITERS}")
    [ "${mode}" = perf ] && train_args+=(--validation_epoch=-1)
    # Restarted workers continue from the newest checkpoint (a --resume of the caller's still wins).
    [ "${MAX_RESTARTS:-0}" != 0 ] && train_args+=(--resume=auto)
    train_args+=("${YL_EXTRA[@]}")

    local launcher=("${YL_PYTHON}" -u)
    [ "${scale}" = 8p ] && _yl_torchrun_launcher "${YL_RANK_SIZE}"
    export PYTHONUNBUFFERED=1

    _yl_run_logged "${YL_TRAIN_LOG}" "${launcher[@]}" "${train_args[@]}"
    local rc=$?
    # torchrun exits 1 when it was stopped by a signal; its workers still saved an interrupt checkpoint.
    if [ "${rc}" -ge 128 ] || { [ "${rc}" != 0 ] && grep -q '^Stopped by SIG' "${YL_TRAIN_LOG}"; }; then
        local resume_hint=""
        [ "${mode}" = full ] && resume_hint="; the same command with --resume=auto continues it"
        _yl_err "training stopped by a signal (exit status ${rc})${resume_hint}; see ${YL_TRAIN_LOG}"
        return "${rc}"
    elif [ "${rc}" != 0 ]; then
        _yl_err "training failed (exit status ${rc}); see ${YL_TRAIN_LOG}"
        return "${rc}"
    fi
}

# eval.py on the final checkpoint of a full run (written since $1, the start time).
_yl_evaluate() {
    local checkpoint
    checkpoint="$("${YL_PYTHON}" -m training.launch_summary checkpoint --save_folder="${YL_RUN_DIR}/weights" \
                  --log_folder="${YL_RUN_DIR}/logs" --console="${YL_TRAIN_LOG}" --since="$1")" || return 1
    local eval_device="${YL_DEVICE}"
    [ "${YL_DEVICE}" != cpu ] && eval_device="${YL_DEVICE}:${YL_DEVICE_ID}"
    _yl_say "evaluating the final checkpoint ${checkpoint}"
    # shellcheck disable=SC2086  # EVAL_ARGS is a list of flags
    _yl_run_logged "${YL_EVAL_LOG}" "${YL_PYTHON}" -u eval.py --trained_model="${checkpoint}" \
        --config="${YL_CONFIG}" --val_data="${YL_DATA_ROOT}" --node_device="${eval_device}" --no_bar \
        --results_dir="${YL_EVAL_METRICS}" ${EVAL_ARGS:-}
    local rc=$?
    if [ "${rc}" != 0 ]; then
        _yl_err "evaluation failed (exit status ${rc}); see ${YL_EVAL_LOG}"
        return "${rc}"
    fi
}

# yolact_launch <full|perf> <1p|8p> [script arguments...]
yolact_launch() {
    local mode="$1" scale="$2"
    shift 2
    local start_time
    start_time="$(date +%s)"

    _yl_parse_args "$@"
    local rc=$?
    if [ "${rc}" = 3 ]; then return 0; fi
    if [ "${rc}" != 0 ]; then _yl_usage >&2; return "${rc}"; fi
    _yl_pick_python || return
    _yl_resolve_data || return
    local output_root="${YOLACT_OUTPUT_DIR:-${YOLACT_TEST_DIR}/output}"
    mkdir -p "${output_root}" && output_root="$(cd "${output_root}" && pwd)" || return
    cd "${YOLACT_ROOT}" || return
    _yl_pick_device || return
    _yl_process_layout "${scale}" || return
    if [ -n "${YL_SYNTHETIC_DIR}" ]; then
        _yl_prepare_synthetic || return
    fi
    _yl_run_settings "${mode}"
    _yl_output_paths "${mode}" "${output_root}" || return

    _yl_say "${YL_CASE}: device ${YL_DEVICE}, ${YL_MAX_NODES} node(s) x ${YL_RANK_SIZE} process(es) x batch" \
            "${YL_BATCH}, config ${YL_CONFIG}, data ${YL_DATA_ROOT}${YL_ITERS:+, max_iter ${YL_ITERS}}"
    _yl_say "logs in ${YL_OUT}/"
    _yl_train "${mode}" "${scale}" || return

    if [ "${YL_MAX_NODES}" -gt 1 ] && ! grep -q '^Train summary:' "${YL_TRAIN_LOG}"; then
        # Global rank 0 ran on another node: it evaluates and reports there.
        _yl_say "training finished; global rank 0 ran on another node, which evaluates and reports"
        return 0
    fi
    local report_args=()
    if [ "${mode}" = full ]; then
        _yl_evaluate "${start_time}" || return
        report_args+=(--metrics="${YL_EVAL_METRICS}")
    fi
    "${YL_PYTHON}" -m training.launch_summary report --case="${YL_CASE}" --rank_size="${YL_WORLD_SIZE}" \
        --batch_size="${YL_BATCH}" --node_device="${YL_DEVICE}" --log_folder="${YL_RUN_DIR}/logs" \
        --console="${YL_TRAIN_LOG}" --since="${start_time}" --e2e_seconds="$(( $(date +%s) - start_time ))" \
        --out="${YL_OUT}/${YL_CASE}.log" "${report_args[@]}"
}

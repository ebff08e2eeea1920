#!/usr/bin/env bash
# Ascend NPU environment for the test/*.sh launch scripts; they source it only for --node_device npu
# (and to probe for an NPU when no device is named). Safe to source anywhere: without CANN it only
# prints a note and sets a few variables that nothing but the NPU runtime reads.
#
#   ASCEND_HOME  CANN install root (default /usr/local/Ascend); its ascend-toolkit/set_env.sh is
#                sourced when present (the toolkit's own way of setting LD_LIBRARY_PATH, PATH,
#                PYTHONPATH and ASCEND_OPP_PATH, so no library paths are hard-coded here).
# Every runtime variable below keeps a value already set in the environment.

_yolact_cann_env() {
    local root="${ASCEND_HOME:-/usr/local/Ascend}"
    local setenv="${root}/ascend-toolkit/set_env.sh"
    if [ -f "${setenv}" ]; then
        # shellcheck disable=SC1090
        source "${setenv}"
    elif [ -z "${ASCEND_TOOLKIT_HOME:-}" ]; then
        echo "[env_npu] ${setenv} not found (set ASCEND_HOME to the CANN install root);" \
             "continuing with the current environment" >&2
    fi
    # The ATB/NNAL add-on ships its own set_env.sh on recent CANN versions.
    if [ -f "${root}/nnal/atb/set_env.sh" ] && [ -z "${ATB_HOME_PATH:-}" ]; then
        # shellcheck disable=SC1090
        source "${root}/nnal/atb/set_env.sh" >/dev/null 2>&1 || true
    fi
}
_yolact_cann_env
unset -f _yolact_cann_env

# Host logs: errors only, not copied to stdout, no event logs.
export ASCEND_SLOG_PRINT_TO_STDOUT="${ASCEND_SLOG_PRINT_TO_STDOUT:-0}"
export ASCEND_GLOBAL_LOG_LEVEL="${ASCEND_GLOBAL_LOG_LEVEL:-3}"
export ASCEND_GLOBAL_EVENT_ENABLE="${ASCEND_GLOBAL_EVENT_ENABLE:-0}"
# Asynchronous operator dispatch (1: task queue on).
export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-1}"
# Fuse the copies of non-contiguous tensors.
export COMBINED_ENABLE="${COMBINED_ENABLE:-1}"
# Single-node jobs: no HCCL trust list.
export HCCL_WHITELIST_DISABLE="${HCCL_WHITELIST_DISABLE:-1}"

# Many DataLoader workers per card open many files; raise the soft limit as far as allowed.
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

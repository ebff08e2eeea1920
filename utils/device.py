"""Device selection for every entry point: `--node_device cpu|cuda|npu` (+ local rank) -> torch.device.

`torch_npu` is imported only when npu is asked for, so CPU and CUDA machines never need it.
"""
import importlib
from typing import Optional

import torch

DEVICE_TYPES = ('cpu', 'cuda', 'npu')


class DeviceError(RuntimeError):
    """The requested device cannot be used on this machine."""


def import_torch_npu():
    """Import torch_npu (registers the 'npu' device with torch) or fail with one clear line."""
    try:
        return importlib.import_module('torch_npu')
    except ImportError as err:
        raise DeviceError(f"--node_device npu needs the torch_npu package matching torch "
                          f"{torch.__version__} (Ascend CANN install); import failed: {err}") from None


def select_device(node_device: str, local_rank: int = 0) -> torch.device:
    """The device this process computes on, made current for its backend.

    Args:
        node_device: 'cpu', 'cuda' or 'npu' (a trailing ':N' picks the card for single-card runs).
        local_rank: this process's index on the node (torchrun LOCAL_RANK); the card it uses.
    """
    kind, _, index = node_device.partition(':')
    if kind not in DEVICE_TYPES:
        raise DeviceError(f"unknown --node_device '{node_device}'; choose one of {', '.join(DEVICE_TYPES)}")
    if kind == 'cpu':
        return torch.device('cpu')
    card = int(index) if index else local_rank
    if kind == 'cuda':
        if not torch.cuda.is_available():
            raise DeviceError("--node_device cuda but no CUDA GPU is available "
                              "(torch.cuda.is_available() is False); use --node_device cpu")
        if card >= torch.cuda.device_count():
            raise DeviceError(f"cuda:{card} requested but only {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(card)
        return torch.device('cuda', card)
    import_torch_npu()
    torch.npu.set_device(card)
    return torch.device(f'npu:{card}')


def default_device_type() -> str:
    """npu when torch_npu imports, else cuda when a GPU is visible, else cpu."""
    try:
        importlib.import_module('torch_npu')
        return 'npu'
    except ImportError:
        pass
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def distributed_backend(device: torch.device) -> str:
    """The torch.distributed backend for a device type: nccl, hccl or gloo."""
    return {'cuda': 'nccl', 'npu': 'hccl'}.get(device.type, 'gloo')


def synchronize(device: Optional[torch.device]) -> None:
    """Wait for queued work on `device` (for timing); a no-op on CPU."""
    if device is None or device.type == 'cpu':
        return
    getattr(torch, device.type).synchronize(device)


# ------------------------------------------------------------------------------------------------
# Precision and memory layout: decided here, from what the hardware runs natively, for every
# entry point (train.py, eval.py, benchmarks/bench.py, run_demo.sh and test/*.sh through them).

AMP_DTYPES = {'fp16': torch.float16, 'float16': torch.float16,
              'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16}
AMP_CHOICES = ('auto',) + tuple(AMP_DTYPES)


def cpu_capability() -> str:
    """The vector ISA PyTorch's CPU kernels use here: 'AVX2', 'AVX512', ... (ATEN_CPU_CAPABILITY caps it)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 in hardware (AVX512-BF16 or AMX). On AVX2-only CPUs bf16
    autocast is emulated and far slower than float32 (README, Environment), so `--amp` falls back
    to float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def describe_cpu() -> str:
    """One line for logs and benchmark tables: the ISA and whether bf16 is native."""
    bf16 = 'native bfloat16' if cpu_has_native_bf16() else 'no native bfloat16'
    return f'CPU {cpu_capability()}, {bf16}, {torch.get_num_threads()} threads'


_FALLBACK_NOTICE = ('this CPU has no native bfloat16 ({}); running float32 '
                    '(--amp_dtype bf16 forces bfloat16 autocast)')


def autocast_dtype(device: torch.device, amp: bool, choice: str = 'auto',
                   notify=print) -> Optional[torch.dtype]:
    """The torch.autocast dtype for `--amp [--amp_dtype choice]`; None means float32.

    'auto' is float16 on cuda/npu and bfloat16 on a CPU that runs it natively; on a CPU without
    native bf16 it is float32, announced once through `notify`. An explicit dtype is always used.
    """
    if not amp:
        return None
    if choice != 'auto':
        if choice not in AMP_DTYPES:
            raise ValueError(f"--amp_dtype must be one of {', '.join(AMP_CHOICES)}, got {choice!r}")
        return AMP_DTYPES[choice]
    if device.type != 'cpu':
        return torch.float16
    if cpu_has_native_bf16():
        return torch.bfloat16
    if notify is not None:
        notify(_FALLBACK_NOTICE.format(cpu_capability()))
    return None


def grad_scaler(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """A GradScaler for float16 training, else None (bfloat16 has float32's range and needs none)."""
    if amp_dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def prefers_channels_last(device: torch.device, amp: bool, training: bool = False) -> bool:
    """Whether YOLACT runs faster with channels-last (NHWC) weights and activations here.

    On CPU, oneDNN convolutions skip a layout reorder per conv in NHWC, which pays off for
    inference everywhere; for training only on AVX512/AMX CPUs, since on AVX2-only CPUs the backward
    convolutions are slower in NHWC. On CUDA, NHWC is what tensor cores use under fp16/bf16
    autocast. Results are unchanged either way; the measurements are in benchmarks/README.md
    ("Speed paths in the code").
    """
    if device.type == 'cpu':
        return not training or cpu_capability().startswith('AVX512')
    if device.type == 'cuda':
        return amp
    return False

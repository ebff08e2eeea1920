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

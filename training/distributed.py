"""Where this process stands in a training job, and how the processes talk to each other.

One home for the launch conventions (torchrun's RANK / WORLD_SIZE / LOCAL_RANK, the Ascend
scripts' RANK_SIZE / RANK_ID / ASCEND_DEVICE_ID), the process group (nccl / hccl / gloo by
device), and the few collectives training needs. Every helper also works without a process group
(one process), so callers never branch on it.
"""
import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from utils.device import distributed_backend

# Rank 0 validates alone while the others wait at a barrier; give that wait room.
GROUP_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) training job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env: Dict[str, str], name: str) -> Optional[int]:
    value = env.get(name)
    if value is None or value == '':
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def dist_info_from_env(env: Optional[Dict[str, str]] = None, local_rank: Optional[int] = None) -> DistInfo:
    """Rank, world size and local rank from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or the Ascend
    convention (RANK_SIZE, RANK_ID, ASCEND_DEVICE_ID); torchrun's variables win when both are set."""
    env = dict(os.environ if env is None else env)
    world = _env_int(env, 'WORLD_SIZE')
    if world is not None:
        rank = _env_int(env, 'RANK') or 0
        local = _env_int(env, 'LOCAL_RANK')
    else:
        world = _env_int(env, 'RANK_SIZE') or 1
        rank = _env_int(env, 'RANK_ID') or 0
        if world > 1 and env.get('RANK_ID') is None:
            raise ValueError(f"RANK_SIZE={world} but RANK_ID is not set; launch each process with its RANK_ID")
        # Ascend: each process is pinned to the card ASCEND_DEVICE_ID (also in 1p runs).
        local = _env_int(env, 'LOCAL_RANK')
        if local is None:
            local = _env_int(env, 'ASCEND_DEVICE_ID')
    if local is None:
        local = rank
    if local_rank is not None:
        local = local_rank
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid distributed environment: rank {rank} of world size {world}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def restart_count(env: Optional[Dict[str, str]] = None) -> int:
    """How many times torchrun has restarted this worker group (--max-restarts); 0 otherwise."""
    return _env_int(dict(os.environ if env is None else env), 'TORCHELASTIC_RESTART_COUNT') or 0


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (a no-op for one process): backend nccl / hccl / gloo by device."""
    if not info.distributed or dist.is_initialized():
        return
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29500')
    store, _, _ = next(dist.rendezvous('env://', rank=info.rank, world_size=info.world_size, timeout=GROUP_TIMEOUT))
    # torchrun keeps its store across --max-restarts: without a prefix per attempt, restarted
    # workers would read the dead workers' addresses and fail to connect.
    store = dist.PrefixStore(f'attempt_{restart_count()}/', store)
    dist.init_process_group(backend=distributed_backend(device), store=store, rank=info.rank,
                            world_size=info.world_size, timeout=GROUP_TIMEOUT)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if _in_group():
        dist.destroy_process_group()


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_ranks_agree(flag: bool, device: torch.device, want_all: bool = True) -> bool:
    """Combine a per-process flag over the job: AND (want_all) or OR. Local value without a group."""
    if not _in_group():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN if want_all else dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's picklable `obj` on every process (e.g. the seed, or the checkpoint rank 0 chose);
    `obj` itself without a process group."""
    if not _in_group():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any) -> List[Any]:
    """Every rank's picklable `obj`, indexed by rank ([obj] without a process group)."""
    if not _in_group():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around `module` when there are several processes, else `module`."""
    if not info.distributed:
        return module
    device_ids = None if device.type == 'cpu' else [device.index]
    # Some heads get no gradient in some batches (e.g. no positives for the mask-IoU head).
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def barrier() -> None:
    if _in_group():
        dist.barrier()

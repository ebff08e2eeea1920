"""Train YOLACT on one process or many (torchrun / the Ascend launch convention), on CPU, CUDA or NPU.

    python train.py --config=yolact_base_config --batch_size=8
    python train.py --config=yolact_base_config --data=/data/coco --node_device=npu
    torchrun --nproc_per_node=8 train.py --config=yolact_base_config --batch_size=8
    python train.py --config=yolact_base_config --resume=latest      # or interrupt, or a path

Checkpoints are `<config>_<epoch>_<iter>.pth` (a plain state_dict, loadable by the original code)
with the training state (optimizer, LR position, RNG states, data order, AMP scaler) beside it in
`<config>_<epoch>_<iter>.state.pt`, so a resumed run continues exactly where it stopped.

The entry point is thin: every step (configuration, data, model, one iteration, checkpoints) is a
function below that tests and other scripts can call.
"""
import argparse
import datetime
import math
import os
import random
import signal
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.utils.data as torch_data
from torch.utils.data.distributed import DistributedSampler

from data.coco import COCODetection, coco_dataset_paths, detection_collate, enforce_size
from data.config import MEANS, STD, ConfigError, cfg, set_cfg, set_dataset
from layers.modules import MultiBoxLoss
from utils.augmentations import BaseTransform, SSDAugmentation
from utils.checkpoint import CheckpointError, load_file, save_file
from utils.coco_results import COCO_EVAL_BACKENDS, check_coco_eval_backend
from utils.device import (AMP_CHOICES, DeviceError, autocast_dtype, distributed_backend, prefers_channels_last,
                          select_device, synchronize)
from utils.functions import MovingAverage, SavePath
from utils.logger import Log
from yolact import Yolact

# Print order of the loss terms (the original's).
LOSS_TYPES = ['B', 'C', 'M', 'P', 'D', 'E', 'S', 'I']
# The original's batch size: lr and the schedule are scaled by global_batch / REFERENCE_BATCH.
REFERENCE_BATCH = 8
# Per-process batches below this train with frozen BatchNorm (batch statistics too noisy).
MIN_BN_BATCH = 6
# Iterations of each session left out of the average fps (graph setup, NPU operator compilation).
FPS_WARMUP_ITERS = 5
DEFAULT_CONFIG = 'yolact_base_config'
STATE_FORMAT = 1


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, a checkpoint could not be written, ...)."""


# ============================================================================================
# Command line
# ============================================================================================

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='YOLACT training script')
    # The original's flags.
    p.add_argument('--config', default=None, help=f'config name (default {DEFAULT_CONFIG})')
    p.add_argument('--dataset', default=None,
                   help="dataset config replacing the config's own (e.g. coco2017_dataset)")
    p.add_argument('--batch_size', default=8, type=int, help='batch size per process')
    p.add_argument('--resume', default=None, type=str,
                   help="checkpoint to resume from: a path, 'latest' or 'interrupt'")
    p.add_argument('--start_iter', default=-1, type=int,
                   help='iteration to resume at; -1 takes it from the training state / file name')
    p.add_argument('--num_workers', default=4, type=int, help='data loading processes per training process')
    p.add_argument('--lr', '--learning_rate', default=None, type=float, help='learning rate (default: config)')
    p.add_argument('--momentum', default=None, type=float, help='SGD momentum (default: config)')
    p.add_argument('--decay', '--weight_decay', default=None, type=float, help='weight decay (default: config)')
    p.add_argument('--gamma', default=None, type=float, help='lr factor at each lr step (default: config)')
    p.add_argument('--save_folder', default='weights/', help='where checkpoints are written')
    p.add_argument('--log_folder', default='logs/', help='where the JSON-lines log is written')
    p.add_argument('--save_interval', default=10000, type=int, help='iterations between checkpoints')
    p.add_argument('--validation_size', default=5000, type=int, help='images used for validation mAP')
    p.add_argument('--validation_epoch', default=2, type=int,
                   help='validate every N epochs (and at the end); <= 0 turns validation off')
    p.add_argument('--keep_latest', action='store_true', help='keep only the latest checkpoint')
    p.add_argument('--keep_latest_interval', default=100000, type=int,
                   help='with --keep_latest, never delete checkpoints of iterations that are multiples of this')
    p.add_argument('--no_log', dest='log', action='store_false', help='do not write the JSON-lines log')
    p.add_argument('--no_interrupt', dest='interrupt', action='store_false',
                   help='do not save a checkpoint on SIGINT/SIGTERM')
    p.add_argument('--no_autoscale', dest='autoscale', action='store_false',
                   help='do not scale lr and schedule by global_batch / 8')
    # The Ascend port's flags.
    p.add_argument('--data', default=None,
                   help='COCO root with train2017/, val2017/, annotations/ (replaces the dataset paths)')
    p.add_argument('--node_device', default=None,
                   help='cpu, cuda or npu (default: npu if torch_npu imports, else cuda if available, else cpu)')
    p.add_argument('--seed', default=None, type=int, help='seed of torch, numpy, random and the data order')
    p.add_argument('--max_iter', default=None, type=int,
                   help='iterations at batch 8 (default: config); autoscaled like the config value')
    p.add_argument('--local_rank', '--local-rank', default=None, type=int,
                   help='set by torch.distributed.launch; torchrun uses LOCAL_RANK instead')
    # This port's.
    p.add_argument('--amp', action='store_true', help='mixed precision (torch.autocast)')
    p.add_argument('--amp_dtype', default='auto', choices=AMP_CHOICES,
                   help='autocast dtype; auto = float16 on cuda/npu, bfloat16 on a CPU with native '
                        'bf16, float32 on other CPUs')
    p.add_argument('--log_interval', default=10, type=int, help='print a progress line every N iterations')
    p.add_argument('--max_nonfinite', default=10, type=int,
                   help='stop after this many non-finite losses in a row')
    p.add_argument('--coco_eval', default='pycocotools', choices=COCO_EVAL_BACKENDS,
                   help='COCOeval implementation of the validation mAP (faster: faster-coco-eval)')
    return p


def check_args(args: argparse.Namespace) -> None:
    """Reject flag values that cannot work, before anything is built."""
    positive = ('batch_size', 'save_interval', 'log_interval', 'max_nonfinite')
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_iter is not None and args.max_iter < 0:
        raise ValueError(f"--max_iter must be >= 0, got {args.max_iter}")
    if args.num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {args.num_workers}")
    if args.validation_epoch > 0 and args.validation_size < 1:
        raise ValueError(f"--validation_size must be at least 1 when validating, got {args.validation_size}")
    if args.start_iter < -1:
        raise ValueError(f"--start_iter must be -1 or >= 0, got {args.start_iter}")
    check_coco_eval_backend(args.coco_eval)
    for name in ('lr', 'momentum', 'decay', 'gamma'):
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError(f"--{name} must be a finite number >= 0, got {value}")


# ============================================================================================
# Distributed setup
# ============================================================================================

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


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (a no-op for one process): backend nccl / hccl / gloo by device."""
    if not info.distributed or dist.is_initialized():
        return
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29500')
    # Rank 0 validates alone while the others wait; give that wait room.
    dist.init_process_group(backend=distributed_backend(device), init_method='env://',
                            rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(hours=2))


def all_ranks_agree(flag: bool, device: torch.device, want_all: bool = True) -> bool:
    """Combine a per-process flag over the job: AND (want_all) or OR. Local value without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN if want_all else dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_from_rank0(value: int, device: torch.device) -> int:
    """Rank 0's `value` on every process (the value itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ============================================================================================
# Configuration
# ============================================================================================

@dataclass
class Schedule:
    """The optimisation settings after flags, config and autoscaling are combined."""
    lr: float
    momentum: float
    decay: float
    gamma: float
    max_iter: int
    lr_steps: List[int]
    warmup_init: float
    warmup_until: int
    scale: float = 1.0


def configure(args: argparse.Namespace, info: DistInfo) -> Schedule:
    """Apply --config/--dataset/--data to the global cfg, autoscale, and set the freeze-BN rule.

    Must run before the model and datasets are built (they read cfg).
    """
    set_cfg(args.config or DEFAULT_CONFIG)
    if args.dataset is not None:
        set_dataset(args.dataset)
    if args.data is not None:
        # A run without validation needs no val2017/ (the performance scripts).
        paths = coco_dataset_paths(args.data, ('train', 'val') if args.validation_epoch > 0 else ('train',))
        cfg.dataset = cfg.dataset.copy(paths._asdict())
    if args.max_iter is not None:
        cfg.max_iter = args.max_iter

    global_batch = args.batch_size * info.world_size
    scale = 1.0
    if args.autoscale and global_batch != REFERENCE_BATCH:
        scale = global_batch / REFERENCE_BATCH
        cfg.lr = cfg.lr * scale
        cfg.max_iter = int(cfg.max_iter // scale)
        cfg.lr_steps = [int(x // scale) for x in cfg.lr_steps]
        if info.is_main:
            print(f'Scaling parameters by {scale:.2f} for a global batch size of {global_batch}.')

    if args.batch_size < MIN_BN_BATCH:
        if info.is_main:
            print(f'Per-process batch size {args.batch_size} is below {MIN_BN_BATCH}: BatchNorm is frozen.')
        cfg.freeze_bn = True

    pick = lambda flag, default: default if flag is None else flag
    return Schedule(lr=pick(args.lr, cfg.lr), momentum=pick(args.momentum, cfg.momentum),
                    decay=pick(args.decay, cfg.decay), gamma=pick(args.gamma, cfg.gamma),
                    max_iter=int(cfg.max_iter), lr_steps=[int(s) for s in cfg.lr_steps],
                    warmup_init=cfg.lr_warmup_init, warmup_until=int(cfg.lr_warmup_until), scale=scale)


def check_writable_folder(path: str, flag: str) -> None:
    """Create `path` if needed and prove a file can be written there (one clear error otherwise)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix='.write_test_'):
            pass
    except OSError as err:
        raise ValueError(f"{flag} '{path}' is not a writable folder: "
                         f"{err.strerror or type(err).__name__}") from None


def check_dataset_files(need_val: bool) -> None:
    """Fail before training when a dataset folder or annotation file of cfg.dataset is missing."""
    wanted = [('train_images', True), ('train_info', False)]
    if need_val:
        wanted += [('valid_images', True), ('valid_info', False)]
    for key, is_dir in wanted:
        path = getattr(cfg.dataset, key)
        ok = os.path.isdir(path) if is_dir else os.path.isfile(path)
        if not ok:
            kind = 'folder' if is_dir else 'file'
            raise FileNotFoundError(f"dataset '{cfg.dataset.name}': {key} {kind} not found: {path} "
                                    f"(use --data=<COCO root> or a --dataset whose paths exist)")


# ============================================================================================
# Learning rate
# ============================================================================================

def learning_rate(iteration: int, sched: Schedule) -> float:
    """LR at `iteration`: linear warm-up from warmup_init to lr over warmup_until iterations, then
    lr * gamma ** (number of lr_steps reached)."""
    steps_done = sum(1 for s in sched.lr_steps if iteration >= s)
    if steps_done > 0:
        return sched.lr * sched.gamma ** steps_done
    if sched.warmup_until > 0 and iteration <= sched.warmup_until:
        return (sched.lr - sched.warmup_init) * (iteration / sched.warmup_until) + sched.warmup_init
    return sched.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group['lr'] = lr


# ============================================================================================
# Seeding and data
# ============================================================================================

def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and random."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: a function of (run seed, epoch, dataset index) only,
    so the data is the same whatever the worker count, world size or resume point."""
    return int(np.random.SeedSequence([seed % 2 ** 32, epoch, index]).generate_state(1)[0])


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run a block with random/numpy/torch(CPU) seeded by `seed`, restoring their states after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededSamples(torch_data.Dataset):
    """Wraps a dataset so that item `(index, seed)` is `dataset[index]` drawn under `seed`.

    The augmentations draw from numpy's global RNG (as the original's); seeding per sample makes
    every sample's augmentation reproducible, which exact resume needs.
    """

    def __init__(self, dataset: torch_data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        with isolated_rng(seed):
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle per epoch, one shard per rank) that can start mid-epoch
    and yields `(index, sample_seed)` for SeededSamples. Works without a process group."""

    def __init__(self, dataset: torch_data.Dataset, num_replicas: int, rank: int, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed % 2 ** 32, drop_last=True)
        self.batch_size = batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        order = list(super().__iter__())[self.skip:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in order])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)


def _worker_init(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; only the main process decides when to stop, and it
    # shuts the workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_datasets(seed: int, need_val: bool) -> Tuple[COCODetection, Optional[COCODetection]]:
    """Training set with SSDAugmentation and (if validating) the validation set with BaseTransform."""
    train_set = COCODetection(image_path=cfg.dataset.train_images, info_file=cfg.dataset.train_info,
                              transform=SSDAugmentation(MEANS, STD), dataset_name=cfg.dataset.name,
                              resample_seed=seed)
    val_set = None
    if need_val:
        val_set = COCODetection(image_path=cfg.dataset.valid_images, info_file=cfg.dataset.valid_info,
                                transform=BaseTransform(MEANS, STD), dataset_name=cfg.dataset.name,
                                has_gt=cfg.dataset.has_gt)
    return train_set, val_set


def build_train_loader(dataset: torch_data.Dataset, batch_size: int, num_workers: int, seed: int,
                       info: DistInfo, device: torch.device
                       ) -> Tuple[torch_data.DataLoader, ResumableSampler]:
    """DataLoader over `dataset` whose order and augmentation depend only on (seed, epoch, index)."""
    sampler = ResumableSampler(dataset, info.world_size, info.rank, seed, batch_size)
    if sampler.batches_per_epoch() == 0:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than one batch of "
                         f"{batch_size} per process x {info.world_size} process(es)")
    loader = torch_data.DataLoader(
        SeededSamples(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=detection_collate, pin_memory=device.type == 'cuda', drop_last=True,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed))
    return loader, sampler


Batch = Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor], List[int]]


def prepare_batch(datum, device: torch.device) -> Batch:
    """detection_collate output -> (images Tensor[B, 3, H, W], targets [Tensor[N_i, 5]],
    masks [Tensor[N_i, H, W]], num_crowds [int]) on `device`."""
    images, (targets, masks, num_crowds) = datum
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [t.to(device, non_blocking=True) for t in targets]
    masks = [m.to(device, non_blocking=True) for m in masks]
    num_crowds = list(num_crowds)
    if len({tuple(img.shape) for img in images}) > 1:
        if not cfg.preserve_aspect_ratio:
            raise ValueError(f"images of one batch differ in size: {[tuple(i.shape) for i in images]}")
        # As the original: fit every sample into the size of one randomly chosen sample.
        _, h, w = images[random.randint(0, len(images) - 1)].shape
        for i in range(len(images)):
            images[i], targets[i], masks[i], num_crowds[i] = enforce_size(
                images[i], targets[i], masks[i], num_crowds[i], w, h)
    return torch.stack(images, dim=0), targets, masks, num_crowds


# ============================================================================================
# Model, loss and one step
# ============================================================================================

class NetLoss(nn.Module):
    """The network and its loss in one module, so DDP wraps both (as the original's NetLoss).

    forward(images, targets, masks, num_crowds) -> dict of scalar loss terms. With `amp_dtype` the
    network runs under torch.autocast; the loss is always computed in float32.

    Predictions that are not finite (a diverging run) give NaN loss terms without calling the
    loss, which could otherwise fail on them (BCE rejects NaN inputs); train_step then skips the
    update. The NaN terms still depend on every prediction, so backward reaches every parameter.
    """

    def __init__(self, net: Yolact, criterion: MultiBoxLoss, amp_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.net = net
        self.criterion = criterion
        self.amp_dtype = amp_dtype
        self._loss_keys: Tuple[str, ...] = ('B', 'C', 'M')

    def forward(self, images: torch.Tensor, targets: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                num_crowds: Sequence[int]) -> Dict[str, torch.Tensor]:
        device_type = images.device.type
        autocast = (torch.autocast(device_type=device_type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        with autocast:
            preds = self.net(images)
        floating = {k: v for k, v in preds.items() if torch.is_tensor(v) and v.is_floating_point()}
        if self.amp_dtype is not None:
            preds = dict(preds, **{k: v.float() for k, v in floating.items()})
        finite = torch.stack([torch.isfinite(v).all() for v in floating.values()]).all()
        if not bool(finite.item()):
            nan = sum(v.float().sum() for v in floating.values()) * float('nan')
            return {k: nan for k in self._loss_keys}
        with torch.autocast(device_type=device_type, enabled=False) if self.amp_dtype is not None \
                else nullcontext():
            losses = self.criterion(self.net, preds, targets, masks, num_crowds)
        self._loss_keys = tuple(losses)
        return losses


def build_criterion() -> MultiBoxLoss:
    return MultiBoxLoss(num_classes=cfg.num_classes, pos_threshold=cfg.positive_iou_threshold,
                        neg_threshold=cfg.negative_iou_threshold, negpos_ratio=cfg.ohem_negpos_ratio)


def build_optimizer(net: nn.Module, sched: Schedule) -> torch.optim.Optimizer:
    """SGD as the original (cfg.optimizer 'sgd'), or AdamW ('adamw', for training from scratch)."""
    if cfg.optimizer == 'adamw':
        return torch.optim.AdamW(net.parameters(), lr=sched.lr, weight_decay=sched.decay)
    if cfg.optimizer != 'sgd':
        raise ConfigError(f"config option optimizer = {cfg.optimizer!r}: expected 'sgd' or 'adamw'")
    return torch.optim.SGD(net.parameters(), lr=sched.lr, momentum=sched.momentum, weight_decay=sched.decay)


def make_grad_scaler(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """A GradScaler for float16 training (bfloat16 has float32's range and needs none)."""
    if amp_dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def wrap_model(net_loss: NetLoss, device: torch.device, info: DistInfo) -> nn.Module:
    """DDP around NetLoss when there are several processes, else NetLoss itself."""
    if not info.distributed:
        return net_loss
    device_ids = None if device.type == 'cpu' else [device.index]
    # Some heads get no gradient in some batches (e.g. no positives for the mask-IoU head).
    return nn.parallel.DistributedDataParallel(net_loss, device_ids=device_ids, find_unused_parameters=True)


@dataclass
class StepResult:
    losses: Dict[str, float]
    total: float
    finite: bool  # over all processes; False means no weight update was made


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, scaler=None) -> StepResult:
    """One forward/backward/update. A non-finite loss on any process skips the update everywhere.

    backward runs even for a non-finite loss: under DDP every process must take part in the
    gradient reduction, and the gradients are simply not applied.
    """
    optimizer.zero_grad(set_to_none=True)
    losses = model(*batch)
    total = sum(losses.values())
    (scaler.scale(total) if scaler is not None else total).backward()
    finite = all_ranks_agree(bool(torch.isfinite(total).item()), total.device)
    if finite:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    return StepResult({k: v.item() for k, v in losses.items()}, total.item(), finite)


def init_weights(net: Yolact, save_folder: str) -> Optional[str]:
    """Pretrained backbone from <save_folder>/ or weights/ if present, else training from scratch.
    Returns the backbone file used, or None."""
    name = cfg.backbone.path
    for folder in (save_folder, 'weights'):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            net.init_weights(backbone_path=path)
            return path
    net.init_weights(backbone_path=None)
    return None


# ============================================================================================
# Checkpoints and training state
# ============================================================================================

def state_path(weights_path: str) -> str:
    """The training-state file that goes with a weights file."""
    stem = weights_path[:-len('.pth')] if weights_path.endswith('.pth') else weights_path
    return stem + '.state.pt'


def _rng_states(device: torch.device) -> Dict[str, Any]:
    np_state = np.random.get_state()
    states: Dict[str, Any] = {
        'torch': torch.get_rng_state(),
        # Only tensors and plain containers survive weights_only loading.
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        'python': random.getstate(),
    }
    if device.type == 'cuda':
        states['cuda'] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states['torch'])
    name, keys, pos, has_gauss, cached = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    if device.type == 'cuda' and 'cuda' in states:
        torch.cuda.set_rng_state(states['cuda'], device)


def make_training_state(iteration: int, epoch: int, optimizer: torch.optim.Optimizer, lr: float,
                        seed: int, sched: Schedule, device: torch.device, scaler=None,
                        nonfinite_total: int = 0) -> Dict[str, Any]:
    """Everything besides the weights that an exact resume needs."""
    return {
        'format': STATE_FORMAT,
        'config': cfg.name,
        'iteration': iteration,
        'epoch': epoch,
        'optimizer': optimizer.state_dict(),
        'lr': lr,
        'lr_steps_done': sum(1 for s in sched.lr_steps if iteration >= s),
        'seed': seed,
        'rng': _rng_states(device),
        'scaler': scaler.state_dict() if scaler is not None else None,
        'nonfinite_total': nonfinite_total,
    }


def save_checkpoint(net: Yolact, weights_path: str, state: Dict[str, Any]) -> None:
    """Write the training state, then the weights; each atomically. The weights file is what marks
    a checkpoint as complete (a state file without weights is ignored)."""
    try:
        save_file(state, state_path(weights_path))
        net.save_weights(weights_path)
    except Exception as err:
        raise TrainingError(f"could not write checkpoint {weights_path}: {err}; earlier checkpoints "
                            f"are intact") from None


def load_training_state(weights_path: str, expected_iteration: Optional[int]) -> Optional[Dict[str, Any]]:
    """The state file beside `weights_path`, or None when there is none (weights-only resume)."""
    path = state_path(weights_path)
    if not os.path.isfile(path):
        return None
    state = load_file(path)
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT or 'optimizer' not in state:
        raise CheckpointError(f"{path}: not a training-state file of this train.py")
    if expected_iteration is not None and state['iteration'] != expected_iteration:
        raise CheckpointError(f"{path} is for iteration {state['iteration']} but {weights_path} is named "
                              f"for iteration {expected_iteration}")
    return state


def resolve_resume(resume: Optional[str], save_folder: str) -> Optional[str]:
    """--resume value -> checkpoint path (None: start fresh). 'latest'/'interrupt' search save_folder."""
    if resume is None:
        return None
    if resume == 'interrupt':
        path = SavePath.get_interrupt(save_folder)
        if path is None:
            raise FileNotFoundError(f"--resume interrupt: no *_interrupt.pth in {save_folder}")
        return path
    if resume == 'latest':
        path = SavePath.get_latest(save_folder, cfg.name)
        if path is None:
            raise FileNotFoundError(f"--resume latest: no {cfg.name}_*.pth checkpoint in {save_folder}")
        return path
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    return resume


def remove_checkpoint(weights_path: str) -> None:
    for path in (weights_path, state_path(weights_path)):
        if os.path.exists(path):
            os.remove(path)


def _complete_checkpoint(path: str) -> bool:
    return os.path.isfile(path) and zipfile.is_zipfile(path)


# ============================================================================================
# Signals
# ============================================================================================

class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks training to stop after the current iteration
    (and save); a second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f'\n{signal.Signals(signum).name} received: saving after this iteration '
              f'(send it again to quit without saving).', flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None


# ============================================================================================
# Validation
# ============================================================================================

def _eval_module():
    try:
        import eval as eval_script  # noqa: the project's eval.py, not the builtin
    except ImportError as err:
        raise ValueError(f"validation needs eval.py (import failed: {err}); use --validation_epoch -1") from None
    return eval_script


def compute_validation_map(net: Yolact, dataset: COCODetection, validation_size: int,
                           amp_dtype: Optional[torch.dtype] = None, coco_eval: str = 'pycocotools'
                           ) -> Optional[Dict[str, Any]]:
    """Box and mask mAP of `net` on (at most) `validation_size` images, through eval.evaluate:
    {'box': {'all': mAP, 50: AP50, ...}, 'mask': {...}}. The net is left in train mode."""
    eval_script = _eval_module()
    overrides: Dict[str, Any] = {'max_images': validation_size, 'no_bar': True, 'coco_eval': coco_eval}
    if amp_dtype is not None:
        overrides.update(amp=True, amp_dtype='bf16' if amp_dtype == torch.bfloat16 else 'fp16')
    try:
        with torch.no_grad():
            return eval_script.evaluate(net, dataset, train_mode=True, opts=eval_script.default_options(),
                                        **overrides)
    finally:
        net.train()


# ============================================================================================
# The training loop
# ============================================================================================

def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


@dataclass
class Progress:
    """Timing and loss bookkeeping of one session (fps excludes the first iterations)."""
    global_batch: int
    loss_avgs: Dict[str, MovingAverage] = field(default_factory=lambda: {k: MovingAverage(100) for k in LOSS_TYPES})
    time_avg: MovingAverage = field(default_factory=MovingAverage)
    steps: int = 0
    timed_images: int = 0
    timed_seconds: float = 0.0

    def add(self, result: StepResult, elapsed: float) -> None:
        self.steps += 1
        for k, v in result.losses.items():
            self.loss_avgs[k].add(v)
        if self.steps > 1:
            self.time_avg.add(elapsed)  # the first iteration builds graphs/caches
        if self.steps > FPS_WARMUP_ITERS:
            self.timed_images += self.global_batch
            self.timed_seconds += elapsed

    def avg_fps(self) -> float:
        """Images per second over this session, leaving out the first FPS_WARMUP_ITERS iterations
        (all but the first when the session is shorter than that)."""
        if self.timed_seconds > 0:
            return self.timed_images / self.timed_seconds
        if len(self.time_avg) > 0:
            return self.global_batch / self.time_avg.get_avg()
        return float('nan')

    def line(self, epoch: int, iteration: int, keys: Sequence[str], elapsed: float, max_iter: int) -> str:
        order = [k for k in LOSS_TYPES if k in keys]
        parts = ' | '.join(f'{k}: {self.loss_avgs[k].get_avg():.3f}' for k in order)
        total = sum(self.loss_avgs[k].get_avg() for k in order)
        eta = format_eta((max_iter - iteration) * self.time_avg.get_avg())
        fps = self.global_batch / elapsed if elapsed > 0 else float('nan')
        return (f'[{epoch:3d}] {iteration:7d} || {parts} | T: {total:.3f} || ETA: {eta} || '
                f'timer: {elapsed:.3f} || fps: {fps:.2f} | avg fps: {self.avg_fps():.2f}')


class Trainer:
    """Holds one training run's pieces; `run()` trains from `iteration` to `sched.max_iter`."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, device: torch.device, sched: Schedule,
                 seed: int, net: Yolact, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loader: torch_data.DataLoader, sampler: ResumableSampler, val_set: Optional[COCODetection],
                 log: Optional[Log], scaler=None, amp_dtype: Optional[torch.dtype] = None,
                 iteration: int = 0, nonfinite_total: int = 0):
        self.args, self.info, self.device, self.sched, self.seed = args, info, device, sched, seed
        self.net, self.model, self.optimizer = net, model, optimizer
        self.loader, self.sampler, self.val_set, self.log = loader, sampler, val_set, log
        self.scaler, self.amp_dtype = scaler, amp_dtype
        self.iteration = iteration
        self.epoch_size = sampler.batches_per_epoch()
        self.nonfinite_total = nonfinite_total
        self.nonfinite_run = 0
        self.lr = learning_rate(iteration, sched)
        self.stop = StopRequest()
        self.progress = Progress(global_batch=args.batch_size * info.world_size)
        self.start_iteration = iteration

    # ---------------------------------------------------------------- saving

    def checkpoint_path(self, epoch: int, suffix: str = '') -> str:
        return SavePath(cfg.name, epoch, f'{self.iteration}{suffix}').get_path(root=self.args.save_folder)

    def _state(self, epoch: int) -> Dict[str, Any]:
        return make_training_state(self.iteration, epoch, self.optimizer, self.lr, self.seed, self.sched,
                                   self.device, self.scaler, self.nonfinite_total)

    def save(self, epoch: int, interrupt: bool = False) -> Optional[str]:
        """Rank 0 writes the checkpoint; every rank learns whether it worked (no one trains on alone)."""
        path, error = None, None
        if self.info.is_main:
            path = self.checkpoint_path(epoch, '_interrupt' if interrupt else '')
            previous = None if interrupt else SavePath.get_latest(self.args.save_folder, cfg.name,
                                                                   include_interrupt=False)
            try:
                save_checkpoint(self.net, path, self._state(epoch))
            except TrainingError as err:
                error = err
            else:
                if interrupt:
                    # Only the newest interrupt save is kept.
                    for old in SavePath.interrupt_files(self.args.save_folder):
                        if os.path.abspath(old) != os.path.abspath(path):
                            remove_checkpoint(old)
                elif self.args.keep_latest:
                    self._drop_previous(previous, path)
        if not all_ranks_agree(error is None, self.device):
            raise error if error is not None else TrainingError('rank 0 could not write a checkpoint')
        return path

    def _drop_previous(self, previous: Optional[str], new_path: str) -> None:
        """--keep_latest: delete the previous checkpoint once the new one is complete on disk,
        except the milestones at multiples of --keep_latest_interval."""
        if previous is None or os.path.abspath(previous) == os.path.abspath(new_path):
            return
        if not _complete_checkpoint(new_path):
            return
        interval = self.args.keep_latest_interval
        if interval > 0 and SavePath.from_str(previous).iteration % interval == 0:
            return
        print(f'Deleting old save {previous}')
        remove_checkpoint(previous)

    # ---------------------------------------------------------------- validation

    def validate(self, epoch: int) -> None:
        if self.info.is_main and self.val_set is not None:
            print('\nComputing validation mAP (this may take a while)...', flush=True)
            start = time.perf_counter()
            val_info = compute_validation_map(self.net, self.val_set, self.args.validation_size, self.amp_dtype,
                                              self.args.coco_eval)
            elapsed = time.perf_counter() - start
            if val_info is None:
                print('Validation: the validation set has no ground truth, no mAP computed.', flush=True)
                val_info = {}
            else:
                box, mask = val_info.get('box', {}).get('all'), val_info.get('mask', {}).get('all')
                print(f'Validation (epoch {epoch}, iteration {self.iteration}): box mAP {box}, mask mAP {mask} '
                      f'({elapsed:.1f}s)', flush=True)
            if self.log is not None:
                self.log.log('val', val_info, elapsed=elapsed, epoch=epoch, iter=self.iteration)
        barrier()

    # ---------------------------------------------------------------- the loop

    def _after_step(self, epoch: int, result: StepResult, elapsed: float) -> None:
        it = self.iteration  # index of the iteration just run
        if result.finite:
            self.nonfinite_run = 0
            self.progress.add(result, elapsed)
        else:
            self.nonfinite_run += 1
            self.nonfinite_total += 1
            if self.info.is_main:
                shown = ', '.join(f'{k}: {v:.4g}' for k, v in result.losses.items())
                print(f'[{epoch:3d}] {it:7d} || non-finite loss ({shown}); update skipped '
                      f'({self.nonfinite_run} in a row, {self.nonfinite_total} in total)', flush=True)
            if self.log is not None:
                self.log.log('nonfinite', loss=result.losses, epoch=epoch, iter=it,
                             in_a_row=self.nonfinite_run, total=self.nonfinite_total)
            if self.nonfinite_run >= self.args.max_nonfinite:
                raise TrainingError(
                    f"stopping: {self.nonfinite_run} non-finite losses in a row (iteration {it}); training "
                    f"diverged. Lower --lr and resume from the last checkpoint in {self.args.save_folder}")
        if self.info.is_main and result.finite and it % self.args.log_interval == 0:
            print(self.progress.line(epoch, it, result.losses.keys(), elapsed, self.sched.max_iter), flush=True)
        if self.log is not None:
            loss_info = {k: round(v, 5) for k, v in result.losses.items()}
            loss_info['T'] = round(result.total, 5)
            self.log.log('train', loss=loss_info, epoch=epoch, iter=it, lr=round(self.lr, 10),
                         elapsed=elapsed, finite=result.finite)

    def _run_epoch(self, epoch: int) -> None:
        """Iterate from self.iteration to the end of `epoch` (or max_iter, or a stop request)."""
        self.sampler.set_epoch(epoch, skip_batches=self.iteration - epoch * self.epoch_size)
        epoch_end = min((epoch + 1) * self.epoch_size, self.sched.max_iter)
        batches = iter(self.loader)
        try:
            last_time = time.perf_counter()
            while self.iteration < epoch_end and not self._stop_requested():
                datum = next(batches)
                self.lr = learning_rate(self.iteration, self.sched)
                set_lr(self.optimizer, self.lr)
                result = train_step(self.model, self.optimizer, prepare_batch(datum, self.device), self.scaler)
                synchronize(self.device)
                now = time.perf_counter()
                elapsed, last_time = now - last_time, now
                self._after_step(epoch, result, elapsed)
                self.iteration += 1
                if self.iteration % self.args.save_interval == 0 and self.iteration != self.start_iteration \
                        and self.iteration < self.sched.max_iter:
                    if self.info.is_main:
                        print(f'Saving state, iter: {self.iteration}', flush=True)
                    self.save(epoch)
                    last_time = time.perf_counter()
        finally:
            # Shuts DataLoader workers down now rather than at garbage collection.
            shutdown = getattr(batches, '_shutdown_workers', None)
            if shutdown is not None:
                shutdown()
            del batches

    def _stop_requested(self) -> bool:
        return all_ranks_agree(self.stop.requested, self.device, want_all=False)

    def run(self) -> int:
        """Train to max_iter. Returns the exit status (0, or 128 + signal number when interrupted)."""
        if self.iteration >= self.sched.max_iter:
            # A resumed run that is already complete: saving again would only add a duplicate.
            if self.info.is_main:
                print(f'Already at iteration {self.iteration} of {self.sched.max_iter}: nothing to train.',
                      flush=True)
            return 0
        if self.args.interrupt:
            self.stop.install()
        try:
            epoch = self.iteration // self.epoch_size
            while self.iteration < self.sched.max_iter:
                epoch = self.iteration // self.epoch_size
                self._run_epoch(epoch)
                if self._stop_requested():
                    return self._interrupted(epoch)
                finished_epoch = self.iteration % self.epoch_size == 0
                if (finished_epoch and self.args.validation_epoch > 0 and epoch > 0
                        and epoch % self.args.validation_epoch == 0 and self.iteration < self.sched.max_iter):
                    self.validate(epoch)
            if self.args.validation_epoch > 0 and self.iteration > self.start_iteration:
                self.validate(epoch)
            path = self.save(epoch)
            self._summary(path)
            return 0
        finally:
            self.stop.restore()

    def _interrupted(self, epoch: int) -> int:
        signum = self.stop.signum or signal.SIGINT
        path = self.save(epoch, interrupt=True)
        if self.info.is_main:
            if self.log is not None:
                self.log.log('interrupt', signal=signal.Signals(signum).name, epoch=epoch, iter=self.iteration,
                             checkpoint=path)
            print(f'Stopped by {signal.Signals(signum).name} at iteration {self.iteration}; saved {path}.\n'
                  f'Resume with the same flags plus --resume=interrupt (or --resume={path}).', flush=True)
        return 128 + int(signum)

    def _summary(self, path: Optional[str]) -> None:
        if not self.info.is_main:
            return
        keys = [k for k in LOSS_TYPES if len(self.progress.loss_avgs[k])]
        final_loss = sum(self.progress.loss_avgs[k].get_avg() for k in keys)
        fps = self.progress.avg_fps()
        print(f'Training finished at iteration {self.iteration}; saved {path}.')
        print(f'Train summary: iterations={self.iteration - self.start_iteration} images_per_sec={fps:.3f} '
              f'final_loss={final_loss:.4f} nonfinite_skipped={self.nonfinite_total}', flush=True)
        if self.log is not None:
            self.log.log('summary', iter=self.iteration, images_per_sec=fps, final_loss=final_loss,
                         nonfinite_skipped=self.nonfinite_total, checkpoint=path)


# ============================================================================================
# Entry point
# ============================================================================================

def setup(args: argparse.Namespace, info: Optional[DistInfo] = None) -> Trainer:
    """Everything before the first iteration; raises ConfigError / DeviceError / CheckpointError /
    FileNotFoundError / ValueError for bad input, before any training."""
    check_args(args)
    info = info or dist_info_from_env(local_rank=args.local_rank)
    device = select_device(args.node_device or _default_device(), info.local_rank)
    if device.type == 'cpu':
        # Tiny gradients make Adam's second moments denormal, and x86 CPUs compute on denormals
        # 10-100x slower; flushing them to zero changes nothing that matters for training.
        torch.set_flush_denormal(True)
    sched = configure(args, info)
    need_val = args.validation_epoch > 0
    check_dataset_files(need_val)
    if need_val:
        _eval_module()
    if info.is_main:
        check_writable_folder(args.save_folder, '--save_folder')
        if args.log:
            check_writable_folder(args.log_folder, '--log_folder')

    resume_path = resolve_resume(args.resume, args.save_folder)
    state = None
    if resume_path is not None:
        try:
            named_iter: Optional[int] = SavePath.from_str(resume_path).iteration
        except ValueError:
            named_iter = None
        state = load_training_state(resume_path, named_iter)
    init_distributed(info, device)
    if args.seed is not None:
        seed = args.seed
    elif state is not None:
        seed = state['seed']
    else:
        # Every rank must shuffle with the same seed, or the shards would overlap.
        seed = broadcast_from_rank0(int.from_bytes(os.urandom(4), 'little'), device)
    seed_everything(seed)

    train_set, val_set = build_datasets(seed, need_val)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True

    net = Yolact()
    if resume_path is not None:
        if info.is_main:
            print(f'Resuming training, loading {resume_path}...')
        net.load_weights(resume_path)
    else:
        backbone = init_weights(net, args.save_folder)
        if info.is_main:
            print(f'Initialized the backbone from {backbone}.' if backbone else
                  f'No pretrained backbone ({cfg.backbone.path} not in {args.save_folder} or weights/): '
                  f'training from scratch.')
    net.train()
    net.to(device)

    sched_optimizer = build_optimizer(net, sched)
    amp_dtype = autocast_dtype(device, args.amp, args.amp_dtype,
                               notify=print if info.is_main else None)
    if prefers_channels_last(device, amp_dtype is not None, training=True):
        net.to(memory_format=torch.channels_last)  # in place: the optimizer's parameters stay the same
    scaler = make_grad_scaler(device, amp_dtype)

    iteration, nonfinite_total = 0, 0
    if resume_path is not None:
        if state is not None:
            sched_optimizer.load_state_dict(state['optimizer'])
            if scaler is not None and state.get('scaler'):
                scaler.load_state_dict(state['scaler'])
            _set_rng_states(state['rng'], device)
            iteration = state['iteration']
            nonfinite_total = state.get('nonfinite_total', 0)
        else:
            if info.is_main:
                print(f'No training state beside {resume_path}: optimizer momentum and RNG start fresh.')
            iteration = named_iter if named_iter is not None else 0
    if args.start_iter != -1:
        iteration = args.start_iter

    model = wrap_model(NetLoss(net, build_criterion(), amp_dtype), device, info)
    loader, sampler = build_train_loader(train_set, args.batch_size, args.num_workers, seed, info, device)

    log = None
    if args.log and info.is_main:
        session = {k: v for k, v in vars(args).items()}
        session.update(seed=seed, world_size=info.world_size, device=str(device), lr=sched.lr,
                       max_iter=sched.max_iter, lr_steps=sched.lr_steps, start_iter=iteration)
        log = Log(cfg.name, args.log_folder, session, overwrite=False)
    return Trainer(args, info, device, sched, seed, net, model, sched_optimizer, loader, sampler, val_set,
                   log, scaler=scaler, amp_dtype=amp_dtype, iteration=iteration, nonfinite_total=nonfinite_total)


def _default_device() -> str:
    from utils.device import default_device_type
    return default_device_type()


def _one_line(err: BaseException) -> str:
    text = ' '.join(str(err).split())
    return text or type(err).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        trainer = setup(args)
        if trainer.info.is_main:
            print(f'Begin training! {cfg.name}: iterations {trainer.iteration} -> {trainer.sched.max_iter}, '
                  f'{trainer.info.world_size} process(es) x batch {args.batch_size}, device {trainer.device}, '
                  f'seed {trainer.seed}\n', flush=True)
        return trainer.run()
    except (ConfigError, CheckpointError, DeviceError, FileNotFoundError, ValueError, TrainingError) as err:
        print(f'error: {_one_line(err)}', file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print('error: interrupted; no checkpoint saved', file=sys.stderr, flush=True)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())

"""The optimisation schedule of a training run: the config and flags combined (`configure`), the
learning rate at each iteration, and the optimizer. train.py wires these into its loop."""
import argparse
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from torch.autograd.graph import increment_version

from data.coco import DatasetPaths, coco_dataset_paths, dataset_from_annotations, read_annotations, user_dataset_paths
from data.config import Config, ConfigError, config_for, dataset_for, with_dataset
from training.distributed import DistInfo

# The original's batch size: lr and the schedule are scaled by global_batch / REFERENCE_BATCH.
REFERENCE_BATCH = 8
# Per-process batches below this train with frozen BatchNorm (batch statistics too noisy).
MIN_BN_BATCH = 6
DEFAULT_CONFIG = 'yolact_base_config'


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
    optimizer: str  # 'sgd' or 'adamw' (config.optimizer)
    scale: float = 1.0


def configure(args: argparse.Namespace, info: DistInfo) -> Tuple[Config, Schedule, Dict[str, dict]]:
    """The run's config (--config with --dataset/--data, --max_iter, autoscaling and the freeze-BN
    rule applied), its schedule, and the annotation files --data's classes were read from, parsed
    (info file -> content, for the datasets: COCODetection(annotations=...); empty without --data).
    """
    config = config_for(args.config or DEFAULT_CONFIG)
    if args.dataset is not None:
        config.dataset = dataset_for(args.dataset)
    if args.validation_epoch > 0 and args.data is not None and args.valid_info is None \
            and not os.path.isfile(coco_dataset_paths(args.data, ('train',)).valid_info):
        # A dataset converted with everything in train (labelme2coco --val_fraction 0).
        if info.is_main:
            print(f"{args.data} has no validation split ({coco_dataset_paths(args.data, ('train',)).valid_info} "
                  f"not found): training without validation.")
        args.validation_epoch = 0
    # A run without validation needs no validation files (the performance scripts).
    splits = ('train', 'val') if args.validation_epoch > 0 else ('train',)
    paths = user_dataset_paths(args.data, {f: getattr(args, f) for f in DatasetPaths._fields}, splits)
    annotations: Dict[str, dict] = {}
    if paths is not None:
        annotations = read_annotations(paths, splits)
        config = with_dataset(config, dataset_from_annotations(paths, splits, annotations=annotations),
                              source=paths.train_info, say=print if info.is_main else None)
    if args.max_iter is not None:
        config.max_iter = args.max_iter

    global_batch = args.batch_size * info.world_size
    scale = 1.0
    if args.autoscale and global_batch != REFERENCE_BATCH:
        scale = global_batch / REFERENCE_BATCH
        config.lr = config.lr * scale
        config.max_iter = int(config.max_iter // scale)
        config.lr_steps = [int(x // scale) for x in config.lr_steps]
        if info.is_main:
            print(f'Scaling parameters by {scale:.2f} for a global batch size of {global_batch}.')

    if args.batch_size < MIN_BN_BATCH:
        if info.is_main:
            print(f'Per-process batch size {args.batch_size} is below {MIN_BN_BATCH}: BatchNorm is frozen.')
        config.freeze_bn = True

    pick = lambda flag, default: default if flag is None else flag
    sched = Schedule(lr=pick(args.lr, config.lr), momentum=pick(args.momentum, config.momentum),
                     decay=pick(args.decay, config.decay), gamma=pick(args.gamma, config.gamma),
                     max_iter=int(config.max_iter), lr_steps=[int(s) for s in config.lr_steps],
                     warmup_init=config.lr_warmup_init, warmup_until=int(config.lr_warmup_until),
                     optimizer=config.optimizer, scale=scale)
    return config, sched, annotations


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


class FusedAdamW(torch.optim.AdamW):
    """AdamW with the fused kernel: one pass over all parameters instead of one per tensor. The
    kernel (torch 2.14) does not bump the parameters' version counters, and a channels-last bf16
    model then validated on stale weights, so step() bumps them itself."""

    def __init__(self, params, **kwargs):
        super().__init__(params, fused=True, **kwargs)

    def step(self, closure=None):
        loss = super().step(closure)
        increment_version([p for group in self.param_groups for p in group['params'] if p.grad is not None])
        return loss


def build_optimizer(net: nn.Module, sched: Schedule) -> torch.optim.Optimizer:
    """SGD as the original (sched.optimizer 'sgd'), or AdamW ('adamw', for training from scratch)."""
    if sched.optimizer == 'adamw':
        if next(net.parameters()).device.type in ('cpu', 'cuda'):  # torch_npu has no fused AdamW
            return FusedAdamW(net.parameters(), lr=sched.lr, weight_decay=sched.decay)
        return torch.optim.AdamW(net.parameters(), lr=sched.lr, weight_decay=sched.decay)
    if sched.optimizer != 'sgd':
        raise ConfigError(f"config option optimizer = {sched.optimizer!r}: expected 'sgd' or 'adamw'")
    return torch.optim.SGD(net.parameters(), lr=sched.lr, momentum=sched.momentum, weight_decay=sched.decay)

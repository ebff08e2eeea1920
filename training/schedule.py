"""The optimisation schedule of a training run: the config and flags combined (`configure`), the
learning rate at each iteration, and the optimizer. train.py wires these into its loop."""
import argparse
import os
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
from torch.autograd.graph import increment_version

from data.coco import DatasetPaths, coco_dataset_paths, dataset_from_annotations, user_dataset_paths
from data.config import ConfigError, cfg, set_cfg, set_dataset, use_dataset
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
    scale: float = 1.0


def configure(args: argparse.Namespace, info: DistInfo) -> Schedule:
    """Apply --config/--dataset/--data to the global cfg, autoscale, and set the freeze-BN rule.

    Must run before the model and datasets are built (train.py passes them cfg).
    """
    set_cfg(args.config or DEFAULT_CONFIG)
    if args.dataset is not None:
        set_dataset(args.dataset)
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
    if paths is not None:
        use_dataset(dataset_from_annotations(paths, splits), source=paths.train_info,
                    say=print if info.is_main else None)
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
    """SGD as the original (cfg.optimizer 'sgd'), or AdamW ('adamw', for training from scratch)."""
    if cfg.optimizer == 'adamw':
        if next(net.parameters()).device.type in ('cpu', 'cuda'):  # torch_npu has no fused AdamW
            return FusedAdamW(net.parameters(), lr=sched.lr, weight_decay=sched.decay)
        return torch.optim.AdamW(net.parameters(), lr=sched.lr, weight_decay=sched.decay)
    if cfg.optimizer != 'sgd':
        raise ConfigError(f"config option optimizer = {cfg.optimizer!r}: expected 'sgd' or 'adamw'")
    return torch.optim.SGD(net.parameters(), lr=sched.lr, momentum=sched.momentum, weight_decay=sched.decay)

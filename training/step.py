"""One training step: the network and its loss as one module (NetLoss, what DDP wraps) and
forward / backward / update (train_step). train.py's loop calls these once per iteration."""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from data.coco import Batch
from data.config import Config
from layers.modules import MultiBoxLoss
from training.distributed import all_ranks_agree


class NetLoss(nn.Module):
    """The network and its loss in one module, so DDP wraps both (as the original's NetLoss).

    forward(images, targets, masks, num_crowds) -> dict of scalar loss terms. With `amp_dtype` the
    network runs under torch.autocast; the loss is always computed in float32.

    Predictions that are not finite (a diverging run) give NaN loss terms without calling the
    loss, which could otherwise fail on them (BCE rejects NaN inputs); train_step then skips the
    update. The NaN terms still depend on every prediction, so backward reaches every parameter.
    """

    def __init__(self, net: nn.Module, criterion: MultiBoxLoss, amp_dtype: Optional[torch.dtype] = None):
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


def build_criterion(config: Config) -> MultiBoxLoss:
    return MultiBoxLoss(num_classes=config.num_classes, pos_threshold=config.positive_iou_threshold,
                        neg_threshold=config.negative_iou_threshold, negpos_ratio=config.ohem_negpos_ratio,
                        config=config)


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

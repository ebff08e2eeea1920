"""TensorBoard event files of a training run (train.py --tensorboard).

Global rank 0 writes them under ``<log_folder>/tensorboard/<config name>/``; a resumed run appends a
new event file to the same folder (events of iterations it trains again are dropped on display).
View them with ``tensorboard --logdir <log_folder>/tensorboard``.

Tags (the step is the iteration, counted like the JSON-lines log's ``iter``):
    loss/B, loss/C, loss/M, loss/S, ... (each loss term of a finite step), loss/total,
    train/lr, train/img_per_sec (global batch / duration of that step),
    val/box_mAP, val/mask_mAP, val/box_AP50, val/box_AP75, val/mask_AP50, val/mask_AP75,
    val/predictions (the network's detections on the first few validation images, one grid),
    val_class_box_AP/<class>, val_class_mask_AP/<class> (each class's AP; none for a class without
    ground truth), val/pr_curve and val/confusion_matrix (the plots of evaluation/report.py).

tensorboard is an optional dependency (requirements-tensorboard.txt): `check_tensorboard` tells a
missing package apart before training starts; this module itself imports without it.
"""
import contextlib
import os
import random
from typing import Any, Dict, Iterator, List, Optional, Sequence

import cv2
import numpy as np
import torch
from torch import nn

TENSORBOARD_FOLDER = 'tensorboard'
# Validation images drawn in val/predictions, and the side of each tile in pixels.
PREDICTION_IMAGES = 4
PREDICTION_TILE = 320
# The AP thresholds recorded besides the mAP ('all').
AP_THRESHOLDS = (50, 75)


class TensorBoardUnavailable(ValueError):
    """--tensorboard was asked for but the tensorboard package does not import."""


def check_tensorboard() -> None:
    """Raise TensorBoardUnavailable (one line, with the fix) unless SummaryWriter can be imported."""
    try:
        import torch.utils.tensorboard  # noqa: F401 (fails without the tensorboard package)
    except ImportError:
        raise TensorBoardUnavailable('--tensorboard needs the tensorboard package: '
                                     'pip install -r requirements-tensorboard.txt') from None


def tensorboard_folder(log_folder: str, name: str) -> str:
    """Where a run of config `name` writes its event files."""
    return os.path.join(log_folder, TENSORBOARD_FOLDER, name)


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Leave the torch (CPU and `device`), numpy and python RNG states as they were, so that
    drawing pictures between iterations cannot change what training does next."""
    np_state, py_state = np.random.get_state(), random.getstate()
    accelerator = device.type not in ('cpu', 'meta')
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else 'cuda'):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _square(img: np.ndarray) -> np.ndarray:
    """Pad an image with black to a square (top-left aligned), so tiles keep their aspect ratio."""
    h, w = img.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side) + img.shape[2:], dtype=img.dtype)
    out[:h, :w] = img
    return out


def draw_predictions(net: nn.Module, dataset, class_names: Sequence[str], count: int = PREDICTION_IMAGES,
                     amp_dtype: Optional[torch.dtype] = None) -> Optional[np.ndarray]:
    """The net's detections on the first `count` images of `dataset` (anything with `pull_image(i)`
    -> BGR uint8 and a length), tiled into one picture.

    The net is run in eval mode without gradients and left in train mode; RNG states are kept.
    Returns:
        ndarray[H, W, 3] uint8 RGB, or None when the dataset is empty.
    """
    from deploy.inference import InferenceOptions, NetRunner, render
    from deploy.visualize import image_grid

    count = min(count, len(dataset))
    if count <= 0:
        return None
    device = next(net.parameters()).device
    opts = InferenceOptions()
    tiles: List[np.ndarray] = []
    try:
        with preserved_rng(device), torch.no_grad():
            net.eval()
            predictor = NetRunner(net, device, amp=amp_dtype is not None, amp_dtype=amp_dtype)
            for index in range(count):
                # Images differ in size: one at a time (NetRunner batches same-size frames).
                frames, det_output = predictor([dataset.pull_image(index)])
                tiles.append(_square(render(frames[0], det_output, 0, class_names, opts)))
    finally:
        net.train()
    grid = image_grid(tiles, columns=count, size=PREDICTION_TILE)
    return cv2.cvtColor(grid, cv2.COLOR_BGR2RGB)


def _number(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class TensorBoardWriter:
    """A run's TensorBoard event files in `folder` (see the module docstring for the tags).

    The SummaryWriter (and the folder) is created at the first record, so a run that trains
    nothing leaves no empty event file. Records are buffered and written by SummaryWriter's
    background thread; `flush` at validation, `close` when training ends.

    Args:
        folder: where to write, e.g. tensorboard_folder(log_folder, cfg.name).
        purge_step: the iteration a resumed run starts at: TensorBoard drops the earlier files'
            events from this step on (an interrupted run's iterations that are trained again).
    """

    def __init__(self, folder: str, purge_step: Optional[int] = None):
        check_tensorboard()
        self.folder = folder
        self.purge_step = purge_step or None
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=self.folder, purge_step=self.purge_step)
        return self._writer

    def train_step(self, iteration: int, losses: Dict[str, float], total: float, lr: float,
                   img_per_sec: Optional[float] = None) -> None:
        """One training step: each loss term as loss/<key>, their sum, the lr and the speed."""
        add = self.writer.add_scalar
        for key, value in losses.items():
            add(f'loss/{key}', value, iteration)
        add('loss/total', total, iteration)
        add('train/lr', lr, iteration)
        if img_per_sec is not None:
            add('train/img_per_sec', img_per_sec, iteration)

    def validation(self, iteration: int, val_info: Optional[Dict[str, Any]]) -> None:
        """val/<box|mask>_mAP and _AP50 / _AP75, and each class's AP, from eval.validation_map's
        dict (None: no ground truth, nothing recorded)."""
        for row in (val_info or {}).get('classes') or []:
            for task in ('box', 'mask'):
                ap = _number((row.get(task) or {}).get('AP'))
                if ap is not None:
                    self.writer.add_scalar(f'val_class_{task}_AP/{row["name"]}', ap, iteration)
        for task, aps in (val_info or {}).items():
            if not isinstance(aps, dict):
                continue
            # The keys are ints in memory and strings once read back from a JSON log.
            by_key = {str(k): v for k, v in aps.items()}
            names = [('all', f'val/{task}_mAP')] + [(str(t), f'val/{task}_AP{t}') for t in AP_THRESHOLDS]
            for key, tag in names:
                value = _number(by_key.get(key))
                if value is not None:
                    self.writer.add_scalar(tag, value, iteration)

    def image(self, tag: str, image: np.ndarray, iteration: int) -> None:
        """image (ndarray[H, W, 3] uint8 RGB)."""
        self.writer.add_image(tag, image, iteration, dataformats='HWC')

    def plots(self, folder: str, iteration: int) -> None:
        """val/pr_curve and val/confusion_matrix: the PNGs a validation wrote to `folder`."""
        from evaluation.report import CONFUSION_FILE, PR_CURVE_FILE
        for name, tag in ((PR_CURVE_FILE, 'val/pr_curve'), (CONFUSION_FILE, 'val/confusion_matrix')):
            picture = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
            if picture is not None:
                self.image(tag, cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), iteration)

    def predictions(self, net: nn.Module, dataset, iteration: int, class_names: Sequence[str],
                    amp_dtype: Optional[torch.dtype] = None, count: int = PREDICTION_IMAGES) -> None:
        """val/predictions: `draw_predictions` of the net on `dataset`, then flush."""
        grid = draw_predictions(net, dataset, class_names, count, amp_dtype)
        if grid is not None:
            self.image('val/predictions', grid, iteration)
        self.flush()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

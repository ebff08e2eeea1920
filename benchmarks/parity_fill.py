"""Deterministic, name-seeded weights for the parity test against the original YOLACT.

The parity reference data in tests/data/parity/ was recorded by loading weights made with
`fill_state_dict` into the original implementation (dbolya/yolact@57b8f2d). The test fills the
port's state_dict with the same function, so both networks hold identical weights without any
weight file being shipped: every tensor depends only on its key name and shape.

Random numbers come from numpy's legacy `RandomState` (seeded with the CRC-32 of the key name),
whose streams numpy guarantees never to change, so the weights are the same on any platform and
version. Values are drawn uniformly and scaled so that ResNet/DarkNet activations stay of order
one with batch norm in inference mode (see `_residual_gain`).

The module also builds the test's other inputs without random numbers: `make_input` (the image
batch) and `make_targets` (boxes, crowd annotations and masks for the loss).
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import Tensor

# Extra gains on the output convs, so the recorded outputs are in a useful, unsaturated range:
# - conf_layer: this sets the spread of the class logits, which decides whether anything is
#   detected. Too small and every softmax score is about 1/81, under Detect's 0.05 threshold, so
#   nothing is detected; too large (plain He scaling gives logits of std ~5) and scores saturate
#   at 1.0 and tie. x0.2 gives logits of std ~2: scores spread across the threshold, unsaturated,
#   and the recorded detections sit well clear of ties (see tests/data/parity/README.md).
# - bbox_layer: small box offsets, so decoded boxes stay near their priors (NMS has overlaps).
# - mask_layer / proto_net.10 (last proto conv): mask logits of order one (tanh/sigmoid unsaturated).
# - semantic_seg_conv: logits of order one for the segmentation loss.
OUTPUT_GAINS = {
    "prediction_layers.0.conf_layer.weight": 0.2,
    "prediction_layers.0.bbox_layer.weight": 0.1,
    "prediction_layers.0.mask_layer.weight": 0.2,
    "proto_net.10.weight": 0.3,
    "semantic_seg_conv.weight": 0.3,
}

# DCN offset/mask convs: keep sampling offsets within about a pixel so deformable sampling stays
# well conditioned (large offsets make bilinear sampling sensitive to rounding).
OFFSET_GAIN = 0.1


def _uniform(name: str, shape: list[int], low: float, high: float) -> Tensor:
    """Uniform draw in [low, high) from a RandomState seeded by the CRC-32 of `name`."""
    rng = np.random.RandomState(zlib.crc32(name.encode("utf-8")))
    values = rng.random_sample(int(np.prod(shape, dtype=np.int64)))
    values = low + (high - low) * values
    return torch.from_numpy(values.astype(np.float32)).reshape(shape)


def _is_norm_param(shape: list[int]) -> bool:
    """In YOLACT's state_dicts every 1-D `weight` belongs to a normalisation layer."""
    return len(shape) == 1


def _residual_gain(name: str) -> float:
    """Scale of the last norm layer in a residual branch.

    With BN in inference mode (running stats near 0/1) nothing renormalises activations, so each
    residual block adds its branch's variance to the trunk. Damping the last BN of every branch
    (ResNet `bn3`, DarkNet's second conv of a block) keeps the trunk variance bounded over the
    33 blocks of ResNet-101.
    """
    if name.startswith("backbone.layers.") and name.endswith("bn3.weight"):
        return 0.2
    if name.startswith("backbone.layers.") and name.endswith("conv2.1.weight"):
        return 0.2
    return 1.0


def fill_tensor(name: str, shape: list[int], dtype: torch.dtype) -> Tensor:
    """Deterministic value for one state_dict entry, from its key `name` and `shape` only."""
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=dtype)
    if not dtype.is_floating_point:
        raise ValueError(f"expected a floating tensor for {name!r}, got {dtype}")

    if name.endswith("running_mean"):
        out = _uniform(name, shape, -0.05, 0.05)
    elif name.endswith("running_var"):
        out = _uniform(name, shape, 0.8, 1.2)
    elif name.endswith("bias"):
        out = _uniform(name, shape, -0.05, 0.05)
    elif name.endswith("weight") and _is_norm_param(shape):
        gain = _residual_gain(name)
        out = _uniform(name, shape, 0.8 * gain, 1.2 * gain)
    elif name.endswith("weight") and len(shape) >= 2:
        # He-uniform: std sqrt(2 / fan_in), i.e. bound sqrt(6 / fan_in).
        fan_in = int(np.prod(shape[1:]))
        bound = math.sqrt(6.0 / fan_in)
        if "conv_offset_mask" in name:
            bound *= OFFSET_GAIN
        out = _uniform(name, shape, -bound, bound)
        out = out * OUTPUT_GAINS.get(name, 1.0)
    else:
        # Any other parameter or buffer: small values around zero.
        out = _uniform(name, shape, -0.05, 0.05)
    return out.to(dtype)


def fill_state_dict(shapes: dict[str, tuple[list[int], torch.dtype]]) -> dict[str, Tensor]:
    """Fill every entry of a state_dict description deterministically.

    Args:
        shapes: key name -> (shape, dtype), e.g. from
            `{k: (list(v.shape), v.dtype) for k, v in net.state_dict().items()}`.

    Returns:
        key name -> tensor of that shape and dtype, suitable for `load_state_dict`.
    """
    return {name: fill_tensor(name, list(shape), dtype) for name, (shape, dtype) in shapes.items()}


def make_input(batch: int, height: int, width: int) -> Tensor:
    """Deterministic stand-in for a normalised image batch, without random numbers.

    Smooth gratings plus a few Gaussian blobs, different per image and channel, roughly zero mean
    and unit variance like a BGR image after YOLACT's mean/std normalisation.

    Returns:
        Tensor[batch, 3, height, width], float32.
    """
    ys = torch.arange(height, dtype=torch.float64)[:, None] / height
    xs = torch.arange(width, dtype=torch.float64)[None, :] / width
    images = torch.empty(batch, 3, height, width, dtype=torch.float64)
    for b in range(batch):
        for c in range(3):
            k = 3 * b + c + 1
            plane = torch.sin(2 * math.pi * ((2 + k % 5) * xs + (1 + k % 3) * ys) + 0.7 * k)
            plane = plane + 0.5 * torch.cos(2 * math.pi * (5.5 * xs * ys + 0.3 * k))
            for j in range(3):
                cx = 0.2 + 0.3 * ((k + 2 * j) % 3)
                cy = 0.25 + 0.25 * ((2 * k + j) % 3)
                s = 0.05 + 0.03 * j
                plane = plane + 1.5 * (-1) ** (k + j) * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s))
            images[b, c] = plane
    return images.to(torch.float32)


def ellipse_mask(box: list[float], height: int, width: int) -> Tensor:
    """Filled ellipse inscribed in `box` (x1, y1, x2, y2), relative coordinates in [0, 1].

    Returns:
        Tensor[height, width], float32 of 0/1, sampled at pixel centres.
    """
    x1, y1, x2, y2 = box
    ys = (torch.arange(height, dtype=torch.float64)[:, None] + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float64)[None, :] + 0.5) / width
    rx, ry = (x2 - x1) / 2, (y2 - y1) / 2
    inside = ((xs - (x1 + x2) / 2) / rx) ** 2 + ((ys - (y1 + y2) / 2) / ry) ** 2 <= 1.0
    return inside.to(torch.float32)


# Ground truth for the loss check: per image, rows (x1, y1, x2, y2, class index 0..79) in relative
# coordinates; crowd annotations come last, as in the original's COCO loader.
PARITY_TARGETS: list[list[list[float]]] = [
    [
        [0.10, 0.15, 0.42, 0.50, 0.0],
        [0.55, 0.20, 0.80, 0.45, 17.0],
        [0.30, 0.55, 0.95, 0.97, 56.0],
        [0.02, 0.50, 0.40, 0.98, 0.0],  # crowd
    ],
    [
        [0.20, 0.10, 0.70, 0.60, 2.0],
        [0.05, 0.65, 0.30, 0.90, 79.0],
        [0.62, 0.58, 0.90, 0.94, 2.0],
    ],
]
PARITY_NUM_CROWDS: list[int] = [1, 0]


def make_targets(height: int, width: int) -> tuple[list[Tensor], list[Tensor], list[int]]:
    """Targets, masks and crowd counts for a batch of two images of size (height, width).

    Returns:
        targets: per image Tensor[n, 5] (x1, y1, x2, y2, class) relative coordinates,
        masks: per image Tensor[n, height, width] of 0/1 (an ellipse in each box),
        num_crowds: per image number of crowd rows at the end of targets/masks.
    """
    targets = [torch.tensor(rows, dtype=torch.float32) for rows in PARITY_TARGETS]
    masks = [torch.stack([ellipse_mask(row[:4], height, width) for row in rows]) for rows in PARITY_TARGETS]
    return targets, masks, list(PARITY_NUM_CROWDS)

"""Turn `Detect`'s output into image-space results: pixel boxes and full-size binary masks.

Also `undo_image_transformation`, which maps a network input tensor back to a displayable image,
and `prototype_mosaic`, which lays the mask prototypes out as one.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data.config import MEANS, STD, Config, mask_type, own_config
from layers.box_utils import crop, sanitize_coordinates

# F.interpolate only accepts align_corners for these modes.
_ALIGNABLE_MODES = ('linear', 'bilinear', 'bicubic', 'trilinear')


def _empty_result(h: int, w: int, device: torch.device) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Zero detections, shaped like a non-empty result so callers need no special case."""
    return (torch.zeros(0, dtype=torch.long, device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, 4, dtype=torch.long, device=device),
            torch.zeros(0, h, w, device=device))


def _device_of(net) -> torch.device:
    """Where results for an image without detections should live: the network's device if known."""
    try:
        return next(net.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device('cpu')


def _maskiou_scores(net, masks: Tensor, classes: Tensor) -> Tensor:
    """YOLACT++ predicted mask IoU of each mask for its own class.

    Args:
        net: a network with a ``maskiou_net`` taking Tensor[N, 1, H, W] to Tensor[N, C].
        masks (Tensor[N, H, W]): cropped soft masks at prototype resolution.
        classes (Tensor[N]) int64 foreground class indices.
    Returns:
        Tensor[N]
    """
    with torch.no_grad():
        per_class = net.maskiou_net(masks.unsqueeze(1))
    return per_class.gather(1, classes[:, None]).squeeze(1)


def upsample_binary_masks(masks: Tensor, h: int, w: int, mode: str = 'bilinear',
                          threshold: float = 0.5) -> Tensor:
    """F.interpolate(masks, (h, w), mode, align_corners=False) > threshold, as 0/1 in masks' dtype.

    Args:
        masks (Tensor[D, H, W]): soft masks at prototype resolution, usually cropped to their boxes.
    Returns:
        Tensor[D, h, w]
    On the CPU, bilinear masks that are zero outside small windows (cropped masks) are upsampled
    window by window: an output pixel whose source pixels are all zero is zero, so only each
    mask's nonzero rows and columns, plus the one-pixel reach of the interpolation, are computed,
    with F.interpolate's own source indices and weights (float32 results are identical). The
    full-size interpolation over 100 masks is otherwise the slowest step of CPU inference after
    the network.
    """
    if mode == 'bilinear' and masks.device.type == 'cpu' and masks.shape[0] > 0:
        taps = (_linear_taps(masks.shape[1], h), _linear_taps(masks.shape[2], w))
        windows = _nonzero_windows(masks, taps)
        area = sum((y2 - y1) * (x2 - x1) for y1, y2, x1, x2 in windows)
        # Past about half the full size, one interpolation over everything is faster.
        if area <= 0.5 * masks.shape[0] * h * w:
            return _upsample_windows(masks, h, w, taps, windows, threshold)
    align = False if mode in _ALIGNABLE_MODES else None
    masks = F.interpolate(masks.unsqueeze(0), (h, w), mode=mode, align_corners=align).squeeze(0)
    # In place: the full-size masks are the largest tensors of inference (100 x h x w floats);
    # a second copy would double the peak memory and the memory traffic.
    return masks.gt_(threshold)


Taps = Tuple[Tensor, Tensor, Tensor, Tensor]  # first / second source index, their weights


def _linear_taps(n_in: int, n_out: int) -> Taps:
    """Linear resizing n_in -> n_out (align_corners=False) as F.interpolate computes it: for each
    output index its two source indices and their weights."""
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)
    first = src.long()
    second = torch.clamp(first + 1, max=n_in - 1)
    weight_second = src - first
    return first, second, 1 - weight_second, weight_second


def _nonzero_windows(masks: Tensor, taps: Tuple[Taps, Taps]) -> List[Tuple[int, int, int, int]]:
    """Per mask, the output rows [y1, y2) and columns [x1, x2) that interpolation from its
    nonzero source pixels reaches ((0, 0, 0, 0) for an all-zero mask). taps: the (y, x)
    `_linear_taps`."""
    nonzero = masks != 0
    bounds = []
    for lines, n_in, (first_src, second_src, _, _) in ((nonzero.any(2), masks.shape[1], taps[0]),
                                                       (nonzero.any(1), masks.shape[2], taps[1])):
        lo = lines.int().argmax(1)
        hi = n_in - 1 - lines.flip(1).int().argmax(1)
        # Output i reads source pixels first_src[i] <= second_src[i]; both are nondecreasing in i.
        start = torch.searchsorted(second_src, lo)
        end = torch.searchsorted(first_src, hi, right=True)
        empty = ~lines.any(1)
        bounds += [start.masked_fill(empty, 0).tolist(), end.masked_fill(empty, 0).tolist()]
    return list(zip(*bounds))


def _upsample_windows(masks: Tensor, h: int, w: int, taps: Tuple[Taps, Taps],
                      windows: List[Tuple[int, int, int, int]], threshold: float) -> Tensor:
    (y_first, y_second, y_w1, y_w2), (x_first, x_second, x_w1, x_w2) = taps
    out = torch.zeros(masks.shape[0], h, w, dtype=masks.dtype)
    for i, (y1, y2, x1, x2) in enumerate(windows):
        if y1 == y2 or x1 == x2:
            continue
        src = masks[i].float()
        # Along x, then along y: the order (and float32 arithmetic) of F.interpolate's CPU kernel.
        along_x = src[:, x_first[x1:x2]] * x_w1[x1:x2] + src[:, x_second[x1:x2]] * x_w2[x1:x2]
        window = (along_x[y_first[y1:y2]] * y_w1[y1:y2, None]
                  + along_x[y_second[y1:y2]] * y_w2[y1:y2, None])
        out[i, y1:y2, x1:x2] = window.to(masks.dtype) > threshold
    return out


def postprocess(det_output: List[Dict], w: int, h: int, batch_idx: int = 0,
                interpolation_mode: str = 'bilinear', visualize_lincomb: bool = False,
                crop_masks: bool = True, score_threshold: float = 0,
                config: Optional[Config] = None) -> Tuple[Tensor, Union[Tensor, List[Tensor]], Tensor, Tensor]:
    """Detections of one image in pixel coordinates with full-size masks.

    Args:
        det_output: what `Detect` returns (one ``{'detection': ..., 'net': ...}`` per image).
        w, h: size in pixels of the image the results are for.
        batch_idx: which image of the batch.
        interpolation_mode: F.interpolate mode used to upsample masks from prototype resolution.
        visualize_lincomb: also show the image's prototypes in a window (the original's switch,
            eval.py --display_lincomb).
        crop_masks: zero each mask outside its box (at prototype resolution, before upsampling).
        score_threshold: drop detections scoring at or below this before any mask work.
        config: the settings below (``cfg.*``); by default the config of the network that made the
            detections (``det_output[batch_idx]['net'].config``).
    Returns:
        classes (Tensor[D] int64), foreground class indices;
        scores (Tensor[D]); with YOLACT++ (``cfg.use_maskiou``) and ``cfg.rescore_mask``, the box
            score times the predicted mask IoU if ``cfg.rescore_bbox``, otherwise the list
            ``[box scores, rescored mask scores]`` as the original returns;
        boxes (Tensor[D, 4] int64) in pixel (x1, y1, x2, y2), clamped to the image;
        masks (Tensor[D, h, w]) of 0.0 / 1.0 when the mask branch runs (``cfg.eval_mask_branch``),
            otherwise Detect's raw mask coefficients.
    The input detections are not modified.
    """
    entry = det_output[batch_idx]
    net = entry.get('net')
    dets = entry['detection']
    if dets is None:
        return _empty_result(h, w, _device_of(net))

    classes, boxes, scores, coeffs = dets['class'], dets['box'], dets['score'], dets['mask']
    if score_threshold > 0:
        keep = scores > score_threshold
        classes, boxes, scores, coeffs = classes[keep], boxes[keep], scores[keep], coeffs[keep]
        if scores.shape[0] == 0:
            return _empty_result(h, w, scores.device)

    cfg = config if config is not None else getattr(net, 'config', None)
    if cfg is None:
        raise ValueError("postprocess needs a config: pass config=..., or detections of a network "
                         "that has one (Yolact.config)")
    masks = coeffs
    if cfg.eval_mask_branch:
        if cfg.mask_type != mask_type.lincomb:
            raise ValueError(f"postprocess only supports cfg.mask_type == mask_type.lincomb "
                             f"({mask_type.lincomb}), got {cfg.mask_type}")
        if visualize_lincomb:
            cv2.imshow('prototypes', prototype_mosaic(dets['proto']))
        # Assemble each mask from the prototypes: [H, W, M] @ [M, D] -> [H, W, D]
        masks = cfg.mask_proto_mask_activation(dets['proto'] @ coeffs.t())
        if crop_masks:
            masks = crop(masks, boxes)
        masks = masks.permute(2, 0, 1).contiguous()  # [D, H, W]

        if cfg.use_maskiou and cfg.rescore_mask:
            mask_scores = scores * _maskiou_scores(net, masks, classes)
            scores = mask_scores if cfg.rescore_bbox else [scores, mask_scores]

        masks = upsample_binary_masks(masks, h, w, interpolation_mode)

    x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], w, cast=False)
    y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], h, cast=False)
    pixel_boxes = torch.stack((x1, y1, x2, y2), dim=1).long()

    return classes, scores, pixel_boxes, masks


def undo_image_transformation(img: Tensor, w: int, h: int, transform: Any = None) -> np.ndarray:
    """Network input back to a displayable image.

    Args:
        img (Tensor[3, H, W]): RGB image as transformed for `transform` (``cfg.backbone.transform``;
            default: the active cfg's, as the original's three-argument call).
        w, h: output size in pixels.
    Returns:
        np.ndarray[h, w, 3] float32 RGB in [0, 1].
    """
    if transform is None:
        transform = own_config().backbone.transform
    pixels = img.detach().permute(1, 2, 0).cpu().numpy().astype(np.float32)
    # MEANS and STD are listed in BGR order; the tensor is RGB.
    means = np.array(MEANS[::-1], dtype=np.float32)
    std = np.array(STD[::-1], dtype=np.float32)
    if transform.normalize:
        pixels = (pixels * std + means) / 255.0
    elif transform.subtract_means:
        pixels = (pixels + means) / 255.0
    pixels = np.clip(pixels, 0, 1)
    return cv2.resize(pixels, (w, h))


def prototype_mosaic(proto: Tensor, columns: int = 8) -> np.ndarray:
    """The mask prototypes side by side, each scaled to 0..255 on its own (for --display_lincomb).

    Args:
        proto (Tensor[H, W, M]).
    Returns:
        ndarray[rows * H, columns * W] uint8, rows = ceil(M / columns).
    """
    h, w, m = proto.shape
    columns = max(1, min(columns, m))
    rows = -(-m // columns)
    p = proto.detach().float().permute(2, 0, 1)  # [M, H, W]
    low = p.flatten(1).min(dim=1).values[:, None, None]
    high = p.flatten(1).max(dim=1).values[:, None, None]
    p = (p - low) / (high - low).clamp(min=1e-6)
    grid = torch.zeros(rows * columns, h, w, dtype=p.dtype, device=p.device)
    grid[:m] = p
    grid = grid.view(rows, columns, h, w).permute(0, 2, 1, 3).reshape(rows * h, columns * w)
    return (grid * 255).round().to(torch.uint8).cpu().numpy()

"""Box and mask geometry used by the loss, the detector and evaluation.

Box formats used throughout:
  * point form:  (x1, y1, x2, y2)
  * center form: (cx, cy, w, h)
Coordinates are relative to the image size (0..1) unless a function says otherwise.

Everything here is a plain function over tensors: no global config is read, and device and
dtype always follow the inputs.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torchvision.ops import box_iou

# SSD-style variances for the (center, size) parts of the box regression. They are baked into
# every trained YOLACT checkpoint, so they are constants rather than options.
CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2


def point_form(boxes: Tensor) -> Tensor:
    """Convert boxes (Tensor[..., 4]) in (cx, cy, w, h) to (x1, y1, x2, y2)."""
    half = boxes[..., 2:] / 2
    return torch.cat((boxes[..., :2] - half, boxes[..., :2] + half), dim=-1)


def center_size(boxes: Tensor) -> Tensor:
    """Convert boxes (Tensor[..., 4]) in (x1, y1, x2, y2) to (cx, cy, w, h)."""
    return torch.cat(((boxes[..., 2:] + boxes[..., :2]) / 2,
                      boxes[..., 2:] - boxes[..., :2]), dim=-1)


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _coordinate_planes(boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """boxes (Tensor[n, N, 4]) -> x1, y1, x2, y2, each a contiguous Tensor[n, N].

    Pairwise kernels broadcast [n, A, 1] against [n, 1, B]; with one contiguous plane per
    coordinate every inner loop runs over contiguous memory (a trailing dimension of 4 does not
    vectorise and made the IoU matrix of Fast NMS several times slower).
    """
    planes = boxes.transpose(-1, -2).contiguous()
    return planes[:, 0], planes[:, 1], planes[:, 2], planes[:, 3]


def _pairwise_intersection(a: Tuple[Tensor, ...], b: Tuple[Tensor, ...]) -> Tensor:
    """Intersection areas Tensor[n, A, B] from the coordinate planes of two box sets.

    Same arithmetic, in the same order, as (min(x2) - max(x1)).clamp(0) * (min(y2) - max(y1)).clamp(0),
    so the values are bit-identical to the straightforward formula.
    """
    ax1, ay1, ax2, ay2 = (t[:, :, None] for t in a)
    bx1, by1, bx2, by2 = (t[:, None, :] for t in b)
    width = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)
    height = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0)
    return width.mul_(height)


def intersect(box_a: Tensor, box_b: Tensor) -> Tensor:
    """Pairwise intersection areas.

    Args:
        box_a (Tensor[n, A, 4]) in (x1, y1, x2, y2)
        box_b (Tensor[n, B, 4]) in (x1, y1, x2, y2)
    Returns:
        Tensor[n, A, B]: intersection area of every (a, b) pair within each batch entry.
    """
    return _pairwise_intersection(_coordinate_planes(box_a), _coordinate_planes(box_b))


def jaccard(box_a: Tensor, box_b: Tensor, iscrowd: bool = False) -> Tensor:
    """Pairwise IoU between two sets of boxes.

    Args:
        box_a (Tensor[A, 4] or Tensor[n, A, 4]) in (x1, y1, x2, y2)
        box_b (Tensor[B, 4] or Tensor[n, B, 4]) in (x1, y1, x2, y2)
        iscrowd: if True, return intersection / area(box_a) instead of IoU. This is how a box in
            box_a is measured against crowd regions, which are expected in box_b.
    Returns:
        Tensor[A, B] (or Tensor[n, A, B] for batched input).
    """
    if box_a.dim() != box_b.dim() or box_a.dim() not in (2, 3):
        raise ValueError(f"jaccard expects two [N, 4] or two [n, N, 4] tensors, got shapes "
                         f"{tuple(box_a.shape)} and {tuple(box_b.shape)}")
    if box_a.dim() == 2 and not iscrowd:
        return box_iou(box_a, box_b)

    batched = box_a.dim() == 3
    if not batched:
        box_a, box_b = box_a[None], box_b[None]
    a = _coordinate_planes(box_a)
    b = _coordinate_planes(box_b)
    inter = _pairwise_intersection(a, b)
    area_a = ((a[2] - a[0]) * (a[3] - a[1]))[:, :, None]
    if iscrowd:
        out = inter.div_(area_a)
    else:
        area_b = ((b[2] - b[0]) * (b[3] - b[1]))[:, None, :]
        union = (area_a + area_b).sub_(inter)
        out = inter.div_(union)
    return out if batched else out[0]


def elemwise_box_iou(box_a: Tensor, box_b: Tensor) -> Tensor:
    """IoU of box_a[i] with box_b[i].

    Args:
        box_a, box_b (Tensor[N, 4]) in (x1, y1, x2, y2)
    Returns:
        Tensor[N] in [0, 1]; the union is floored at 0.1 so degenerate boxes do not divide by 0.
    """
    wh = (torch.min(box_a[:, 2:], box_b[:, 2:]) - torch.max(box_a[:, :2], box_b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (_box_area(box_a) + _box_area(box_b) - inter).clamp(min=0.1)
    return (inter / union).clamp(max=1)


def mask_iou(masks_a: Tensor, masks_b: Tensor, iscrowd: bool = False) -> Tensor:
    """Pairwise IoU between two sets of (binary or soft) masks.

    Args:
        masks_a (Tensor[A, H, W]), masks_b (Tensor[B, H, W])
        iscrowd: if True, divide the intersection by the area of masks_a only.
    Returns:
        Tensor[A, B]
    """
    flat_a = masks_a.reshape(masks_a.size(0), -1)
    flat_b = masks_b.reshape(masks_b.size(0), -1)
    inter = flat_a @ flat_b.t()
    area_a = flat_a.sum(dim=1)[:, None]
    if iscrowd:
        return inter / area_a
    area_b = flat_b.sum(dim=1)[None, :]
    return inter / (area_a + area_b - inter)


def elemwise_mask_iou(masks_a: Tensor, masks_b: Tensor) -> Tensor:
    """IoU of masks_a[..., i] with masks_b[..., i].

    Args:
        masks_a, masks_b (Tensor[H, W, N])
    Returns:
        Tensor[N] in [0, 1]; the union is floored at 0.1.
    """
    flat_a = masks_a.reshape(-1, masks_a.size(-1))
    flat_b = masks_b.reshape(-1, masks_b.size(-1))
    inter = (flat_a * flat_b).sum(dim=0)
    union = (flat_a.sum(dim=0) + flat_b.sum(dim=0) - inter).clamp(min=0.1)
    return (inter / union).clamp(max=1)


def change(gt: Tensor, priors: Tensor) -> Tensor:
    """Negative d_change distance of Box2Pix (Uhrig et al. 2018), a drop-in for IoU in matching.

    Args:
        gt (Tensor[G, 4]) in (x1, y1, x2, y2)
        priors (Tensor[P, 4]) in (x1, y1, x2, y2)
    Returns:
        Tensor[G, P]: -sqrt(sum of squared corner offsets, each scaled by the gt width or height).
        Negated so that larger means a better match, like IoU.
    """
    gt_w = gt[:, 2] - gt[:, 0]
    gt_h = gt[:, 3] - gt[:, 1]
    scale = torch.stack((gt_w, gt_h, gt_w, gt_h), dim=1)[:, None, :]
    diff = (gt[:, None, :] - priors[None, :, :]) / scale
    return -diff.pow(2).sum(dim=2).sqrt()


def encode(matched: Tensor, priors: Tensor) -> Tensor:
    """Encode ground-truth boxes as the regression targets the network predicts.

    Args:
        matched (Tensor[P, 4]) in (x1, y1, x2, y2): the gt box assigned to each prior.
        priors (Tensor[P, 4]) in (cx, cy, w, h)
    Returns:
        Tensor[P, 4]: ((cx - pcx) / (0.1 pw), (cy - pcy) / (0.1 ph), log(w / pw) / 0.2,
        log(h / ph) / 0.2). decode() inverts it.
    """
    center = (matched[..., :2] + matched[..., 2:]) / 2 - priors[..., :2]
    center = center / (CENTER_VARIANCE * priors[..., 2:])
    size = (matched[..., 2:] - matched[..., :2]) / priors[..., 2:]
    size = torch.log(size) / SIZE_VARIANCE
    return torch.cat((center, size), dim=-1)


def decode(loc: Tensor, priors: Tensor, use_yolo_regressors: bool = False) -> Tensor:
    """Turn predicted regression offsets back into boxes (inverse of encode()).

    Args:
        loc (Tensor[..., P, 4]): predicted offsets.
        priors (Tensor[P, 4]) in (cx, cy, w, h)
        use_yolo_regressors: the original's YOLOv2-style parametrisation. No released config uses
            it and it is not supported; passing True raises.
    Returns:
        Tensor[..., P, 4] in (x1, y1, x2, y2)
    """
    if use_yolo_regressors:
        raise NotImplementedError("use_yolo_regressors is not supported: only the SSD-style "
                                  "(variance 0.1 / 0.2) box encoding used by YOLACT is implemented")
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * SIZE_VARIANCE)
    top_left = priors[..., :2] + loc[..., :2] * CENTER_VARIANCE * priors[..., 2:] - wh / 2
    return torch.cat((top_left, top_left + wh), dim=-1)


def _force_best_prior_matches(overlaps: Tensor, best_truth_overlap: Tensor,
                              best_truth_idx: Tensor) -> None:
    """Give every gt the prior that overlaps it most, so no gt goes untrained.

    Greedy in order of decreasing overlap: the strongest (gt, prior) pair is fixed first, then its
    row and column are removed, and so on. Works in place on all three arguments; the loop count
    is a shape (number of gts), so nothing is read back from the device.
    """
    for _ in range(overlaps.size(0)):
        best_prior_overlap, best_prior_idx = overlaps.max(dim=1)
        j = best_prior_overlap.max(dim=0)[1]
        i = best_prior_idx[j]
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_truth_overlap[i] = 2  # above any threshold: always positive
        best_truth_idx[i] = j


def match(pos_thresh: float, neg_thresh: float, truths: Tensor, priors: Tensor, labels: Tensor,
          crowd_boxes: Optional[Tensor] = None, crowd_iou_threshold: float = 1.0
          ) -> Tuple[Tensor, Tensor, Tensor]:
    """Assign a ground-truth box (or background) to every prior.

    Each prior takes the gt it overlaps most; additionally each gt claims its best prior (see
    _force_best_prior_matches). A prior is positive if its IoU >= pos_thresh, background if
    IoU < neg_thresh, and neutral in between. Non-positive priors that lie inside a crowd region
    by more than crowd_iou_threshold (intersection over prior area) are made neutral.

    Args:
        truths (Tensor[G, 4]) in (x1, y1, x2, y2): non-crowd gt boxes.
        priors (Tensor[P, 4]) in (cx, cy, w, h)
        labels (Tensor[G]) int64: class index of each gt, 0-based (without background).
        crowd_boxes (Tensor[C, 4] or None) in (x1, y1, x2, y2)
        crowd_iou_threshold: crowd suppression is off when >= 1.
    Returns:
        loc_t (Tensor[P, 4]): encode()d matched gt boxes.
        conf_t (Tensor[P]) int64: label + 1 for positives, 0 background, -1 neutral.
        idx_t (Tensor[P]) int64: index of the matched gt of each prior.
        When G == 0 every prior is background (or neutral under a crowd), loc_t is zero and
        idx_t is zero.
    """
    num_priors = priors.size(0)
    prior_boxes = point_form(priors)

    if truths.size(0) == 0:
        loc_t = priors.new_zeros(num_priors, 4)
        conf_t = torch.zeros(num_priors, dtype=torch.long, device=priors.device)
        idx_t = torch.zeros(num_priors, dtype=torch.long, device=priors.device)
    else:
        overlaps = jaccard(truths, prior_boxes)  # [G, P]
        best_truth_overlap, idx_t = overlaps.max(dim=0)
        _force_best_prior_matches(overlaps, best_truth_overlap, idx_t)

        conf_t = labels[idx_t].long() + 1
        conf_t = torch.where(best_truth_overlap < pos_thresh, torch.full_like(conf_t, -1), conf_t)
        conf_t = torch.where(best_truth_overlap < neg_thresh, torch.zeros_like(conf_t), conf_t)
        loc_t = encode(truths[idx_t], priors)

    if crowd_boxes is not None and crowd_boxes.size(0) > 0 and crowd_iou_threshold < 1:
        crowd_overlap = jaccard(prior_boxes, crowd_boxes, iscrowd=True).max(dim=1)[0]  # [P]
        in_crowd = (conf_t <= 0) & (crowd_overlap > crowd_iou_threshold)
        conf_t = torch.where(in_crowd, torch.full_like(conf_t, -1), conf_t)

    return loc_t, conf_t, idx_t


def sanitize_coordinates(_x1: Tensor, _x2: Tensor, img_size: int, padding: int = 0,
                         cast: bool = True) -> Tuple[Tensor, Tensor]:
    """Scale relative coordinates to pixels and make them a valid, ordered, in-image interval.

    Args:
        _x1, _x2 (Tensor[N]): relative coordinates of one axis (either order).
        img_size: image size along that axis, in pixels.
        padding: pixels to grow the interval by on each side.
        cast: truncate to int64 before ordering and clamping.
    Returns:
        x1, x2 (Tensor[N]) with 0 <= x1 <= x2 <= img_size.
    """
    _x1 = _x1 * img_size
    _x2 = _x2 * img_size
    if cast:
        _x1 = _x1.long()
        _x2 = _x2.long()
    x1 = torch.min(_x1, _x2)
    x2 = torch.max(_x1, _x2)
    return (x1 - padding).clamp(min=0), (x2 + padding).clamp(max=img_size)


def crop(masks: Tensor, boxes: Tensor, padding: int = 1) -> Tensor:
    """Zero every mask outside its box.

    Args:
        masks (Tensor[H, W, N])
        boxes (Tensor[N, 4]) in relative (x1, y1, x2, y2)
        padding: pixels the box is grown by on each side before cropping.
    Returns:
        Tensor[H, W, N], masks with pixels whose index lies outside [x1, x2) x [y1, y2) zeroed.
    """
    if masks.dim() != 3 or boxes.dim() != 2 or masks.size(2) != boxes.size(0):
        raise ValueError(f"crop expects masks [H, W, N] and boxes [N, 4], got shapes "
                         f"{tuple(masks.shape)} and {tuple(boxes.shape)}")
    h, w, _ = masks.shape
    x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], w, padding, cast=False)
    y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], h, padding, cast=False)

    xs = torch.arange(w, device=masks.device, dtype=x1.dtype)[None, :, None]
    ys = torch.arange(h, device=masks.device, dtype=y1.dtype)[:, None, None]
    # Separable: a [1, W, N] column test times an [H, 1, N] row test, one full-size product.
    cols = ((xs >= x1) & (xs < x2)).to(masks.dtype)
    rows = ((ys >= y1) & (ys < y2)).to(masks.dtype)
    return masks * (rows * cols)

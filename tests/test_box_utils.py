import math

import pytest
import torch

from layers.box_utils import (
    center_size,
    change,
    crop,
    decode,
    elemwise_box_iou,
    elemwise_mask_iou,
    encode,
    intersect,
    jaccard,
    mask_iou,
    match,
    point_form,
    sanitize_coordinates,
)
from layers.interpolate import InterpolateModule


def test_point_form_center_size_hand_values():
    center = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    point = torch.tensor([[0.4, 0.3, 0.6, 0.7]])
    assert torch.allclose(point_form(center), point)
    assert torch.allclose(center_size(point), center)


def test_jaccard_known_boxes():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0],   # inter 1, union 7
                      [0.0, 0.0, 1.0, 2.0],   # inter 2, union 4
                      [5.0, 5.0, 6.0, 6.0]])  # disjoint
    iou = jaccard(a, b)
    assert iou.shape == (1, 3)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.5, 0.0]]))
    # Crowd form divides by the area of box_a (4) only.
    assert torch.allclose(jaccard(a, b, iscrowd=True), torch.tensor([[0.25, 0.5, 0.0]]))
    # Batched form gives the same per batch entry.
    batched = jaccard(a[None].repeat(2, 1, 1), b[None].repeat(2, 1, 1))
    assert batched.shape == (2, 1, 3)
    assert torch.allclose(batched[1], iou)
    assert torch.allclose(intersect(a[None], b[None])[0], torch.tensor([[1.0, 2.0, 0.0]]))


def test_jaccard_rejects_mismatched_ranks():
    with pytest.raises(ValueError, match="jaccard expects"):
        jaccard(torch.zeros(2, 4), torch.zeros(1, 2, 4))


def test_elemwise_box_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.1, 0.1]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.1, 0.1]])
    # Second pair: inter 0.01, union 0.01 floored to 0.1 -> 0.1.
    assert torch.allclose(elemwise_box_iou(a, b), torch.tensor([1 / 7, 0.1]))


def test_mask_iou_and_elemwise():
    m = torch.zeros(2, 4, 4)
    m[0, :2, :] = 1  # 8 pixels
    m[1, :, :2] = 1  # 8 pixels, overlap 4 with m[0]
    iou = mask_iou(m, m)
    assert torch.allclose(iou, torch.tensor([[1.0, 4 / 12], [4 / 12, 1.0]]))
    assert torch.allclose(mask_iou(m[:1], m[1:], iscrowd=True), torch.tensor([[0.5]]))
    hw_n = m.permute(1, 2, 0)
    assert torch.allclose(elemwise_mask_iou(hw_n, hw_n.flip(2)), torch.tensor([1 / 3, 1 / 3]))


def test_change_hand_value():
    gt = torch.tensor([[0.0, 0.0, 2.0, 4.0]])
    priors = torch.tensor([[0.0, 0.0, 2.0, 4.0], [1.0, 0.0, 3.0, 4.0]])
    # Second prior: x offsets 1/2 each -> sqrt(0.25 + 0.25).
    assert torch.allclose(change(gt, priors), torch.tensor([[0.0, -math.sqrt(0.5)]]))


def test_encode_hand_values_and_round_trip():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    gt = torch.tensor([[0.42, 0.34, 0.62, 0.74]])  # center (0.52, 0.54), size (0.2, 0.4)
    loc = encode(gt, priors)
    assert torch.allclose(loc, torch.tensor([[0.02 / 0.02, 0.04 / 0.04, 0.0, 0.0]]), atol=1e-5)
    assert torch.allclose(decode(loc, priors), gt, atol=1e-6)

    g = torch.Generator().manual_seed(0)
    priors = torch.cat((torch.rand(50, 2, generator=g), torch.rand(50, 2, generator=g) * 0.5 + 0.05), 1)
    offsets = torch.randn(50, 4, generator=g)
    boxes = decode(offsets, priors)
    assert torch.allclose(encode(boxes, priors), offsets, atol=1e-4)
    # A batched loc broadcasts against the priors.
    assert torch.allclose(decode(offsets[None].repeat(3, 1, 1), priors)[2], boxes)


def test_decode_keeps_dtype_and_rejects_yolo():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]], dtype=torch.float64)
    assert decode(torch.zeros(1, 4, dtype=torch.float64), priors).dtype == torch.float64
    with pytest.raises(NotImplementedError):
        decode(torch.zeros(1, 4), priors.float(), use_yolo_regressors=True)


def test_sanitize_coordinates():
    x1, x2 = sanitize_coordinates(torch.tensor([0.5, -0.1]), torch.tensor([0.25, 1.2]), 10, padding=1)
    assert x1.tolist() == [1, 0] and x2.tolist() == [6, 10]
    assert x1.dtype == torch.long
    x1, x2 = sanitize_coordinates(torch.tensor([0.55]), torch.tensor([0.25]), 10, cast=False)
    assert torch.allclose(x1, torch.tensor([2.5])) and torch.allclose(x2, torch.tensor([5.5]))


def test_crop_known_mask():
    masks = torch.ones(6, 8, 2)
    boxes = torch.tensor([[0.25, 0.5, 0.5, 1.0],    # x in [2, 4), y in [3, 6)
                          [0.0, 0.0, 1.0, 1.0]])
    out = crop(masks, boxes, padding=0)
    expected = torch.zeros(6, 8)
    expected[3:6, 2:4] = 1
    assert torch.equal(out[:, :, 0], expected)
    assert torch.equal(out[:, :, 1], torch.ones(6, 8))
    # Default padding of 1 grows the box by one pixel each side (clamped to the image).
    expected_pad = torch.zeros(6, 8)
    expected_pad[2:6, 1:5] = 1
    assert torch.equal(crop(masks, boxes)[:, :, 0], expected_pad)
    with pytest.raises(ValueError):
        crop(masks, boxes[:1])


def _priors_from_points(boxes):
    return center_size(torch.tensor(boxes, dtype=torch.float32))


def test_match_thresholds_and_forced_best_prior():
    priors = _priors_from_points([
        [0.0, 0.0, 0.5, 0.5],   # 0: IoU 1 with gt0 -> positive, label 3+1
        [0.0, 0.0, 0.5, 0.4],   # 1: IoU 0.8 with gt0 -> positive
        [0.0, 0.0, 0.5, 0.225],  # 2: IoU 0.45 with gt0 -> neutral (between 0.4 and 0.5)
        [0.6, 0.6, 1.0, 1.0],   # 3: IoU 0.25 with gt1 -> below neg, but gt1's best prior: forced
        [0.0, 0.9, 0.1, 1.0],   # 4: no overlap -> background
    ])
    truths = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.8, 0.8]])
    labels = torch.tensor([3, 7])
    loc_t, conf_t, idx_t = match(0.5, 0.4, truths, priors, labels)
    assert conf_t.tolist() == [4, 4, -1, 8, 0]
    assert idx_t[:4].tolist() == [0, 0, 0, 1]
    assert conf_t.dtype == torch.long and loc_t.shape == (5, 4)
    assert torch.allclose(loc_t[3], encode(truths[1:], priors[3:4])[0])
    assert torch.allclose(loc_t[0], torch.zeros(4), atol=1e-6)


def test_match_forced_match_resolves_conflict_greedily():
    # Both gts overlap prior 0 most; gt0 (IoU 1) wins it, gt1 falls back to its next best prior 1.
    priors = _priors_from_points([[0.0, 0.0, 0.4, 0.4], [0.2, 0.0, 0.6, 0.4], [0.8, 0.8, 1.0, 1.0]])
    truths = torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.45, 0.4]])
    loc_t, conf_t, idx_t = match(0.95, 0.9, truths, priors, torch.tensor([0, 1]))
    assert idx_t[:2].tolist() == [0, 1]
    assert conf_t.tolist() == [1, 2, 0]


def test_match_crowd_makes_negatives_neutral():
    priors = _priors_from_points([
        [0.0, 0.0, 0.2, 0.2],  # positive for the gt; a crowd never demotes positives
        [0.6, 0.6, 0.8, 0.8],  # fully inside the crowd -> neutral
        [0.5, 0.5, 0.9, 0.7],  # 0.66 of it inside the crowd (below 0.7) -> stays background
    ])
    truths = torch.tensor([[0.0, 0.0, 0.2, 0.2]])
    crowd = torch.tensor([[0.55, 0.55, 1.0, 1.0]])
    _, conf_t, _ = match(0.5, 0.4, truths, priors, torch.tensor([2]), crowd, 0.7)
    assert conf_t.tolist() == [3, -1, 0]
    # A threshold of 1 disables crowd handling.
    _, conf_t, _ = match(0.5, 0.4, truths, priors, torch.tensor([2]), crowd, 1.0)
    assert conf_t.tolist() == [3, 0, 0]


def test_match_without_truths_is_all_background():
    priors = _priors_from_points([[0.0, 0.0, 0.2, 0.2], [0.6, 0.6, 0.8, 0.8]])
    loc_t, conf_t, idx_t = match(0.5, 0.4, torch.zeros(0, 4), priors, torch.zeros(0, dtype=torch.long),
                                 torch.tensor([[0.5, 0.5, 1.0, 1.0]]), 0.7)
    assert conf_t.tolist() == [0, -1]
    assert idx_t.tolist() == [0, 0] and torch.equal(loc_t, torch.zeros(2, 4))


def test_interpolate_module():
    up = InterpolateModule(scale_factor=2, mode='bilinear', align_corners=False)
    x = torch.arange(4.0).view(1, 1, 2, 2)
    assert up(x).shape == (1, 1, 4, 4)
    assert up.state_dict() == {}
    assert InterpolateModule(size=(3, 5), mode='nearest')(x).shape == (1, 1, 3, 5)
    assert torch.equal(InterpolateModule(scale_factor=2, mode='nearest')(x)[0, 0, :2, :2],
                       torch.zeros(2, 2))

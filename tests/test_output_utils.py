import copy
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data.config import MEANS, STD, activation_func, cfg, mask_type
from layers import output_utils
from layers.functions import Detect
from layers.output_utils import undo_image_transformation

REFERENCE = Path(__file__).parent / 'data' / 'detect_reference.pt'
# The detections here come from no network: postprocess gets the (monkeypatched) global config.
postprocess = partial(output_utils.postprocess, config=cfg)


@pytest.fixture(autouse=True)
def lincomb_cfg(monkeypatch):
    """The settings postprocess reads, at yolact_base's values, whatever other tests did to cfg."""
    for key, val in [('mask_type', mask_type.lincomb), ('eval_mask_branch', True),
                     ('mask_proto_mask_activation', activation_func.sigmoid),
                     ('use_maskiou', False), ('rescore_mask', False), ('rescore_bbox', False)]:
        monkeypatch.setattr(cfg, key, val)


class FakeMaskIoUNet(torch.nn.Module):
    """maskiou_net stand-in: [N, 1, H, W] -> [N, C], mean mask value times a per-class ramp.
    The same function made the reference file (see tests/data/detect_reference.md)."""

    def __init__(self, num_fg_classes: int):
        super().__init__()
        self.num_fg_classes = num_fg_classes

    def forward(self, x):
        ramp = torch.linspace(0.2, 1.0, self.num_fg_classes, dtype=x.dtype)
        return x.mean(dim=(2, 3)) * ramp[None, :]


class FakeNet(torch.nn.Module):
    def __init__(self, num_fg_classes: int):
        super().__init__()
        self.maskiou_net = FakeMaskIoUNet(num_fg_classes)


def one_proto_dets(boxes, scores, classes, proto_hw=(8, 8), coeff=10.0):
    """Detections whose soft masks are sigmoid(coeff) (~1) everywhere before cropping."""
    n = len(boxes)
    return [{'detection': {'box': torch.tensor(boxes, dtype=torch.float32),
                           'mask': torch.full((n, 1), coeff),
                           'class': torch.tensor(classes),
                           'score': torch.tensor(scores),
                           'proto': torch.ones(*proto_hw, 1)},
             'net': None}]


def test_shapes_boxes_and_cropped_masks():
    # Box (0.25, 0.25, 0.75, 0.5) on an 8 x 8 prototype grid is columns 2..5, rows 2..3; crop()
    # pads one prototype pixel: columns 1..6, rows 1..4. Upsampled x4 (bilinear, threshold 0.5)
    # that is pixels [4, 28) x [4, 20) of the 32 x 32 output, less its four corner pixels, which
    # sample 0.625 of the way into the corner prototype pixel on both axes: 0.625² < 0.5.
    dets = one_proto_dets([(0.25, 0.25, 0.75, 0.5)], [0.9], [3])
    classes, scores, boxes, masks = postprocess(dets, 32, 32)
    assert classes.tolist() == [3] and scores.tolist() == pytest.approx([0.9])
    assert boxes.dtype == torch.int64 and boxes.tolist() == [[8, 8, 24, 16]]
    assert masks.shape == (1, 32, 32)
    expected = torch.zeros(32, 32)
    expected[4:20, 4:28] = 1
    expected[[4, 4, 19, 19], [4, 27, 4, 27]] = 0
    assert torch.equal(masks[0], expected)


def test_without_crop_the_mask_fills_the_image():
    dets = one_proto_dets([(0.25, 0.25, 0.75, 0.5)], [0.9], [3])
    masks = postprocess(dets, 32, 32, crop_masks=False)[3]
    assert torch.equal(masks, torch.ones(1, 32, 32))


def test_boxes_scaled_to_pixels_and_sanitized():
    dets = one_proto_dets([(0.25, 0.25, 0.75, 0.5), (1.2, -0.1, 0.5, 0.3)], [0.9, 0.8], [0, 1])
    _, _, boxes, masks = postprocess(dets, 64, 32)
    # x scaled by 64, y by 32; the second box is reordered, clamped to the image and truncated.
    assert boxes.tolist() == [[16, 8, 48, 16], [32, 0, 64, 9]]
    assert masks.shape == (2, 32, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}


def test_score_threshold_and_input_unchanged():
    dets = one_proto_dets([(0.1, 0.1, 0.4, 0.4), (0.5, 0.5, 0.9, 0.9), (0.2, 0.6, 0.3, 0.7)],
                          [0.9, 0.5, 0.2], [2, 0, 1])
    before = copy.deepcopy(dets)
    classes, scores, boxes, masks = postprocess(dets, 20, 10, score_threshold=0.4)
    assert classes.tolist() == [2, 0]
    assert scores.tolist() == pytest.approx([0.9, 0.5])
    assert boxes.tolist() == [[2, 1, 8, 4], [10, 5, 18, 9]]
    assert masks.shape == (2, 10, 20)
    # The caller's detections are left exactly as they were (the original overwrote 'box').
    assert set(dets[0]['detection']) == set(before[0]['detection'])
    for key, val in before[0]['detection'].items():
        assert torch.equal(dets[0]['detection'][key], val)
    postprocess(dets, 20, 10)
    assert torch.equal(dets[0]['detection']['box'], before[0]['detection']['box'])


@pytest.mark.parametrize('make', ['none', 'all_below_threshold'])
def test_zero_detections(make):
    if make == 'none':
        dets, kwargs = [{'detection': None, 'net': None}], {}
    else:
        dets, kwargs = one_proto_dets([(0.1, 0.1, 0.4, 0.4)], [0.2], [0]), {'score_threshold': 0.3}
    classes, scores, boxes, masks = postprocess(dets, 20, 10, **kwargs)
    assert classes.shape == (0,) and classes.dtype == torch.int64
    assert scores.shape == (0,)
    assert boxes.shape == (0, 4)
    assert masks.shape == (0, 10, 20)


def test_batch_idx_selects_image():
    first = one_proto_dets([(0.1, 0.1, 0.4, 0.4)], [0.9], [0])[0]
    second = one_proto_dets([(0.5, 0.5, 0.9, 0.9)], [0.7], [4])[0]
    classes, scores, _, _ = postprocess([first, second], 20, 10, batch_idx=1)
    assert classes.tolist() == [4] and scores.tolist() == pytest.approx([0.7])


def test_nearest_interpolation():
    dets = one_proto_dets([(0.25, 0.25, 0.75, 0.5)], [0.9], [3])
    masks = postprocess(dets, 32, 32, interpolation_mode='nearest')[3]
    expected = torch.zeros(32, 32)
    expected[4:20, 4:28] = 1  # prototype pixels 1..6 x 1..4, each 4 x 4
    assert torch.equal(masks[0], expected)


def test_without_mask_branch_masks_are_the_coefficients(monkeypatch):
    monkeypatch.setattr(cfg, 'eval_mask_branch', False)
    dets = one_proto_dets([(0.1, 0.1, 0.4, 0.4)], [0.9], [0], coeff=0.3)
    masks = postprocess(dets, 20, 10)[3]
    assert torch.equal(masks, torch.full((1, 1), 0.3))


def test_maskiou_rescoring(monkeypatch):
    # Mask of the first detection after cropping covers 6 x 4 of 8 x 8 prototype pixels at
    # sigmoid(10); the fake maskiou_net gives mean * ramp[class], ramp = linspace(0.2, 1, 5).
    dets = one_proto_dets([(0.25, 0.25, 0.75, 0.5), (0.0, 0.0, 1.0, 1.0)], [0.9, 0.5], [4, 0])
    dets[0]['net'] = FakeNet(5)
    sig = torch.sigmoid(torch.tensor(10.0)).item()
    expected_iou = [sig * 24 / 64 * 1.0, sig * 1.0 * 0.2]
    expected = [0.9 * expected_iou[0], 0.5 * expected_iou[1]]

    monkeypatch.setattr(cfg, 'use_maskiou', True)
    monkeypatch.setattr(cfg, 'rescore_mask', True)
    scores = postprocess(dets, 16, 16)[1]
    assert isinstance(scores, list) and len(scores) == 2
    assert scores[0].tolist() == pytest.approx([0.9, 0.5])
    assert scores[1].tolist() == pytest.approx(expected, rel=1e-5)

    monkeypatch.setattr(cfg, 'rescore_bbox', True)
    assert postprocess(dets, 16, 16)[1].tolist() == pytest.approx(expected, rel=1e-5)

    monkeypatch.setattr(cfg, 'rescore_mask', False)
    assert postprocess(dets, 16, 16)[1].tolist() == pytest.approx([0.9, 0.5])


def test_other_mask_type_is_refused(monkeypatch):
    monkeypatch.setattr(cfg, 'mask_type', mask_type.direct)
    with pytest.raises(ValueError, match='lincomb'):
        postprocess(one_proto_dets([(0.1, 0.1, 0.4, 0.4)], [0.9], [0]), 20, 10)


def test_float64_detections():
    dets = one_proto_dets([(0.25, 0.25, 0.75, 0.5)], [0.9], [3])
    det = dets[0]['detection']
    for key in ('box', 'mask', 'score', 'proto'):
        det[key] = det[key].double()
    _, scores, _, masks = postprocess(dets, 32, 32)
    assert scores.dtype == masks.dtype == torch.float64


# ---------------------------------------------------------------- undo_image_transformation

def test_undo_normalize(monkeypatch):
    monkeypatch.setattr(cfg, 'backbone', SimpleNamespace(transform=SimpleNamespace(normalize=True, subtract_means=False)))
    img = torch.zeros(3, 4, 6)
    img[0] = 1.0  # red channel one std above the mean
    out = undo_image_transformation(img, 3, 2, cfg.backbone.transform)
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    # MEANS / STD are BGR; the image is RGB.
    expected = np.array([(MEANS[2] + STD[2]) / 255, MEANS[1] / 255, MEANS[0] / 255], dtype=np.float32)
    assert np.allclose(out, expected[None, None], atol=1e-6)


def test_undo_subtract_means_and_clip(monkeypatch):
    monkeypatch.setattr(cfg, 'backbone', SimpleNamespace(transform=SimpleNamespace(normalize=False, subtract_means=True)))
    img = torch.zeros(3, 2, 2)
    img[2] = 500.0  # blue far out of range: clipped to 1
    out = undo_image_transformation(img, 2, 2, cfg.backbone.transform)
    assert np.allclose(out[..., 0], MEANS[2] / 255) and np.allclose(out[..., 1], MEANS[1] / 255)
    assert np.allclose(out[..., 2], 1.0)


# ---------------------------------------------------------------- parity with the original

@pytest.fixture(scope='module')
def reference():
    ref = torch.load(REFERENCE, weights_only=True)
    params, net = ref['params'], FakeNet(ref['params']['num_classes'] - 1)
    ref['outputs'] = {}
    for name, spec in ref['detect_runs'].items():
        det = Detect(params['num_classes'], 0, params['top_k'], spec['conf_thresh'], params['nms_thresh'],
                     max_num_detections=spec['max_num_detections'], max_size=params['max_size'])
        det.use_fast_nms, det.use_cross_class_nms = spec['use_fast_nms'], spec['use_cross_class_nms']
        ref['outputs'][name] = det(ref['inputs'], net)
    return ref


@pytest.mark.parametrize('run_idx', range(8))
def test_matches_original_postprocess(reference, monkeypatch, run_idx):
    w, h = reference['postprocess']['w'], reference['postprocess']['h']
    spec = reference['postprocess']['runs'][run_idx]
    for key, val in spec['cfg'].items():
        monkeypatch.setattr(cfg, key, val)
    classes, scores, boxes, masks = postprocess(reference['outputs'][spec['det']], w, h,
                                                batch_idx=spec['batch_idx'], **spec['kwargs'])
    assert torch.equal(classes, spec['classes'])
    assert torch.equal(boxes, spec['boxes'])
    want_scores = spec['scores'] if isinstance(spec['scores'], list) else [spec['scores']]
    got_scores = scores if isinstance(scores, list) else [scores]
    assert len(got_scores) == len(want_scores)
    for got, want in zip(got_scores, want_scores):
        assert torch.allclose(got, want, atol=1e-4, rtol=0)
    want_masks = np.unpackbits(spec['masks_packed'].numpy(), axis=-1, count=w).reshape(spec['masks_shape'])
    assert masks.shape == tuple(spec['masks_shape'])
    # Bilinear weights can land a pixel a hair either side of 0.5; allow a handful out of ~30k.
    assert (masks.numpy().astype(bool) != want_masks.astype(bool)).sum() <= 5


def test_matches_original_undo(reference, monkeypatch):
    monkeypatch.setattr(cfg, 'backbone', SimpleNamespace(transform=SimpleNamespace(normalize=True, subtract_means=False)))
    undo = reference['undo']
    out = undo_image_transformation(undo['img'], undo['w'], undo['h'], cfg.backbone.transform)
    assert np.allclose(out, undo['out'].numpy(), atol=1e-4)

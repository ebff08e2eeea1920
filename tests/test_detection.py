from pathlib import Path

import pytest
import torch
from torchvision.ops import batched_nms, nms

from data.config import cfg
from layers.functions import Detect
from layers.functions.detection import Detect as DetectDirect

REFERENCE = Path(__file__).parent / 'data' / 'detect_reference.pt'


def make_predictions(boxes, fg_scores, coeffs=None, proto=None, dtype=torch.float32):
    """Predictions whose priors decode exactly to `boxes` (loc = 0).

    boxes: list of relative (x1, y1, x2, y2); fg_scores: list of per-box foreground score lists.
    """
    b = torch.tensor(boxes, dtype=dtype)
    priors = torch.cat(((b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]), dim=1)
    fg = torch.tensor(fg_scores, dtype=dtype)
    conf = torch.cat((torch.zeros(len(boxes), 1, dtype=dtype), fg), dim=1)
    if coeffs is None:
        # Coefficient row i is (i, -i): lets tests see which prior each detection came from.
        idx = torch.arange(len(boxes), dtype=dtype)
        coeffs = torch.stack((idx, -idx), dim=1)
    preds = {'loc': torch.zeros(1, len(boxes), 4, dtype=dtype), 'conf': conf[None],
             'mask': coeffs[None], 'priors': priors}
    if proto is not None:
        preds['proto'] = proto[None]
    return preds


def run(preds, fast=True, cc=False, top_k=200, conf_thresh=0.05, nms_thresh=0.5, max_dets=100, net=None):
    num_classes = preds['conf'].shape[-1]
    det = Detect(num_classes, 0, top_k, conf_thresh, nms_thresh, max_num_detections=max_dets, max_size=550)
    det.use_fast_nms, det.use_cross_class_nms = fast, cc
    return det(preds, net)


def confident(det, thresh=0.05):
    """(class, prior index, score) of the detections above `thresh`, in output order."""
    keep = det['score'] > thresh
    prior = det['mask'][keep, 0].long()
    return list(zip(det['class'][keep].tolist(), prior.tolist(), [round(s, 4) for s in det['score'][keep].tolist()]))


# Three boxes: A and B overlap with IoU 0.905, C is far from both.
A, B, C = (0.1, 0.1, 0.5, 0.5), (0.12, 0.1, 0.52, 0.5), (0.6, 0.6, 0.9, 0.9)
# A chain: IoU(A2, B2) = IoU(B2, C2) = 0.6, IoU(A2, C2) = 1/3.
A2, B2, C2 = (0.0, 0.0, 0.4, 0.2), (0.1, 0.0, 0.5, 0.2), (0.2, 0.0, 0.6, 0.2)


def test_export_and_defaults():
    assert Detect is DetectDirect
    det = Detect(3, bkg_label=0, top_k=10, conf_thresh=0.05, nms_thresh=0.5)
    # As in the original: both switches off until eval.py sets them.
    assert det.use_fast_nms is False and det.use_cross_class_nms is False


def test_limits_default_to_the_active_config_when_built(monkeypatch):
    # The original's five-argument Detect reads these from cfg; here once, when it is built.
    monkeypatch.setattr(cfg, 'max_num_detections', 7)
    monkeypatch.setattr(cfg, 'max_size', 321)
    det = Detect(3, 0, 10, 0.05, 0.5)
    monkeypatch.setattr(cfg, 'max_size', 123)
    assert det.max_num_detections == 7 and det.max_size == 321
    assert Detect(3, 0, 10, 0.05, 0.5, max_num_detections=3).max_num_detections == 3


@pytest.mark.parametrize('kwargs', [dict(nms_thresh=0.0), dict(bkg_label=1), dict(num_classes=1), dict(top_k=0)])
def test_invalid_arguments_raise(kwargs):
    args = dict(num_classes=3, bkg_label=0, top_k=10, conf_thresh=0.05, nms_thresh=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError):
        Detect(**args)


def test_output_structure_per_image():
    proto = torch.rand(4, 5, 2)
    one = make_predictions([A, C], [[0.9, 0.0], [0.0, 0.8]], proto=proto)
    # Two images: the second has every foreground score under the threshold.
    preds = {k: (torch.cat((v, v)) if k != 'priors' else v) for k, v in one.items()}
    preds['conf'][1, :, 1:] = 0.01
    net = object()
    out = run(preds, net=net)
    assert len(out) == 2
    assert set(out[0]) == {'detection', 'net'} and out[0]['net'] is net and out[1]['net'] is net
    assert set(out[0]['detection']) == {'box', 'mask', 'class', 'score', 'proto'}
    assert torch.equal(out[0]['detection']['proto'], proto)
    assert out[1]['detection'] is None
    # Without prototypes there is no 'proto' entry.
    assert 'proto' not in run({k: v for k, v in one.items() if k != 'proto'})[0]['detection']


def test_fast_nms_same_class_suppressed_other_class_kept():
    # class 0: A .9, B .8 (B overlaps A);  class 1: B .7, C .6
    preds = make_predictions([A, B, C], [[0.9, 0.0], [0.8, 0.7], [0.0, 0.6]])
    det = run(preds)[0]['detection']
    assert confident(det) == [(0, 0, 0.9), (1, 1, 0.7), (1, 2, 0.6)]
    boxes = det['box'][det['score'] > 0.05]
    assert torch.allclose(boxes, torch.tensor([A, B, C]), atol=1e-6)
    # Scores come out sorted, highest first.
    assert torch.all(det['score'][:-1] >= det['score'][1:])
    assert det['class'].dtype == torch.int64


def test_fast_nms_keeps_low_scores_of_other_classes_like_the_original():
    # Without the paper's second threshold a candidate prior also yields detections for its
    # other classes' (low) scores, exactly like the released evaluation.
    preds = make_predictions([A, C], [[0.9, 0.01], [0.02, 0.8]])
    det = run(preds)[0]['detection']
    assert sorted(zip(det['class'].tolist(), det['mask'][:, 0].long().tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # fast_nms(second_threshold=True) drops them.
    d = Detect(3, 0, 200, 0.05, 0.5, max_num_detections=100)
    boxes = torch.tensor([A, C])
    scores = torch.tensor([[0.9, 0.02], [0.01, 0.8]])
    _, _, classes, kept = d.fast_nms(boxes, boxes, scores, 0.5, 200, second_threshold=True)
    assert classes.tolist() == [0, 1] and torch.allclose(kept, torch.tensor([0.9, 0.8]))


def test_fast_nms_chain_differs_from_greedy():
    # Fast NMS lets the suppressed B2 still suppress C2; greedy NMS keeps C2.
    preds = make_predictions([A2, B2, C2], [[0.9], [0.8], [0.7]])
    assert confident(run(preds, fast=True)[0]['detection']) == [(0, 0, 0.9)]
    assert confident(run(preds, fast=False)[0]['detection']) == [(0, 0, 0.9), (0, 2, 0.7)]


def test_cross_class_fast_nms():
    # A (class 0) and B (class 1) overlap: per-class NMS keeps both, cross-class only A.
    preds = make_predictions([A, B, C], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.0]])
    assert confident(run(preds)[0]['detection'], 0.5) == [(0, 0, 0.9), (1, 1, 0.8), (0, 2, 0.6)]
    det = run(preds, cc=True)[0]['detection']
    # Each prior appears once, with its best class.
    assert confident(det, 0.0) == [(0, 0, 0.9), (0, 2, 0.6)]
    assert torch.allclose(det['box'], torch.tensor([A, C]), atol=1e-6)


def test_cross_class_traditional_nms():
    preds = make_predictions([A, B, C], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.0]])
    det = run(preds, fast=False, cc=True)[0]['detection']
    assert confident(det, 0.0) == [(0, 0, 0.9), (0, 2, 0.6)]


def test_conf_thresh_selects_candidate_priors():
    # C's best foreground score (0.04) is under the threshold: it is never a candidate.
    preds = make_predictions([A, C], [[0.9, 0.0], [0.04, 0.03]])
    for fast in (True, False):
        det = run(preds, fast=fast)[0]['detection']
        assert 1 not in det['mask'][:, 0].long().tolist()
    # Nothing above the threshold: no detection at all.
    assert run(make_predictions([A, C], [[0.05, 0.0], [0.01, 0.03]]))[0]['detection'] is None


def test_top_k_per_class_and_max_num_detections():
    # Five disjoint boxes; class 0 scores .9 .. .5, class 1 scores .85 .. .45.
    boxes = [(0.2 * i, 0.0, 0.2 * i + 0.1, 0.1) for i in range(5)]
    fg = [[0.9 - 0.1 * i, 0.85 - 0.1 * i] for i in range(5)]
    preds = make_predictions(boxes, fg)
    det = run(preds, top_k=3)[0]['detection']
    # Only the best three per class enter Fast NMS.
    assert confident(det) == [(0, 0, 0.9), (1, 0, 0.85), (0, 1, 0.8), (1, 1, 0.75), (0, 2, 0.7), (1, 2, 0.65)]
    # Then the best four over all classes.
    det = run(preds, top_k=3, max_dets=4)[0]['detection']
    assert confident(det) == [(0, 0, 0.9), (1, 0, 0.85), (0, 1, 0.8), (1, 1, 0.75)]
    det = run(preds, fast=False, max_dets=4)[0]['detection']
    assert confident(det) == [(0, 0, 0.9), (1, 0, 0.85), (0, 1, 0.8), (1, 1, 0.75)]


def _clustered_boxes(gen, clusters=12, per_cluster=4):
    """Tight clusters on a grid: inside a cluster every box overlaps the best one above 0.5 IoU, and
    clusters do not touch, so greedy NMS has no suppression chains."""
    boxes = []
    for k in range(clusters):
        x0, y0 = 0.25 * (k % 4), 0.3 * (k // 4)
        base = torch.tensor([x0 + 0.02, y0 + 0.02, x0 + 0.18, y0 + 0.2])
        jitter = (torch.rand(per_cluster, 4, generator=gen) - 0.5) * 0.02
        boxes.append(base + jitter)
    return torch.cat(boxes)


def test_fast_nms_matches_torchvision_without_chains():
    gen = torch.Generator().manual_seed(0)
    boxes = _clustered_boxes(gen)
    scores = torch.rand(3, boxes.shape[0], generator=gen)
    conf_thresh, iou_thresh = 0.3, 0.5

    # Greedy NMS on the same (class, box) pairs; the case is non-trivial (some pairs suppressed).
    cls_idx, box_idx = torch.nonzero(scores > conf_thresh, as_tuple=True)
    pair_scores = scores[cls_idx, box_idx]
    keep = batched_nms(boxes[box_idx], pair_scores, cls_idx, iou_thresh)
    assert 0 < keep.numel() < pair_scores.numel()

    det = Detect(4, 0, 200, conf_thresh, iou_thresh, max_num_detections=1000)
    out_boxes, out_coeffs, out_classes, out_scores = det.fast_nms(
        boxes, torch.arange(boxes.shape[0])[:, None], scores, iou_thresh, 200, second_threshold=True)
    assert out_classes.tolist() == cls_idx[keep].tolist()
    assert out_coeffs[:, 0].tolist() == box_idx[keep].tolist()
    assert torch.allclose(out_scores, pair_scores[keep])
    assert torch.equal(out_boxes, boxes[box_idx[keep]])


def test_traditional_nms_matches_torchvision_per_class():
    gen = torch.Generator().manual_seed(1)
    boxes = torch.rand(60, 2, generator=gen) * 0.7
    boxes = torch.cat((boxes, boxes + 0.05 + torch.rand(60, 2, generator=gen) * 0.3), 1)
    scores = torch.rand(3, 60, generator=gen)
    det = Detect(4, 0, 200, 0.2, 0.5, max_num_detections=1000, max_size=550)
    out_boxes, _, classes, out_scores = det.traditional_nms(boxes, boxes, scores, 0.5, 0.2)
    for c in range(3):
        # torchvision's greedy NMS for this class alone, at the original's pixel convention
        cand = torch.nonzero(scores[c] > 0.2).squeeze(1)
        px = boxes[cand] * 550
        px[:, 2:] += 1
        kept = cand[nms(px, scores[c, cand], 0.5)]
        mine = classes == c
        assert torch.equal(out_boxes[mine], boxes[kept])
        assert torch.equal(out_scores[mine], scores[c, kept])
    assert torch.all(out_scores[:-1] >= out_scores[1:])


def test_traditional_nms_uses_the_originals_plus_one_pixel_convention():
    # Two 10 x 10 pixel boxes (at max_size 100) shifted by 3 pixels. Plain IoU: 70 / 130 = 0.538;
    # the original's Cython NMS counts 11 x 11 boxes overlapping 8 x 11: 88 / 154 = 0.571.
    # So at threshold 0.55 only the original's convention suppresses the second box.
    boxes = torch.tensor([[0.10, 0.10, 0.20, 0.20], [0.13, 0.10, 0.23, 0.20]])
    scores = torch.tensor([[0.9, 0.8]])
    det = Detect(2, 0, 200, 0.05, 0.55, max_num_detections=100, max_size=100)
    _, _, _, kept = det.traditional_nms(boxes, boxes, scores, 0.55, 0.05)
    assert kept.tolist() == pytest.approx([0.9])
    _, _, _, kept = det.traditional_nms(boxes, boxes, scores, 0.6, 0.05)
    assert kept.tolist() == pytest.approx([0.9, 0.8])


@pytest.mark.parametrize('fast,cc', [(True, False), (True, True), (False, False), (False, True)])
def test_dtype_follows_inputs(fast, cc):
    preds = make_predictions([A, B, C], [[0.9, 0.0], [0.8, 0.7], [0.0, 0.6]], dtype=torch.float64)
    det = run(preds, fast=fast, cc=cc)[0]['detection']
    assert det['box'].dtype == det['score'].dtype == det['mask'].dtype == torch.float64
    assert det['class'].dtype == torch.int64


# ---------------------------------------------------------------- parity with the original

@pytest.fixture(scope='module')
def reference():
    return torch.load(REFERENCE, weights_only=True)


@pytest.mark.parametrize('name', ['fast', 'cc_fast', 'traditional', 'fast_nocap', 'traditional_nocap'])
def test_matches_original_detect(reference, name):
    params, spec = reference['params'], reference['detect_runs'][name]
    det = Detect(params['num_classes'], 0, params['top_k'], spec['conf_thresh'], params['nms_thresh'],
                 max_num_detections=spec['max_num_detections'], max_size=params['max_size'])
    det.use_fast_nms, det.use_cross_class_nms = spec['use_fast_nms'], spec['use_cross_class_nms']
    out = det(reference['inputs'], None)
    assert len(out) == len(spec['dets'])
    for i, (got, want) in enumerate(zip(out, spec['dets'])):
        got = got['detection']
        assert torch.equal(got['proto'], reference['inputs']['proto'][i])
        assert torch.equal(got['class'], want['class'])
        assert torch.allclose(got['score'], want['score'], atol=1e-4, rtol=0)
        assert torch.allclose(got['box'], want['box'], atol=1e-4, rtol=0)
        if 'mask' in want:
            assert torch.allclose(got['mask'], want['mask'], atol=1e-4, rtol=0)

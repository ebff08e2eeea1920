"""Numerical parity with the original YOLACT (dbolya/yolact@57b8f2d).

The reference outputs in tests/data/parity/ were recorded by running the original code (on CPU,
through run-time shims) with weights from `benchmarks/parity_fill.fill_state_dict`; see
tests/data/parity/README.md. Here the port is filled with the same function and must reproduce:
train-mode raw outputs, eval-mode detections (Fast NMS and cross-class Fast NMS), `postprocess`,
and the `MultiBoxLoss` terms, plus a standalone `Detect` case with stored inputs.

Tolerance: |port - original| <= 1e-4 + 1e-4 * |original| elementwise for float tensors; integer
outputs (classes, pixel boxes, counts) must match exactly; binarised full-size masks may differ in
a handful of pixels whose soft value sits at the 0.5 threshold.
"""
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from benchmarks.parity_fill import fill_state_dict, make_input, make_targets
from data.config import cfg, set_cfg
from layers.functions.detection import Detect
from layers.modules import MultiBoxLoss
from layers.output_utils import postprocess
from yolact import Yolact

DATA = Path(__file__).parent / 'data' / 'parity'
NET_CONFIGS = ['yolact_base_config', 'yolact_resnet50_config', 'yolact_darknet53_config',
               'yolact_plus_base_config']
RTOL = 1e-4
ATOL = 1e-4
# Pixels of a binarised mask allowed to differ (soft values within float noise of 0.5).
MASK_PIXEL_SLACK = 1e-4


def load_ref(name: str) -> Dict:
    return torch.load(DATA / f'{name}.pt', weights_only=True)


def close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Elementwise |a - e| <= ATOL + RTOL * |e|, with a message naming the tensor and the worst diff."""
    actual = actual.detach().to(expected.dtype)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, original {tuple(expected.shape)}")
    diff = (actual - expected).abs()
    bad = diff > ATOL + RTOL * expected.abs()
    if bad.any():
        worst = int(diff.argmax())
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements off; max |diff| {diff.max().item():.3g} "
            f"at flat index {worst} (port {actual.reshape(-1)[worst].item():.6g}, "
            f"original {expected.reshape(-1)[worst].item():.6g})")


def configure(ref: Dict, freeze_bn: bool = True) -> None:
    """Make the global cfg what the original ran with when the reference was recorded."""
    set_cfg(ref['meta/config'])
    cfg.max_size = ref['meta/max_size']
    cfg.freeze_bn = freeze_bn
    cfg.mask_proto_debug = False


def build_port(ref: Dict, freeze_bn: bool = True) -> Yolact:
    configure(ref, freeze_bn)
    net = Yolact(cfg)
    shapes = {k: (list(v.shape), v.dtype) for k, v in net.state_dict().items()}
    net.load_state_dict(fill_state_dict(shapes))
    return net


def unpack_masks(ref: Dict, prefix: str) -> torch.Tensor:
    shape = ref[f'{prefix}/masks_shape']
    bits = np.unpackbits(ref[f'{prefix}/masks_packed'].numpy())[:int(np.prod(shape))]
    return torch.from_numpy(bits.reshape(shape).astype(np.float32))


@pytest.fixture(autouse=True)
def restore_cfg():
    saved = cfg.copy()
    yield
    cfg.replace(saved)


class PortRun:
    """The port's outputs for one reference config, computed once per test module."""

    def __init__(self, name: str):
        saved = cfg.copy()
        try:
            self.ref = load_ref(name)
            self.net = build_port(self.ref)
            batch, size = self.ref['meta/batch'], self.ref['meta/max_size']
            self.x = make_input(batch, size, size)
            with torch.no_grad():
                self.net.train()
                self.raw = self.net(self.x)
                # eval mode end to end with Fast NMS, as eval.py runs it
                self.net.eval()
                self.net.detect.use_fast_nms = True
                self.net.detect.use_cross_class_nms = False
                self.dets = {'detect_fast': self.net(self.x)}
                # cross-class Fast NMS on the same (softmaxed) outputs, sparing a second forward
                self.net.detect.use_cross_class_nms = True
                scored = dict(self.raw, conf=torch.softmax(self.raw['conf'], dim=-1))
                self.dets['detect_cc'] = self.net.detect(scored, self.net)
        finally:
            cfg.replace(saved)


@pytest.fixture(scope='module')
def runs():
    cache: Dict[str, PortRun] = {}

    def get(name: str) -> PortRun:
        if name not in cache:
            cache[name] = PortRun(name)
        return cache[name]
    return get


def compare_detections(out: List[Dict], ref: Dict, prefix: str, images: int) -> None:
    """Port `Detect` output (list of {'detection', 'net'}) against the recorded one, in order."""
    if len(out) != images:
        raise AssertionError(f"{prefix}: {len(out)} images in the output, original {images}")
    for b in range(images):
        det = out[b]['detection']
        count = ref[f'{prefix}/{b}/count']
        if count == 0:
            assert det is None, f"{prefix}/{b}: the original returns None (no candidate), port {det!r:.80}"
            continue
        assert det is not None, f"{prefix}/{b}: port returned None, original has {count} detections"
        assert det['score'].numel() == count, \
            f"{prefix}/{b}: port has {det['score'].numel()} detections, original {count}"
        assert torch.equal(det['class'].long(), ref[f'{prefix}/{b}/class'].long()), \
            f"{prefix}/{b}: classes differ at {(det['class'] != ref[f'{prefix}/{b}/class']).nonzero().flatten()[:10].tolist()}"
        close(det['score'], ref[f'{prefix}/{b}/score'], f"{prefix}/{b}/score")
        close(det['box'], ref[f'{prefix}/{b}/box'], f"{prefix}/{b}/box")
        close(det['mask'], ref[f'{prefix}/{b}/mask'], f"{prefix}/{b}/mask")


def compare_postprocess(dets: List[Dict], ref: Dict, prefix: str) -> None:
    w, h, b = ref[f'{prefix}/w'], ref[f'{prefix}/h'], ref[f'{prefix}/batch_idx']
    classes, scores, boxes, masks = postprocess(dets, w, h, batch_idx=b, crop_masks=True, score_threshold=0,
                                                config=cfg)
    assert torch.equal(classes.long(), ref[f'{prefix}/classes'].long()), f"{prefix}: classes differ"
    if f'{prefix}/scores_maskiou' in ref:
        assert isinstance(scores, (list, tuple)) and len(scores) == 2, \
            f"{prefix}: with rescore_mask and not rescore_bbox the original returns [scores, mask scores]"
        close(scores[0], ref[f'{prefix}/scores'], f"{prefix}/scores[0]")
        close(scores[1], ref[f'{prefix}/scores_maskiou'], f"{prefix}/scores[1] (mask IoU rescored)")
    else:
        close(scores, ref[f'{prefix}/scores'], f"{prefix}/scores")
    assert boxes.dtype == torch.int64, f"{prefix}: boxes dtype {boxes.dtype}, original int64"
    assert torch.equal(boxes, ref[f'{prefix}/boxes']), \
        f"{prefix}: pixel boxes differ, max |diff| {(boxes - ref[f'{prefix}/boxes']).abs().max().item()}"
    expected = unpack_masks(ref, prefix)
    assert tuple(masks.shape) == tuple(expected.shape), \
        f"{prefix}: masks shape {tuple(masks.shape)}, original {tuple(expected.shape)}"
    assert set(masks.unique().tolist()) <= {0.0, 1.0}, f"{prefix}: masks are not binary"
    flipped = int((masks.float() != expected).sum())
    assert flipped <= max(5, MASK_PIXEL_SLACK * expected.numel()), \
        f"{prefix}: {flipped} of {expected.numel()} mask pixels differ"


# ------------------------------------------------------------------------------- the tests


def test_fill_and_input_are_reproducible():
    """The rebuilt input and targets are those the original saw (guards parity_fill drift)."""
    ref = load_ref('yolact_base_config')
    x = make_input(ref['meta/batch'], ref['meta/max_size'], ref['meta/max_size'])
    assert x.double().sum().item() == pytest.approx(ref['meta/input_sum'], abs=1e-6)
    assert x.double().abs().sum().item() == pytest.approx(ref['meta/input_abs_sum'], rel=1e-12)
    _, masks, _ = make_targets(ref['meta/max_size'], ref['meta/max_size'])
    assert torch.equal(torch.cat([m.sum((1, 2)) for m in masks]), ref['meta/target_mask_sums'])
    a = fill_state_dict({'backbone.conv1.weight': ([4, 3, 3, 3], torch.float32)})['backbone.conv1.weight']
    b = fill_state_dict({'backbone.conv1.weight': ([4, 3, 3, 3], torch.float32)})['backbone.conv1.weight']
    assert torch.equal(a, b) and a.std() > 0


@pytest.mark.parametrize('name', NET_CONFIGS)
def test_train_mode_raw_outputs(runs, name):
    run = runs(name)
    ref = run.ref
    n = ref['meta/stored_images']
    stride = ref.get('meta/prior_stride', 1)
    expected_keys = {k.split('/', 1)[1] for k in ref if k.startswith('train/')}
    missing = expected_keys - set(run.raw)
    assert not missing, f"port train-mode output lacks {sorted(missing)}"
    for key in sorted(expected_keys):
        out = run.raw[key]
        if key != 'priors':
            out = out[:n]
        if stride > 1:
            # the reference keeps a strided subset of the big tensors (see README)
            if key in ('conf', 'mask'):
                out = out[:, ::stride]
            elif key == 'proto':
                out = out[:, ::2, ::2]
            elif key == 'segm':
                out = out[:, ::8]
        close(out, ref[f'train/{key}'], f"{name} train/{key}")


def test_train_mode_batch_statistics_bn():
    """Without freeze_bn, train-mode BatchNorm normalises with the batch's statistics."""
    ref = load_ref('yolact_base_config')
    net = build_port(ref, freeze_bn=False)
    net.train()
    x = make_input(ref['meta/batch'], ref['meta/max_size'], ref['meta/max_size'])
    with torch.no_grad():
        out = net(x)
    close(out['loc'], ref['train_bn_batchstats/loc'], 'train (BN batch stats)/loc')


@pytest.mark.parametrize('mode', ['detect_fast', 'detect_cc'])
@pytest.mark.parametrize('name', NET_CONFIGS)
def test_eval_mode_detections(runs, name, mode):
    run = runs(name)
    compare_detections(run.dets[mode], run.ref, mode, run.ref['meta/batch'])
    for entry in run.dets[mode]:
        if entry['detection'] is not None:
            proto = entry['detection']['proto']
            assert proto.shape == run.raw['proto'].shape[1:], 'detection proto is per image [H, W, M]'


@pytest.mark.parametrize('name', NET_CONFIGS)
def test_postprocess(runs, name):
    run = runs(name)
    configure(run.ref)
    prefixes = sorted({k.split('/')[0] for k in run.ref if k.startswith('post_')})
    assert prefixes, 'reference holds postprocess results'
    for prefix in prefixes:
        mode = 'detect_cc' if prefix.startswith('post_cc') else 'detect_fast'
        compare_postprocess(run.dets[mode], run.ref, prefix)


def test_postprocess_leaves_detections_untouched(runs):
    run = runs('yolact_base_config')
    configure(run.ref)
    dets = run.dets['detect_fast']
    before = {k: v.clone() for k, v in dets[0]['detection'].items()}
    postprocess(dets, 120, 90, batch_idx=0)
    for k, v in before.items():
        assert torch.equal(dets[0]['detection'][k], v), f"postprocess modified detection['{k}']"


def _loss_inputs(ref: Dict):
    size = ref['meta/max_size']
    targets, masks, num_crowds = make_targets(size, size)
    return targets, masks, num_crowds


def test_multibox_loss_on_recorded_outputs():
    """yolact_base: the port's loss on the original's own raw outputs (isolates the loss)."""
    ref = load_ref('yolact_base_config')
    configure(ref)
    preds = {k.split('/', 1)[1]: v.clone() for k, v in ref.items() if k.startswith('train/')}
    criterion = MultiBoxLoss(num_classes=cfg.num_classes, pos_threshold=cfg.positive_iou_threshold,
                             neg_threshold=cfg.negative_iou_threshold, negpos_ratio=cfg.ohem_negpos_ratio, config=cfg)
    targets, masks, num_crowds = _loss_inputs(ref)
    losses = criterion(None, preds, targets, masks, num_crowds)
    expected = {k.split('/', 1)[1] for k in ref if k.startswith('loss/')}
    assert set(losses) == expected, f"loss terms {sorted(losses)}, original {sorted(expected)}"
    for k in sorted(expected):
        close(losses[k].reshape(()), ref[f'loss/{k}'], f"yolact_base loss {k}")


@pytest.mark.parametrize('name', ['yolact_base_config', 'yolact_plus_base_config'])
def test_multibox_loss_on_port_outputs(runs, name):
    """The full chain: port network outputs -> port loss (YOLACT++ adds the mask IoU term I)."""
    run = runs(name)
    configure(run.ref)
    criterion = MultiBoxLoss(num_classes=cfg.num_classes, pos_threshold=cfg.positive_iou_threshold,
                             neg_threshold=cfg.negative_iou_threshold, negpos_ratio=cfg.ohem_negpos_ratio, config=cfg)
    targets, masks, num_crowds = _loss_inputs(run.ref)
    with torch.no_grad():
        losses = criterion(run.net, dict(run.raw), targets, masks, num_crowds)
    expected = {k.split('/', 1)[1] for k in run.ref if k.startswith('loss/')}
    assert set(losses) == expected, f"loss terms {sorted(losses)}, original {sorted(expected)}"
    for k in sorted(expected):
        close(losses[k].reshape(()), run.ref[f'loss/{k}'], f"{name} loss {k}")


@pytest.fixture(scope='module')
def standalone():
    return load_ref('detect_standalone')


def _standalone_detect(ref: Dict, fast: bool, cross_class: bool) -> List[Dict]:
    set_cfg(ref['meta/config'])
    detect = Detect(cfg.num_classes, bkg_label=0, top_k=ref['meta/top_k'],
                    conf_thresh=ref['meta/conf_thresh'], nms_thresh=ref['meta/nms_thresh'],
                    max_num_detections=cfg.max_num_detections, max_size=cfg.max_size)
    detect.use_fast_nms = fast
    detect.use_cross_class_nms = cross_class
    inputs = {k.split('/', 1)[1]: v.clone() for k, v in ref.items() if k.startswith('input/')}
    return detect(inputs, None)


@pytest.mark.parametrize('mode,fast,cross_class', [('detect_fast', True, False),
                                                   ('detect_cc', True, True),
                                                   ('detect_traditional', False, False)])
def test_standalone_detect(standalone, mode, fast, cross_class):
    """Stored scores/boxes: >100 candidates, a single confident prior, and an empty image."""
    out = _standalone_detect(standalone, fast, cross_class)
    compare_detections(out, standalone, mode, standalone['input/loc'].shape[0])


def test_standalone_postprocess(standalone):
    out = _standalone_detect(standalone, True, False)
    for prefix in ('post_fast_0', 'post_fast_1'):
        compare_postprocess(out, standalone, prefix)

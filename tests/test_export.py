"""export.py and deploy/onnx_postprocess.py: exported ONNX / TorchScript models against PyTorch.

Random weights put every class near 1/81, so nothing passes the confidence threshold: the tests
scale the class layer (detections) and the last protonet conv (masks clearly on or off) first.
"""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import List

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import export
from backbone import DCN
from data.config import cfg, resnet18_backbone, set_cfg, yolact_base_config
from deploy import exporting
from deploy import onnx_postprocess as onnx_pp
from layers.box_utils import crop
from layers.functions.detection import Detect
from layers.output_utils import postprocess as torch_postprocess
from utils.augmentations import FastBaseTransform
from yolact import Yolact

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_W, IMAGE_H = 200, 150  # the size detections are produced at: not square, not the input size

# A small YOLACT for fast tests: ResNet-18, 64-channel FPN and heads, 16 prototypes, 128 px.
TINY_CONFIG = yolact_base_config.copy({
    'name': 'yolact_export_tiny',
    'max_size': 128,
    'backbone': resnet18_backbone.copy({
        'selected_layers': [1, 2, 3],
        'use_pixel_scales': True, 'preapply_sqrt': False, 'use_square_anchors': True,
        'pred_aspect_ratios': [[[1, 1 / 2, 2]]] * 5,
        'pred_scales': [[24], [40], [64], [96], [128]],
    }),
    'fpn': yolact_base_config.fpn.copy({'num_features': 64}),
    'mask_proto_net': [(64, 3, {'padding': 1})] * 2
                      + [(None, -2, {}), (64, 3, {'padding': 1}), (16, 1, {})],
    'extra_head_net': [(64, 3, {'padding': 1})],
})


pytestmark = pytest.mark.usefixtures('restore_cfg')


def activate(config) -> None:
    cfg.replace(config.copy())


def random_yolact(conf_scale: float = 10.0, proto_scale: float = 40.0, seed: int = 0) -> Yolact:
    """A Yolact of the active config with random weights that give detections and crisp masks."""
    torch.manual_seed(seed)
    net = Yolact(cfg)
    net.init_weights(None)
    with torch.no_grad():
        net.prediction_layers[0].conf_layer.weight.mul_(conf_scale)
        net.proto_net[-1].weight.mul_(proto_scale)
        for module in net.modules():
            if isinstance(module, DCN):
                # Non-zero offsets, or DeformConv's offset layout would go untested.
                module.conv_offset_mask.weight.normal_(0, 0.05)
    return net.eval()


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n random BGR uint8 images of IMAGE_H x IMAGE_W, preprocessed into the network input."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
    return onnx_pp.preprocess(images, exporting.export_metadata(cfg.copy({'max_size': size})))


def ort_session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


def assert_raw_outputs_match(torch_outs, onnx_outs, atol: float = 1e-4) -> None:
    for name, ref, got in zip(exporting.OUTPUT_NAMES, torch_outs, onnx_outs):
        assert got.shape == tuple(ref.shape), name
        np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=atol, err_msg=name)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pair IoU of boolean masks [D, H, W]; 1 for two empty masks."""
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def assert_same_detections(net: Yolact, images: torch.Tensor, outputs: List[np.ndarray], meta: dict,
                           maskiou=None) -> int:
    """The numpy post-processing of `outputs` equals the repository's Detect (Fast NMS) +
    postprocess on `images`, image by image. Returns the number of detections compared."""
    net.detect.use_fast_nms = True
    with torch.no_grad():
        det_output = net(images)
    total = 0
    for b in range(images.shape[0]):
        boxes, scores, coeffs, proto = (out[b] for out in outputs)
        ref = det_output[b]['detection']
        assert ref is not None, "the test weights must give detections"

        # Stage 1: NMS (relative boxes, classes, scores).
        nms_boxes, _, nms_classes, nms_scores = onnx_pp.fast_nms(
            boxes, scores, coeffs, meta['conf_thresh'], meta['nms_thresh'], meta['top_k'],
            meta['max_num_detections'])
        np.testing.assert_array_equal(nms_classes, ref['class'].numpy())
        np.testing.assert_allclose(nms_boxes, ref['box'].numpy(), rtol=0, atol=1e-3)
        np.testing.assert_allclose(nms_scores, ref['score'].numpy(), rtol=0, atol=1e-4)

        # Stage 2: final detections at image size.
        classes, ref_scores, pixel_boxes, masks = torch_postprocess(det_output, IMAGE_W, IMAGE_H, b)
        got = onnx_pp.postprocess(boxes, scores, coeffs, proto, IMAGE_W, IMAGE_H, meta, maskiou=maskiou)
        np.testing.assert_array_equal(got.classes, classes.numpy())
        if isinstance(ref_scores, list):  # YOLACT++: [box scores, mask-IoU-rescored scores]
            ref_scores, ref_mask_scores = ref_scores
            np.testing.assert_allclose(got.mask_scores, ref_mask_scores.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.scores, ref_scores.numpy(), rtol=0, atol=1e-4)
        # Pixel boxes are truncated to integers: a 1e-7 difference may cross one.
        assert np.abs(got.boxes - pixel_boxes.numpy()).max() <= 1
        assert got.masks.shape == tuple(masks.shape) and got.masks.dtype == np.bool_
        assert mask_iou(got.masks, masks.numpy() > 0.5).min() > 0.99
        assert got.masks.any(axis=(1, 2)).sum() >= 5, "most masks empty: the mask check would be vacuous"
        total += len(got.classes)
    return total


# ----------------------------------------------------------------------------- numpy building blocks

@pytest.mark.parametrize('config_name', ['yolact_base_config', 'yolact_darknet53_config'])
@pytest.mark.parametrize('image_hw', [(150, 200), (700, 520)])
def test_preprocess_matches_fast_base_transform(config_name, image_hw):
    set_cfg(config_name)
    cfg.max_size = 160
    image = np.random.default_rng(0).integers(0, 256, size=(*image_hw, 3), dtype=np.uint8)
    expected = FastBaseTransform(cfg)(torch.from_numpy(image)[None]).numpy()
    got = onnx_pp.preprocess(image, exporting.export_metadata(cfg))
    assert got.shape == (1, 3, 160, 160) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize('in_hw,out_hw', [((7, 5), (20, 13)), ((40, 33), (9, 16)), ((4, 4), (4, 4))])
def test_resize_bilinear_matches_interpolate(in_hw, out_hw):
    x = torch.rand(3, *in_hw, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x[None], out_hw, mode='bilinear', align_corners=False)[0]
    np.testing.assert_allclose(onnx_pp.resize_bilinear(x.numpy(), *out_hw), expected.numpy(), atol=1e-6)


def test_crop_masks_matches_box_utils_crop():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 10, 4, generator=gen)  # [H, W, N]
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.6, 0.0, 0.3, 0.4],
                          [-0.2, 0.5, 1.3, 0.55], [0, 0, 1, 1]])
    expected = crop(masks, boxes).permute(2, 0, 1)
    got = onnx_pp.crop_masks(masks.permute(2, 0, 1).numpy(), boxes.numpy())
    np.testing.assert_array_equal(got, expected.numpy())
    # Box 1 (x 0.3..0.6 of 10 px = 3..6, grown by 1 -> columns 2..6; rows 0..4.8 -> 0..5).
    assert (got[1][:, [0, 1, 7, 8, 9]] == 0).all() and (got[1][6:] == 0).all()
    assert (got[1][:6, 2:7] > 0).all()


def test_fast_nms_hand_computed():
    """Three unit-height boxes shifted by 0.25 and 0.5, classes a and b (score columns 1, 2).

    IoU(0, 1) = IoU(1, 2) = 0.75 / 1.25 = 0.6 and IoU(0, 2) = 0.5 / 1.5 = 1/3. Class a scores
    0.9, 0.8, 0.7: box 1 falls to box 0, and box 2 falls to box 1 although box 1 was dropped
    (Fast NMS; greedy NMS would keep box 2). Class b scores 0.06, 0.05, 0.10: box 2 first, box 0
    overlaps it by 1/3 and stays, box 1 overlaps box 2 by 0.6 and falls.
    """
    boxes = np.array([[0.0, 0, 1.0, 1], [0.25, 0, 1.25, 1], [0.5, 0, 1.5, 1]], np.float32)
    scores = np.array([[0.04, 0.90, 0.06],
                       [0.15, 0.80, 0.05],
                       [0.20, 0.70, 0.10]], np.float32)
    coeffs = np.arange(6, dtype=np.float32).reshape(3, 2)
    iou = onnx_pp.box_iou(boxes, boxes)
    np.testing.assert_allclose(iou[[0, 1, 0], [1, 2, 2]], [0.6, 0.6, 1 / 3], rtol=1e-6)

    out_boxes, out_coeffs, classes, out_scores = onnx_pp.fast_nms(
        boxes, scores, coeffs, conf_thresh=0.05, nms_thresh=0.5, top_k=10, max_num_detections=10)
    np.testing.assert_array_equal(classes, [0, 1, 1])
    np.testing.assert_allclose(out_scores, [0.90, 0.10, 0.06])
    np.testing.assert_array_equal(out_boxes, boxes[[0, 2, 0]])
    np.testing.assert_array_equal(out_coeffs, coeffs[[0, 2, 0]])

    # Capped to the best two over all classes.
    _, _, classes, _ = onnx_pp.fast_nms(boxes, scores, coeffs, 0.05, 0.5, 10, max_num_detections=2)
    np.testing.assert_array_equal(classes, [0, 1])
    # Only prior 0 has a class above 0.85; once a candidate, all its class scores are kept.
    _, _, classes, out_scores = onnx_pp.fast_nms(boxes, scores, coeffs, 0.85, 0.5, 10, 10)
    np.testing.assert_array_equal(classes, [0, 1])
    np.testing.assert_allclose(out_scores, [0.90, 0.06])
    # top_k=1: one candidate per class.
    _, _, classes, out_scores = onnx_pp.fast_nms(boxes, scores, coeffs, 0.05, 0.5, 1, 10)
    np.testing.assert_allclose(out_scores, [0.90, 0.10])
    # Cross-class: every box scored by its best class (a); box 0 stays, boxes 1 and 2 fall.
    out_boxes, _, classes, out_scores = onnx_pp.fast_nms(boxes, scores, coeffs, 0.05, 0.5, 10, 10,
                                                         cross_class=True)
    np.testing.assert_array_equal(classes, [0])
    np.testing.assert_array_equal(out_boxes, boxes[:1])
    # Nothing above the threshold.
    out_boxes, out_coeffs, classes, _ = onnx_pp.fast_nms(boxes, scores, coeffs, 0.95, 0.5, 10, 10)
    assert out_boxes.shape == (0, 4) and out_coeffs.shape == (0, 2) and classes.shape == (0,)


@pytest.mark.parametrize('cross_class', [False, True])
def test_fast_nms_matches_detect(cross_class):
    gen = torch.Generator().manual_seed(3)
    num_priors, num_classes = 600, 9
    centers = torch.rand(num_priors, 2, generator=gen)
    sizes = torch.rand(num_priors, 2, generator=gen) * 0.3 + 0.02
    boxes = torch.cat((centers - sizes / 2, centers + sizes / 2), dim=1)
    scores = F.softmax(torch.randn(num_priors, num_classes, generator=gen) * 3, dim=1)
    coeffs = torch.randn(num_priors, 4, generator=gen)
    detect = Detect(num_classes, 0, top_k=50, conf_thresh=0.3, nms_thresh=0.5, max_num_detections=40)
    detect.use_fast_nms, detect.use_cross_class_nms = True, cross_class
    ref = detect.detect_image(scores[:, 1:].t(), boxes, coeffs)
    got = onnx_pp.fast_nms(boxes.numpy(), scores.numpy(), coeffs.numpy(), 0.3, 0.5, 50, 40, cross_class)
    assert 5 < len(got[2]) <= (50 if cross_class else 40)
    np.testing.assert_array_equal(got[2], ref['class'].numpy())
    np.testing.assert_array_equal(got[0], ref['box'].numpy())
    np.testing.assert_array_equal(got[1], ref['mask'].numpy())
    np.testing.assert_allclose(got[3], ref['score'].numpy(), rtol=0, atol=1e-7)


def test_missing_packages_name_the_requirements_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, 'onnx', None)  # makes `import onnx` fail
    with pytest.raises(exporting.ExportError, match='requirements-export.txt'):
        exporting.require('onnx', 'ONNX export')
    fake = tmp_path / 'yolact_base_1_2.pth'
    fake.write_bytes(b'')
    assert export.main(['--trained_model', str(fake)]) == 1
    err = capsys.readouterr().err
    assert "'onnx'" in err and 'pip install -r requirements-export.txt' in err

    monkeypatch.delitem(sys.modules, 'onnx')
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    assert export.main(['--trained_model', str(fake)]) == 1
    err = capsys.readouterr().err
    assert "'onnxruntime'" in err and '--no_check' in err and 'requirements-export.txt' in err


def test_cli_errors_are_one_line_messages(capsys, tmp_path):
    assert export.main(['--trained_model', str(tmp_path / 'missing_1_2.pth')]) == 1
    assert 'checkpoint not found' in capsys.readouterr().err
    bad = tmp_path / 'no_counters.pth'
    bad.write_bytes(b'')
    assert export.main(['--trained_model', str(bad), '--no_check']) == 1
    assert 'pass --config' in capsys.readouterr().err
    assert export.main(['--trained_model', str(bad), '--format', 'torchscript', '--opset', '18']) == 1
    assert '--format onnx only' in capsys.readouterr().err


# ----------------------------------------------------------------------------- ONNX, small config

@pytest.fixture(scope='module')
def tiny_onnx(tmp_path_factory):
    """The tiny config exported with a free batch dimension (default opset 18)."""
    activate(TINY_CONFIG)
    try:
        net = random_yolact()
        model = exporting.ExportableYolact(net)
        path = str(tmp_path_factory.mktemp('tiny') / 'tiny.onnx')
        written = exporting.export_onnx(model, path, dynamic_batch=True)
        return SimpleNamespace(net=net, model=model, path=path, written=written)
    finally:
        set_cfg('yolact_base_config')


@pytest.mark.parametrize('batch_size', [1, 3])
def test_tiny_onnx_matches_pytorch_for_any_batch(tiny_onnx, batch_size):
    activate(TINY_CONFIG)
    assert tiny_onnx.written == [tiny_onnx.path]
    session = ort_session(tiny_onnx.path)
    assert session.get_inputs()[0].shape[0] == 'batch'
    meta = onnx_pp.load_metadata(session)
    assert meta['input_size'] == 128 and meta['config'] == 'yolact_export_tiny' and meta['dynamic_batch']
    assert meta['class_names'][0] == 'person' and meta['num_classes'] == 81
    assert meta['mask_activation'] == 'sigmoid' and meta['maskiou_model'] is None

    images = torch.from_numpy(random_images(batch_size, 128, seed=batch_size))
    with torch.no_grad():
        expected = tiny_onnx.model(images)
    outputs = session.run(list(exporting.OUTPUT_NAMES), {exporting.INPUT_NAME: images.numpy()})
    assert outputs[0].shape[0] == batch_size and outputs[1].shape[2] == 81
    assert_raw_outputs_match(expected, outputs)
    assert assert_same_detections(tiny_onnx.net, images, outputs, meta) > 0


def test_check_onnx_reports_the_largest_difference(tiny_onnx, monkeypatch):
    activate(TINY_CONFIG)
    assert exporting.check_onnx(tiny_onnx.model, tiny_onnx.path, (1, 3)) < 1e-4
    # A model that no longer matches the file is noticed.
    weight = tiny_onnx.net.prediction_layers[0].bbox_layer.weight
    monkeypatch.setattr(weight, 'data', weight.data + 0.5)
    assert exporting.check_onnx(tiny_onnx.model, tiny_onnx.path, (1,)) > 1e-2


def test_tiny_onnx_opset_17_uses_the_older_exporter(tmp_path):
    activate(TINY_CONFIG)
    model = exporting.ExportableYolact(random_yolact(seed=1))
    path = str(tmp_path / 'tiny17.onnx')
    exporting.export_onnx(model, path, opset=17)
    import onnx
    proto = onnx.load(path)
    assert [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')] == [17]
    session = ort_session(path)
    images = torch.from_numpy(random_images(1, 128, seed=7))
    with torch.no_grad():
        expected = model(images)
    outputs = session.run(None, {'images': images.numpy()})
    assert_raw_outputs_match(expected, outputs)
    assert onnx_pp.load_metadata(session)['input_size'] == 128
    with pytest.raises(exporting.ExportError, match='opset 11 or newer'):
        exporting.resolve_opset(model, 10)


def test_docs_snippet_runs_as_written_without_torch(tiny_onnx, tmp_path):
    """The README's onnxruntime snippet, executed verbatim in a process where torch cannot be
    imported, on the tiny model; it prints what `detect` finds in-process."""
    readme = (REPO_ROOT / 'README.md').read_text()
    assert '<!-- export-snippet' in readme, "no '<!-- export-snippet' marker before a python block in README.md"
    snippet = readme.split('<!-- export-snippet', 1)[1].split('```python\n', 1)[1].split('```', 1)[0]

    os.symlink(tiny_onnx.path, tmp_path / 'yolact_base.onnx')
    # Random 4x4-pixel blocks: pixel noise would not survive JPEG well enough to score above 0.3.
    blocks = np.random.default_rng(5).integers(0, 256, size=(IMAGE_H // 4 + 1, IMAGE_W // 4 + 1, 3),
                                               dtype=np.uint8)
    image = np.ascontiguousarray(blocks.repeat(4, axis=0).repeat(4, axis=1)[:IMAGE_H, :IMAGE_W])
    cv2.imwrite(str(tmp_path / 'image.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    (tmp_path / 'snippet.py').write_text(snippet)
    runner = "import sys; sys.modules['torch'] = None; exec(open('snippet.py').read())"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, '-c', runner], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    session = ort_session(tiny_onnx.path)
    meta = onnx_pp.load_metadata(session)
    dets = onnx_pp.detect(session, cv2.imread(str(tmp_path / 'image.jpg')), meta, score_threshold=0.3)
    lines = result.stdout.strip().splitlines()
    assert len(dets.classes) > 0 and len(lines) == len(dets.classes)
    assert lines[0].startswith(meta['class_names'][dets.classes[0]] + ' ')


# ----------------------------------------------------------------------------- TorchScript

def test_torchscript_loads_without_the_repository_and_matches(tmp_path):
    activate(TINY_CONFIG)
    net = random_yolact(seed=2)
    model = exporting.ExportableYolact(net)
    path = str(tmp_path / 'tiny.pt')
    assert exporting.export_torchscript(model, path) == [path]

    images = random_images(2, 128, seed=11)
    np.save(tmp_path / 'images.npy', images)
    script = (
        "import importlib.util, sys, numpy as np, torch\n"
        "if importlib.util.find_spec('yolact') is not None:\n"
        "    sys.exit('the repository is importable here: this check would prove nothing')\n"
        "extra = {'yolact.json': ''}\n"
        "module = torch.jit.load(sys.argv[1], _extra_files=extra)\n"
        "meta = extra['yolact.json']\n"
        "open('meta.json', 'w').write(meta.decode() if isinstance(meta, bytes) else meta)\n"
        "x = torch.from_numpy(np.load('images.npy'))\n"
        "with torch.no_grad():\n"
        "    outs = [module(x[:1]), module(x)]\n"
        "np.savez('outs.npz', *[o.numpy() for pair in outs for o in pair])\n")
    # -I: no PYTHONPATH, no current directory on sys.path; the repository is out of reach.
    result = subprocess.run([sys.executable, '-I', '-c', script, path], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    meta = onnx_pp.load_metadata((tmp_path / 'meta.json').read_text())
    assert meta['input_size'] == 128 and meta['output_names'] == list(exporting.OUTPUT_NAMES)
    saved = np.load(tmp_path / 'outs.npz')
    got_one, got_two = [saved[f'arr_{i}'] for i in range(4)], [saved[f'arr_{i}'] for i in range(4, 8)]
    x = torch.from_numpy(images)
    with torch.no_grad():
        assert_raw_outputs_match(model(x[:1]), got_one, atol=1e-5)
        assert_raw_outputs_match(model(x), got_two, atol=1e-5)
    assert assert_same_detections(net, x, got_two, meta) > 0


# ----------------------------------------------------------------------------- yolact_base via the CLI

def test_full_size_config_cli_export_dynamic_batch(tmp_path, capsys):
    # yolact_resnet50: a published full-size config (yolact_base's graph is twice as deep and its
    # export twice as slow; the tiny tests above cover the same code).
    set_cfg('yolact_resnet50_config')
    cfg.max_size = 160
    net = random_yolact(seed=4)
    # The config is inferred from the name, as eval.py does.
    checkpoint = tmp_path / 'yolact_resnet50_1_2.pth'
    net.save_weights(str(checkpoint))
    output = tmp_path / 'out' / 'yolact_resnet50.onnx'
    code = export.main(['--trained_model', str(checkpoint), '--image_size', '160', '--dynamic_batch',
                        '--output', str(output), '--no_check'])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'Parsed yolact_resnet50_config' in out and f'Wrote {output}' in out

    session = ort_session(str(output))
    meta = onnx_pp.load_metadata(session)
    assert meta['config'] == 'yolact_resnet50' and meta['input_size'] == 160
    model = exporting.ExportableYolact(net)
    images = torch.from_numpy(random_images(3, 160, seed=20))
    with torch.no_grad():
        expected = model(images)
    for batch in (slice(0, 1), slice(0, 3)):  # batch 1 and batch 3 through the same file
        outputs = session.run(None, {'images': images[batch].numpy()})
        assert outputs[3].shape == (batch.stop, 40, 40, 32)
        assert_raw_outputs_match([out[batch] for out in expected], outputs)
    assert assert_same_detections(net, images, outputs, meta) > 0


# ----------------------------------------------------------------------------- YOLACT++

def test_yolact_plus_needs_opset_19_and_exports_with_deform_conv(tmp_path):
    set_cfg('yolact_plus_resnet50_config')
    cfg.max_size = 256  # the mask-IoU head needs prototypes of 63 px or more
    net = random_yolact(seed=5)
    model = exporting.ExportableYolact(net)
    assert model.uses_deformable_convs

    with pytest.raises(exporting.ExportError, match=r'DeformConv only from opset 19.*--opset 19'):
        exporting.export_onnx(model, str(tmp_path / 'plus18.onnx'), opset=18)
    assert not (tmp_path / 'plus18.onnx').exists()

    path = str(tmp_path / 'plus.onnx')
    assert exporting.export_onnx(model, path) == [path, str(tmp_path / 'plus.maskiou.onnx')]
    session = ort_session(path)
    meta = onnx_pp.load_metadata(session)
    assert meta['maskiou_model'] == 'plus.maskiou.onnx'
    assert meta['rescore_mask'] and not meta['rescore_bbox']
    import onnx
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert 'DeformConv' in ops

    images = torch.from_numpy(random_images(1, 256, seed=30))
    with torch.no_grad():
        expected = model(images)
    outputs = session.run(None, {'images': images.numpy()})
    assert_raw_outputs_match(expected, outputs)
    maskiou = onnx_pp.onnx_maskiou(ort_session(str(tmp_path / meta['maskiou_model'])))
    assert assert_same_detections(net, images, outputs, meta, maskiou=maskiou) > 0


def test_yolact_plus_mask_iou_head_needs_a_large_enough_input(tmp_path):
    set_cfg('yolact_plus_resnet50_config')
    cfg.max_size = 128
    model = exporting.ExportableYolact(random_yolact(seed=6))
    with pytest.raises(exporting.ExportError, match='larger --image_size'):
        exporting.export_torchscript(model, str(tmp_path / 'plus.pt'))

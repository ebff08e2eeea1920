"""Drawing and media inference: deploy/visualize.py, deploy/inference.py and eval.py's --image,
--images, --video and --benchmark."""
import math
import os
import re
import shutil

import cv2
import numpy as np
import pytest
import torch

import eval as eval_script
from data.config import COLORS, cfg, set_cfg
from deploy.inference import InferenceOptions, NetRunner, benchmark, evalimage, evalimages, evalvideo, render
from deploy.loading import open_model
from deploy.visualize import DrawOptions, blend_masks, draw_detections, draw_style, label_size, select_for_display
from tests.eval_helpers import (
    ScriptedNet,
    detection_from_masks,
    media_predictor,
    register,
    save_tiny_checkpoint,
    tiny_config,
)
from utils.checkpoint import write_classes

DEVICE = os.environ.get('YOLACT_TEST_DEVICE', 'cpu')
ALPHA = DrawOptions().mask_alpha


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    attr = register(monkeypatch, tiny_config())
    set_cfg(attr)
    yield attr
    set_cfg('yolact_base_config')


@pytest.fixture
def tiny_checkpoint(tiny, tmp_path):
    path = tmp_path / 'yolact_evaltiny_1_10.pth'
    save_tiny_checkpoint(str(path), tiny)
    return path


@pytest.fixture
def val_image(synthetic_root, tmp_path):
    """A synthetic val image (jpg) copied to its own folder."""
    src = sorted((synthetic_root / 'val').iterdir())[0]
    dst = tmp_path / 'input' / src.name
    dst.parent.mkdir()
    shutil.copy(src, dst)
    return dst


def _bgr(class_idx):
    r, g, b = COLORS[(class_idx * 5) % len(COLORS)]
    return np.array([b, g, r], dtype=np.float64)


def _region_net(hw, mask_fn=None, class_idx=0, score=0.9):
    """A network predicting, on every frame, one detection whose mask is mask_fn(h, w) for
    frames of size hw = (h, w)."""
    def script(call, batch):
        return [_one_detection(hw, mask_fn or _disc, class_idx, score, batch.device)
                for _ in range(batch.shape[0])]
    return ScriptedNet(script).to(DEVICE)


def _one_detection(hw, mask_fn, class_idx, score, device):
    mask = mask_fn(*hw)[None].float()
    det = detection_from_masks([class_idx], [score], mask)
    return {k: v.to(device) for k, v in det.items()}


def _disc(h, w):
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    return ((ys - h * 0.55) ** 2 + (xs - w * 0.45) ** 2 < (min(h, w) * 0.25) ** 2).to(torch.uint8)


def _opts(**draw):
    return InferenceOptions(draw=DrawOptions(**draw), no_bar=True)


# ----------------------------------------------------------------------------- drawing

def test_blend_masks_hand_computed():
    image = torch.full((2, 3, 3), 100.0)
    masks = torch.zeros(2, 2, 3)
    masks[0, 0, :2] = 1  # first detection: (0, 0), (0, 1)
    masks[1, 0, 1:] = 1  # second: (0, 1), (0, 2)
    colors = torch.tensor([[200.0, 0.0, 50.0], [0.0, 100.0, 0.0]])
    out = blend_masks(image, masks, colors, 0.5)
    assert out[0, 0].tolist() == [150.0, 50.0, 75.0]
    assert out[0, 2].tolist() == [50.0, 100.0, 50.0]
    # Overlap: the second is painted first, the first (higher score) on top of it.
    assert out[0, 1].tolist() == [0.5 * 50 + 100, 0.5 * 100 + 0, 0.5 * 50 + 25]
    assert (out[1] == 100).all()


def test_select_for_display():
    scores = torch.tensor([0.2, 0.9, 0.5, 0.05])
    assert select_for_display(torch.zeros(4), scores, 2, 0.1).tolist() == [1, 2]
    assert select_for_display(torch.zeros(4), scores, 5, 0.3).tolist() == [1, 2]
    assert select_for_display(torch.zeros(4), scores, 0, 0).tolist() == []


def test_draw_detections_class_colour_and_top_k():
    image = np.full((20, 30, 3), 10, dtype=np.uint8)
    masks = torch.zeros(2, 20, 30)
    masks[0, :5] = 1
    masks[1, 10:] = 1
    out = draw_detections(image, torch.tensor([3, 1]), torch.tensor([0.4, 0.8]), torch.zeros(2, 4),
                          masks, ['a', 'b', 'c', 'd'], DrawOptions(top_k=1, display_bboxes=False,
                                                                   display_text=False))
    expected = np.round(10 * (1 - ALPHA) + _bgr(1) * ALPHA)
    assert (out[15, 5] == expected).all()   # the best detection (class 1) in its class colour
    assert (out[2, 5] == 10).all()           # the second is beyond top_k
    assert out.dtype == np.uint8 and out.shape == image.shape


@pytest.mark.parametrize('side, low, high', [(160, 0.2, 0.45), (640, 0.12, 0.3), (2000, 0.12, 0.3)])
def test_labels_scale_with_the_image(side, low, high):
    """A label covers a bounded share of the width at any size: not a third of a 160-px image, not
    a speck on a 2000-px one; lines and padding grow with the text."""
    style = draw_style(side, side)
    label_w, label_h = label_size('triangle: 0.87', style)
    assert low <= label_w / side <= high
    assert label_h < 0.1 * side
    small, large = draw_style(160, 240), draw_style(2000, 3000)
    assert large.font_scale > 5 * small.font_scale
    assert large.line_thickness > small.line_thickness and large.padding > small.padding
    assert large.text_thickness > small.text_thickness

    # Drawing works at that size, the label sits on the box's top edge, and a box at the top-right
    # corner keeps its label inside the image.
    image = np.zeros((side, side, 3), dtype=np.uint8)
    boxes = torch.tensor([[side // 4, side // 2, side // 2, 3 * side // 4], [side - 10, 0, side, side // 8]])
    out = draw_detections(image, torch.tensor([1, 1]), torch.tensor([0.87, 0.5]), boxes, None,
                          ['circle', 'triangle'], DrawOptions())
    x1, y1 = side // 4, side // 2
    assert (out[y1 - label_h + 1:y1 - 1, x1:x1 + label_w] > 0).any(axis=2).all()
    assert not out[:y1 - label_h - 1, :side // 2].any()
    corner_w, corner_h = label_size('triangle: 0.50', style)
    assert (out[1:corner_h - 1, side - corner_w:] > 0).any(axis=2).all()


# ----------------------------------------------------------------------------- --image

def test_image_masks_change_colour_inside_only(val_image, tmp_path):
    img = cv2.imread(str(val_image))
    mask = _disc(*img.shape[:2]).numpy().astype(bool)
    net = _region_net(img.shape[:2], class_idx=2, score=0.9)
    predictor = media_predictor(net)
    names = cfg.dataset.class_names

    plain = tmp_path / 'plain.png'
    evalimage(predictor, str(val_image), str(plain), _opts(display_bboxes=False, display_text=False))
    out = cv2.imread(str(plain)).astype(np.float64)
    expected_inside = img[mask] * (1 - ALPHA) + _bgr(2) * ALPHA
    assert np.abs(out[mask] - expected_inside).max() <= 1.0
    assert (np.abs(out[mask] - img[mask]).max(axis=1) > 0).all()  # every mask pixel changed
    assert (out[~mask] == img[~mask]).all()                        # nothing outside did

    # With boxes and labels: outside the mask only the box outline and the label may change.
    full = tmp_path / 'full.png'
    evalimage(predictor, str(val_image), str(full), _opts())
    out = cv2.imread(str(full))
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    allowed = mask.copy()
    allowed[y1 - 1:y2 + 2, x1 - 1:x2 + 2] = True  # box outline (and its inside)
    label_w, label_h = label_size(f'{names[2]}: 0.90', draw_style(*img.shape[:2]))
    allowed[max(y1 - label_h - 2, 0):y1 + 4, max(x1 - 2, 0):x1 + label_w + 3] = True
    changed = np.abs(out.astype(int) - img.astype(int)).max(axis=2) > 0
    assert not (changed & ~allowed).any()
    assert changed[y1, x1 + 1:x2].any()  # the box outline is there
    assert changed[y1 - label_h + 1:y1 - 1, x1:x1 + label_w].all()  # the filled label is there


def test_detect_mode_draws_boxes_without_masks(val_image, tmp_path):
    img = cv2.imread(str(val_image))
    cfg.eval_mask_branch = False  # --detect: postprocess hands back coefficients, not masks
    out_path = tmp_path / 'boxes.png'
    evalimage(media_predictor(_region_net(img.shape[:2])), str(val_image), str(out_path), _opts(display_text=False))
    out = cv2.imread(str(out_path))
    mask = _disc(*img.shape[:2]).numpy().astype(bool)
    ys, xs = np.nonzero(mask)
    changed = np.abs(out.astype(int) - img.astype(int)).max(axis=2) > 0
    assert changed[ys.min(), xs.min() + 1:xs.max()].all()  # top edge of the box
    assert not changed[ys.min() + 2:ys.max() - 1, xs.min() + 2:xs.max() - 1].any()  # no mask fill


def test_display_lincomb_writes_the_prototypes(val_image, tmp_path):
    hw = cv2.imread(str(val_image)).shape[:2]
    out_path = tmp_path / 'res.png'
    opts = _opts()
    opts.display_lincomb = True
    evalimage(media_predictor(_region_net(hw)), str(val_image), str(out_path), opts)
    mosaic = cv2.imread(str(tmp_path / 'res_lincomb.png'), cv2.IMREAD_GRAYSCALE)
    assert mosaic.shape == hw  # one prototype: a 1 x 1 grid
    assert mosaic.max() == 255 and mosaic.min() == 0


def test_cli_image_without_display_saves_beside_the_input(tiny_checkpoint, val_image, monkeypatch, capsys):
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--image', str(val_image),
                           '--node_device', DEVICE, '--top_k', '3'])
    out = capsys.readouterr().out
    expected = val_image.with_name(val_image.stem + '_yolact.png')
    assert rc == 0
    assert 'No display available' in out and str(expected) in out
    assert cv2.imread(str(expected)).shape == cv2.imread(str(val_image)).shape


def test_split_in_out():
    split = eval_script.split_in_out
    assert split('a.png:b.png') == ('a.png', 'b.png')
    assert split('a.png') == ('a.png', None)
    assert split('0:cam.mp4') == ('0', 'cam.mp4')
    assert split(r'C:\x\a.png:C:\y\b.png') == (r'C:\x\a.png', r'C:\y\b.png')


# ----------------------------------------------------------------------------- --images

def test_cli_images_processes_a_folder(tiny_checkpoint, synthetic_root, tmp_path, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    for p in sorted((synthetic_root / 'val').iterdir())[:3]:
        shutil.copy(p, src / p.name)
    (src / 'notes.txt').write_text('not an image')
    dst = tmp_path / 'out'
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--images', f'{src}:{dst}',
                           '--node_device', DEVICE])
    assert rc == 0, capsys.readouterr().err
    written = sorted(os.listdir(dst))
    assert written == sorted(p.stem + '.png' for p in src.iterdir() if p.suffix == '.jpg')
    for name in written:
        assert cv2.imread(str(dst / name)).shape == cv2.imread(str(src / (name[:-4] + '.jpg'))).shape


def test_images_folder_with_files_that_are_not_images(tiny_checkpoint, synthetic_root, tmp_path, capsys):
    """Other files are counted and left alone; a broken .jpg is skipped and named; the rest is done."""
    src, dst = tmp_path / 'in', tmp_path / 'out'
    src.mkdir()
    good = sorted((synthetic_root / 'val').iterdir())[:2]
    for p in good:
        shutil.copy(p, src / p.name)
    (src / 'notes.txt').write_text('not an image')
    (src / 'broken.jpg').write_text('not a jpeg either')
    (src / '.DS_Store').write_bytes(b'\0')
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--images', f'{src}:{dst}',
                           '--node_device', DEVICE])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert sorted(os.listdir(dst)) == sorted(p.stem + '.png' for p in good)
    assert f'Ignoring 1 file(s) without an image extension in {src}: notes.txt' in out
    assert f'Skipping {src / "broken.jpg"}: image could not be decoded' in out
    assert f'Done: 2 image(s) written to {dst}; skipped 1 unreadable file(s).' in out

    for p in good:
        (src / p.name).unlink()
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--images', f'{src}:{dst}',
                           '--node_device', DEVICE])
    err = capsys.readouterr().err
    assert rc == 1 and err == f'error: none of the 1 image file(s) in {src} could be read\n'


def test_images_folder_without_images_is_an_error(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(Exception, match='no images'):
        evalimages(media_predictor(_region_net((8, 8))), str(tmp_path / 'empty'), str(tmp_path / 'o'), _opts())


# ----------------------------------------------------------------------------- --video

def _write_video(path, frames, size=(96, 64), fourcc='mp4v'):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()


def _count_frames(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    size = (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    capture.release()
    return count, size


def test_video_batches_frames_and_keeps_the_frame_count(tmp_path):
    src, dst = tmp_path / 'clip.mp4', tmp_path / 'out' / 'clip_out.mp4'
    _write_video(src, 7)
    batches = []

    def script(call, batch):
        batches.append(batch.shape[0])
        return [_one_detection((64, 96), _disc, 1, 0.8, batch.device) for _ in range(batch.shape[0])]

    opts = _opts()
    opts.video_multiframe = 3
    opts.display_fps = True
    n = evalvideo(media_predictor(ScriptedNet(script).to(DEVICE)), str(src), str(dst), opts)
    assert n == 7 and batches == [3, 3, 1]
    assert _count_frames(dst) == (7, (96.0, 64.0))


def test_cli_video(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    src = tmp_path / 'clip.mp4'
    _write_video(src, 4)
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    # No output path and no display: written beside the input.
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--video', str(src),
                           '--video_multiframe', '2', '--node_device', DEVICE, '--no_bar'])
    assert rc == 0, capsys.readouterr().err
    assert _count_frames(tmp_path / 'clip_yolact.mp4') == (4, (96.0, 64.0))

    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--video', str(tmp_path / 'nope.mp4'),
                           '--node_device', DEVICE])
    assert rc == 1 and 'nope.mp4' in capsys.readouterr().err


@pytest.mark.parametrize('kind', ['image', 'text', 'truncated_mp4'])
def test_video_input_that_is_not_a_video_is_named_before_anything_is_written(
        kind, tiny_checkpoint, val_image, tmp_path, capsys):
    if kind == 'image':
        src = val_image  # OpenCV would open it as a one-frame "video"
    else:
        src = tmp_path / 'clip.mp4'
        if kind == 'text':
            src.write_text('this is not a video\n' * 50)
        else:
            _write_video(src, 5)
            src.write_bytes(src.read_bytes()[:-200])  # the index at the end is gone
    dst = tmp_path / 'out' / 'result.mp4'
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--video', f'{src}:{dst}',
                           '--node_device', DEVICE])
    out, err = capsys.readouterr()
    assert rc == 1 and err.count('\n') == 1 and err.startswith('error: ') and str(src) in err, err
    assert 'result.mp4' not in err and not dst.parent.exists()
    assert 'Loading model' not in out  # refused before the model is loaded
    if kind == 'image':
        assert err == f'error: {src} is an image, not a video (use --image {src}:out.png)\n'


def _damaged_avi(path, frames: int, damage: str) -> None:
    """A motion-JPEG avi of `frames` frames whose 6th frame's JPEG bytes are zeroed ('frame') or
    that is cut off in the 6th frame ('truncated')."""
    _write_video(path, frames, fourcc='MJPG')
    data = bytearray(path.read_bytes())
    starts = [m.start() for m in re.finditer(b'\xff\xd8\xff', bytes(data))]  # JPEG start markers
    assert len(starts) == frames
    if damage == 'frame':
        data[starts[5]:starts[6] - 8] = bytes(starts[6] - 8 - starts[5])  # keep the next chunk header
    else:
        data = data[:starts[5] + 100]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage', ['frame', 'truncated'])
def test_damaged_video_frames_are_skipped_and_named(damage, tmp_path, capsys):
    src, dst = tmp_path / 'clip.avi', tmp_path / 'clip_out.mp4'
    _damaged_avi(src, 12, damage)
    net = _region_net((64, 96))
    n = evalvideo(media_predictor(net), str(src), str(dst), _opts())
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('warning:')]
    if damage == 'frame':
        assert n == 11 and _count_frames(dst)[0] == 11  # every other frame is there
        assert lines == [f'warning: {src}: 1 frame(s) could not be decoded and were skipped '
                         f'(first: frame 6 of 12); the video is damaged']
    else:
        assert n == 5 and _count_frames(dst)[0] == 5
        assert lines == [f'warning: {src}: no frame could be decoded after frame 5 of the 12 the file '
                         f'announces; the video is truncated or damaged']


# ----------------------------------------------------------------------------- --benchmark / --amp

def test_benchmark_excludes_warmup(synthetic_root, capsys):
    frame = np.zeros((32, 48, 3), dtype=np.uint8)
    net = _region_net((32, 48))
    fps = benchmark(NetRunner(net), lambda i: frame, [0, 1, 2], top_k=5, warmup=2, no_bar=True)
    assert net.calls == 5  # 2 warm-up passes + 3 timed
    assert math.isfinite(fps) and fps > 0
    assert '3 images, 2 warm-up passes' in capsys.readouterr().out


def test_cli_benchmark_prints_finite_fps(tiny_checkpoint, synthetic_root, capsys):
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--val_data', str(synthetic_root),
                           '--benchmark', '--max_images', '2', '--no_bar', '--node_device', DEVICE])
    out = capsys.readouterr().out
    assert rc == 0
    fps = float(re.search(r'Average:\s*([0-9.]+) fps', out).group(1))
    assert math.isfinite(fps) and fps > 0
    assert 'mAP' not in out  # nothing is scored or drawn


def test_cli_benchmark_times_images_of_other_classes(tiny, tiny_checkpoint, synthetic_root, capsys):
    """Timing needs pictures, not the model's classes: a dataset of another class set is timed,
    while its mAP is still refused."""
    write_classes(str(tiny_checkpoint), tiny, ('ring', 'bar', 'dot', 'arc', 'cone', 'knot'), None)
    argv = ['--trained_model', str(tiny_checkpoint), '--val_data', str(synthetic_root), '--max_images', '2',
            '--no_bar', '--node_device', DEVICE]
    assert eval_script.main(argv) == 1
    assert 'evaluate on a dataset of the classes it was trained on' in capsys.readouterr().err
    assert eval_script.main(argv + ['--benchmark']) == 0
    out = capsys.readouterr().out
    assert re.search(r'Average:\s*[0-9.]+ fps', out) and '2 images' in out and 'no mAP' in out
    opts = eval_script.parse_args(argv + ['--benchmark'])
    timed, parsed = eval_script.setup_config(opts, open_model(opts.trained_model), evaluating=True)
    assert list(parsed) == [timed.dataset.valid_info]  # parsed once, for the dataset too
    assert timed.dataset.class_names[0] == 'ring'  # the model kept its classes
    assert timed.dataset.valid_info.startswith(str(synthetic_root))  # and times the dataset's pictures


def test_cli_leaves_the_global_config_alone(tiny_checkpoint, synthetic_root, capsys):
    """eval.py holds its config as a value: its --val_data classes and --detect never reach `cfg`."""
    set_cfg('yolact_base_config')
    before = (cfg.name, cfg.num_classes, cfg.dataset.name, cfg.eval_mask_branch)
    assert eval_script.main(['--trained_model', str(tiny_checkpoint), '--val_data', str(synthetic_root), '--detect',
                             '--benchmark', '--max_images', '1', '--no_bar', '--node_device', DEVICE]) == 0
    assert 'fps' in capsys.readouterr().out
    assert (cfg.name, cfg.num_classes, cfg.dataset.name, cfg.eval_mask_branch) == before


def test_amp_inference_gives_float32_results(tiny_checkpoint):
    from yolact import Yolact
    net = Yolact(cfg)
    net.load_weights(str(tiny_checkpoint))
    net.eval().to(DEVICE)
    net.detect.use_fast_nms = True
    # bf16 asked for explicitly: `auto` is float32 on a CPU without native bf16 (test_device.py).
    predictor = NetRunner(net, amp=True, amp_dtype=torch.bfloat16 if DEVICE == 'cpu' else torch.float16)
    assert predictor.dtype == (torch.bfloat16 if DEVICE == 'cpu' else torch.float16)
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    on_device, det_output = predictor([frame])
    det = det_output[0]['detection']
    assert det is not None and det['box'].dtype == torch.float32 and det['proto'].dtype == torch.float32
    drawn = render(on_device[0], det_output, 0, cfg.dataset.class_names, _opts())
    assert drawn.shape == (48, 64, 3)

"""deploy/result_files.py and eval.py --save_json / --save_masks: JSON records, instance-id PNGs,
and that they hold exactly the detections that are drawn."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import deploy.inference as inference
import deploy.result_files as result_files
import eval as eval_script
from data.config import cfg
from data.labelme2coco import shape_mask
from deploy.inference import InferenceError, InferenceOptions, evalimage
from deploy.result_files import (
    detections_to_records,
    instance_image,
    result_document,
    result_file_paths,
    write_instance_png,
    write_json,
)
from deploy.visualize import DrawOptions
from tests.eval_helpers import ScriptedNet, detection_from_masks, media_predictor

# The tiny config (autouse) and its checkpoint, shared with the inference tests.
from tests.test_inference import tiny, tiny_checkpoint  # noqa: F401

DEVICE = os.environ.get('YOLACT_TEST_DEVICE', 'cpu')
NAMES = ('circle', 'triangle', 'square')
H, W = 40, 60


def _masks():
    """Three masks on an H x W image: two overlapping rectangles and a separate one."""
    masks = torch.zeros(3, H, W)
    masks[0, 5:20, 10:30] = 1    # 15 x 20
    masks[1, 10:25, 20:40] = 1   # 15 x 20, overlaps mask 0 in [10:20, 20:30]
    masks[2, 30:38, 45:55] = 1   # 8 x 10
    return masks


def _tight_boxes(masks):
    out = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return torch.tensor(out)


# ----------------------------------------------------------------------------- records / PNG

def test_records_from_hand_made_detections():
    masks = _masks()
    classes, scores = torch.tensor([0, 2, 1]), torch.tensor([0.5, 0.9, 0.7])
    boxes = _tight_boxes(masks)
    records = detections_to_records(classes, scores, boxes, masks, NAMES)

    order = [1, 2, 0]  # best score first
    assert [r['class_name'] for r in records] == ['square', 'triangle', 'circle']
    assert [r['class_id'] for r in records] == [2, 1, 0]
    assert [r['score'] for r in records] == pytest.approx([0.9, 0.7, 0.5])
    assert [r['box'] for r in records] == [boxes[i].tolist() for i in order]
    assert records[0]['box'] == [20, 10, 40, 25]
    json.dumps(records)  # serialisable as it is
    for r, i in zip(records, order):
        rle = r['mask']['rle']
        assert rle['size'] == [H, W] and isinstance(rle['counts'], str)
        decoded = mask_utils.decode({'size': rle['size'], 'counts': rle['counts'].encode()})
        assert (decoded == masks[i].numpy()).all()
        assert r['mask']['area'] == int(masks[i].sum()) == int(mask_utils.area(
            {'size': rle['size'], 'counts': rle['counts'].encode()}))
        polygons = r['mask']['polygons']
        assert polygons and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        for p in polygons:
            xs, ys = np.array(p[0::2]), np.array(p[1::2])
            assert xs.min() >= 0 and xs.max() <= W and ys.min() >= 0 and ys.max() <= H
            x1, y1, x2, y2 = r['box']  # pixel edges, as the polygon's corners
            assert xs.min() == x1 and xs.max() == x2 and ys.min() == y1 and ys.max() == y2


def test_records_of_box_only_results_have_no_mask():
    records = detections_to_records(torch.tensor([1]), torch.tensor([0.4]), torch.tensor([[1, 2, 3, 4]]), None,
                                    NAMES)
    assert records == [{'class_name': 'triangle', 'class_id': 1, 'score': pytest.approx(0.4),
                        'box': [1, 2, 3, 4]}]


def test_polygons_of_lines_and_pixels_have_their_area():
    masks = torch.zeros(1, H, W)
    masks[0, 3, 3] = 1          # a single pixel
    masks[0, 10, 5:15] = 1      # a horizontal line
    masks[0, 20:30, 20:30] = 1  # a square
    (record,) = detections_to_records(torch.tensor([0]), torch.tensor([1.0]), torch.tensor([[0, 0, W, H]]),
                                      masks, NAMES)
    polygons = record['mask']['polygons']
    assert [20, 20, 20, 30, 30, 30, 30, 20] in polygons and [3, 3, 3, 4, 4, 4, 4, 3] in polygons
    assert len(polygons) == 3 and record['mask']['area'] == 1 + 10 + 100
    assert (_coco_rasterised(polygons, H, W) == masks[0].numpy()).all()


# ----------------------------------------------------------------------------- polygon convention

def _coco_rasterised(polygons, height, width):
    """The polygons as pycocotools (COCO's loaders, labelme2coco) turn them into pixels."""
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)


def _labelme_rasterised(polygons, height, width):
    """The polygons as labelme shapes, through data/labelme2coco.py's rasteriser."""
    out = np.zeros((height, width), dtype=bool)
    for p in polygons:
        shape = {'shape_type': 'polygon', 'points': [[p[i], p[i + 1]] for i in range(0, len(p), 2)]}
        out |= shape_mask(shape, height, width)
    return out


def _filled(mask):
    """The mask with its holes filled (COCO polygons are outer outlines only)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, dtype=np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out.astype(bool) | mask.astype(bool)


def _convex_masks(count, height=50, width=70, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        m = np.zeros((height, width), dtype=np.uint8)
        cx, cy = int(rng.integers(-5, width + 5)), int(rng.integers(-5, height + 5))  # may cross the border
        if i % 3 == 0:
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            m[y:y + int(rng.integers(1, 25)), x:x + int(rng.integers(1, 25))] = 1
        elif i % 3 == 1:
            cv2.circle(m, (cx, cy), int(rng.integers(1, 20)), 1, thickness=-1)
        else:
            cv2.ellipse(m, (cx, cy), (int(rng.integers(1, 25)), int(rng.integers(1, 25))),
                        float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        if m.any():
            yield m


@pytest.mark.parametrize('rasterise', [_coco_rasterised, _labelme_rasterised], ids=['pycocotools', 'labelme2coco'])
def test_polygons_of_convex_shapes_rasterise_to_the_same_pixels(rasterise):
    square = np.zeros((H, W), dtype=np.uint8)
    square[5:15, 7:17] = 1  # 10 x 10: traced through pixel centres it came back as 9 x 9
    assert result_files.mask_polygons(square) == [[7, 5, 7, 15, 17, 15, 17, 5]]
    masks = list(_convex_masks(60)) + [square]
    for m in masks:
        assert np.array_equal(rasterise(result_files.mask_polygons(m), *m.shape), m.astype(bool))


def test_polygons_of_any_shape_rasterise_to_the_filled_mask():
    rng = np.random.default_rng(1)
    shapes = []
    for _ in range(40):  # blobs of smoothed noise: ragged outlines, several parts, holes
        noise = cv2.GaussianBlur(rng.random((40, 56)).astype(np.float32), (0, 0), float(rng.uniform(1, 3)))
        shapes.append((noise > np.quantile(noise, rng.uniform(0.5, 0.9))).astype(np.uint8))
    thin = np.zeros((30, 30), dtype=np.uint8)
    cv2.line(thin, (0, 29), (29, 3), 1, thickness=1)  # one pixel wide, steps touching at corners
    shapes += [thin, np.eye(30, dtype=np.uint8), np.ones((30, 30), dtype=np.uint8)]
    border = np.zeros((30, 30), dtype=np.uint8)
    border[:12, :5] = border[25:, 20:] = 1
    shapes.append(border)
    for m in shapes:
        got = _coco_rasterised(result_files.mask_polygons(m), *m.shape)
        # Exact up to holes, so IoU 1 for an instance without holes.
        assert np.array_equal(got, _filled(m))
    assert sum(not np.array_equal(_filled(m), m.astype(bool)) for m in shapes) >= 3  # holes were tested


def test_instance_png_values_and_overlap(tmp_path):
    masks = _masks()[[1, 2, 0]]  # best first, as the JSON list
    path = tmp_path / 'a_instances.png'
    write_instance_png(str(path), masks, H, W)
    png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.shape == (H, W)
    assert set(np.unique(png).tolist()) == {0, 1, 2, 3}
    assert (png[masks[0].bool().numpy()] == 1).all()  # the best keeps all of its pixels, overlap included
    assert (png[15, 25], png[7, 12], png[12, 35], png[34, 50], png[0, 0]) == (1, 3, 1, 2, 0)
    assert (png == instance_image(masks, H, W)).all()
    # No detections: all background, still the image's size.
    write_instance_png(str(path), None, H, W)
    empty = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert empty.dtype == np.uint16 and empty.shape == (H, W) and not empty.any()
    assert [p.name for p in tmp_path.iterdir()] == ['a_instances.png']  # no temporary file left


def test_json_file_and_paths(tmp_path):
    assert result_file_paths(str(tmp_path / 'out' / 'img1.png')) == (
        str(tmp_path / 'out' / 'img1.json'), str(tmp_path / 'out' / 'img1_instances.png'))
    path = tmp_path / 'out' / 'img1.json'
    write_json(str(path), result_document('img1.jpg', H, W, []))
    assert json.loads(path.read_text()) == {'image': 'img1.jpg', 'height': H, 'width': W, 'detections': []}


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'r.json'
    write_json(str(path), result_document('old.jpg', H, W, []))

    def interrupted(src, dst):
        assert json.loads(open(src).read())['image'] == 'new.jpg'  # written in full, elsewhere
        raise KeyboardInterrupt

    monkeypatch.setattr(result_files.os, 'replace', interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(str(path), result_document('new.jpg', H, W, []))
    monkeypatch.undo()
    assert json.loads(path.read_text())['image'] == 'old.jpg'
    assert [p.name for p in tmp_path.iterdir()] == ['r.json']  # the temporary file is gone


# ----------------------------------------------------------------------------- through evalimage

def _scripted_predictor(classes, scores, masks, opts=None):
    def script(call, batch):
        det = detection_from_masks(classes, scores, masks)
        return [{k: v.to(batch.device) for k, v in det.items()} for _ in range(batch.shape[0])]
    return media_predictor(ScriptedNet(script).to(DEVICE), opts, NAMES)


def test_saved_detections_are_the_drawn_ones(tmp_path):
    """--top_k 2 --score_threshold 0.6 of four detections: the JSON, the PNG and the picture all
    hold the same two, best first."""
    img_path = tmp_path / 'in' / 'pic.png'
    img_path.parent.mkdir()
    cv2.imwrite(str(img_path), np.full((H, W, 3), 100, dtype=np.uint8))
    masks = torch.cat([_masks(), torch.zeros(1, H, W)])
    masks[3, 0:4, 0:4] = 1
    classes, scores = [0, 2, 1, 1], [0.5, 0.9, 0.7, 0.65]
    opts = InferenceOptions(draw=DrawOptions(top_k=2, score_threshold=0.6, display_bboxes=False,
                                             display_text=False),
                            save_json=True, save_masks=True, no_bar=True)
    out = tmp_path / 'out' / 'pic.png'
    evalimage(_scripted_predictor(classes, scores, masks, opts), str(img_path), str(out), opts)

    doc = json.loads((tmp_path / 'out' / 'pic.json').read_text())
    assert (doc['image'], doc['height'], doc['width']) == ('pic.png', H, W)
    assert [(d['class_name'], round(d['score'], 2)) for d in doc['detections']] == [('square', 0.9),
                                                                                    ('triangle', 0.7)]
    png = cv2.imread(str(tmp_path / 'out' / 'pic_instances.png'), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and (png == instance_image(masks[[1, 2]], H, W)).all()

    drawn = cv2.imread(str(out))
    changed = (drawn != 100).any(axis=2)
    assert (changed == (png > 0)).all()  # drawn exactly where the saved masks are


def test_detect_mode_json_without_masks_and_no_instance_png(tmp_path):
    img_path = tmp_path / 'pic.png'
    cv2.imwrite(str(img_path), np.zeros((H, W, 3), dtype=np.uint8))
    cfg.eval_mask_branch = False
    predictor = _scripted_predictor([0, 2], [0.5, 0.9], _masks()[:2])
    opts = InferenceOptions(save_json=True, no_bar=True)
    evalimage(predictor, str(img_path), str(tmp_path / 'o.png'), opts)
    doc = json.loads((tmp_path / 'o.json').read_text())
    assert [d['class_name'] for d in doc['detections']] == ['square', 'circle']
    assert all('mask' not in d for d in doc['detections'])
    assert doc['detections'][0]['box'] == [20, 10, 40, 25]

    opts.save_masks = True
    with pytest.raises(InferenceError, match='--save_masks needs masks'):
        evalimage(predictor, str(img_path), str(tmp_path / 'p.png'), opts)
    assert not (tmp_path / 'p.png').exists()


def test_image_without_output_path_saves_beside_the_input(tmp_path, monkeypatch, capsys):
    """No OUT: the files sit where the picture goes, <name>_yolact.*, also when the picture is only
    shown in a window."""
    img_path = tmp_path / 'pic.jpg'
    cv2.imwrite(str(img_path), np.zeros((H, W, 3), dtype=np.uint8))
    predictor = _scripted_predictor([0], [0.8], _masks()[:1])
    opts = InferenceOptions(save_json=True, save_masks=True, no_bar=True)
    monkeypatch.setattr(inference, 'display_available', lambda: False)
    assert evalimage(predictor, str(img_path), None, opts) == str(tmp_path / 'pic_yolact.png')
    assert f"Detections -> {tmp_path / 'pic_yolact.json'}" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ['pic.jpg', 'pic_yolact.json', 'pic_yolact.png',
                                            'pic_yolact_instances.png']

    for name in ('pic_yolact.json', 'pic_yolact.png', 'pic_yolact_instances.png'):
        (tmp_path / name).unlink()
    shown = []
    monkeypatch.setattr(inference, 'display_available', lambda: True)
    monkeypatch.setattr(cv2, 'imshow', lambda title, img: shown.append(title))
    monkeypatch.setattr(cv2, 'waitKey', lambda delay: -1)
    monkeypatch.setattr(cv2, 'destroyAllWindows', lambda: None)
    assert evalimage(predictor, str(img_path), None, opts) is None
    assert shown == [str(img_path)]
    assert sorted(os.listdir(tmp_path)) == ['pic.jpg', 'pic_yolact.json', 'pic_yolact_instances.png']


# ----------------------------------------------------------------------------- eval.py

def test_cli_images_save_json_and_masks(tiny_checkpoint, synthetic_root, tmp_path, capsys):
    src, dst = tmp_path / 'in', tmp_path / 'out'
    src.mkdir()
    inputs = sorted((synthetic_root / 'val').iterdir())[:2]
    for p in inputs:
        shutil.copy(p, src / p.name)
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--images', f'{src}:{dst}', '--save_json',
                           '--save_masks', '--top_k', '4', '--node_device', DEVICE])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert 'as <name>.json and <name>_instances.png' in out
    names = cfg.dataset.class_names
    found = 0
    for p in inputs:
        h, w = cv2.imread(str(p)).shape[:2]
        doc = json.loads((dst / (p.stem + '.json')).read_text())
        assert (doc['image'], doc['height'], doc['width']) == (p.name, h, w)
        dets = doc['detections']
        assert len(dets) <= 4 and [d['score'] for d in dets] == sorted((d['score'] for d in dets), reverse=True)
        for d in dets:
            assert d['class_name'] == names[d['class_id']]
            assert d['mask']['rle']['size'] == [h, w]
        found += len(dets)
        png = cv2.imread(str(dst / (p.stem + '_instances.png')), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == (h, w) and png.max() <= len(dets)
    assert found > 0  # the random tiny network does detect something on these images
    assert sorted(os.listdir(dst)) == sorted(f'{p.stem}{s}' for p in inputs
                                             for s in ('.png', '.json', '_instances.png'))


def _error_line(capsys):
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: '), err
    return err.strip()


def test_cli_save_flags_need_image_inputs(tiny_checkpoint, tmp_path, capsys):
    video = tmp_path / 'clip.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 10, (32, 32))
    writer.write(np.zeros((32, 32, 3), dtype=np.uint8))
    writer.release()
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--video', str(video), '--save_json',
                           '--node_device', DEVICE])
    assert rc == 1
    assert _error_line(capsys).startswith('error: --save_json needs --image or --images')

    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), np.zeros((32, 32, 3), dtype=np.uint8))
    rc = eval_script.main(['--trained_model', str(tiny_checkpoint), '--image', str(image), '--save_masks',
                           '--detect', '--node_device', DEVICE])
    assert rc == 1
    assert _error_line(capsys) == 'error: --save_masks needs masks; --detect turns the mask branch off'

    opts = eval_script.build_parser().parse_args(['--save_json', '--save_masks'])
    with pytest.raises(eval_script.EvalError, match='^--save_json and --save_masks need --image or --images$'):
        eval_script.check_media_inputs(opts)

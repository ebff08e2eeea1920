"""The synthetic dataset generator: determinism, exact masks, COCO validity, crowds and occlusion."""
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from data.config import SYNTHETIC_CLASSES
from data.synthetic import (
    MAX_INSTANCES,
    MAX_ROTATION_DEG,
    MIN_VISIBLE_AREA,
    MIN_VISIBLE_FRACTION,
    RADIUS_RANGE,
    generate,
    main,
    min_visible_area,
    render_image,
)

# Parameters of the session fixture `synthetic_root` (tests/conftest.py).
SYNTHETIC_SEED, SYNTHETIC_SIZE, SYNTHETIC_TRAIN, SYNTHETIC_VAL = 0, 256, 8, 4


def _read_bytes(path):
    with open(path, 'rb') as f:
        return f.read()


def _coco(path) -> COCO:
    coco = COCO()
    with open(path) as f:
        coco.dataset = json.load(f)
    coco.createIndex()
    return coco


def test_layout_and_categories(synthetic_root):
    for split, count in (('train', SYNTHETIC_TRAIN), ('val', SYNTHETIC_VAL)):
        coco = COCO(str(synthetic_root / f'instances_{split}.json'))  # pycocotools' own loader
        cats = coco.loadCats(coco.getCatIds())
        assert [(c['id'], c['name']) for c in cats] == list(enumerate(SYNTHETIC_CLASSES, start=1))
        assert SYNTHETIC_CLASSES == ('circle', 'triangle', 'square', 'star', 'hexagon', 'cross')
        assert len(coco.imgs) == count
        for img in coco.imgs.values():
            path = synthetic_root / split / img['file_name']
            assert cv2.imread(str(path)).shape == (img['height'], img['width'], 3) == (SYNTHETIC_SIZE,) * 2 + (3,)
        assert len(coco.anns) >= count  # at least one object per image on average
        assert len({a['id'] for a in coco.anns.values()}) == len(coco.anns)
    meta = json.loads((synthetic_root / 'meta.json').read_text())
    assert (meta['train'], meta['val'], meta['seed'], meta['size']) == \
        (SYNTHETIC_TRAIN, SYNTHETIC_VAL, SYNTHETIC_SEED, SYNTHETIC_SIZE)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    generate(str(a), 5, 2, seed=3, size=96, workers=1, progress=False)
    generate(str(b), 5, 2, seed=3, size=96, workers=2, progress=False)  # worker count must not matter
    generate(str(c), 5, 2, seed=4, size=96, workers=1, progress=False)
    for rel in ['instances_train.json', 'instances_val.json', 'train/000001.jpg', 'train/000005.jpg',
                'val/000002.jpg']:
        assert _read_bytes(a / rel) == _read_bytes(b / rel), rel
    assert _read_bytes(a / 'train/000001.jpg') != _read_bytes(c / 'train/000001.jpg')
    assert _read_bytes(a / 'instances_train.json') != _read_bytes(c / 'instances_train.json')
    # train and val are different images
    assert _read_bytes(a / 'train/000001.jpg') != _read_bytes(a / 'val/000001.jpg')


def test_json_masks_equal_rendered_visible_pixels(synthetic_root):
    """Decoding the json gives exactly the visible pixels of each rendered shape, in paint order."""
    for split in ('train', 'val'):
        coco = _coco(synthetic_root / f'instances_{split}.json')
        for img_id in coco.imgs:
            rendered = render_image(SYNTHETIC_SEED, split, img_id, SYNTHETIC_SIZE)
            anns = coco.imgToAnns.get(img_id, [])
            assert len(anns) == len(rendered.instances)
            for ann, inst in zip(anns, rendered.instances):
                decoded = coco.annToMask(ann).astype(bool)
                np.testing.assert_array_equal(decoded, inst.mask)
                assert ann['category_id'] == inst.category_id
                assert ann['iscrowd'] == int(inst.iscrowd)
                if isinstance(ann['segmentation'], list):
                    assert inst.polygon is not None and ann['segmentation'] == [inst.polygon]
            # visible masks never overlap: each pixel belongs to the shape painted last
            if rendered.instances:
                stack = np.stack([i.mask for i in rendered.instances])
                assert stack.sum(0).max() <= 1


def test_boxes_and_areas_are_tight(synthetic_root):
    for split in ('train', 'val'):
        coco = _coco(synthetic_root / f'instances_{split}.json')
        for ann in coco.anns.values():
            mask = coco.annToMask(ann).astype(bool)
            rows, cols = np.nonzero(mask)
            x, y, w, h = ann['bbox']
            assert (x, y) == (cols.min(), rows.min())
            assert (x + w, y + h) == (cols.max() + 1, rows.max() + 1)  # pixel j covers [j, j + 1)
            assert ann['area'] == mask.sum() == mask_utils.area(coco.annToRLE(ann))
            assert ann['area'] >= min_visible_area(SYNTHETIC_SIZE)


def test_pixels_inside_masks_have_the_instance_colour(synthetic_root):
    """The JPEG pixels under a mask are close to the colour that shape was drawn with."""
    checked = 0
    for img_id in range(1, SYNTHETIC_TRAIN + 1):
        image = cv2.imread(str(synthetic_root / 'train' / f'{img_id:06d}.jpg')).astype(np.float32)
        for inst in render_image(SYNTHETIC_SEED, 'train', img_id, SYNTHETIC_SIZE).instances:
            # interior only: JPEG blurs colours across a shape's edge
            inner = cv2.erode(inst.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if inner.sum() < 10:
                continue
            diff = np.abs(image[inner] - np.array(inst.colour, dtype=np.float32))
            assert np.median(diff) < 20, (img_id, np.median(diff, axis=0))
            checked += 1
    assert checked >= SYNTHETIC_TRAIN


def test_renders_crowds_occlusion_and_border_cuts():
    """Over 80 images the generator makes every kind of hard case it promises."""
    size = 128
    n_images = 80
    crowd_images = occluded = border = 0
    polygons = 0
    classes = set()
    counts = []
    for idx in range(1, n_images + 1):
        rendered = render_image(7, 'train', idx, size)
        insts = rendered.instances
        counts.append(sum(not i.iscrowd for i in insts))
        crowd_images += any(i.iscrowd for i in insts)
        for inst in insts:
            classes.add(inst.category_id)
            rows, cols = np.nonzero(inst.mask)
            if rows.min() == 0 or cols.min() == 0 or rows.max() == size - 1 or cols.max() == size - 1:
                border += 1
            polygons += inst.polygon is not None
            if inst.iscrowd:
                # a cluster of several separate small shapes
                n_parts, _ = cv2.connectedComponents(inst.mask.astype(np.uint8))
                assert n_parts - 1 >= 2
        occluded += sum(1 for i in insts if i.polygon is None and not i.iscrowd)
    assert 2 <= crowd_images <= 25  # about one image in ten
    assert border >= 10
    assert occluded >= 10  # RLE used for occluded / cut shapes
    assert polygons >= 50
    assert classes == set(range(1, len(SYNTHETIC_CLASSES) + 1))
    assert min(counts) >= 0 and max(counts) <= MAX_INSTANCES and np.mean(counts) >= 4


def test_later_shapes_occlude_earlier_ones():
    """Each visible mask is its shape minus everything painted after it, and some shapes are hidden."""
    partly_hidden = 0
    for idx in range(1, 40):
        insts = render_image(1, 'train', idx, 128).instances
        covered = np.zeros((128, 128), bool)
        for inst in reversed(insts):  # last painted first
            np.testing.assert_array_equal(inst.mask, inst.full & ~covered)
            partly_hidden += bool((inst.full & covered).any())
            covered |= inst.full
    assert partly_hidden >= 5


def test_regeneration_is_skipped_unless_parameters_change(tmp_path, capsys):
    out = tmp_path / 'ds'
    assert generate(str(out), 3, 1, seed=0, size=64, workers=1, progress=False) is True
    first = _read_bytes(out / 'train/000001.jpg')
    (out / 'train/000001.jpg').write_bytes(b'marker')  # would be rewritten by a regeneration
    assert generate(str(out), 3, 1, seed=0, size=64, workers=1, progress=False) is False
    assert _read_bytes(out / 'train/000001.jpg') == b'marker'
    assert generate(str(out), 3, 1, seed=0, size=64, force=True, workers=1, progress=False) is True
    assert _read_bytes(out / 'train/000001.jpg') == first
    # fewer images: stale files of the larger run are removed
    assert generate(str(out), 2, 1, seed=0, size=64, workers=1, progress=False) is True
    assert sorted(p.name for p in (out / 'train').iterdir()) == ['000001.jpg', '000002.jpg']

    assert main(['--out', str(out), '--train', '2', '--val', '1', '--size', '64']) == 0
    assert 'already holds' in capsys.readouterr().out


def test_command_line_writes_layout(tmp_path):
    out = tmp_path / 'cli'
    assert main(['--out', str(out), '--train', '2', '--val', '1', '--seed', '5', '--size', '64',
                 '--workers', '1']) == 0
    assert (out / 'train/000002.jpg').is_file() and (out / 'val/000001.jpg').is_file()
    train = json.loads((out / 'instances_train.json').read_text())
    assert [img['file_name'] for img in train['images']] == ['000001.jpg', '000002.jpg']
    assert json.loads((out / 'meta.json').read_text())['seed'] == 5


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='split'):
        render_image(0, 'test', 1)
    with pytest.raises(ValueError, match='size'):
        generate(str(tmp_path), 1, 1, size=8)


def test_sliver_threshold_scales_with_the_image():
    assert min_visible_area(256) == round(MIN_VISIBLE_FRACTION * 256 * 256) > MIN_VISIBLE_AREA
    assert min_visible_area(32) == MIN_VISIBLE_AREA  # the absolute floor for tiny images


def test_object_sizes_follow_the_radius_range():
    """Fully visible shapes span about 2 x radius: never the few-pixel objects no detector names."""
    size, sides = 128, []
    for index in range(1, 41):
        for inst in render_image(0, 'val', index, size).instances:
            if inst.polygon is not None:  # whole shape visible, inside the image
                rows, cols = np.nonzero(inst.mask)
                sides.append(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
    sides = np.array(sides)
    assert len(sides) > 40
    # A shape's longest extent lies between ~1.3 r (a stretched triangle) and 2.3 r (a stretched cross).
    assert sides.min() >= 1.2 * RADIUS_RANGE[0] * size
    assert sides.max() <= 2.4 * RADIUS_RANGE[1] * size
    assert np.median(sides) >= 0.2 * size


def test_triangles_stay_upright():
    """Shapes turn by at most MAX_ROTATION_DEG: below 30 degrees a triangle still points up, so its
    top rows are narrower than its bottom rows."""
    assert MAX_ROTATION_DEG < 30
    checked = 0
    for index in range(1, 61):
        for inst in render_image(0, 'train', index, 128).instances:
            if inst.category_id != 2 or inst.polygon is None:  # 2: triangle, fully visible
                continue
            rows = np.nonzero(inst.mask)[0]
            top, bottom = rows.min(), rows.max()
            quarter = max((bottom - top) // 4, 1)
            widths = inst.mask.sum(axis=1)
            assert widths[top:top + quarter].sum() < widths[bottom - quarter + 1:bottom + 1].sum()
            checked += 1
    assert checked >= 5

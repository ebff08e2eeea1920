"""labelme -> COCO conversion: every shape kind, groups, embedded / referenced / EXIF-rotated images,
skips and errors, the split, --labels, and the labelme output of the synthetic generator."""
import base64
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data.coco import COCODetection, coco_dataset_paths
from data.labelme2coco import ConversionError, convert, main
from data.synthetic import TRANSFER_CLASSES, render_image
from data.synthetic import main as synthetic_main

H, W = 48, 64


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode('ascii')


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode('.png', array)
    assert ok
    return buf.tobytes()


def _shape(label, points, shape_type='polygon', group_id=None, mask=None) -> dict:
    return {'label': label, 'points': points, 'group_id': group_id, 'description': '',
            'shape_type': shape_type, 'flags': {}, 'mask': mask}


def _write_labelme(path, shapes, image_path=None, image_data=None, height=H, width=W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({'version': '5.4.1', 'flags': {}, 'shapes': shapes, 'imagePath': image_path,
                                'imageData': image_data, 'imageHeight': height, 'imageWidth': width}))


def _grey(height=H, width=W, value=60) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def _blank(height=H, width=W) -> np.ndarray:
    return np.zeros((height, width), bool)


def _decode(ann: dict, height=H, width=W) -> np.ndarray:
    segm = ann['segmentation']
    rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width)) if isinstance(segm, list) else segm
    return mask_utils.decode(rle).astype(bool)


def _load(path):
    return json.loads(path.read_text())


# The mask of the labelme 'mask' shape of b/img.json: a 10 x 10 box at (30, 5) with a pattern.
BOX_MASK = np.indices((10, 10)).sum(0) % 3 != 0


def _expected_masks():
    """file name -> [(label, mask)] of the fixture folder, computed without the converter."""
    l_shape = _blank()
    l_shape[2:6, 2:12] = True
    l_shape[6:12, 2:6] = True
    rect = _blank()
    rect[20:40, 10:30] = True
    ys, xs = np.mgrid[:H, :W]
    circle = (xs + 0.5 - 40) ** 2 + (ys + 0.5 - 30) ** 2 <= 6 ** 2
    box = _blank()
    box[5:15, 30:40] = BOX_MASK
    group = _blank()
    group[30:36, 2:8] = True
    group[30:36, 20:26] = True
    same_id_other_label = _blank()
    same_id_other_label[40:44, 40:50] = True
    return {'a__img.png': [('cat', l_shape), ('dog', rect), ('cat', circle)],
            'b__img.png': [('dog', box), ('cat', group), ('dog', same_id_other_label)]}


@pytest.fixture
def labelme_src(tmp_path):
    """A labelme folder: a/img.json (referenced PNG; polygon, rectangle, circle, line), b/img.json
    (embedded PNG; mask shape, a group of two polygons, same group_id under another label), and
    three bad files."""
    src = tmp_path / 'src'
    (src / 'a').mkdir(parents=True)
    cv2.imwrite(str(src / 'a' / 'img.png'), _grey())
    _write_labelme(src / 'a' / 'img.json', [
        _shape('cat', [[2, 2], [12, 2], [12, 6], [6, 6], [6, 12], [2, 12]]),
        _shape('dog', [[30, 40], [10, 20]], 'rectangle'),  # corners in either order
        _shape('cat', [[40, 30], [40, 36]], 'circle'),
        _shape('cat', [[0, 0], [10, 10]], 'line'),
    ], image_path='img.png')
    _write_labelme(src / 'b' / 'img.json', [
        _shape('dog', [[30, 5], [39, 14]], 'mask', mask=_b64(_png(BOX_MASK.astype(np.uint8) * 255))),
        _shape('cat', [[2, 30], [8, 30], [8, 36], [2, 36]], group_id=1),
        _shape('dog', [[40, 40], [50, 40], [50, 44], [40, 44]], group_id=1),
        _shape('cat', [[20, 30], [26, 30], [26, 36], [20, 36]], group_id=1),
    ], image_path='does_not_exist.png', image_data=_b64(_png(_grey(value=90))))  # imageData wins
    (src / 'broken.json').write_text('{"shapes": [')
    (src / 'not_labelme.json').write_text('{"images": [], "annotations": []}')
    _write_labelme(src / 'missing.json', [_shape('cat', [[1, 1], [5, 1], [5, 5]])], image_path='nope.jpg')
    return src


def test_converts_shapes_groups_and_images(labelme_src, tmp_path, capsys):
    out = tmp_path / 'coco'
    report = convert(str(labelme_src), str(out), val_fraction=0)
    printed = capsys.readouterr().out

    assert report.files_found == 5 and report.files_converted == 2
    assert dict(report.skipped_files) == {'broken.json': 'not valid JSON',
                                          'not_labelme.json': dict(report.skipped_files)['not_labelme.json'],
                                          'missing.json': 'image not found: nope.jpg'}
    assert 'not a labelme file' in dict(report.skipped_files)['not_labelme.json']
    assert 'skipped broken.json: not valid JSON' in printed
    assert report.skipped_shapes == {'line': 1}
    assert report.images == {'train': 2, 'val': 0} and report.instances['train'] == 6
    # --val_fraction 0: train only
    assert sorted(p.name for p in out.iterdir()) == ['instances_train.json', 'train']
    assert not any(p.name.startswith('.coco') for p in tmp_path.iterdir())  # no temporary left

    train = _load(out / 'instances_train.json')
    assert train['categories'] == [{'id': 1, 'name': 'cat', 'supercategory': ''},
                                   {'id': 2, 'name': 'dog', 'supercategory': ''}]
    names = {1: 'cat', 2: 'dog'}
    expected = _expected_masks()
    # same stem 'img' in two folders: two files
    assert sorted(img['file_name'] for img in train['images']) == sorted(expected)
    for img in train['images']:
        assert (img['height'], img['width']) == (H, W)
        anns = [a for a in train['annotations'] if a['image_id'] == img['id']]
        assert [names[a['category_id']] for a in anns] == [label for label, _ in expected[img['file_name']]]
        for ann, (_, mask) in zip(anns, expected[img['file_name']]):
            np.testing.assert_array_equal(_decode(ann), mask)
            rows, cols = np.nonzero(mask)
            assert ann['area'] == mask.sum()
            x, y = cols.min(), rows.min()
            assert ann['bbox'] == [x, y, cols.max() - x + 1, rows.max() - y + 1]
            assert ann['iscrowd'] == 0
    group = [a for a in train['annotations'] if a['area'] == 72]
    assert len(group) == 1 and group[0]['bbox'] == [2, 30, 24, 6]  # two squares of 36 px: one instance
    # the embedded image was used, not the (missing) imagePath
    assert cv2.imread(str(out / 'train' / 'b__img.png'))[0, 0, 0] == 90

    # The project's dataset reads it and gives the same masks.
    paths = coco_dataset_paths(str(out), ('train',))
    dataset = COCODetection(paths.train_images, paths.train_info, transform=None,
                            label_map={1: 1, 2: 2}, num_classes=3)
    assert len(dataset) == 2 and not dataset.skipped
    for index in range(len(dataset)):
        img, target, masks, height, width, crowds = dataset.pull_item(index)
        file_name = dataset.coco.imgs[dataset.ids[index]]['file_name']
        assert (height, width, crowds) == (H, W, 0)
        np.testing.assert_array_equal(masks.astype(bool), np.stack([m for _, m in expected[file_name]]))
        assert target[:, 4].tolist() == [{'cat': 0, 'dog': 1}[label] for label, _ in expected[file_name]]


def test_exif_rotated_jpeg_lines_up_with_cv2_pixels(tmp_path):
    """labelme annotates the upright image; cv2.imread applies the EXIF orientation too."""
    upright = np.full((64, 48), 20, np.uint8)  # tall image, as shown upright
    upright[10:30, 8:28] = 235  # a bright rectangle, annotated in the upright frame
    raw = np.ascontiguousarray(np.rot90(upright, k=1))  # stored sideways (48 x 64) ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 degrees clockwise to display"
    src = tmp_path / 'src'
    src.mkdir()
    Image.fromarray(raw).convert('RGB').save(src / 'photo.jpg', quality=95, exif=exif)
    assert cv2.imread(str(src / 'photo.jpg')).shape == (64, 48, 3)  # the premise of this test
    _write_labelme(src / 'photo.json', [_shape('thing', [[8, 10], [28, 30]], 'rectangle')],
                   image_path='photo.jpg', height=64, width=48)
    # Annotated on the raw frame (sizes disagree with the upright image): a broken file.
    _write_labelme(src / 'sideways.json', [_shape('thing', [[8, 10], [28, 30]], 'rectangle')],
                   image_path='photo.jpg', height=48, width=64)

    out = tmp_path / 'coco'
    report = convert(str(src), str(out), val_fraction=0, log=None)
    assert [name for name, _ in report.skipped_files] == ['sideways.json']
    assert 'labelme says the image is 64x48 but it is 48x64' in report.skipped_files[0][1]
    train = _load(out / 'instances_train.json')
    (info,) = train['images']
    assert info['file_name'] == 'photo.png'  # re-encoded upright, without EXIF
    with Image.open(out / 'train' / info['file_name']) as written:
        assert written.getexif().get(0x0112, 1) == 1
    pixels = cv2.imread(str(out / 'train' / info['file_name']), cv2.IMREAD_GRAYSCALE)
    assert pixels.shape == (info['height'], info['width']) == (64, 48)
    mask = _decode(train['annotations'][0], 64, 48)
    bright = pixels > 128
    assert (mask & bright).sum() / (mask | bright).sum() > 0.95


def test_split_is_seeded_and_keeps_categories(tmp_path):
    src = tmp_path / 'src'
    image = _b64(_png(_grey(16, 16)))
    for i in range(10):
        label = 'rare' if i == 0 else 'common'
        _write_labelme(src / f'{i:02d}.json', [_shape(label, [[2, 2], [10, 10]], 'rectangle')],
                       image_data=image, height=16, width=16)

    def val_names(out, **kwargs):
        report = convert(str(src), str(out), log=None, **kwargs)
        assert report.images['train'] + report.images['val'] == 10
        train, val = _load(out / 'instances_train.json'), _load(out / 'instances_val.json')
        assert train['categories'] == val['categories']  # even where a split lacks a class
        assert [c['name'] for c in train['categories']] == ['common', 'rare']
        names = sorted(img['file_name'] for img in val['images'])
        assert sorted(p.name for p in (out / 'val').iterdir()) == names
        return names

    first = val_names(tmp_path / 'o1', val_fraction=0.3, seed=0)
    assert len(first) == 3
    assert val_names(tmp_path / 'o2', val_fraction=0.3, seed=0) == first
    others = {tuple(val_names(tmp_path / f's{s}', val_fraction=0.3, seed=s)) for s in range(1, 5)}
    assert others - {tuple(first)}  # another seed, another split
    assert len(val_names(tmp_path / 'small', val_fraction=0.01)) == 1  # at least one


def test_labels_file_fixes_order_and_skips_unlisted(labelme_src, tmp_path, capsys):
    labels = tmp_path / 'labels.txt'
    labels.write_text('# classes\n__ignore__\n_background_\n\ndog\ncat\nfish\n')
    out = tmp_path / 'coco'
    (labelme_src / 'a' / 'bird.json').write_text(json.dumps({
        'shapes': [_shape('bird', [[1, 1], [9, 9]], 'rectangle'),
                   _shape('bird', [[1, 1], [5, 9]], 'rectangle')],
        'imagePath': 'img.png', 'imageData': None}))
    assert main([str(labelme_src), str(out), '--labels', str(labels), '--val_fraction', '0.5']) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 shape(s): label 'bird' not in labels file" in printed
    summary = printed.strip().splitlines()[-1]
    assert summary.startswith('converted 3 of 6 labelme files') and '3 categories' in summary
    for split in ('train', 'val'):
        data = _load(out / f'instances_{split}.json')
        assert [(c['id'], c['name']) for c in data['categories']] == [(1, 'dog'), (2, 'cat'), (3, 'fish')]
    a = _load(out / 'instances_train.json')['annotations'] + _load(out / 'instances_val.json')['annotations']
    assert sorted(x['category_id'] for x in a) == [1, 1, 1, 2, 2, 2]


def test_errors_are_one_line(labelme_src, tmp_path, capsys):
    def run(*argv):
        code = main([str(v) for v in argv])
        err = capsys.readouterr().err
        return code, err

    code, err = run(tmp_path / 'nowhere', tmp_path / 'out')
    assert code == 1 and err.startswith('error: SRC folder not found') and err.count('\n') == 1

    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'x.json').write_text('nope')
    code, err = run(bad, tmp_path / 'out')
    assert code == 1 and err.startswith('error: no usable labelme file') and 'Traceback' not in err
    assert not (tmp_path / 'out').exists() and not any(p.name.startswith('.out') for p in tmp_path.iterdir())

    out = tmp_path / 'full'
    out.mkdir()
    (out / 'keep.txt').write_text('x')
    code, err = run(labelme_src, out)
    assert code == 1 and 'not empty' in err and (out / 'keep.txt').exists()
    code, _ = run(labelme_src, out, '--force')
    assert code == 0 and not (out / 'keep.txt').exists() and (out / 'instances_train.json').is_file()
    with pytest.raises(ConversionError, match='val_fraction'):
        convert(str(labelme_src), str(tmp_path / 'o'), val_fraction=1.0)
    with pytest.raises(ConversionError, match='must not be SRC'):
        convert(str(labelme_src), str(labelme_src.parent), force=True)


def test_corrupt_shape_skips_the_file(tmp_path):
    src = tmp_path / 'src'
    image = _b64(_png(_grey()))
    _write_labelme(src / 'ok.json', [_shape('cat', [[1, 1], [9, 9]], 'rectangle')], image_data=image)
    _write_labelme(src / 'short.json', [_shape('cat', [[1, 1], [9, 9]])], image_data=image)
    _write_labelme(src / 'badmask.json', [_shape('cat', [[1, 1], [9, 9]], 'mask', mask='!!')], image_data=image)
    _write_labelme(src / 'empty.json', [_shape('cat', [[100, 100], [120, 120]], 'rectangle')], image_data=image)
    report = convert(str(src), str(tmp_path / 'out'), val_fraction=0, log=None)
    reasons = dict(report.skipped_files)
    assert sorted(reasons) == ['badmask.json', 'short.json']
    assert 'a polygon needs >= 3 points, got 2' in reasons['short.json']
    assert 'mask' in reasons['badmask.json']
    assert report.empty_instances == 1 and report.images['train'] == 2 and report.instances['train'] == 1


def test_synthetic_transfer_variant_converts_exactly(tmp_path, capsys):
    lm = tmp_path / 'lm'
    assert synthetic_main(['--format', 'labelme', '--variant', 'transfer', '--out', str(lm), '--train', '5',
                           '--val', '1', '--size', '64', '--workers', '1']) == 0
    assert '--val_fraction 0.166667' in capsys.readouterr().out
    docs = {p.name: _load(p) for p in sorted(lm.glob('*.json'))}
    assert len(docs) == 6 and len(list(lm.glob('*.jpg'))) == 6
    kinds = {s['shape_type'] for d in docs.values() for s in d['shapes']}
    assert kinds == {'polygon', 'mask'}  # occluded / cut shapes exercise the mask path
    assert all(d['imageData'] is None and (d['imageHeight'], d['imageWidth']) == (64, 64)
               for d in docs.values())

    out = tmp_path / 'coco'
    report = convert(str(lm), str(out), val_fraction=1 / 6, log=None)
    assert report.images == {'train': 5, 'val': 1} and not report.skipped_files
    assert report.categories == sorted(TRANSFER_CLASSES) == ['badge', 'coin', 'tile']
    for split in ('train', 'val'):
        data = _load(out / f'instances_{split}.json')
        names = {c['id']: c['name'] for c in data['categories']}
        for img in data['images']:
            index = int(img['file_name'][:6])
            rendered = render_image(0, 'train', index, 64, 'transfer') if index <= 5 else \
                render_image(0, 'val', index - 5, 64, 'transfer')
            anns = [a for a in data['annotations'] if a['image_id'] == img['id']]
            assert len(anns) == len(rendered.instances) > 0
            for ann, inst in zip(anns, rendered.instances):
                assert names[ann['category_id']] == TRANSFER_CLASSES[inst.category_id - 1]
                np.testing.assert_array_equal(_decode(ann, 64, 64), inst.mask)
            # the transfer look: a pale background behind dark, muted shapes
            background = ~np.any([i.mask for i in rendered.instances], axis=0)
            grey = cv2.cvtColor(rendered.image, cv2.COLOR_BGR2GRAY)
            assert grey[background].mean() > 150 > grey[~background].mean()

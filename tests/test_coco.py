"""COCODetection and friends: return structures, crowd ordering, label mapping, bad-data handling."""
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from data import (
    COCODetection,
    DatasetFileNotFoundError,
    DatasetFormatError,
    ImageLoadError,
    cfg,
    coco_dataset_paths,
    detection_collate,
    enforce_size,
    get_label_map,
    synthetic_dataset,
)
from data.coco import COCOAnnotationTransform
from data.config import SYNTHETIC_CLASSES
from data.images import ImageReadError, read_image

IDENTITY6 = {i: i for i in range(1, 7)}

# Image 1 (20 wide, 10 high): a crowd region listed first, then a polygon of category 2 and a
# polygon of category 1. Image 2 (same size): only unusable annotations (zero-width box, 2-point
# polygon). Image 3: no annotation at all.
CROWD_RLE = {'size': [10, 20], 'counts': [0, 10, 190]}  # column-major: column 0 fully set
SQUARE = [2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]


def _hand_made(tmp_path, annotations=None, images=None):
    img_dir = tmp_path / 'images'
    img_dir.mkdir(exist_ok=True)
    images = images or [{'id': i, 'file_name': f'{i}.png', 'width': 20, 'height': 10} for i in (1, 2, 3)]
    for img in images:
        cv2.imwrite(str(img_dir / img['file_name']), np.full((10, 20, 3), 40 * img['id'], np.uint8))
    if annotations is None:
        annotations = [
            {'id': 10, 'image_id': 1, 'category_id': 3, 'iscrowd': 1, 'bbox': [0, 0, 1, 10],
             'area': 10, 'segmentation': CROWD_RLE},
            {'id': 11, 'image_id': 1, 'category_id': 2, 'iscrowd': 0, 'bbox': [2, 2, 4, 4],
             'area': 16, 'segmentation': [SQUARE]},
            {'id': 12, 'image_id': 1, 'category_id': 1, 'iscrowd': 0, 'bbox': [10, 0, 10, 5],
             'area': 50, 'segmentation': [[10.0, 0.0, 20.0, 0.0, 20.0, 5.0, 10.0, 5.0]]},
            {'id': 20, 'image_id': 2, 'category_id': 1, 'iscrowd': 0, 'bbox': [3, 3, 0, 4],
             'area': 0, 'segmentation': [SQUARE]},
            {'id': 21, 'image_id': 2, 'category_id': 2, 'iscrowd': 0, 'bbox': [3, 3, 2, 2],
             'area': 4, 'segmentation': [[3.0, 3.0, 5.0, 5.0]]},
        ]
    info = tmp_path / 'instances.json'
    info.write_text(json.dumps({'images': images, 'annotations': annotations,
                                'categories': [{'id': i, 'name': f'c{i}'} for i in range(1, 7)]}))
    return str(img_dir), str(info)


def _dataset(tmp_path, **kwargs):
    img_dir, info = _hand_made(tmp_path)
    return COCODetection(img_dir, info, label_map=IDENTITY6, num_classes=7, **kwargs)


def test_pull_item_structure_crowds_last(tmp_path):
    ds = _dataset(tmp_path)
    assert ds.ids == [1, 2]  # images with annotations, in order of first annotation
    img, target, masks, h, w, num_crowds = ds.pull_item(0)
    assert img.shape == (3, 10, 20) and img.dtype == torch.uint8
    assert int(img[0, 0, 0]) == 40  # the image as read (BGR, no transform)
    assert (h, w, num_crowds) == (10, 20, 1)
    expected = np.array([[2 / 20, 2 / 10, 6 / 20, 6 / 10, 1],   # category 2 -> class 1
                         [10 / 20, 0, 1, 5 / 10, 0],            # category 1 -> class 0
                         [0, 0, 1 / 20, 1, -1]], np.float32)     # the crowd, moved last
    np.testing.assert_allclose(target, expected, rtol=1e-6)
    assert target.dtype == np.float32
    assert masks.shape == (3, 10, 20) and masks.dtype == np.uint8
    assert masks[0].sum() == 16 and masks[0, 2:6, 2:6].all()
    assert masks[1].sum() == 50 and masks[1, 0:5, 10:20].all()
    assert masks[2].sum() == 10 and masks[2, :, 0].all()
    # getitem is the same sample in the (img, (target, masks, num_crowds)) layout
    img2, (target2, masks2, crowds2) = ds[0]
    assert torch.equal(img, img2) and np.array_equal(target, target2) and crowds2 == 1
    # the raw annotations are untouched (the original overwrote crowd category ids with -1)
    assert [a['category_id'] for a in ds.pull_anno(0)] == [3, 2, 1]


def test_unusable_annotations_are_counted_and_sample_resampled(tmp_path, caplog):
    ds = _dataset(tmp_path)
    assert ds.skipped == {'empty_box': 1, 'short_polygon': 1}
    _, target, masks, h, w, num_crowds = ds.pull_item(1)
    assert target.shape == (0, 5) and masks.shape == (0, 10, 20) and num_crowds == 0
    with caplog.at_level(logging.WARNING, logger='data.coco'):
        img, (target, masks, num_crowds) = ds[1]
    # the only usable image is image 1
    assert int(img[0, 0, 0]) == 40 and target.shape == (3, 5) and num_crowds == 1
    assert ds.skipped['no_ground_truth'] >= 1
    assert 'image id 2' in caplog.text


def test_resampling_is_deterministic(synthetic_paths):
    def picks(seed):
        ds = COCODetection(synthetic_paths.train_images, synthetic_paths.train_info,
                           label_map=IDENTITY6, num_classes=7, resample_seed=seed)
        return [ds._replacement_index(0, attempt) for attempt in range(1, 30)]
    assert picks(0) == picks(0)
    assert picks(0) != picks(1)
    assert set(picks(0)) == set(range(8))  # replacements cover the dataset


def test_one_image_reader_for_datasets_and_inference(tmp_path):
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    cv2.imwrite(str(tmp_path / 'ok.png'), pixels)
    np.testing.assert_array_equal(read_image(str(tmp_path / 'ok.png')), pixels)
    with pytest.raises(ImageReadError, match=r'^image not found: .*missing\.png$'):
        read_image(str(tmp_path / 'missing.png'))
    (tmp_path / 'broken.jpg').write_bytes(b'not a jpeg')
    with pytest.raises(ImageReadError, match=r'^image could not be decoded .*broken\.jpg$'):
        read_image(str(tmp_path / 'broken.jpg'))
    assert issubclass(ImageLoadError, ImageReadError)  # the dataset's error is this reader's error


def test_missing_or_corrupt_image_is_skipped_not_fatal(tmp_path, caplog):
    ds = _dataset(tmp_path)
    (tmp_path / 'images' / '1.png').unlink()
    with pytest.raises(ImageLoadError, match='1.png'):
        ds.pull_image(0)
    with pytest.raises(ImageLoadError, match='not found'):
        ds.pull_item(0)
    (tmp_path / 'images' / '1.png').write_bytes(b'not an image')
    with pytest.raises(ImageLoadError, match='could not be decoded'):
        ds.pull_item(0)
    # The only image with ground truth is broken: __getitem__ keeps trying, then says why.
    with caplog.at_level(logging.WARNING, logger='data.coco'), pytest.raises(RuntimeError, match='no usable sample'):
        ds[0]
    assert ds.skipped['unreadable_image'] >= 1 and ds.skipped['no_ground_truth'] >= 1


def test_unreadable_image_replaced_by_another(synthetic_paths, tmp_path):
    import shutil
    img_dir = tmp_path / 'train'
    shutil.copytree(synthetic_paths.train_images, img_dir)
    ds = COCODetection(str(img_dir), synthetic_paths.train_info, label_map=IDENTITY6, num_classes=7)
    (img_dir / ds.coco.imgs[ds.ids[3]]['file_name']).write_bytes(b'')
    img, (target, masks, _) = ds[3]
    assert ds.skipped['unreadable_image'] == 1
    assert img.shape == (3, 256, 256) and target.shape[0] == masks.shape[0] > 0


def test_image_size_disagreeing_with_json_is_an_image_error(tmp_path):
    img_dir, info = _hand_made(tmp_path)
    cv2.imwrite(str(tmp_path / 'images' / '1.png'), np.zeros((12, 20, 3), np.uint8))
    ds = COCODetection(img_dir, info, label_map=IDENTITY6, num_classes=7)
    with pytest.raises(ImageLoadError, match='20x12 but the annotation file says 20x10'):
        ds.pull_item(0)


def test_category_id_outside_label_map_fails_up_front(tmp_path):
    img_dir, info = _hand_made(tmp_path, annotations=[
        {'id': 1, 'image_id': 1, 'category_id': 2, 'bbox': [2, 2, 4, 4], 'segmentation': [SQUARE]},
        {'id': 2, 'image_id': 1, 'category_id': 9, 'bbox': [2, 2, 4, 4], 'segmentation': [SQUARE]}])
    with pytest.raises(DatasetFormatError) as err:
        COCODetection(img_dir, info, label_map=IDENTITY6, num_classes=7)
    msg = str(err.value)
    assert 'category id 9' in msg and info in msg and '\n' not in msg
    # an id the map holds but num_classes does not
    with pytest.raises(DatasetFormatError, match=r'maps to class 9, but num_classes=7 holds classes 1\.\.6'):
        COCODetection(img_dir, info, label_map={2: 2, 9: 9}, num_classes=7)
    # fine once the config is big enough
    assert len(COCODetection(img_dir, info, label_map={2: 2, 9: 9}, num_classes=10)) == 1


def test_label_map_from_cfg(synthetic_paths, monkeypatch):
    monkeypatch.setattr(cfg, 'dataset', synthetic_dataset)
    monkeypatch.setattr(cfg, 'num_classes', 7)
    assert get_label_map(cfg.dataset) == IDENTITY6  # label_map None: ids 1..N
    ds = COCODetection(synthetic_paths.valid_images, synthetic_paths.valid_info, config=cfg)
    assert len(ds) == 4
    labels = np.concatenate([ds.pull_item(i)[1][:, 4] for i in range(len(ds))])
    cats = [a['category_id'] for i in range(len(ds)) for a in ds.pull_anno(i) if not a['iscrowd']]
    assert sorted(labels[labels >= 0].astype(int).tolist()) == sorted(c - 1 for c in cats)
    # with the COCO label map an id can be non-contiguous: 13 -> class index 11
    transform = COCOAnnotationTransform({13: 12})
    assert transform([{'bbox': [0, 0, 5, 5], 'category_id': 13}], 10, 10) == [[0, 0, 0.5, 0.5, 11]]
    # too few classes in the config
    monkeypatch.setattr(cfg, 'num_classes', 4)
    with pytest.raises(DatasetFormatError, match='num_classes=4'):
        COCODetection(synthetic_paths.valid_images, synthetic_paths.valid_info, config=cfg)


def test_synthetic_samples_are_consistent(synthetic_paths):
    ds = COCODetection(synthetic_paths.train_images, synthetic_paths.train_info,
                       label_map=IDENTITY6, num_classes=7)
    assert len(ds) == 8
    for i in range(len(ds)):
        img, (target, masks, num_crowds) = ds[i]
        n = target.shape[0]
        assert img.shape == (3, 256, 256) and masks.shape == (n, 256, 256) and n > 0
        assert (target[:, :4] >= 0).all() and (target[:, :4] <= 1).all()
        assert (target[:, 2] > target[:, 0]).all() and (target[:, 3] > target[:, 1]).all()
        labels = target[:, 4]
        assert (labels[n - num_crowds:] == -1).all() and (labels[:n - num_crowds] >= 0).all()
        for box, mask in zip(target[:, :4] * 256, masks):
            rows, cols = np.nonzero(mask)
            np.testing.assert_allclose(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])


def test_transform_receives_and_returns_labels(tmp_path):
    seen = {}

    def transform(img, masks, boxes, labels):
        seen.update(labels=labels['labels'].copy(), num_crowds=labels['num_crowds'], masks=masks.shape)
        # drop the first object, as a crop could
        return (img.astype(np.float32) / 255, masks[1:], boxes[1:],
                {'num_crowds': labels['num_crowds'], 'labels': labels['labels'][1:]})

    ds = _dataset(tmp_path, transform=transform)
    img, target, masks, h, w, num_crowds = ds.pull_item(0)
    np.testing.assert_array_equal(seen['labels'], [1, 0, -1])
    assert seen['num_crowds'] == 1 and seen['masks'] == (3, 10, 20)
    assert img.dtype == torch.float32 and img.shape == (3, 10, 20)
    np.testing.assert_allclose(target[:, 4], [0, -1])
    assert masks.shape == (2, 10, 20) and num_crowds == 1


def test_transform_that_removes_everything_triggers_resample(synthetic_paths):
    calls = []

    def drop_all_once(img, masks, boxes, labels):
        calls.append(len(boxes))
        keep = slice(0, 0) if len(calls) == 1 else slice(None)
        return img, masks[keep], boxes[keep], {'num_crowds': 0, 'labels': labels['labels'][keep]}

    ds = COCODetection(synthetic_paths.train_images, synthetic_paths.train_info,
                       transform=drop_all_once, label_map=IDENTITY6, num_classes=7)
    _, (target, _, _) = ds[0]
    assert len(calls) == 2 and target.shape[0] > 0 and ds.skipped['no_ground_truth'] == 1


def test_has_gt_false_lists_all_images(tmp_path):
    img_dir, _ = _hand_made(tmp_path)
    info = tmp_path / 'image_info.json'
    info.write_text(json.dumps({'images': [{'id': 5, 'file_name': '1.png', 'width': 20, 'height': 10},
                                           {'id': 6, 'file_name': '2.png', 'width': 20, 'height': 10}],
                                'categories': []}))
    ds = COCODetection(img_dir, str(info), has_gt=False, label_map=IDENTITY6, num_classes=7)
    assert ds.ids == [5, 6]
    img, (target, masks, num_crowds) = ds[1]
    assert int(img[0, 0, 0]) == 80 and target.shape == (0, 5) and masks.shape == (0, 10, 20)


@pytest.mark.parametrize('content, message', [
    ('{"images": [], "annotations": [', 'not valid JSON'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"images": [], "categories": []}', "lacks the list(s) 'annotations'"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "images[0] needs an 'id' and a 'file_name'"),
    ('{"images": [], "annotations": [{"image_id": 1}], "categories": []}', "annotations[0] needs"),
])
def test_malformed_annotation_file(tmp_path, content, message):
    img_dir, _ = _hand_made(tmp_path)
    info = tmp_path / 'bad.json'
    info.write_text(content)
    with pytest.raises(DatasetFormatError) as err:
        COCODetection(img_dir, str(info), label_map=IDENTITY6, num_classes=7)
    assert isinstance(err.value, ValueError)
    assert message in str(err.value) and str(info) in str(err.value) and '\n' not in str(err.value)


def test_missing_paths(tmp_path):
    img_dir, info = _hand_made(tmp_path)
    with pytest.raises(DatasetFileNotFoundError, match='image folder not found: .*nowhere'):
        COCODetection(str(tmp_path / 'nowhere'), info, label_map=IDENTITY6, num_classes=7)
    with pytest.raises(FileNotFoundError, match='annotation file not found: .*none.json'):
        COCODetection(img_dir, str(tmp_path / 'none.json'), label_map=IDENTITY6, num_classes=7)


def test_coco_dataset_paths(tmp_path):
    root = tmp_path / 'coco'
    with pytest.raises(DatasetFileNotFoundError, match='COCO root folder not found'):
        coco_dataset_paths(str(root))
    (root / 'train2017').mkdir(parents=True)
    (root / 'annotations').mkdir()
    (root / 'annotations' / 'instances_train2017.json').write_text('{}')
    with pytest.raises(DatasetFileNotFoundError) as err:
        coco_dataset_paths(str(root))
    msg = str(err.value)
    assert 'missing val2017/, annotations/instances_val2017.json (' in msg
    (root / 'val2017').mkdir()
    (root / 'annotations' / 'instances_val2017.json').write_text('{}')
    paths = coco_dataset_paths(str(root))
    assert paths.train_images == str(root / 'train2017')
    assert paths.valid_info == str(root / 'annotations' / 'instances_val2017.json')
    assert paths._fields == ('train_images', 'train_info', 'valid_images', 'valid_info')


def test_detection_collate(tmp_path):
    ds = _dataset(tmp_path)
    batch = [ds[0], ds[0]]
    imgs, (targets, masks, num_crowds) = detection_collate(batch)
    assert len(imgs) == 2 and imgs[0].shape == (3, 10, 20)
    assert targets[0].dtype == torch.float32 and targets[0].shape == (3, 5)
    assert masks[1].dtype == torch.float32 and masks[1].shape == (3, 10, 20)
    assert num_crowds == [1, 1]


def test_enforce_size_pads_without_distortion():
    img = torch.ones(3, 10, 20)
    masks = torch.ones(2, 10, 20)
    targets = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0], [0.5, 0.5, 1.0, 1.0, 1.0]])
    out_img, out_t, out_m, crowds = enforce_size(img, targets.clone(), masks, 1, 40, 40)
    assert out_img.shape == (3, 40, 40) and out_m.shape == (2, 40, 40) and crowds == 1
    # 20x10 -> 40x20, then padded with zeros below
    assert torch.allclose(out_img[:, :20], torch.ones(3, 20, 40)) and out_img[:, 20:].abs().sum() == 0
    expected = torch.tensor([[0.0, 0.0, 1.0, 0.5, 0.0], [0.5, 0.25, 1.0, 0.5, 1.0]])
    assert torch.allclose(out_t, expected)
    same = enforce_size(img, targets, masks, 0, 20, 10)
    assert same[0] is img and same[1] is targets


def test_coco_dataset_paths_val_only_and_synthetic_layout(tmp_path, synthetic_root, synthetic_paths):
    root = tmp_path / 'coco'
    (root / 'val2017').mkdir(parents=True)
    (root / 'annotations').mkdir()
    (root / 'annotations' / 'instances_val2017.json').write_text('{}')
    paths = coco_dataset_paths(str(root), splits=('val',))
    assert paths.valid_images == str(root / 'val2017')
    with pytest.raises(DatasetFileNotFoundError, match='train2017/'):
        coco_dataset_paths(str(root))
    assert coco_dataset_paths(str(synthetic_root)) == synthetic_paths


def test_empty_or_out_of_image_mask_is_skipped_and_counted(tmp_path, caplog):
    outside = [[30.0, 0.0, 40.0, 0.0, 40.0, 5.0, 30.0, 5.0]]  # the image is 20 px wide
    annotations = [
        {'id': 1, 'image_id': 1, 'category_id': 1, 'iscrowd': 0, 'bbox': [2, 2, 4, 4], 'area': 16,
         'segmentation': [SQUARE]},
        {'id': 2, 'image_id': 1, 'category_id': 2, 'iscrowd': 0, 'bbox': [15, 0, 4, 5], 'area': 20,
         'segmentation': outside},
    ]
    img_dir, info = _hand_made(tmp_path, annotations=annotations)
    ds = COCODetection(img_dir, info, label_map=IDENTITY6, num_classes=7)
    with caplog.at_level(logging.WARNING, logger='data.coco'):
        _, target, masks, _, _, num_crowds = ds.pull_item(0)
        ds.pull_item(0)
    assert target.shape == (1, 5) and target[0, 4] == 0 and masks.shape[0] == 1
    assert ds.skipped['empty_mask'] == 2  # counted each time it is met ...
    assert caplog.text.count('annotation 2 of image id 1') == 1  # ... logged once


def test_image_with_only_crowd_annotations_is_a_background_sample(tmp_path):
    annotations = [{'id': 1, 'image_id': 1, 'category_id': 3, 'iscrowd': 1, 'bbox': [0, 0, 1, 10],
                    'area': 10, 'segmentation': CROWD_RLE}]
    img_dir, info = _hand_made(tmp_path, annotations=annotations)
    ds = COCODetection(img_dir, info, label_map=IDENTITY6, num_classes=7)
    img, (target, masks, num_crowds) = ds[0]
    # Kept as in the original: every prior is background except those under the crowd.
    assert target.shape == (1, 5) and target[0, 4] == -1 and num_crowds == 1
    assert ds.skipped['no_ground_truth'] == 0


def test_annotations_read_for_the_classes_are_parsed_once_and_never_shared(synthetic_paths, monkeypatch):
    import data.coco as coco_module
    parsed = []
    real_load = coco_module.json.load
    monkeypatch.setattr(coco_module.json, 'load', lambda f: parsed.append(f.name) or real_load(f))
    annotations = coco_module.read_annotations(synthetic_paths, splits=('val',))
    dataset = coco_module.dataset_from_annotations(synthetic_paths, splits=('val',), annotations=annotations)
    first = COCODetection(synthetic_paths.valid_images, synthetic_paths.valid_info, label_map=dataset.label_map,
                          num_classes=7, annotations=annotations.pop(synthetic_paths.valid_info))
    assert parsed == [synthetic_paths.valid_info]  # the classes and the dataset from one parse
    assert dataset.class_names == SYNTHETIC_CLASSES and len(first) > 0
    second = COCODetection(synthetic_paths.valid_images, synthetic_paths.valid_info, label_map=dataset.label_map,
                           num_classes=7)
    assert len(parsed) == 2 and first.coco.dataset is not second.coco.dataset

"""Tests for utils/augmentations.py: properties of the training augmentation over many seeds,
hand-computed geometry and normalisation, and agreement with the original YOLACT's outputs
(tests/data/aug_reference.npz, see tests/data/aug_reference.md)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.config import MEANS, STD, cfg, darknet_transform, resnet_transform, set_cfg, vgg_transform
from utils.augmentations import (
    BackboneTransform,
    BaseTransform,
    ConvertColor,
    Expand,
    FastBaseTransform,
    PhotometricDistort,
    RandomContrast,
    RandomFlip,
    RandomMirror,
    RandomRot90,
    RandomSampleCrop,
    RandomSaturation,
    Resize,
    SSDAugmentation,
    enable_if,
)

REFERENCE = Path(__file__).parent / 'data' / 'aug_reference.npz'
BACKBONE_TRANSFORMS = {'resnet': resnet_transform, 'vgg': vgg_transform, 'darknet': darknet_transform}
HOLE_FRACTION = 0.2
# Size of one 0..255 input step after each backbone transform's normalisation.
PIXEL_SCALE = {'resnet': 1 / min(STD), 'vgg': 1.0, 'darknet': 1 / 255}


def make_sample(seed: int):
    """A random uint8 BGR image with 1..5 objects, crowds last. Each mask fills its box except for
    some interior pixels, so it touches all four sides of its (relative) box; labels are 1..n
    (distinct, to follow objects), -1 for crowds. Uses numpy's legacy RandomState (stable stream)."""
    rs = np.random.RandomState(seed)
    height, width = rs.randint(40, 121, size=2)
    img = rs.randint(0, 256, size=(height, width, 3)).astype(np.uint8)
    count = rs.randint(1, 6)
    num_crowds = rs.randint(0, min(count, 2) + 1)
    masks = np.zeros((count, height, width), np.uint8)
    boxes = np.zeros((count, 4))
    for i in range(count):
        x1 = rs.randint(0, width - 3)
        x2 = rs.randint(x1 + 2, width + 1)
        y1 = rs.randint(0, height - 3)
        y2 = rs.randint(y1 + 2, height + 1)
        mask = np.ones((y2 - y1, x2 - x1), np.uint8)
        mask[1:-1, 1:-1] = rs.rand(y2 - y1 - 2, x2 - x1 - 2) > HOLE_FRACTION
        masks[i, y1:y2, x1:x2] = mask
        boxes[i] = [x1 / width, y1 / height, x2 / width, y2 / height]
    labels = np.arange(1, count + 1, dtype=np.float64)
    labels[count - num_crowds:] = -1
    return img, masks, boxes, {'num_crowds': int(num_crowds), 'labels': labels}


@pytest.fixture
def base_cfg():
    """cfg set to yolact_base_config with max_size 64; every change is undone afterwards."""
    saved = dict(vars(cfg))
    set_cfg('yolact_base_config')
    cfg.max_size = 64
    yield cfg
    cfg.replace(saved)


def mask_extent(mask: np.ndarray):
    """(x1, y1, x2, y2) of the nonzero pixels, pixel j covering [j, j + 1); None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


# ----------------------- SSDAugmentation properties ----------------------- #

@pytest.mark.parametrize('variant', ['default', 'flip_rot90', 'preserve_aspect_ratio'])
def test_ssd_augmentation_properties(base_cfg, variant):
    if variant == 'flip_rot90':
        cfg.augment_random_flip = True
        cfg.augment_random_rot90 = True
    if variant == 'preserve_aspect_ratio':
        cfg.preserve_aspect_ratio = True
    size = cfg.max_size
    augment = SSDAugmentation(cfg)

    dropped_objects = checked_masks = 0
    for seed in range(200):
        img, masks, boxes, labels = make_sample(seed)
        in_labels = labels['labels'].copy()
        np.random.seed(seed)
        out_img, out_masks, out_boxes, out_labels = augment(img, masks, boxes, labels)

        height, width = out_img.shape[:2]
        if variant == 'preserve_aspect_ratio':
            # int() truncation of w = S*sqrt(r), h = S/sqrt(r): w*h <= S^2 < (w+1)(h+1)
            assert width * height <= size * size < (width + 1) * (height + 1)
        else:
            assert (height, width) == (size, size)
        count = len(out_boxes)
        assert out_img.shape == (height, width, 3) and out_img.dtype == np.float32
        assert out_masks.shape == (count, height, width) and out_masks.dtype == np.uint8
        assert out_boxes.shape == (count, 4) and len(out_labels['labels']) == count
        assert set(np.unique(out_masks)) <= {0, 1}

        assert np.all(out_boxes >= -1e-9) and np.all(out_boxes <= 1 + 1e-9), out_boxes
        assert np.all(out_boxes[:, 2:] > out_boxes[:, :2])

        kept = out_labels['labels']
        num_crowds = out_labels['num_crowds']
        assert num_crowds == (kept < 0).sum()
        assert np.all(kept[:count - num_crowds] > 0) and np.all(kept[count - num_crowds:] == -1)
        # objects keep their order and identity: the kept labels are a subsequence of the input's
        regular = kept[kept > 0]
        assert np.all(np.diff(regular) > 0) and set(regular) <= set(in_labels)
        if (in_labels > 0).any():
            assert len(regular) > 0, "a crop must keep at least one non-crowd object"
        dropped_objects += len(in_labels) - count

        scale = np.array([width, height, width, height])
        for mask, box in zip(out_masks, out_boxes * scale):
            extent = mask_extent(mask)
            if extent is None:  # an object thinner than a pixel after resizing may vanish
                continue
            checked_masks += 1
            # box encloses the mask (resize rounding: within 1 px)...
            assert np.all(extent[:2] >= box[:2] - 1) and np.all(extent[2:] <= box[2:] + 1), (seed, box, extent)
            # ...and, for objects at least 3 px on each side, is tight around it
            if np.all(box[2:] - box[:2] >= 3):
                assert np.all(np.abs(extent - box) <= 1), (seed, box, extent)

    # the properties above must have been exercised by real crops
    assert dropped_objects > 20
    assert checked_masks > 400


def test_ssd_augmentation_is_deterministic_given_numpy_seed(base_cfg):
    augment = SSDAugmentation(cfg)

    def run(seed):
        sample = make_sample(3)
        np.random.seed(seed)
        return augment(*sample)

    first, again, other = run(11), run(11), run(12)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[2], again[2])
    np.testing.assert_array_equal(first[3]['labels'], again[3]['labels'])
    assert first[0].shape != other[0].shape or not np.array_equal(first[0], other[0])


def test_ssd_augmentation_matches_original():
    """Seeded outputs of the original's SSDAugmentation (yolact_base_config, max_size 16)."""
    ref = np.load(REFERENCE)
    saved = dict(vars(cfg))
    try:
        set_cfg('yolact_base_config')
        cfg.max_size = int(ref['ssd_max_size'])
        augment = SSDAugmentation(cfg)
        for seed in ref['ssd_seeds']:
            np.random.seed(seed)
            img, masks, boxes, labels = augment(*make_sample(int(seed)))
            # the image goes through OpenCV float colour conversions: allow for SIMD rounding
            np.testing.assert_allclose(img, ref[f'ssd_{seed}_img'], atol=1e-4)
            np.testing.assert_array_equal(masks, ref[f'ssd_{seed}_masks'])
            np.testing.assert_allclose(boxes, ref[f'ssd_{seed}_boxes'], rtol=0, atol=1e-12)
            np.testing.assert_array_equal(labels['labels'], ref[f'ssd_{seed}_labels'])
            assert labels['num_crowds'] == ref[f'ssd_{seed}_num_crowds']
    finally:
        cfg.replace(saved)


def test_ssd_augmentation_rejects_inconsistent_inputs(base_cfg):
    img, masks, boxes, labels = make_sample(0)
    with pytest.raises(ValueError, match='masks'):
        SSDAugmentation(cfg)(img, masks[:, :-1], boxes, labels)
    with pytest.raises(ValueError, match='labels'):
        SSDAugmentation(cfg)(img, masks, boxes, {'num_crowds': 0, 'labels': labels['labels'][:-1]})


# ----------------------- individual transforms ----------------------- #

def always(value, monkeypatch):
    """Make every np.random.randint return `value` (forces a transform's coin flip)."""
    monkeypatch.setattr(np.random, 'randint', lambda *args, **kwargs: value)


def test_random_mirror_and_flip_by_hand(monkeypatch):
    img = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    masks = np.zeros((1, 2, 4), np.uint8)
    masks[0, 0, 0] = 1
    boxes = np.array([[0.0, 0.0, 1.0, 1.0]])
    always(1, monkeypatch)

    out_img, out_masks, out_boxes, _ = RandomMirror()(img, masks, boxes, None)
    np.testing.assert_array_equal(out_img[:, 0], img[:, 3])
    assert out_masks[0, 0, 3] == 1 and out_masks.sum() == 1
    np.testing.assert_array_equal(out_boxes, [[3.0, 0.0, 4.0, 1.0]])

    out_img, out_masks, out_boxes, _ = RandomFlip()(img, masks, boxes, None)
    np.testing.assert_array_equal(out_img[0], img[1])
    assert out_masks[0, 1, 0] == 1 and out_masks.sum() == 1
    np.testing.assert_array_equal(out_boxes, [[0.0, 1.0, 1.0, 2.0]])
    np.testing.assert_array_equal(boxes, [[0.0, 0.0, 1.0, 1.0]])  # input untouched


@pytest.mark.parametrize('turns', [0, 1, 2, 3])
def test_random_rot90_keeps_boxes_on_masks(monkeypatch, turns):
    img = np.zeros((5, 7, 3), np.float32)
    masks = np.zeros((2, 5, 7), np.uint8)
    masks[0, 0, 6] = 1        # top-right pixel, box (6, 0, 7, 1)
    masks[1, 1:4, 2:4] = 1    # box (2, 1, 4, 4)
    boxes = np.array([[6.0, 0.0, 7.0, 1.0], [2.0, 1.0, 4.0, 4.0]])
    always(turns, monkeypatch)

    out_img, out_masks, out_boxes, _ = RandomRot90()(img, masks, boxes, None)
    assert out_img.shape[:2] == ((7, 5) if turns % 2 else (5, 7))
    for mask, box in zip(out_masks, out_boxes):
        np.testing.assert_array_equal(mask_extent(mask), box)
    if turns == 1:  # counter-clockwise: the top-right pixel goes to the top-left
        np.testing.assert_array_equal(out_boxes[0], [0.0, 0.0, 1.0, 1.0])


def test_expand_places_image_masks_and_boxes_together():
    img = np.full((10, 20, 3), 7.0, np.float32)
    masks = np.zeros((1, 10, 20), np.uint8)
    masks[0, 2:5, 3:9] = 1
    boxes = np.array([[3.0, 2.0, 9.0, 5.0]])
    mean = (1.0, 2.0, 3.0)
    expanded = 0
    for seed in range(20):
        np.random.seed(seed)
        out_img, out_masks, out_boxes, _ = Expand(mean)(img, masks, boxes, None)
        if out_img.shape == img.shape:
            assert out_img is img
            continue
        expanded += 1
        assert out_img.shape[0] >= 10 and out_img.shape[1] >= 20
        assert out_masks.shape == (1,) + out_img.shape[:2]
        np.testing.assert_array_equal(mask_extent(out_masks[0]), out_boxes[0])
        # the image sits, whole, where its mask went; everything else is the mean colour
        is_image = np.all(out_img == 7.0, axis=2)
        top, left = out_boxes[0, 1] - 2, out_boxes[0, 0] - 3
        assert is_image.sum() == 200 and is_image[int(top):int(top) + 10, int(left):int(left) + 20].all()
        np.testing.assert_array_equal(out_img[~is_image], np.tile(mean, ((~is_image).sum(), 1)))
    assert 3 < expanded < 17  # probability 1/2


def test_random_sample_crop_never_keeps_only_crowds():
    crop = RandomSampleCrop()
    cropped = 0
    for seed in range(100):
        img, masks, boxes, labels = make_sample(seed)
        boxes = boxes * [img.shape[1], img.shape[0], img.shape[1], img.shape[0]]
        np.random.seed(seed)
        out_img, out_masks, out_boxes, out_labels = crop(img, masks, boxes, labels)
        if out_img.shape == img.shape:
            continue
        cropped += 1
        kept = out_labels['labels']
        assert (kept > 0).any()
        assert out_labels['num_crowds'] == (kept == -1).sum()
        assert out_masks.shape == (len(kept),) + out_img.shape[:2]
        assert np.all(out_boxes >= 0)
        assert np.all(out_boxes[:, [2, 3]] <= [out_img.shape[1], out_img.shape[0]])
    assert cropped > 50  # crops with probability 5/6 when a non-crowd exists


def test_random_sample_crop_keeps_whole_image_when_all_objects_are_crowds():
    img, masks, boxes, _ = make_sample(1)
    labels = {'num_crowds': len(boxes), 'labels': -np.ones(len(boxes))}
    boxes = boxes * [img.shape[1], img.shape[0], img.shape[1], img.shape[0]]
    for seed in range(10):
        np.random.seed(seed)
        out = RandomSampleCrop()(img, masks, boxes, labels)
        assert out[0] is img and out[2] is boxes


def test_resize_preserve_aspect_ratio_by_hand():
    # 160 x 90: sqrt(160 / 90) = 4 / 3, so max_size 60 -> 80 x 45 (area 3600 = 60^2), scale 1/2
    img = np.zeros((90, 160, 3), np.float32)
    masks = np.zeros((2, 90, 160), np.uint8)
    masks[0, 10:30, 20:60] = 1
    masks[1, 40:44, 100:104] = 1
    boxes = np.array([[20.0, 10.0, 60.0, 30.0], [100.0, 40.0, 104.0, 44.0]])
    labels = {'num_crowds': 1, 'labels': np.array([5.0, -1.0])}
    resize = Resize(max_size=60, preserve_aspect_ratio=True, discard_box_width=2.5, discard_box_height=0)

    assert Resize.calc_size_preserve_ar(160, 90, 60) == (80, 45)
    out_img, out_masks, out_boxes, out_labels = resize(img, masks, boxes, labels)
    assert out_img.shape == (45, 80, 3)
    # the 4 px object is 2 px wide after resizing: dropped by the 2.5 px threshold, with its label
    np.testing.assert_array_equal(out_boxes, [[10.0, 5.0, 30.0, 15.0]])
    assert out_masks.shape == (1, 45, 80)
    np.testing.assert_array_equal(mask_extent(out_masks[0]), [10, 5, 30, 15])
    assert out_labels == {'num_crowds': 0, 'labels': out_labels['labels']}
    np.testing.assert_array_equal(out_labels['labels'], [5.0])


def test_resize_square_without_gt_and_many_masks():
    img = np.zeros((30, 50, 3), np.float32)
    out_img, masks, boxes, labels = Resize(resize_gt=False, max_size=20, preserve_aspect_ratio=False, config=cfg)(img)
    assert out_img.shape == (20, 20, 3) and masks is None and boxes is None and labels is None

    # more masks than OpenCV resizes in one call
    rs = np.random.RandomState(0)
    masks = (rs.rand(300, 12, 10) > 0.5).astype(np.uint8)
    boxes = np.tile([[0.0, 0.0, 10.0, 12.0]], (300, 1))
    _, out_masks, _, _ = Resize(max_size=6, preserve_aspect_ratio=False, config=cfg)(
        np.zeros((12, 10, 3), np.float32), masks, boxes, {'num_crowds': 0, 'labels': np.zeros(300)})
    assert out_masks.shape == (300, 6, 6)
    for i in (0, 127, 128, 299):
        np.testing.assert_array_equal(out_masks[i], cv2.resize(masks[i], (6, 6)))


def test_photometric_distort_copies_and_changes_the_image():
    img = np.random.RandomState(0).randint(0, 256, (8, 8, 3)).astype(np.float32)
    before = img.copy()
    changed = 0
    for seed in range(10):
        np.random.seed(seed)
        out = PhotometricDistort()(img)[0]
        np.testing.assert_array_equal(img, before)
        changed += not np.allclose(out, img, atol=1e-3)
    assert changed >= 8  # unchanged only if all four coin flips are 0 (1/16)


def test_enable_if_disabled_draws_no_random_numbers():
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    out = enable_if(False, RandomMirror())('img', 'masks', 'boxes', 'labels')
    assert out == ('img', 'masks', 'boxes', 'labels')
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert isinstance(enable_if(True, RandomMirror()), RandomMirror)


@pytest.mark.parametrize('transform, scaled_pixel', [
    (RandomSaturation, [10.0, 29.943695, 30.0]),  # only the S channel (index 1) of HSV
    (RandomContrast, [14.971848, 29.943695, 44.915543]),  # the whole image
])
def test_saturation_and_contrast_keep_their_draws(transform, scaled_pixel):
    # Seed 0 flips the coin to "leave it", seed 1 to "scale"; the numbers are the original's output.
    for seed, expected, next_draw in ((0, [10.0, 20.0, 30.0], 559), (1, scaled_pixel, 72)):
        image = np.full((1, 2, 3), [10.0, 20.0, 30.0], np.float32)
        np.random.seed(seed)
        out, *_ = transform(0.5, 1.5)(image)
        assert out is image  # in place
        np.testing.assert_allclose(out, [[expected, expected]], rtol=1e-6)
        assert np.random.randint(1000) == next_draw  # the same numbers drawn, no more
    with pytest.raises(ValueError, match=f'^{transform.__name__} expects 0 <= lower <= upper, got lower=2, upper=1$'):
        transform(2, 1)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        RandomContrast(1.5, 0.5)
    with pytest.raises(ValueError):
        ConvertColor('RGB', 'HSV')
    with pytest.raises(ValueError):
        BackboneTransform(resnet_transform, MEANS, STD, 'BGRA')


# ----------------------- eval transforms ----------------------- #

# One pixel per backbone transform whose normalised value is easy to write down (BGR in, RGB out).
HAND_CASES = {
    # (v - mean) / std = (1, 0, -2) in BGR
    'resnet': ((MEANS[0] + STD[0], MEANS[1], MEANS[2] - 2 * STD[2]), (-2.0, 0.0, 1.0)),
    # v - mean = (6.06, 3.22, 6.32) in BGR
    'vgg': ((110.0, 120.0, 130.0), (6.32, 3.22, 6.06)),
    # v / 255 = (0.2, 0.4, 1.0) in BGR
    'darknet': ((51.0, 102.0, 255.0), (1.0, 0.4, 0.2)),
}


@pytest.mark.parametrize('name', list(HAND_CASES))
def test_eval_transforms_hand_computed(base_cfg, name):
    pixel, expected = HAND_CASES[name]
    cfg.max_size = 2  # a 2x2 image is not resized
    cfg.backbone = cfg.backbone.copy({'transform': BACKBONE_TRANSFORMS[name]})
    img = np.tile(np.array(pixel, np.float32), (2, 2, 1))

    fast = FastBaseTransform(cfg)(torch.from_numpy(img)[None])
    assert fast.shape == (1, 3, 2, 2) and fast.dtype == torch.float32
    np.testing.assert_allclose(fast[0, :, 1, 0].numpy(), expected, atol=1e-5)

    base = BaseTransform(cfg)(img)[0]
    assert base.shape == (2, 2, 3) and base.dtype == np.float32
    np.testing.assert_allclose(base[1, 0], expected, atol=1e-5)


@pytest.mark.parametrize('name', list(BACKBONE_TRANSFORMS))
@pytest.mark.parametrize('preserve', [False, True])
def test_fast_base_transform_equals_base_transform(base_cfg, name, preserve):
    cfg.max_size = 48
    cfg.preserve_aspect_ratio = preserve
    cfg.backbone = cfg.backbone.copy({'transform': BACKBONE_TRANSFORMS[name]})
    rs = np.random.RandomState(1)
    images = rs.randint(0, 256, size=(2, 30, 70, 3)).astype(np.uint8)

    fast = FastBaseTransform(cfg)(torch.from_numpy(images)).numpy()
    for img, out in zip(images, fast):
        base = BaseTransform(cfg)(img)[0].transpose(2, 0, 1)
        assert out.shape == base.shape
        assert out.shape[1:] == ((31, 73) if preserve else (48, 48))  # 48 * sqrt(70/30) = 73.3
        # OpenCV's and torch's bilinear kernels round differently: allow 2e-3 of a 0..255 pixel
        np.testing.assert_allclose(out, base, rtol=0, atol=2e-3 * PIXEL_SCALE[name])


def test_fast_base_transform_takes_dtype_and_device_from_input(base_cfg):
    img = torch.full((1, 5, 5, 3), 100, dtype=torch.uint8)
    assert FastBaseTransform(cfg)(img).dtype == torch.float32
    out64 = FastBaseTransform(cfg)(img.double())
    assert out64.dtype == torch.float64 and out64.device == img.device
    expected = (100 - MEANS[2]) / STD[2]  # channel 0 is R
    np.testing.assert_allclose(out64[0, 0].numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match='N, H, W, 3'):
        FastBaseTransform(cfg)(img[0])
    # mean/std are made on the input's device: a meta tensor would not mix with CPU constants
    meta = FastBaseTransform(cfg)(torch.empty((1, 5, 7, 3), device='meta'))
    assert meta.device.type == 'meta' and meta.shape == (1, 3, 64, 64)


@pytest.mark.parametrize('name', list(BACKBONE_TRANSFORMS))
@pytest.mark.parametrize('preserve', [False, True])
def test_eval_transforms_match_original(base_cfg, name, preserve):
    ref = np.load(REFERENCE)
    key = f'{name}_{"par" if preserve else "sq"}'
    cfg.max_size = 24
    cfg.preserve_aspect_ratio = preserve
    cfg.backbone = cfg.backbone.copy({'transform': BACKBONE_TRANSFORMS[name]})
    img = ref['image']
    labels = {'num_crowds': 1, 'labels': ref['labels_in'].copy()}
    masks = ref['masks_in']

    base, out_masks, out_boxes, out_labels = BaseTransform(cfg)(img, masks, ref['boxes_in'].copy(), labels)
    np.testing.assert_allclose(base, ref[f'base_{key}'], rtol=1e-6, atol=1e-5)
    fast = FastBaseTransform(cfg)(torch.from_numpy(img).float()[None]).numpy()
    np.testing.assert_allclose(fast, ref[f'fast_{key}'], rtol=1e-6, atol=1e-5)
    if key == 'resnet_sq':  # the thin second box is dropped, boxes stay relative, masks unresized
        np.testing.assert_array_equal(out_boxes, ref['base_boxes'])
        np.testing.assert_array_equal(out_masks, ref['base_masks'])
        np.testing.assert_array_equal(out_labels['labels'], ref['base_labels'])
        assert out_labels['num_crowds'] == ref['base_num_crowds']

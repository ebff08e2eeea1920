"""Training augmentation and input transforms for YOLACT.

Every transform is a callable ``t(image, masks, boxes, labels) -> (image, masks, boxes, labels)``:

- image  (ndarray[H, W, 3]) BGR, uint8 on input, float32 after ``ConvertFromInts``.
- masks  (ndarray[N, H, W]) one binary mask per object (uint8 0/1 from pycocotools), or None.
- boxes  (ndarray[N, 4]) in (x1, y1, x2, y2); relative to the image size ([0, 1]) at the start and
  end of ``SSDAugmentation``, in pixels in between. A pixel column j covers [j, j + 1), so a box
  tight around a mask spans [min column, max column + 1].
- labels (dict) ``{'num_crowds': int, 'labels': ndarray[N]}``: class indices, with the crowd
  annotations (label -1) last. ``num_crowds`` counts them (data/coco.py keeps that order).

Randomness: every random choice is drawn from numpy's global legacy RNG (``np.random``), with the
same calls in the same order as the original YOLACT, so ``np.random.seed(s)`` makes an
augmentation reproducible (train.py also seeds ``random`` and torch; nothing here uses those).
"""
from math import sqrt
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from data.config import MEANS, STD, Config, own_config

Labels = Dict[str, Any]
Sample = Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], Optional[Labels]]

# OpenCV resizes at most this many channels in one call (OpenCV 5 dropped the limit to 128).
_CV_MAX_CHANNELS = 128


class Compose:
    """Apply transforms one after the other."""

    def __init__(self, transforms: Sequence[Callable[..., Sample]]):
        self.transforms = list(transforms)

    def __call__(self, img, masks=None, boxes=None, labels=None) -> Sample:
        for transform in self.transforms:
            img, masks, boxes, labels = transform(img, masks, boxes, labels)
        return img, masks, boxes, labels


def do_nothing(img=None, masks=None, boxes=None, labels=None) -> Sample:
    """The identity transform."""
    return img, masks, boxes, labels


def enable_if(condition: bool, obj: Callable[..., Sample]) -> Callable[..., Sample]:
    """`obj` when `condition` holds, else the identity (which draws no random numbers)."""
    return obj if condition else do_nothing


class ConvertFromInts:
    """image (uint8) -> float32 copy."""

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        return image.astype(np.float32), masks, boxes, labels


def _box_scale(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return np.array([width, height, width, height], dtype=np.float64)


class ToAbsoluteCoords:
    """boxes relative to the image ([0, 1]) -> pixels. Returns new arrays; inputs are not changed."""

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        return image, masks, boxes * _box_scale(image), labels


class ToPercentCoords:
    """boxes in pixels -> relative to the image ([0, 1])."""

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        return image, masks, boxes / _box_scale(image), labels


class Pad:
    """Place the image in the top-left corner of a `width` x `height` canvas filled with `mean`.

    The image must not be larger than the canvas. Masks are padded with zeros when `pad_gt`.
    """

    def __init__(self, width: int, height: int, mean: Sequence[float] = MEANS, pad_gt: bool = True):
        self.width = width
        self.height = height
        self.mean = mean
        self.pad_gt = pad_gt

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        img_h, img_w, channels = image.shape
        if img_h > self.height or img_w > self.width:
            raise ValueError(f"Pad expects an image of at most {self.height}x{self.width}, got {img_h}x{img_w}")

        canvas = np.empty((self.height, self.width, channels), dtype=image.dtype)
        canvas[:] = self.mean
        canvas[:img_h, :img_w] = image

        if self.pad_gt and masks is not None:
            padded = np.zeros((masks.shape[0], self.height, self.width), dtype=masks.dtype)
            padded[:, :img_h, :img_w] = masks
            masks = padded
        return canvas, masks, boxes, labels


def _resize_masks(masks: np.ndarray, width: int, height: int) -> np.ndarray:
    """masks (ndarray[N, H, W]) -> ndarray[N, height, width], bilinear like the image.

    OpenCV resizes an [H, W, C] array channel by channel, so the masks go through as channels.
    """
    if masks.shape[0] == 0:
        return np.zeros((0, height, width), dtype=masks.dtype)
    chunks = []
    for start in range(0, masks.shape[0], _CV_MAX_CHANNELS):
        part = np.ascontiguousarray(masks[start:start + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        resized = cv2.resize(part, (width, height))
        if resized.ndim == 2:  # OpenCV drops a single channel axis
            resized = resized[:, :, None]
        chunks.append(resized.transpose(2, 0, 1))
    return np.ascontiguousarray(np.concatenate(chunks, axis=0))


class Resize:
    """Resize to `max_size` x `max_size` (or, with `preserve_aspect_ratio`, to about max_size^2 pixels
    of area keeping the aspect ratio), then drop boxes no wider than `discard_box_width` or no taller
    than `discard_box_height`.

    With `resize_gt` the masks are resized and the boxes (which must be in pixels) scaled with the
    image; without it (evaluation) both are left as they are.

    The discard thresholds are compared with the boxes in whatever units they have here, as in the
    original: relative units in evaluation (BaseTransform), pixels in training (SSDAugmentation), where
    the default 4/550 therefore only drops boxes of (near) zero size. Kept for parity with the
    original's training.

    Settings not given are read from `config` (``cfg.max_size``, ...) when the transform is built.
    """

    @staticmethod
    def calc_size_preserve_ar(img_w: int, img_h: int, max_size: int) -> Tuple[int, int]:
        """(width, height) with the aspect ratio of img_w x img_h and an area of about max_size^2."""
        # w / h = img_w / img_h and w * h = max_size^2
        ratio = sqrt(img_w / img_h)
        return int(max_size * ratio), int(max_size / ratio)

    def __init__(self, resize_gt: bool = True, max_size: Optional[int] = None,
                 preserve_aspect_ratio: Optional[bool] = None,
                 discard_box_width: Optional[float] = None, discard_box_height: Optional[float] = None,
                 config: Optional[Config] = None):
        def setting(value: Any, name: str) -> Any:
            if value is not None:
                return value
            if config is None:
                raise ValueError(f"Resize needs {name}=... or a config to read it from")
            return getattr(config, name)

        self.resize_gt = resize_gt
        self.max_size = setting(max_size, 'max_size')
        self.preserve_aspect_ratio = setting(preserve_aspect_ratio, 'preserve_aspect_ratio')
        self.discard_box_width = setting(discard_box_width, 'discard_box_width')
        self.discard_box_height = setting(discard_box_height, 'discard_box_height')

    def output_size(self, img_w: int, img_h: int) -> Tuple[int, int]:
        """(width, height) that an img_w x img_h image is resized to."""
        if self.preserve_aspect_ratio:
            return Resize.calc_size_preserve_ar(img_w, img_h, self.max_size)
        return self.max_size, self.max_size

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        img_h, img_w = image.shape[:2]
        width, height = self.output_size(img_w, img_h)
        image = cv2.resize(np.ascontiguousarray(image), (width, height))

        if self.resize_gt:
            if masks is not None:
                masks = _resize_masks(masks, width, height)
            if boxes is not None:
                boxes = boxes * np.array([width / img_w, height / img_h, width / img_w, height / img_h])

        if boxes is None:
            return image, masks, boxes, labels

        keep = ((boxes[:, 2] - boxes[:, 0]) > self.discard_box_width) & \
               ((boxes[:, 3] - boxes[:, 1]) > self.discard_box_height)
        boxes = boxes[keep]
        if masks is not None:
            masks = masks[keep]
        if labels is not None:
            kept_labels = labels['labels'][keep]
            labels = {'num_crowds': int((kept_labels < 0).sum()), 'labels': kept_labels}
        return image, masks, boxes, labels


# ----------------------- photometric ----------------------- #

class RandomScale:
    """With probability 1/2, multiply a float image (in place) by U(lower, upper): one channel of
    it, or the whole image when `channel` is None. The original's two names for this follow."""

    channel: Optional[int] = None

    def __init__(self, lower: float = 0.5, upper: float = 1.5):
        if not 0 <= lower <= upper:
            raise ValueError(f"{type(self).__name__} expects 0 <= lower <= upper, got lower={lower}, upper={upper}")
        self.lower = lower
        self.upper = upper

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        if np.random.randint(2):
            factor = np.random.uniform(self.lower, self.upper)
            if self.channel is None:
                image *= factor
            else:
                image[:, :, self.channel] *= factor
        return image, masks, boxes, labels


class RandomSaturation(RandomScale):
    """With probability 1/2, scale the S channel of an HSV float image by U(lower, upper)."""

    channel = 1


class RandomHue:
    """With probability 1/2, shift the H channel (degrees, 0..360) of an HSV float image by
    U(-delta, delta), wrapping around the colour circle."""

    def __init__(self, delta: float = 18.0):
        if not 0.0 <= delta <= 360.0:
            raise ValueError(f"RandomHue expects 0 <= delta <= 360, got {delta}")
        self.delta = delta

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        if np.random.randint(2):
            hue = image[:, :, 0]
            hue += np.random.uniform(-self.delta, self.delta)
            hue[hue > 360.0] -= 360.0
            hue[hue < 0.0] += 360.0
        return image, masks, boxes, labels


class RandomContrast(RandomScale):
    """With probability 1/2, scale a float image by U(lower, upper) (in place)."""


class RandomBrightness:
    """With probability 1/2, add U(-delta, delta) to a float image (in place)."""

    def __init__(self, delta: float = 32):
        if not 0.0 <= delta <= 255.0:
            raise ValueError(f"RandomBrightness expects 0 <= delta <= 255, got {delta}")
        self.delta = delta

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        if np.random.randint(2):
            image += np.random.uniform(-self.delta, self.delta)
        return image, masks, boxes, labels


class ConvertColor:
    """Float image BGR -> HSV or HSV -> BGR (OpenCV: H in degrees, S in [0, 1], V unchanged)."""

    _CODES = {('BGR', 'HSV'): cv2.COLOR_BGR2HSV, ('HSV', 'BGR'): cv2.COLOR_HSV2BGR}

    def __init__(self, current: str = 'BGR', transform: str = 'HSV'):
        if (current, transform) not in self._CODES:
            raise ValueError(f"ConvertColor supports BGR->HSV and HSV->BGR, got {current}->{transform}")
        self.current = current
        self.transform = transform

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        return cv2.cvtColor(image, self._CODES[(self.current, self.transform)]), masks, boxes, labels


class PhotometricDistort:
    """SSD's colour jitter on a float BGR image: random brightness, then random contrast either
    before or after random saturation and hue (done in HSV). Works on a copy of the image."""

    def __init__(self):
        self.brightness = RandomBrightness()
        self.contrast = RandomContrast()
        self.hsv_jitter = Compose([
            ConvertColor(current='BGR', transform='HSV'),
            RandomSaturation(),
            RandomHue(),
            ConvertColor(current='HSV', transform='BGR'),
        ])

    def __call__(self, image, masks=None, boxes=None, labels=None) -> Sample:
        image = image.copy()  # the jitters work in place
        image = self.brightness(image)[0]
        contrast_first = np.random.randint(2)
        if contrast_first:
            image = self.contrast(image)[0]
        image = self.hsv_jitter(image)[0]
        if not contrast_first:
            image = self.contrast(image)[0]
        return image, masks, boxes, labels


# ----------------------- geometric ----------------------- #

class Expand:
    """With probability 1/2, place the image at a random spot of a canvas 1 to 4 times its size,
    filled with `mean` (zoom out, to train on small objects). Boxes in pixels."""

    def __init__(self, mean: Sequence[float]):
        self.mean = mean

    def __call__(self, image, masks, boxes, labels) -> Sample:
        if np.random.randint(2):
            return image, masks, boxes, labels

        height, width, channels = image.shape
        ratio = np.random.uniform(1, 4)
        left = int(np.random.uniform(0, width * ratio - width))
        top = int(np.random.uniform(0, height * ratio - height))
        new_h, new_w = int(height * ratio), int(width * ratio)

        canvas = np.empty((new_h, new_w, channels), dtype=image.dtype)
        canvas[:] = self.mean
        canvas[top:top + height, left:left + width] = image

        new_masks = np.zeros((masks.shape[0], new_h, new_w), dtype=masks.dtype)
        new_masks[:, top:top + height, left:left + width] = masks

        return canvas, new_masks, boxes + np.array([left, top, left, top]), labels


def _crowd_flags(labels: Labels, count: int) -> np.ndarray:
    """bool[count]: True for the crowd annotations, which are the last labels['num_crowds']."""
    flags = np.zeros(count, dtype=bool)
    flags[count - labels['num_crowds']:] = True
    return flags


class RandomSampleCrop:
    """SSD's random crop: keep the whole image with probability 1/6, else crop a patch of 0.3 to 1
    times each side (aspect ratio of the patch's h/w in [0.5, 2]) and keep the objects whose box
    centre falls inside it. Boxes (pixels) and masks are cut to the patch.

    A patch is only accepted if it keeps at least one non-crowd object; crowd annotations stay last
    and labels['num_crowds'] counts those kept. Up to 50 patches are tried per round; after that the
    keep-or-crop choice is drawn again.

    SSD also draws a minimum IoU with the objects (0.1 .. 0.9) for each round, but the original's
    check of it can never fail and YOLACT kept it that way on purpose (fixing it halved mAP early in
    training). Only the "keep whole image" choice (1 of 6) therefore has an effect here.
    """

    _NUM_MODES = 6  # keep whole image, min IoU 0.1/0.3/0.7/0.9, unconstrained
    _TRIALS = 50

    def __call__(self, image, masks, boxes, labels) -> Sample:
        height, width = image.shape[:2]
        is_crowd = _crowd_flags(labels, len(boxes))
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2.0

        while True:
            if np.random.randint(self._NUM_MODES) == 0:
                return image, masks, boxes, labels

            for _ in range(self._TRIALS):
                w = np.random.uniform(0.3 * width, width)
                h = np.random.uniform(0.3 * height, height)
                if h / w < 0.5 or h / w > 2:
                    continue
                # The original passes only numpy's `low` here, so `high` is numpy's default 1.0: the
                # offset lands between 1 and width - w. Same call, so seeds reproduce its crops.
                left = np.random.uniform(width - w, 1.0)
                top = np.random.uniform(height - h, 1.0)
                x1, y1, x2, y2 = int(left), int(top), int(left + w), int(top + h)

                inside = ((centers[:, 0] > x1) & (centers[:, 1] > y1) &
                          (centers[:, 0] < x2) & (centers[:, 1] < y2))
                if not (inside & ~is_crowd).any():
                    continue

                new_boxes = boxes[inside].copy()
                new_boxes[:, :2] = np.maximum(new_boxes[:, :2], [x1, y1])
                new_boxes[:, 2:] = np.minimum(new_boxes[:, 2:], [x2, y2])
                new_boxes -= np.array([x1, y1, x1, y1])
                new_labels = {'num_crowds': int((inside & is_crowd).sum()),
                              'labels': labels['labels'][inside]}
                return (image[y1:y2, x1:x2], masks[inside, y1:y2, x1:x2].copy(),
                        new_boxes, new_labels)


class RandomMirror:
    """With probability 1/2, flip left-right. Boxes in pixels."""

    def __call__(self, image, masks, boxes, labels) -> Sample:
        width = image.shape[1]
        if np.random.randint(2):
            image = image[:, ::-1]
            masks = masks[:, :, ::-1]
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
        return image, masks, boxes, labels


class RandomFlip:
    """With probability 1/2, flip upside down. Boxes in pixels."""

    def __call__(self, image, masks, boxes, labels) -> Sample:
        height = image.shape[0]
        if np.random.randint(2):
            image = image[::-1]
            masks = masks[:, ::-1]
            boxes = np.stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], axis=1)
        return image, masks, boxes, labels


class RandomRot90:
    """Rotate counter-clockwise by k * 90 degrees, k uniform in {0, 1, 2, 3}. Boxes in pixels.

    One turn maps the point (x, y) of a W-wide image to (y, W - x). (The original uses W - 1 - x,
    which shifts boxes one pixel off their rotated masks.)
    """

    def __call__(self, image, masks, boxes, labels) -> Sample:
        height, width = image.shape[:2]
        k = np.random.randint(4)
        boxes = boxes.copy()
        for _ in range(k):
            boxes = np.stack([boxes[:, 1], width - boxes[:, 2], boxes[:, 3], width - boxes[:, 0]], axis=1)
            height, width = width, height
        return np.rot90(image, k), np.rot90(masks, k, axes=(1, 2)), boxes, labels


# ----------------------- network input ----------------------- #

def _channel_permutation(in_order: str, out_order: str) -> List[int]:
    """Indices that reorder channels named by `in_order` (e.g. 'BGR') into `out_order` (e.g. 'RGB')."""
    if sorted(in_order) != sorted(out_order):
        raise ValueError(f"cannot reorder channels {in_order!r} into {out_order!r}: expected the same letters")
    return [in_order.index(c) for c in out_order]


class BackboneTransform:
    """Float image in 0..255 with channels `in_channel_order` -> the backbone's input: normalised per
    `transform` (a config with normalize / subtract_means / to_float, first one set wins) and reordered
    to `transform.channel_order`. mean and std are per channel, in `in_channel_order`."""

    def __init__(self, transform: Any, mean: Sequence[float], std: Sequence[float], in_channel_order: str):
        self.transform = transform
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)
        self.channel_permutation = _channel_permutation(in_channel_order, transform.channel_order)

    def __call__(self, img, masks=None, boxes=None, labels=None) -> Sample:
        img = img.astype(np.float32)
        if self.transform.normalize:
            img = (img - self.mean) / self.std
        elif self.transform.subtract_means:
            img = img - self.mean
        elif self.transform.to_float:
            img = img / 255
        img = img[:, :, self.channel_permutation]
        return img.astype(np.float32), masks, boxes, labels


def _config_mean_std(config: Any, mean: Optional[Sequence[float]],
                     std: Optional[Sequence[float]]) -> Tuple[Config, Sequence[float], Sequence[float]]:
    """(own copy of the config, mean, std) for a transform called as ``T(config, mean, std)`` or as
    the original's ``T(mean, std)`` (``BaseTransform(MEANS)``), which reads the active cfg."""
    if config is not None and not isinstance(config, Config):
        config, mean, std = None, config, mean
    return own_config(config), MEANS if mean is None else mean, STD if std is None else std


class BaseTransform:
    """Evaluation transform: float, resize (image only; boxes stay relative and masks untouched, but
    boxes below cfg.discard_box_width/height are dropped with their masks and labels) and the
    backbone's normalisation. Returns (img (ndarray[h, w, 3] float32), masks, boxes, labels).
    `config` defaults to the active cfg; a copy is read when the transform is built."""

    def __init__(self, config: Optional[Config] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        config, mean, std = _config_mean_std(config, mean, std)
        self.augment = Compose([
            ConvertFromInts(),
            Resize(resize_gt=False, config=config),
            BackboneTransform(config.backbone.transform, mean, std, 'BGR'),
        ])

    def __call__(self, img, masks=None, boxes=None, labels=None) -> Sample:
        return self.augment(img, masks, boxes, labels)


class FastBaseTransform(torch.nn.Module):
    """BaseTransform for batches of tensors, on the tensors' device.

    forward(img (Tensor[N, H, W, 3]) BGR, 0..255) -> Tensor[N, 3, h, w] in the backbone's channel
    order, normalised; (h, w) as Resize (bilinear, align_corners=False). Integer input is converted to
    float32; otherwise the input's dtype is kept. `config` (default: the active cfg) is copied
    when the module is built.
    """

    def __init__(self, config: Optional[Config] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        config, mean, std = _config_mean_std(config, mean, std)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.transform = config.backbone.transform
        self.resize = Resize(resize_gt=False, config=config)
        self.channel_permutation = _channel_permutation('BGR', self.transform.channel_order)

    def _per_channel(self, values: Tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[-1] != 3:
            raise ValueError(f"FastBaseTransform expects a [N, H, W, 3] BGR image batch, got shape {tuple(img.shape)}")
        if not img.is_floating_point():
            img = img.float()

        width, height = self.resize.output_size(img.shape[2], img.shape[1])
        img = img.permute(0, 3, 1, 2).contiguous()
        img = F.interpolate(img, (height, width), mode='bilinear', align_corners=False)

        if self.transform.normalize:
            img = (img - self._per_channel(self.mean, img)) / self._per_channel(self.std, img)
        elif self.transform.subtract_means:
            img = img - self._per_channel(self.mean, img)
        elif self.transform.to_float:
            img = img / 255
        return img[:, self.channel_permutation].contiguous()


class SSDAugmentation:
    """Training transform, switched by `config`'s augment_* (default: the active cfg; read when built).

    __call__(img (ndarray[H, W, 3] uint8 BGR), masks (ndarray[N, H, W]), boxes (ndarray[N, 4]) relative
    (x1, y1, x2, y2), labels {'num_crowds': int, 'labels': ndarray[N]}) ->
    (img (ndarray[S, S, 3] float32, backbone input), masks (ndarray[M, S, S]), boxes (ndarray[M, 4])
    relative, labels {'num_crowds', 'labels'}) with S = cfg.max_size (or the preserved-aspect size),
    M <= N objects kept, crowd labels last.
    """

    def __init__(self, config: Optional[Config] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        cfg, mean, std = _config_mean_std(config, mean, std)
        # The original also pads to max_size x max_size when not preserving the aspect ratio, but the
        # resize already produced that size, so the pad is left out.
        self.augment = Compose([
            ConvertFromInts(),
            ToAbsoluteCoords(),
            enable_if(cfg.augment_photometric_distort, PhotometricDistort()),
            enable_if(cfg.augment_expand, Expand(mean)),
            enable_if(cfg.augment_random_sample_crop, RandomSampleCrop()),
            enable_if(cfg.augment_random_mirror, RandomMirror()),
            enable_if(cfg.augment_random_flip, RandomFlip()),
            enable_if(cfg.augment_random_rot90, RandomRot90()),
            Resize(config=cfg),
            ToPercentCoords(),
            BackboneTransform(cfg.backbone.transform, mean, std, 'BGR'),
        ])

    def __call__(self, img: np.ndarray, masks: np.ndarray, boxes: np.ndarray, labels: Labels) -> Sample:
        count = len(boxes)
        if masks.ndim != 3 or masks.shape[0] != count or masks.shape[1:] != img.shape[:2]:
            raise ValueError(f"expected masks of shape [{count}, {img.shape[0]}, {img.shape[1]}] "
                             f"(one per box, image-sized), got {tuple(masks.shape)}")
        if len(labels['labels']) != count or not 0 <= labels['num_crowds'] <= count:
            raise ValueError(f"expected {count} labels with 0 <= num_crowds <= {count}, got "
                             f"{len(labels['labels'])} labels and num_crowds={labels['num_crowds']}")
        return self.augment(img, masks, np.asarray(boxes, dtype=np.float64), labels)

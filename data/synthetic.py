"""A small synthetic instance-segmentation dataset in COCO format, for tests and quick training runs.

    python -m data.synthetic --out data/synthetic --train 2000 --val 200 [--seed 0] [--size 160]

writes::

    <out>/train/000001.jpg ...      <out>/instances_train.json
    <out>/val/000001.jpg ...        <out>/instances_val.json
    <out>/meta.json                 (the parameters; a rerun with the same ones does nothing)

Each image has a textured background (colour gradient, smooth blotches, noise, random lines) and
3-10 filled shapes of the classes ``SYNTHETIC_CLASSES`` (category ids 1..6 in that order) with random
colour, size (radius 8-25 % of the image side), rotation (up to 25 degrees) and a little stretch. Shapes painted later occlude earlier ones; about one
image in ten also has a crowd region (``iscrowd=1``): a cluster of small shapes of one class.

Masks are exact: every shape is rasterised by pycocotools itself, so the mask stored in the json
(a polygon for a fully visible shape inside the image, otherwise the RLE of its visible pixels)
decodes to exactly the pixels painted in that shape's colour. ``bbox`` is the tight box of the
visible pixels and ``area`` their count; shapes with fewer than ``MIN_VISIBLE_AREA`` visible
pixels are not annotated.

Every image is drawn from its own random stream seeded by (seed, split, index), so the output is
the same for a given seed whatever the number of worker processes.

A second look, for transfer-learning experiments, is written as a folder of labelme files::

    python -m data.synthetic --format labelme --variant transfer --out data/transfer_labelme \
        --train 400 --val 100
    python -m data.labelme2coco data/transfer_labelme data/transfer --val_fraction 0.2

The ``transfer`` variant (``VARIANTS``) has only three of the shapes, under other names
(circle -> 'coin', square -> 'tile', star -> 'badge'), muted dark colours, a light wood-grain
background and no crowds. The labelme folder holds ``--train + --val`` images (``000001.jpg`` +
``000001.json``, ...) side by side; ``data.labelme2coco`` makes the train/val split, and the
command line prints the ``--val_fraction`` that gives ``--val`` validation images. Fully visible
shapes are written as labelme ``polygon`` shapes, occluded or border-cut ones as labelme ``mask``
shapes (the box of the visible pixels and a PNG of them), so the converted masks are exact too.
"""
import argparse
import base64
import json
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .config import SYNTHETIC_CLASSES

__all__ = ['SYNTHETIC_CLASSES', 'TRANSFER_CLASSES', 'MIN_VISIBLE_AREA', 'min_visible_area', 'RenderedInstance',
           'RenderedImage', 'Variant', 'VARIANTS',
           'render_image', 'generate', 'generate_labelme']

# Bump when the drawing changes, so an existing dataset on disk is regenerated.
GENERATOR_VERSION = 3
# Visible pixels below which a shape is not annotated: in absolute pixels, and as a fraction of the
# image (the larger one counts). Smaller remnants are slivers no detector could name.
MIN_VISIBLE_AREA = 20
MIN_VISIBLE_FRACTION = 0.003
# Shape radius range as fractions of the image side (log-uniform). Version 1 went down to 0.045:
# objects of a few pixels at the demo's input size, which only capped the mAP a short run can reach.
RADIUS_RANGE = (0.08, 0.25)
# Shapes are turned by at most this many degrees from upright. Any angle (version 1) made the
# triangle, square and star the hardest classes by far, for a reason that is not the point here.
MAX_ROTATION_DEG = 25
JPEG_QUALITY = 95
# Image side in pixels: the demo config's input size, so training and evaluation see the pixels as drawn.
DEFAULT_SIZE = 160
SPLIT_CODES = {'train': 0, 'val': 1}
# Shapes tried per image (uniform); some are dropped when they would bury an earlier one. Version 2
# tried 2-8; 3-10 gives a from-scratch model more objects to learn from per image at the same cost
# per step, and the demo a higher mAP (README.md, Results).
MIN_INSTANCES, MAX_INSTANCES = 3, 10
CROWD_PROBABILITY = 0.1
# A new shape may hide at most this fraction of what is still visible of an earlier one; beyond
# that the earlier object becomes a sliver no detector could name, which only adds label noise.
MAX_HIDDEN_FRACTION = 0.6


@dataclass
class RenderedInstance:
    """One annotated object of a rendered image.

    mask (ndarray[H, W] bool): the visible pixels; full (ndarray[H, W] bool): all pixels of the
    shape, including those later shapes cover. polygon: flat [x0, y0, x1, y1, ...] in pixel
    coordinates when the whole shape is visible and inside the image, else None (RLE is stored).
    colour: the BGR fill colour before shading and noise.
    """
    category_id: int
    mask: np.ndarray
    full: np.ndarray
    polygon: Optional[List[float]]
    iscrowd: bool
    colour: Tuple[int, int, int]


@dataclass
class RenderedImage:
    image: np.ndarray  # uint8 [H, W, 3], BGR
    instances: List[RenderedInstance]


# ---------------------------------------------------------------- shapes

def _unit_outline(kind: str) -> np.ndarray:
    """Vertices (ndarray[K, 2]) of the class outline around the origin with radius about 1."""
    def ring(count: int, start_deg: float) -> np.ndarray:
        ang = np.deg2rad(start_deg) + np.arange(count) * (2 * np.pi / count)
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)

    if kind == 'circle':
        return ring(48, 0)
    if kind == 'triangle':
        return ring(3, -90)
    if kind == 'square':
        return ring(4, 45)
    if kind == 'hexagon':
        return ring(6, 0)
    if kind == 'star':
        pts = ring(10, -90)
        pts[1::2] *= 0.45
        return pts
    if kind == 'cross':
        a = 0.33  # half width of an arm
        return np.array([(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1), (-a, -1), (-a, -a),
                         (-1, -a), (-1, a), (-a, a), (-a, 1)], dtype=np.float64)
    raise ValueError(f"unknown shape '{kind}', expected one of {SYNTHETIC_CLASSES}")


_OUTLINES = {name: _unit_outline(name) for name in SYNTHETIC_CLASSES}


def _shape_polygon(kind: str, centre: Tuple[float, float], radius: float, angle: float,
                   stretch: float) -> List[float]:
    """Flat [x0, y0, ...] polygon of a shape, rounded to 2 decimals so the json holds it exactly."""
    pts = _OUTLINES[kind] * np.array([radius * stretch, radius / stretch])
    c, s = np.cos(angle), np.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + np.asarray(centre)
    return [round(float(v), 2) for v in pts.reshape(-1)]


def _rasterise(polygon: List[float], height: int, width: int) -> np.ndarray:
    """Pixels (ndarray[H, W] bool) that pycocotools assigns to `polygon`: the same decoder the
    dataset loader uses, so a stored polygon reproduces the painted pixels exactly."""
    rles = mask_utils.frPyObjects([polygon], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _polygon_inside(polygon: List[float], height: int, width: int) -> bool:
    xs, ys = polygon[0::2], polygon[1::2]
    return min(xs) >= 0 and min(ys) >= 0 and max(xs) <= width - 1 and max(ys) <= height - 1


# ---------------------------------------------------------------- painting

def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A BGR colour (float[3]) of random hue, reasonably saturated and bright."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(90, 256), rng.integers(70, 256)]]],
                   dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 [size, size, 3] BGR background: gradient + smooth blotches + lines."""
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    coords = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None] + 0.5
    img = c0 + (c1 - c0) * np.clip(ramp, 0, 1)[..., None]

    grid = int(rng.integers(3, 9))
    blotch = rng.normal(0, rng.uniform(8, 30), (grid, grid, 3)).astype(np.float32)
    img += cv2.resize(blotch, (size, size), interpolation=cv2.INTER_CUBIC)

    for _ in range(int(rng.integers(2, 10))):
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, p0, p1, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A BGR colour (float[3]) of random hue, dull and dark: the transfer variant's palette."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(40, 131), rng.integers(45, 131)]]],
                   dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _wood_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 [size, size, 3] BGR background of the transfer variant: a pale, nearly grey base
    with wavy low-contrast stripes (wood grain) and fine grain, instead of gradients and lines."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(10, 61), rng.integers(185, 236)]]],
                   dtype=np.uint8)
    base = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    along = np.cos(theta) * xx + np.sin(theta) * yy
    across = -np.sin(theta) * xx + np.cos(theta) * yy
    freq, wobble = rng.uniform(6, 14), rng.uniform(0.02, 0.08)
    wave = wobble * np.sin(2 * np.pi * rng.uniform(1, 3) * across + rng.uniform(0, 2 * np.pi))
    stripes = np.sin(2 * np.pi * freq * (along + wave))
    img = base + rng.uniform(8, 20) * stripes[..., None]
    img += rng.normal(0, 4, (size, size, 1)).astype(np.float32)  # grain, the same on every channel
    return img.astype(np.float32)


@dataclass(frozen=True)
class Variant:
    """A look of the synthetic dataset.

    shapes: the outline (a ``SYNTHETIC_CLASSES`` name) of class i + 1; class_names: what the
    annotations call that class. colour / background: the palette of the shapes and the
    background painter. stream: appended to (seed, split, index) to seed each image, so that two
    variants never draw the same random numbers (empty for the default, whose stream is fixed).
    """
    name: str
    shapes: Tuple[str, ...]
    class_names: Tuple[str, ...]
    colour: Callable[[np.random.Generator], np.ndarray]
    background: Callable[[np.random.Generator, int], np.ndarray]
    crowd_probability: float
    stream: Tuple[int, ...]


# The transfer variant's classes, in category order: circle, square and star under other names.
TRANSFER_CLASSES = ('coin', 'tile', 'badge')

VARIANTS: Dict[str, Variant] = {
    'default': Variant('default', SYNTHETIC_CLASSES, SYNTHETIC_CLASSES, _random_colour, _background,
                       CROWD_PROBABILITY, ()),
    # labelme has no crowd regions, so this variant has none.
    'transfer': Variant('transfer', ('circle', 'square', 'star'), TRANSFER_CLASSES, _muted_colour,
                        _wood_background, 0.0, (1,)),
}


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got '{name}'")
    return VARIANTS[name]


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Fill `mask` of `img` with `colour` plus a soft linear shading (in place)."""
    rows, cols = np.nonzero(mask)
    theta = rng.uniform(0, 2 * np.pi)
    proj = np.cos(theta) * cols + np.sin(theta) * rows
    span = max(float(proj.max() - proj.min()), 1.0)
    shade = (proj - proj.min()) / span - 0.5  # in [-0.5, 0.5]
    img[rows, cols] = colour + rng.uniform(10, 30) * shade[:, None]


class _Canvas:
    """Paints shapes in order and keeps, per pixel, which paint layer is on top."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.size = image.shape[0]
        self.min_area = min_visible_area(self.size)
        self.owner = np.zeros(image.shape[:2], dtype=np.int16)  # 0: background
        self.layers: List[dict] = []

    def would_bury(self, full: np.ndarray) -> bool:
        """True when painting `full` would hide too much of an earlier layer."""
        for idx in range(1, len(self.layers) + 1):
            visible = self.owner == idx
            area = int(visible.sum())
            if area == 0:
                continue
            hidden = int((visible & full).sum())
            if hidden > MAX_HIDDEN_FRACTION * area or area - hidden < self.min_area:
                return True
        return False

    def add(self, full: np.ndarray, colour: np.ndarray, rng: np.random.Generator, **info) -> None:
        self.layers.append(dict(full=full, colour=colour, **info))
        self.owner[full] = len(self.layers)
        _paint(self.image, full, colour, rng)


def min_visible_area(size: int) -> int:
    """Fewest visible pixels an annotated shape has in a `size` x `size` image."""
    return max(MIN_VISIBLE_AREA, int(round(MIN_VISIBLE_FRACTION * size * size)))


def _pick_centre(rng: np.random.Generator, size: int, radius: float) -> Tuple[float, float]:
    """A centre that keeps most of the shape inside, or (one time in six) one on a border, so
    that the shape is cut by the image edge."""
    margin = min(0.6 * radius, 0.45 * size)
    x, y = rng.uniform(margin, size - margin, 2)
    if rng.random() < 1 / 6:
        edge = rng.integers(4)
        offset = rng.uniform(-0.4, 0.4) * radius
        if edge == 0:
            x = offset
        elif edge == 1:
            x = size - 1 + offset
        elif edge == 2:
            y = offset
        else:
            y = size - 1 + offset
    return float(x), float(y)


def _add_crowd(canvas: _Canvas, rng: np.random.Generator, variant: Variant) -> None:
    """A cluster of small shapes of one class, annotated together as one crowd region."""
    size = canvas.size
    cls = int(rng.integers(len(variant.shapes)))
    kind = variant.shapes[cls]
    cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
    spread = rng.uniform(0.06, 0.12) * size
    colour = variant.colour(rng)
    full = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(6, 15))):
        r = rng.uniform(0.012, 0.025) * size
        centre = (cx + rng.normal(0, spread), cy + rng.normal(0, spread))
        full |= _rasterise(_shape_polygon(kind, centre, r, rng.uniform(0, 2 * np.pi), 1.0), size, size)
    if full.sum() >= canvas.min_area:
        canvas.add(full, colour, rng, category_id=cls + 1, polygon=None, iscrowd=True)


def _add_object(canvas: _Canvas, rng: np.random.Generator, variant: Variant, tries: int = 10) -> None:
    """One shape of a random class, placed where it does not bury an earlier one."""
    size = canvas.size
    cls = int(rng.integers(len(variant.shapes)))
    colour = variant.colour(rng)
    for _ in range(tries):
        radius = float(np.exp(rng.uniform(*np.log(np.array(RADIUS_RANGE) * size))))
        centre = _pick_centre(rng, size, radius)
        polygon = _shape_polygon(variant.shapes[cls], centre, radius,
                                 np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)),
                                 float(np.exp(rng.uniform(-0.15, 0.15))))
        full = _rasterise(polygon, size, size)
        if full.sum() < canvas.min_area or canvas.would_bury(full):
            continue
        canvas.add(full, colour, rng, category_id=cls + 1, polygon=polygon, iscrowd=False)
        return


def render_image(seed: int, split: str, index: int, size: int = DEFAULT_SIZE,
                 variant: str = 'default') -> RenderedImage:
    """Draw image `index` of `split` ('train' or 'val') for `seed` in the look `variant` (a key of
    ``VARIANTS``); pure function of its arguments.

    Returns the uint8 BGR image (before JPEG compression) and its annotated instances, in paint
    order (crowd first when present); ``category_id`` i is ``VARIANTS[variant].class_names[i - 1]``.
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got '{split}'")
    look = _variant(variant)
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index, *look.stream])
    canvas = _Canvas(look.background(rng, size))

    if rng.random() < look.crowd_probability:
        _add_crowd(canvas, rng, look)
    for _ in range(int(rng.integers(MIN_INSTANCES, MAX_INSTANCES + 1))):
        _add_object(canvas, rng, look)

    noise = rng.normal(0, rng.uniform(2, 10), canvas.image.shape).astype(np.float32)
    image = np.clip(canvas.image + noise, 0, 255).round().astype(np.uint8)

    instances = []
    for idx, layer in enumerate(canvas.layers, start=1):
        visible = canvas.owner == idx
        if visible.sum() < canvas.min_area:
            continue
        polygon = layer['polygon']
        # A polygon is only exact when nothing covers the shape and it is not cut by the border.
        if polygon is not None and not (_polygon_inside(polygon, size, size)
                                        and np.array_equal(visible, layer['full'])):
            polygon = None
        instances.append(RenderedInstance(
            category_id=layer['category_id'], mask=visible, full=layer['full'], polygon=polygon,
            iscrowd=layer['iscrowd'], colour=tuple(int(v) for v in layer['colour'])))
    return RenderedImage(image=image, instances=instances)


# ---------------------------------------------------------------- COCO json

def _annotation(inst: RenderedInstance, image_id: int, ann_id: int) -> dict:
    rows, cols = np.nonzero(inst.mask)
    x0, y0 = int(cols.min()), int(rows.min())
    box = [float(x0), float(y0), float(cols.max() - x0 + 1), float(rows.max() - y0 + 1)]
    if inst.polygon is not None:
        segmentation = [inst.polygon]
    else:
        rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
        segmentation = {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}
    return {'id': ann_id, 'image_id': image_id, 'category_id': inst.category_id,
            'segmentation': segmentation, 'area': float(len(rows)), 'bbox': box,
            'iscrowd': int(inst.iscrowd)}


def _render_to_file(job: Tuple[int, str, int, int, str]) -> List[dict]:
    """Worker: render one image, write its JPEG, return its annotations (ids filled in later)."""
    seed, split, index, size, path = job
    rendered = render_image(seed, split, index, size)
    ok, buf = cv2.imencode('.jpg', rendered.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    with open(path, 'wb') as f:
        f.write(buf.tobytes())
    return [_annotation(inst, index, 0) for inst in rendered.instances]


def _categories() -> List[dict]:
    return [{'id': i + 1, 'name': name, 'supercategory': 'shape'}
            for i, name in enumerate(SYNTHETIC_CLASSES)]


def _write_split(out: str, split: str, count: int, seed: int, size: int, workers: int,
                 progress: bool) -> None:
    img_dir = os.path.join(out, split)
    os.makedirs(img_dir, exist_ok=True)
    for name in os.listdir(img_dir):  # leftovers of an earlier, larger run
        if name.endswith('.jpg'):
            os.remove(os.path.join(img_dir, name))

    names = [f'{i:06d}.jpg' for i in range(1, count + 1)]
    jobs = [(seed, split, i, size, os.path.join(img_dir, n)) for i, n in zip(range(1, count + 1), names)]

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=count, desc=f'synthetic {split}', unit='img')
    if workers > 1 and count >= 4 * workers:
        # fork: the workers need no re-import of the package (which pulls in torch).
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context('fork' if 'fork' in methods else None)
        with ctx.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            per_image = []
            for anns in pool.imap(_render_to_file, jobs, chunksize=16):
                per_image.append(anns)
                if bar is not None:
                    bar.update(1)
    else:
        per_image = []
        for job in jobs:
            per_image.append(_render_to_file(job))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    annotations = []
    for anns in per_image:
        for ann in anns:
            ann['id'] = len(annotations) + 1
            annotations.append(ann)
    dataset = {
        'info': {'description': f'YOLACT synthetic shapes ({split})', 'version': str(GENERATOR_VERSION)},
        'images': [{'id': i, 'file_name': n, 'width': size, 'height': size}
                   for i, n in zip(range(1, count + 1), names)],
        'annotations': annotations,
        'categories': _categories(),
    }
    with open(os.path.join(out, f'instances_{split}.json'), 'w') as f:
        json.dump(dataset, f, separators=(',', ':'))


def _meta(train: int, val: int, seed: int, size: int) -> Dict[str, int]:
    return {'generator_version': GENERATOR_VERSION, 'train': train, 'val': val,
            'seed': seed, 'size': size}


def generate(out: str, train: int, val: int, seed: int = 0, size: int = DEFAULT_SIZE, force: bool = False,
             workers: Optional[int] = None, progress: bool = True) -> bool:
    """Write the dataset to `out`; returns False (and writes nothing) when `out` already holds
    one made with the same parameters, unless `force`."""
    if train < 0 or val < 0:
        raise ValueError(f"image counts must be >= 0, got train={train} val={val}")
    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    meta = _meta(train, val, seed, size)
    meta_path = os.path.join(out, 'meta.json')
    jsons = [os.path.join(out, f'instances_{s}.json') for s in SPLIT_CODES]
    if not force and os.path.isfile(meta_path) and all(os.path.isfile(p) for p in jsons):
        try:
            with open(meta_path) as f:
                if json.load(f) == meta:
                    return False
        except (OSError, ValueError):
            pass  # unreadable meta: regenerate

    os.makedirs(out, exist_ok=True)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # an interrupted run must not look complete
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    for split, count in (('train', train), ('val', val)):
        _write_split(out, split, count, seed, size, workers, progress)
    with open(meta_path, 'w') as f:
        json.dump(meta, f, indent=1)
    return True


# ---------------------------------------------------------------- labelme files

# The labelme release whose file format is written (5.x: 'mask' shapes, 'description').
LABELME_VERSION = '5.4.1'
_LABELME_NAME = re.compile(r'^\d{6}\.(jpg|json)$')


def _labelme_shape(label: str, points: List[List[float]], shape_type: str,
                   mask: Optional[str] = None) -> dict:
    return {'label': label, 'points': points, 'group_id': None, 'description': '',
            'shape_type': shape_type, 'flags': {}, 'mask': mask}


def _labelme_shapes(rendered: RenderedImage, class_names: Sequence[str]) -> List[dict]:
    """The labelme shapes of a rendered image: a 'polygon' for a fully visible shape, a 'mask'
    (inclusive pixel box of the visible pixels + base64 PNG of them) otherwise. Crowd regions are
    left out: labelme has no crowd flag."""
    shapes = []
    for inst in rendered.instances:
        if inst.iscrowd:
            continue
        label = class_names[inst.category_id - 1]
        if inst.polygon is not None:
            points = [[x, y] for x, y in zip(inst.polygon[0::2], inst.polygon[1::2])]
            shapes.append(_labelme_shape(label, points, 'polygon'))
            continue
        rows, cols = np.nonzero(inst.mask)
        x0, x1, y0, y1 = int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max())
        ok, png = cv2.imencode('.png', inst.mask[y0:y1 + 1, x0:x1 + 1].astype(np.uint8) * 255)
        if not ok:
            raise RuntimeError('OpenCV could not encode a mask as PNG')
        shapes.append(_labelme_shape(label, [[float(x0), float(y0)], [float(x1), float(y1)]], 'mask',
                                     base64.b64encode(png.tobytes()).decode('ascii')))
    return shapes


def _render_labelme_to_file(job: Tuple[int, str, int, int, str, str]) -> int:
    """Worker: render one image, write its JPEG and labelme json; returns the number of shapes."""
    seed, split, index, size, variant, stem = job
    rendered = render_image(seed, split, index, size, variant)
    ok, buf = cv2.imencode('.jpg', rendered.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {stem}.jpg")
    with open(stem + '.jpg', 'wb') as f:
        f.write(buf.tobytes())
    shapes = _labelme_shapes(rendered, VARIANTS[variant].class_names)
    doc = {'version': LABELME_VERSION, 'flags': {}, 'shapes': shapes,
           'imagePath': os.path.basename(stem) + '.jpg', 'imageData': None,
           'imageHeight': size, 'imageWidth': size}
    with open(stem + '.json', 'w') as f:
        json.dump(doc, f, indent=2)
    return len(shapes)


def generate_labelme(out: str, train: int, val: int, seed: int = 0, size: int = DEFAULT_SIZE,
                     variant: str = 'transfer', workers: Optional[int] = None, progress: bool = True) -> int:
    """Write ``train + val`` images of `variant` to the folder `out` as labelme files:
    ``000001.jpg`` + ``000001.json``, ...; returns the number of images.

    Images 1..train are the 'train' images of (seed, variant), the rest its 'val' images, all in
    one folder: ``data.labelme2coco --val_fraction val / (train + val)`` makes the split (it picks
    the validation images itself, by a seeded shuffle). Earlier images of this naming in `out` are
    removed first, other files are left alone.
    """
    if train < 0 or val < 0 or train + val == 0:
        raise ValueError(f"image counts must be >= 0 and not both 0, got train={train} val={val}")
    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    _variant(variant)
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):  # leftovers of an earlier, larger run
        if _LABELME_NAME.match(name):
            os.remove(os.path.join(out, name))
    jobs = [(seed, 'train', i, size, variant, os.path.join(out, f'{i:06d}')) for i in range(1, train + 1)]
    jobs += [(seed, 'val', i, size, variant, os.path.join(out, f'{train + i:06d}')) for i in range(1, val + 1)]

    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc=f'synthetic {variant} (labelme)', unit='img')
    if workers > 1 and len(jobs) >= 4 * workers:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context('fork' if 'fork' in methods else None)
        with ctx.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            for _ in pool.imap(_render_labelme_to_file, jobs, chunksize=16):
                if bar is not None:
                    bar.update(1)
    else:
        for job in jobs:
            _render_labelme_to_file(job)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return len(jobs)


def _val_fraction_arg(train: int, val: int) -> str:
    """The shortest --val_fraction text that makes labelme2coco pick exactly `val` images."""
    total = train + val
    short = f'{val / total:.6g}'
    return short if int(float(short) * total + 0.5) == val else repr(val / total)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Generate the synthetic shapes dataset (COCO format, or '
                                                 'a folder of labelme files with --format labelme).')
    parser.add_argument('--out', default=None,
                        help='output folder (default: data/synthetic; data/synthetic_<variant>_labelme '
                             'with --format labelme)')
    parser.add_argument('--train', type=int, default=2000, help='number of training images')
    parser.add_argument('--val', type=int, default=200, help='number of validation images')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', type=int, default=DEFAULT_SIZE, help='image side in pixels')
    parser.add_argument('--workers', type=int, default=None, help='processes (default: all cores, max 8)')
    parser.add_argument('--force', action='store_true', help='regenerate even if up to date')
    parser.add_argument('--format', choices=('coco', 'labelme'), default='coco',
                        help='coco: train/, val/ and instances_*.json; labelme: one folder of '
                             'image + labelme json pairs (train + val images) for data.labelme2coco')
    parser.add_argument('--variant', choices=sorted(VARIANTS), default='default',
                        help="the look: 'default', or 'transfer' (3 other classes, muted colours, "
                             'wood background; --format labelme only)')
    args = parser.parse_args(argv)

    if args.format == 'labelme':
        out = args.out or f'data/synthetic_{args.variant}_labelme'
        try:
            count = generate_labelme(out, args.train, args.val, seed=args.seed, size=args.size,
                                     variant=args.variant, workers=args.workers, progress=True)
        except ValueError as e:
            parser.error(str(e))
        print(f'wrote {count} labelme images ({args.variant}) to {out}; to COCO with {args.val} val images:\n'
              f'  python -m data.labelme2coco {out} <coco folder> --val_fraction '
              f'{_val_fraction_arg(args.train, args.val)}')
        return 0
    if args.variant != 'default':
        parser.error(f"--variant {args.variant} is written as labelme files only (add --format labelme)")
    args.out = args.out or 'data/synthetic'

    made = generate(args.out, args.train, args.val, seed=args.seed, size=args.size,
                    force=args.force, workers=args.workers, progress=True)
    if made:
        print(f'wrote {args.train} train and {args.val} val images to {args.out}')
    else:
        print(f'{args.out} already holds this dataset (see meta.json); use --force to regenerate')
    return 0


if __name__ == '__main__':
    sys.exit(main())

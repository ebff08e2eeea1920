"""Convert a folder of labelme annotations into a COCO instances dataset that ``--data`` reads.

    python -m data.labelme2coco SRC OUT [--val_fraction 0.1] [--seed 0] [--labels labels.txt] [--force]

reads every ``*.json`` under SRC (sub-folders included, hidden folders not) and writes::

    OUT/train/<images>   OUT/instances_train.json
    OUT/val/<images>     OUT/instances_val.json      (not with --val_fraction 0)

the layout of ``python -m data.synthetic``, so ``train.py --data OUT`` trains on it.

Shapes: ``polygon`` (>= 3 points), ``rectangle`` (two opposite corners), ``circle`` (centre and a
point on the rim) and labelme 5.x ``mask`` (the inclusive pixel box [[x1, y1], [x2, y2]] and a
base64 PNG of the box-sized mask) are rasterised to full-image masks; ``line``, ``linestrip``,
``point`` and ``points`` have no area and are skipped (counted). Coordinates follow COCO and
labelme's display: pixel (x, y) covers [x, x + 1) x [y, y + 1); polygons and rectangles are
rasterised by pycocotools, the decoder the dataset loader uses. Shapes of one label that share a
``group_id`` are one instance (the union of their masks); every other shape is an instance of its
own. A single polygon or rectangle is stored as that polygon, anything else as the RLE of its
pixels; ``bbox`` is the tight box of the pixels and ``area`` their count. Shapes labelled
``__ignore__`` or ``_background_`` are skipped (counted).

Images: ``imageData`` (embedded) wins over ``imagePath`` (relative to the json's folder; a
Windows path or, failing that, the same file name beside the json is tried too). labelme shows,
and so annotates, an image after its EXIF orientation, and ``cv2.imread`` applies it as well, so
an image with an EXIF orientation other than 1 is written upright as PNG without EXIF; others are
copied byte for byte (JPEG, PNG, BMP) or written as PNG. The ``height`` / ``width`` stored are what
``cv2.imread`` returns, and a file whose ``imageHeight`` / ``imageWidth`` disagree is skipped. Each
image is named after its json's path below SRC, folders joined by ``__`` (``a/b/x.json`` ->
``a__b__x.jpg``), with a ``_2``, ``_3`` ... suffix where two names would clash.

Categories are the labels in alphabetical order (ids 1..N), or the order of ``--labels`` (one
name per line; blank lines, ``#`` comments, ``__ignore__`` and ``_background_`` are left out);
shapes of a label not in that file are skipped (counted per label). Both json files carry the
same category list. ``--val_fraction`` of the usable images (rounded; at least one, and at least
one left for training, when it is above 0 and there are 2 images or more) go to val, picked by a
shuffle seeded with ``--seed``.

A file that is not valid JSON, not a labelme file, whose image is missing or cannot be decoded,
or that has a corrupt shape, is skipped whole and named with the reason. The output is built in a
hidden sibling folder and renamed to OUT at the end, so a failed run leaves no half-written OUT.
"""
import argparse
import base64
import binascii
import io
import json
import math
import os
import os.path as osp
import random
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

__all__ = ['ConversionError', 'ConversionReport', 'IGNORED_LABELS', 'read_labels', 'shape_mask',
           'convert', 'main']

# labelme's own label lists start with these; they name no class.
IGNORED_LABELS = ('__ignore__', '_background_')
# Shape types with no area: skipped, counted.
NON_AREA_SHAPES = ('line', 'linestrip', 'point', 'points')
EXIF_ORIENTATION = 0x0112
# Image formats (as PIL names them) copied byte for byte; cv2.imread reads them all.
COPIED_FORMATS = {'JPEG': '.jpg', 'PNG': '.png', 'BMP': '.bmp'}
SPLITS = ('train', 'val')


class ConversionError(Exception):
    """The conversion cannot run or produced nothing usable (one-line message)."""


class _Skip(Exception):
    """This labelme file cannot be used; the message says why."""


@dataclass
class ConversionReport:
    """What `convert` did.

    images / instances: counts per split ('train', 'val'). categories: names in id order (id 1
    first). skipped_files: (path below SRC, reason). skipped_shapes: shape counts per reason
    ('line', 'ignored label', "label 'dog' not in labels file", ...). empty_instances: instances
    whose mask had no pixel inside the image.
    """
    out: str
    files_found: int = 0
    files_converted: int = 0
    images: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    instances: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    categories: List[str] = field(default_factory=list)
    skipped_files: List[Tuple[str, str]] = field(default_factory=list)
    skipped_shapes: Counter = field(default_factory=Counter)
    empty_instances: int = 0

    def summary(self) -> str:
        """One line: files converted, images per split, instances, categories, skips."""
        shapes = sum(self.skipped_shapes.values())
        detail = ', '.join(f'{reason} {n}' for reason, n in sorted(self.skipped_shapes.items()))
        return (f"converted {self.files_converted} of {self.files_found} labelme files into {self.out}: "
                f"{self.images['train']} train / {self.images['val']} val images, "
                f"{sum(self.instances.values())} instances, {len(self.categories)} categories; "
                f"skipped {len(self.skipped_files)} files, {shapes} shapes" + (f' ({detail})' if detail else '')
                + f', {self.empty_instances} empty instances')


@dataclass
class _Instance:
    label: str
    mask: np.ndarray  # bool [H, W]
    polygon: Optional[List[float]]  # flat [x0, y0, ...] when the instance is exactly one polygon


@dataclass
class _Converted:
    rel: str  # the json's path below SRC
    file_name: str  # the image's name in OUT/<split>/
    height: int
    width: int
    annotations: List[dict]  # COCO annotations without id / image_id, with 'label' for category_id


# ---------------------------------------------------------------- labels

def read_labels(path: str) -> List[str]:
    """Class names of a labels file in order: one per line; blank lines, lines starting with '#'
    and labelme's ``__ignore__`` / ``_background_`` are left out. Raises ConversionError for a
    missing file, a name listed twice, or no name at all."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConversionError(f"labels file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConversionError(f"labels file {path}: not UTF-8 text") from None
    names: List[str] = []
    for line in lines:
        name = line.strip()
        if not name or name.startswith('#') or name in IGNORED_LABELS:
            continue
        if name in names:
            raise ConversionError(f"labels file {path} lists '{name}' twice")
        names.append(name)
    if not names:
        raise ConversionError(f"labels file {path} lists no label")
    return names


# ---------------------------------------------------------------- shapes

def _points(shape: dict) -> np.ndarray:
    """ndarray[K, 2] float64 of a shape's (x, y) points; ValueError unless they are finite pairs."""
    pts = shape.get('points')
    if not isinstance(pts, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in pts):
        raise ValueError("'points' is not a list of [x, y] number pairs")
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(arr).all():
        raise ValueError("'points' holds a non-finite number")
    return arr


def _polygon_mask(polygon: List[float], height: int, width: int) -> np.ndarray:
    rles = mask_utils.frPyObjects([polygon], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _decode_box_mask(data: Any) -> np.ndarray:
    """bool ndarray[h, w] of a labelme 'mask' shape's base64 PNG (any mode; nonzero is inside)."""
    if not isinstance(data, str) or not data:
        raise ValueError("a 'mask' shape needs its base64 PNG in 'mask'")
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            return np.asarray(img.convert('L')) > 0
    except (binascii.Error, OSError, ValueError):
        raise ValueError("its 'mask' is not a base64-encoded image") from None


def _shape_pixels(shape: dict, height: int, width: int) -> Tuple[np.ndarray, Optional[List[float]]]:
    """(bool ndarray[H, W] of the shape, its flat polygon when it is a polygon or rectangle)."""
    kind = shape.get('shape_type') or 'polygon'  # labelme < 3.0 wrote no shape_type
    pts = _points(shape)
    if kind == 'polygon':
        if len(pts) < 3:
            raise ValueError(f'a polygon needs >= 3 points, got {len(pts)}')
        polygon = [float(v) for v in pts.reshape(-1)]
        return _polygon_mask(polygon, height, width), polygon
    if kind == 'rectangle':
        if len(pts) != 2:
            raise ValueError(f'a rectangle needs 2 points (opposite corners), got {len(pts)}')
        (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
        polygon = [float(v) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]
        return _polygon_mask(polygon, height, width), polygon
    if kind == 'circle':
        if len(pts) != 2:
            raise ValueError(f'a circle needs 2 points (centre, rim), got {len(pts)}')
        (cx, cy), rim = pts
        radius = math.hypot(rim[0] - cx, rim[1] - cy)
        # Pixel centres sit at (x + 0.5, y + 0.5), as in pycocotools' polygon rasteriser.
        ys, xs = np.ogrid[:height, :width]
        return (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= radius ** 2, None
    if kind == 'mask':
        if len(pts) != 2:
            raise ValueError(f'a mask shape needs 2 points (its box corners), got {len(pts)}')
        box = _decode_box_mask(shape.get('mask'))
        x1, y1 = (int(math.floor(v)) for v in pts.min(axis=0))
        x2, y2 = (int(math.floor(v)) for v in pts.max(axis=0))
        # labelme stores the mask of the inclusive box [x1, x2] x [y1, y2]; allow a pixel of rounding.
        if abs(box.shape[0] - (y2 - y1 + 1)) > 1 or abs(box.shape[1] - (x2 - x1 + 1)) > 1:
            raise ValueError(f'its mask is {box.shape[1]}x{box.shape[0]} but its box is '
                             f'{x2 - x1 + 1}x{y2 - y1 + 1}')
        full = np.zeros((height, width), dtype=bool)
        top, left = max(y1, 0), max(x1, 0)
        bottom, right = min(y1 + box.shape[0], height), min(x1 + box.shape[1], width)
        if bottom > top and right > left:
            full[top:bottom, left:right] = box[top - y1:bottom - y1, left - x1:right - x1]
        return full, None
    raise ValueError(f"unknown shape_type '{kind}'")


def shape_mask(shape: dict, height: int, width: int) -> np.ndarray:
    """The pixels (bool ndarray[H, W]) of one labelme shape dict of an image of that size.

    Raises ValueError for a shape that cannot be rasterised (wrong point count, bad mask, no-area
    or unknown type).
    """
    if shape.get('shape_type') in NON_AREA_SHAPES:
        raise ValueError(f"a {shape['shape_type']} shape has no area")
    return _shape_pixels(shape, height, width)[0]


def _instances(shapes: List[Any], height: int, width: int, labels: Optional[List[str]],
               skipped: Counter) -> List[_Instance]:
    """The instances of one file's shapes, in order of first appearance. Raises _Skip for a
    corrupt shape; counts the shapes it leaves out in `skipped`."""
    groups: Dict[Any, _Instance] = {}
    for i, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise _Skip(f'shape {i} is not a JSON object')
        label = shape.get('label')
        if not isinstance(label, str) or not label.strip():
            raise _Skip(f'shape {i} has no label')
        label = label.strip()
        kind = shape.get('shape_type') or 'polygon'
        if not isinstance(kind, str):
            raise _Skip(f'shape {i} ({label}): shape_type is not a string')
        if kind in NON_AREA_SHAPES:
            skipped[kind] += 1
            continue
        if label in IGNORED_LABELS:
            skipped['ignored label'] += 1
            continue
        if labels is not None and label not in labels:
            skipped[f"label '{label}' not in labels file"] += 1
            continue
        try:
            mask, polygon = _shape_pixels(shape, height, width)
        except ValueError as e:
            raise _Skip(f'shape {i} ({kind} {label}): {e}') from None
        group_id = shape.get('group_id')
        if isinstance(group_id, (dict, list)):
            raise _Skip(f'shape {i} ({kind} {label}): group_id is not a number')
        key = (label, group_id) if group_id is not None else object()  # ungrouped: its own instance
        if key in groups:
            groups[key].mask |= mask
            groups[key].polygon = None
        else:
            groups[key] = _Instance(label, mask, polygon)
    return list(groups.values())


def _annotation(inst: _Instance) -> Optional[dict]:
    """A COCO annotation (no ids; 'label' stands in for category_id) or None for an empty mask."""
    rows, cols = np.nonzero(inst.mask)
    if len(rows) == 0:
        return None
    x0, y0 = int(cols.min()), int(rows.min())
    box = [float(x0), float(y0), float(cols.max() - x0 + 1), float(rows.max() - y0 + 1)]
    if inst.polygon is not None:
        # The same pycocotools call rasterised it, so the polygon decodes to exactly these pixels.
        segmentation: Any = [inst.polygon]
    else:
        rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
        segmentation = {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}
    return {'label': inst.label, 'segmentation': segmentation, 'area': float(len(rows)), 'bbox': box,
            'iscrowd': 0}


# ---------------------------------------------------------------- images

def _image_bytes(doc: dict, json_path: str) -> bytes:
    """The image of a labelme file: its imageData, else the file at imagePath."""
    data = doc.get('imageData')
    if isinstance(data, str) and data:
        try:
            return base64.b64decode(data)
        except (binascii.Error, ValueError):
            raise _Skip('imageData is not valid base64') from None
    image_path = doc.get('imagePath')
    if not isinstance(image_path, str) or not image_path:
        raise _Skip('neither imageData nor imagePath names an image')
    folder = osp.dirname(json_path)
    candidates = [osp.join(folder, image_path)]
    if '\\' in image_path:  # saved on Windows
        candidates.append(osp.join(folder, image_path.replace('\\', '/')))
    candidates.append(osp.join(folder, re.split(r'[\\/]', image_path)[-1]))  # moved beside the json
    for path in candidates:
        if osp.isfile(path):
            try:
                with open(path, 'rb') as f:
                    return f.read()
            except OSError as e:
                raise _Skip(f'image {image_path}: {e.strerror or e}') from None
    raise _Skip(f'image not found: {image_path}')


def _decode_image(buf: bytes) -> Tuple[np.ndarray, int, Optional[str]]:
    """(upright uint8 BGR ndarray[H, W, 3] as cv2.imread gives it, EXIF orientation, PIL format)."""
    orientation, fmt = 1, None
    try:
        with Image.open(io.BytesIO(buf)) as img:
            fmt = img.format
            orientation = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - PIL raises many types for odd files; cv2 decides below
        pass
    pixels = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR) if buf else None
    if pixels is None and fmt is not None:
        # A format OpenCV cannot read: take PIL's upright pixels (written as PNG below).
        try:
            with Image.open(io.BytesIO(buf)) as img:
                rgb = np.asarray(ImageOps.exif_transpose(img).convert('RGB'))
            pixels = np.ascontiguousarray(rgb[:, :, ::-1])
            fmt = None
        except Exception:  # noqa: BLE001
            pixels = None
    if pixels is None:
        raise _Skip('image could not be decoded')
    return pixels, orientation, fmt


_UNSAFE = re.compile(r'[^A-Za-z0-9._-]+')


def _image_stem(rel: str) -> str:
    """A file-name stem from the json's path below SRC: folders joined by '__', odd characters '_'."""
    parts = rel.replace('\\', '/').split('/')
    parts[-1] = osp.splitext(parts[-1])[0]
    stem = '__'.join(_UNSAFE.sub('_', p) for p in parts).lstrip('.')
    return stem or 'image'


# ---------------------------------------------------------------- conversion

def _labelme_files(src: str, exclude: Sequence[str]) -> List[str]:
    """Paths of the *.json files under `src`, sorted, hidden folders and `exclude` left out."""
    exclude = {osp.realpath(p) for p in exclude}
    found = []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.')
                         and osp.realpath(osp.join(folder, d)) not in exclude)
        found += [osp.join(folder, f) for f in files if f.lower().endswith('.json')]
    return sorted(found, key=lambda p: osp.relpath(p, src).replace(os.sep, '/'))


def _load_labelme(path: str) -> dict:
    try:
        with open(path, 'rb') as f:
            doc = json.loads(f.read())
    except OSError as e:
        raise _Skip(f'cannot read: {e.strerror or e}') from None
    except (ValueError, UnicodeDecodeError):
        raise _Skip('not valid JSON') from None
    if not isinstance(doc, dict) or not isinstance(doc.get('shapes'), list) or not (
            isinstance(doc.get('imagePath'), str) or isinstance(doc.get('imageData'), str)):
        raise _Skip("not a labelme file (needs a 'shapes' list and 'imagePath' or 'imageData')")
    return doc


def _convert_file(path: str, rel: str, staging: str, used: set, labels: Optional[List[str]],
                  report: ConversionReport) -> _Converted:
    """Read one labelme file, write its image into `staging`; returns its image and annotations."""
    doc = _load_labelme(path)
    buf = _image_bytes(doc, path)
    pixels, orientation, fmt = _decode_image(buf)
    height, width = pixels.shape[:2]
    expected = (doc.get('imageHeight'), doc.get('imageWidth'))
    if all(isinstance(v, int) for v in expected) and expected != (height, width):
        upright = f' upright (EXIF orientation {orientation})' if orientation != 1 else ''
        raise _Skip(f'labelme says the image is {expected[1]}x{expected[0]} but it is '
                    f'{width}x{height}{upright}')

    skipped: Counter = Counter()
    instances = _instances(doc['shapes'], height, width, labels, skipped)
    annotations = []
    empty = 0
    for inst in instances:
        ann = _annotation(inst)
        if ann is None:
            empty += 1
        else:
            annotations.append(ann)

    copy = orientation == 1 and fmt in COPIED_FORMATS
    ext = COPIED_FORMATS[fmt] if copy else '.png'
    stem = _image_stem(rel)
    name, n = stem + ext, 1
    while name.lower() in used:
        n += 1
        name = f'{stem}_{n}{ext}'
    target = osp.join(staging, name)
    if copy:
        data = buf
    else:
        # Upright pixels without EXIF: whatever reads it later sees what was annotated.
        ok, encoded = cv2.imencode('.png', pixels)
        if not ok:
            raise _Skip('image could not be re-encoded as PNG')
        data = encoded.tobytes()
    with open(target, 'wb') as f:
        f.write(data)
    used.add(name.lower())
    # Only a converted file's shapes count as skipped.
    report.skipped_shapes.update(skipped)
    report.empty_instances += empty
    return _Converted(rel, name, height, width, annotations)


def _val_indices(count: int, val_fraction: float, seed: int) -> set:
    """Indices of the images that go to val: round(val_fraction * count), at least one and
    leaving one for train when val_fraction > 0 and count >= 2."""
    if val_fraction <= 0 or count < 2:
        return set()
    n_val = min(max(int(math.floor(val_fraction * count + 0.5)), 1), count - 1)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return set(order[:n_val])


def _coco_json(images: List[_Converted], categories: List[str], src: str, split: str) -> dict:
    cat_ids = {name: i for i, name in enumerate(categories, start=1)}
    annotations = []
    for image_id, image in enumerate(images, start=1):
        for ann in image.annotations:
            ann = dict(ann)
            label = ann.pop('label')
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                                'category_id': cat_ids[label], **ann})
    return {
        'info': {'description': f'converted from labelme files in {osp.basename(osp.abspath(src))} '
                                f'({split})'},
        'images': [{'id': i, 'file_name': image.file_name, 'width': image.width, 'height': image.height}
                   for i, image in enumerate(images, start=1)],
        'annotations': annotations,
        'categories': [{'id': i, 'name': name, 'supercategory': ''}
                       for i, name in enumerate(categories, start=1)],
    }


def _check_out(src: str, out: str, force: bool) -> None:
    real_src, real_out = osp.realpath(src), osp.realpath(out)
    if real_src == real_out or real_src.startswith(real_out.rstrip(os.sep) + os.sep):
        raise ConversionError(f"OUT {out} must not be SRC or hold it")
    if osp.exists(out):
        if not osp.isdir(out):
            raise ConversionError(f"OUT {out} exists and is not a folder")
        if os.listdir(out) and not force:
            raise ConversionError(f"OUT {out} exists and is not empty (use --force to replace it)")


def _replace(tmp: str, out: str) -> None:
    """Move the finished `tmp` to `out`, replacing what is there."""
    if osp.isdir(out):
        old = tempfile.mkdtemp(prefix=f'.{osp.basename(out)}.old-', dir=osp.dirname(tmp))
        os.rename(out, osp.join(old, 'out'))
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def convert(src: str, out: str, val_fraction: float = 0.1, seed: int = 0, labels: Optional[str] = None,
            force: bool = False, log: Optional[Callable[[str], None]] = print) -> ConversionReport:
    """Convert the labelme files under `src` into a COCO instances dataset in `out`.

    Args:
        src: folder searched recursively for labelme ``*.json`` files.
        out: the dataset folder to write (train/, val/, instances_{train,val}.json). Must not
            exist or be empty, unless `force` (then it is replaced).
        val_fraction: share of the usable images that go to val, in [0, 1); 0 writes train only.
        seed: seeds the choice of the val images.
        labels: a labels file fixing the categories and their order (see ``read_labels``).
        log: called with each skipped file's line ('skipped a/b.json: not valid JSON');
            None is silent.

    Returns a ConversionReport. Raises ConversionError (one line) when SRC is missing, an
    argument is wrong, or no file gave an image with an instance; OUT is then left as it was.
    """
    log = log or (lambda line: None)
    if not osp.isdir(src):
        raise ConversionError(f"SRC folder not found: {src}")
    if not 0 <= val_fraction < 1:
        raise ConversionError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    out = osp.normpath(out)
    _check_out(src, out, force)
    label_list = read_labels(labels) if labels is not None else None

    parent = osp.dirname(osp.abspath(out))
    files = _labelme_files(src, exclude=[out])
    report = ConversionReport(out=out, files_found=len(files))
    if not files:
        raise ConversionError(f"no .json file under {src}")

    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(out)}.tmp-', dir=parent)
    try:
        staging = osp.join(tmp, 'staging')
        os.makedirs(staging)
        converted: List[_Converted] = []
        used: set = set()
        for path in files:
            rel = osp.relpath(path, src).replace(os.sep, '/')
            try:
                converted.append(_convert_file(path, rel, staging, used, label_list, report))
            except _Skip as e:
                report.skipped_files.append((rel, str(e)))
                log(f'skipped {rel}: {e}')
        for reason, n in sorted(report.skipped_shapes.items()):
            if reason.startswith('label '):
                log(f'skipped {n} shape(s): {reason}')

        if not converted:
            raise ConversionError(f"no usable labelme file under {src} ({len(files)} .json files, "
                                  f"all skipped)")
        if not any(c.annotations for c in converted):
            raise ConversionError(f"no instance in the {len(converted)} usable labelme files under {src}")

        if label_list is not None:
            categories = label_list
        else:
            categories = sorted({ann['label'] for c in converted for ann in c.annotations})
        val_idx = _val_indices(len(converted), val_fraction, seed)
        if val_fraction > 0 and not val_idx:
            log(f'only {len(converted)} usable image: it goes to train, no val split is written')
        by_split = {'train': [c for i, c in enumerate(converted) if i not in val_idx],
                    'val': [c for i, c in enumerate(converted) if i in val_idx]}
        for split, images in by_split.items():
            if not images:
                continue
            os.makedirs(osp.join(tmp, split))
            for image in images:
                os.rename(osp.join(staging, image.file_name), osp.join(tmp, split, image.file_name))
            with open(osp.join(tmp, f'instances_{split}.json'), 'w') as f:
                json.dump(_coco_json(images, categories, src, split), f, separators=(',', ':'))
            report.images[split] = len(images)
            report.instances[split] = sum(len(c.annotations) for c in images)
        os.rmdir(staging)
        report.files_converted = len(converted)
        report.categories = list(categories)
        _check_out(src, out, force)  # nothing appeared in the meantime
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description='Convert a folder of labelme json files into a COCO instances dataset '
                    '(OUT/train/, OUT/val/, OUT/instances_{train,val}.json) for train.py --data OUT.')
    parser.add_argument('src', metavar='SRC', help='folder of labelme files (searched recursively)')
    parser.add_argument('out', metavar='OUT', help='dataset folder to write')
    parser.add_argument('--val_fraction', type=float, default=0.1,
                        help='share of the images put in val (default 0.1; 0: train only)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the train/val split')
    parser.add_argument('--labels', default=None,
                        help='file with one label per line: the categories and their order '
                             '(default: every label found, alphabetically)')
    parser.add_argument('--force', action='store_true', help='replace OUT when it is not empty')
    args = parser.parse_args(argv)
    try:
        report = convert(args.src, args.out, val_fraction=args.val_fraction, seed=args.seed,
                         labels=args.labels, force=args.force)
    except (ConversionError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == '__main__':
    sys.exit(main())

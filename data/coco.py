"""COCO-format instance segmentation datasets (MS COCO, the synthetic shapes, user datasets).

The public names and return structures are the original YOLACT's, so train.py / eval.py and user
code keep working:

- ``COCODetection[i]`` -> ``(image, (target, masks, num_crowds))`` where ``target`` is
  ndarray[N, 5] (x1, y1, x2, y2 relative to the image size, class index) and ``masks`` is
  ndarray[N, H, W]; crowd annotations (class index -1) come last and ``num_crowds`` counts them.
- ``pull_item(i)`` -> ``(image, target, masks, height, width, num_crowds)`` for image ``ids[i]``.

What differs from the original is how bad data is met. A file or folder that does not exist,
a json that is not a COCO instances file, or a category id the active config cannot hold fails
when the dataset is built, with one line naming the file. Annotations that cannot be used (empty
box, polygon with fewer than 3 points, no segmentation, image id not in ``images``) are dropped
once, up front, and counted in ``skipped``. An image that cannot be read, or a training sample
left without ground truth, is logged, counted and replaced by another index chosen from a seeded
stream, so a long training run never dies on one bad file.
"""
import json
import logging
import os.path as osp
import random
from collections import Counter
from contextlib import redirect_stdout
from io import StringIO
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data as data
from pycocotools import mask as mask_utils

from .config import Config, dataset_base, own_config
from .images import ImageReadError, read_image

__all__ = ['DatasetFileNotFoundError', 'DatasetFormatError', 'ImageLoadError', 'get_label_map',
           'COCOAnnotationTransform', 'COCODetection', 'enforce_size', 'detection_collate',
           'DatasetPaths', 'coco_dataset_paths', 'read_annotations', 'read_categories', 'dataset_from_annotations',
           'user_dataset_paths']

logger = logging.getLogger(__name__)

# How many replacement indices __getitem__ tries before it concludes the dataset is unusable.
MAX_RESAMPLE_ATTEMPTS = 100


class DatasetFileNotFoundError(FileNotFoundError):
    """An image folder or annotation file given to a dataset does not exist."""


class DatasetFormatError(ValueError):
    """An annotation file is not a usable COCO instances file (or does not fit the config)."""


class ImageLoadError(ImageReadError):
    """An image listed in the annotation file is missing, unreadable or of the wrong size."""


def get_label_map(dataset: Config) -> Dict[int, int]:
    """category_id -> class index + 1 for `dataset` (a dataset config, e.g. ``cfg.dataset``).

    Without an explicit ``label_map`` the ids are taken to be 1..N already.
    """
    if dataset.label_map is None:
        return {i + 1: i + 1 for i in range(len(dataset.class_names))}
    return dataset.label_map


class COCOAnnotationTransform:
    """COCO annotations -> rows ``[x1, y1, x2, y2, class_idx]`` relative to the image size.

    Crowd annotations get class index -1 (the loss treats them as neutral regions).
    """

    def __init__(self, label_map: Dict[int, int]):
        self.label_map = label_map

    def __call__(self, target: Sequence[dict], width: int, height: int) -> List[List[float]]:
        scale = np.array([width, height, width, height], dtype=np.float64)
        rows = []
        for ann in target:
            if 'bbox' not in ann:
                logger.warning('annotation %s has no bbox; ignored', ann.get('id'))
                continue
            x, y, w, h = ann['bbox']
            cat = ann['category_id']
            crowd = bool(ann.get('iscrowd', 0)) or cat < 0
            label = -1 if crowd else self.label_map[cat] - 1
            rows.append(list(np.array([x, y, x + w, y + h]) / scale) + [label])
        return rows


def _load_json(info_file: str) -> dict:
    if not osp.isfile(info_file):
        raise DatasetFileNotFoundError(f"annotation file not found: {info_file}")
    try:
        with open(info_file, 'rb') as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{info_file}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise DatasetFormatError(f"{info_file}: not valid JSON (not UTF-8 text)") from None


def _check_layout(content: Any, info_file: str, has_gt: bool) -> None:
    """Raise unless `content` has the lists of a COCO instances file."""
    if not isinstance(content, dict):
        raise DatasetFormatError(f"{info_file}: expected a JSON object with 'images', 'annotations' "
                                 f"and 'categories', got a {type(content).__name__}")
    required = ('images', 'annotations', 'categories') if has_gt else ('images',)
    missing = [k for k in required if not isinstance(content.get(k), list)]
    if missing:
        raise DatasetFormatError(f"{info_file}: not a COCO instances file, it lacks the list(s) "
                                 f"{', '.join(repr(k) for k in missing)}")
    for i, img in enumerate(content['images']):
        if not isinstance(img, dict) or 'id' not in img or 'file_name' not in img:
            raise DatasetFormatError(f"{info_file}: images[{i}] needs an 'id' and a 'file_name'")
    for i, ann in enumerate(content.get('annotations') or []):
        if not isinstance(ann, dict) or 'image_id' not in ann or 'category_id' not in ann:
            raise DatasetFormatError(f"{info_file}: annotations[{i}] needs an 'image_id' and a 'category_id'")


def _clean_segmentation(segm: Any) -> Optional[Any]:
    """The usable part of a segmentation, or None: polygons of fewer than 3 points are dropped."""
    if isinstance(segm, dict):
        return segm if 'counts' in segm and 'size' in segm else None
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list) and len(p) >= 6]
        return polys or None
    return None


def _box_is_valid(box: Any) -> bool:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return False
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        return False
    return all(np.isfinite(vals)) and vals[2] > 0 and vals[3] > 0


class COCODetection(data.Dataset):
    """A COCO-format instance segmentation dataset.

    Args:
        image_path: folder holding the images (``file_name`` of each json image is relative to it).
        info_file: the COCO instances json.
        transform: ``transform(img, masks, boxes, {'num_crowds', 'labels'})`` as in
            utils/augmentations.py; None returns the BGR uint8 image as read.
        target_transform: annotations -> rows of ``[x1, y1, x2, y2, class_idx]``; default
            ``COCOAnnotationTransform`` with this dataset's label map.
        dataset_name: a name for messages.
        has_gt: False for image-only files (test-dev): every image is listed, targets are empty.
        config: the model config (e.g. what `set_cfg` returns; default: the active cfg, as the
            original's call without it); label_map and num_classes default to
            ``get_label_map(config.dataset)`` and ``config.num_classes`` (read once here).
        label_map, num_classes: given, they override the config's (then config may be None).
        resample_seed: seeds the choice of replacement for an unusable sample.
        annotations: `info_file` already parsed (``read_annotations``), which this dataset then
            owns: hand it to no other (COCOeval writes into the ground truth it scores).
    """

    def __init__(self, image_path: str, info_file: str, transform=None, target_transform=None,
                 dataset_name: str = 'MS COCO', has_gt: bool = True, *, config: Optional[Config] = None,
                 label_map: Optional[Dict[int, int]] = None, num_classes: Optional[int] = None,
                 resample_seed: int = 0, annotations: Optional[dict] = None):
        from pycocotools.coco import COCO  # local: several things here are called COCO

        if not osp.isdir(image_path):
            raise DatasetFileNotFoundError(f"image folder not found: {image_path}")
        content = _load_json(info_file) if annotations is None else annotations
        _check_layout(content, info_file, has_gt)

        self.root = image_path
        self.info_file = info_file
        self.name = dataset_name
        self.has_gt = has_gt
        self.transform = transform
        if label_map is None or num_classes is None:
            config = own_config(config)
        self.label_map = get_label_map(config.dataset) if label_map is None else dict(label_map)
        self._label_map_source = (f"label map of cfg.dataset '{config.dataset.name}'" if label_map is None
                                  else 'label map given to COCODetection')
        self.num_classes = config.num_classes if num_classes is None else num_classes
        self.target_transform = (COCOAnnotationTransform(self.label_map)
                                 if target_transform is None else target_transform)
        self.resample_seed = resample_seed
        # Counts of dropped annotations (filled here) and of replaced samples (filled by
        # __getitem__; with DataLoader workers each worker process keeps its own counts).
        self.skipped: Counter = Counter()
        self._empty_mask_ids: set = set()

        self.coco = COCO()
        self.coco.dataset = content
        with redirect_stdout(StringIO()):  # pycocotools prints progress lines
            self.coco.createIndex()

        self._anns_by_image = self._usable_annotations() if has_gt else {}
        image_ids = set(self.coco.imgs)
        # Image order is the original's (first appearance in 'annotations'), which eval output follows.
        self.ids = [i for i in self.coco.imgToAnns.keys() if i in image_ids]
        if len(self.ids) == 0 or not has_gt:
            self.ids = list(self.coco.imgs.keys())
        if self.skipped:
            logger.warning('%s: dropped unusable annotations: %s', info_file,
                           ', '.join(f'{k}={v}' for k, v in sorted(self.skipped.items())))

    def _usable_annotations(self) -> Dict[Any, List[dict]]:
        """Check every annotation once; return the usable ones per image id, crowds last.

        Raises DatasetFormatError for a (non-crowd) category id that the label map or
        ``num_classes`` cannot hold, since training on it would fail or silently mislabel.
        """
        highest = self.num_classes - 1  # class indices 1..num_classes-1; 0 is background
        by_image: Dict[Any, List[dict]] = {}
        for ann in self.coco.dataset['annotations']:
            crowd = bool(ann.get('iscrowd', 0))
            cat = ann['category_id']
            if not crowd:
                if cat not in self.label_map:
                    raise DatasetFormatError(
                        f"{self.info_file}: category id {cat!r} (annotation {ann.get('id')}) is not in the "
                        f"{self._label_map_source} (known ids: {_id_range(self.label_map)})")
                mapped = self.label_map[cat]
                if not isinstance(mapped, (int, np.integer)) or not 1 <= mapped <= highest:
                    raise DatasetFormatError(
                        f"{self.info_file}: category id {cat!r} maps to class {mapped!r}, but num_classes="
                        f"{self.num_classes} holds classes 1..{highest} (is the config's dataset right?)")
            if ann['image_id'] not in self.coco.imgs:
                self.skipped['unknown_image_id'] += 1
                continue
            if not _box_is_valid(ann.get('bbox')):
                self.skipped['empty_box'] += 1
                continue
            segm = _clean_segmentation(ann.get('segmentation'))
            if segm is None:
                self.skipped['short_polygon' if isinstance(ann.get('segmentation'), list)
                             else 'no_segmentation'] += 1
                continue
            by_image.setdefault(ann['image_id'], []).append(dict(ann, segmentation=segm))
        for anns in by_image.values():
            anns.sort(key=lambda a: bool(a.get('iscrowd', 0)))  # stable: crowds to the end
        return by_image

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        """Returns ``(image, (target ndarray[N, 5], masks ndarray[N, H, W], num_crowds))``.

        A sample whose image cannot be read, or that has no ground truth left (no usable
        annotation, or the augmentation cropped every object away), is replaced by another
        index drawn from a stream seeded by (resample_seed, index, attempt).
        """
        current = index
        for attempt in range(1, MAX_RESAMPLE_ATTEMPTS + 1):
            try:
                img, target, masks, _, _, num_crowds = self.pull_item(current)
            except ImageLoadError as e:
                self._note_skip('unreadable_image', f'{e}')
            else:
                if not self.has_gt or target.shape[0] > 0:
                    return img, (target, masks, num_crowds)
                self._note_skip('no_ground_truth', f'image id {self.ids[current]} has no ground truth'
                                                   ' after filtering/augmentation')
            current = self._replacement_index(index, attempt)
        raise RuntimeError(f"{self.info_file}: no usable sample after {MAX_RESAMPLE_ATTEMPTS} "
                           f"replacements starting from index {index}; skipped so far: {dict(self.skipped)}")

    def _note_empty_mask(self, ann: dict, img_id) -> None:
        self.skipped['empty_mask'] += 1
        if ann.get('id') not in self._empty_mask_ids:
            self._empty_mask_ids.add(ann.get('id'))
            logger.warning('%s: annotation %s of image id %s has an empty or out-of-image mask; skipped',
                           self.name, ann.get('id'), img_id)

    def _note_skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        logger.warning('%s: %s; using another sample (%s so far)', self.name, detail, self.skipped[reason])

    def _replacement_index(self, index: int, attempt: int) -> int:
        rng = np.random.default_rng([self.resample_seed, index, attempt])
        return int(rng.integers(len(self.ids)))

    def _image_file(self, img_id) -> str:
        file_name = self.coco.imgs[img_id]['file_name']
        path = osp.join(self.root, file_name)
        # COCO 2014 names files COCO_train2014_%012d.jpg; the download scripts store %012d.jpg.
        if file_name.startswith('COCO') and not osp.exists(path):
            path = osp.join(self.root, file_name.split('_')[-1])
        return path

    def _read_image(self, img_id) -> np.ndarray:
        try:
            return read_image(self._image_file(img_id))
        except ImageReadError as err:
            raise ImageLoadError(str(err)) from None

    def _mask(self, ann: dict, height: int, width: int) -> np.ndarray:
        """ndarray[H, W] uint8 of one (cleaned) annotation."""
        segm = ann['segmentation']
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm['counts'], list):  # uncompressed RLE, as COCO stores crowds
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = segm
        return mask_utils.decode(rle)

    def pull_item(self, index: int):
        """Returns ``(image, target, masks, height, width, num_crowds)`` of image ``ids[index]``.

        image: Tensor[3, H', W'] (the transform's output; uint8 BGR without a transform).
        target: ndarray[N, 5] float32, rows (x1, y1, x2, y2, class_idx), crowds (class -1) last.
        masks: ndarray[N, H', W']. height, width: of the image on disk.
        An image with no usable annotation gives N = 0. Raises ImageLoadError for an image that is
        missing, unreadable, or whose size disagrees with the json (its masks would not fit).
        """
        img_id = self.ids[index]
        anns = self._anns_by_image.get(img_id, []) if self.has_gt else []
        num_crowds = sum(1 for a in anns if a.get('iscrowd', 0))

        img = self._read_image(img_id)
        height, width = img.shape[:2]
        info = self.coco.imgs[img_id]
        if (info.get('height', height), info.get('width', width)) != (height, width):
            raise ImageLoadError(f"{self._image_file(img_id)} is {width}x{height} but the annotation "
                                 f"file says {info.get('width')}x{info.get('height')}")

        if anns:
            masks = np.stack([self._mask(a, height, width) for a in anns])
            # A mask with no pixel in the image (polygon outside it, empty RLE) would teach the
            # box "this object has no mask": drop such annotations, counted and logged once each.
            visible = masks.reshape(len(anns), -1).any(axis=1)
            if not visible.all():
                for ann in (a for a, v in zip(anns, visible) if not v):
                    self._note_empty_mask(ann, img_id)
                anns = [a for a, v in zip(anns, visible) if v]
                masks = masks[visible]
                num_crowds = sum(1 for a in anns if a.get('iscrowd', 0))
        if anns:
            target = np.asarray(self.target_transform(anns, width, height), dtype=np.float32).reshape(-1, 5)
        else:
            masks = np.zeros((0, height, width), dtype=np.uint8)
            target = np.zeros((0, 5), dtype=np.float32)

        if self.transform is not None:
            if len(target) > 0:
                img, masks, boxes, labels = self.transform(
                    img, masks, target[:, :4], {'num_crowds': num_crowds, 'labels': target[:, 4]})
                num_crowds = labels['num_crowds']
                target = np.hstack((boxes, np.expand_dims(labels['labels'], axis=1))).astype(np.float32)
            else:
                # The transform still has to size/normalise the image; give it a dummy object.
                img, _, _, _ = self.transform(img, np.zeros((1, height, width), dtype=np.float32),
                                              np.array([[0, 0, 1, 1]], dtype=np.float32),
                                              {'num_crowds': 0, 'labels': np.array([0])})
                masks = np.zeros((0,) + img.shape[:2], dtype=np.float32)

        img_t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        return img_t, target, masks, height, width, num_crowds

    def pull_image(self, index: int) -> np.ndarray:
        """The image ``ids[index]`` as read from disk: ndarray[H, W, 3] uint8 BGR, no transform."""
        return self._read_image(self.ids[index])

    def pull_anno(self, index: int) -> List[dict]:
        """The raw json annotations of image ``ids[index]`` (unfiltered, unmodified)."""
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=self.ids[index]))

    def __repr__(self) -> str:
        lines = [f'Dataset {type(self).__name__} ({self.name})',
                 f'    Number of datapoints: {len(self)}',
                 f'    Root Location: {self.root}',
                 f'    Annotation file: {self.info_file}',
                 f'    Transforms (if any): {self.transform!r}',
                 f'    Target Transforms (if any): {self.target_transform!r}']
        return '\n'.join(lines)


def _id_range(label_map: Dict[int, int]) -> str:
    ids = sorted(label_map)
    if not ids:
        return 'none'
    return f'{ids[0]}..{ids[-1]}' if len(ids) > 3 else ', '.join(map(str, ids))


def enforce_size(img: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, num_crowds: int,
                 new_w: int, new_h: int):
    """Fit one sample into (new_h, new_w) without changing its aspect ratio, padding with zeros
    at the bottom/right.

    img (Tensor[3, H, W]), targets (Tensor[N, 5]) with boxes in relative (x1, y1, x2, y2),
    masks (Tensor[N, H, W]). Returns ``(img, targets, masks, num_crowds)``; ``targets`` is scaled
    in place so its boxes stay relative to the padded size.
    """
    _, h, w = img.shape
    if (h, w) == (new_h, new_w):
        return img, targets, masks, num_crowds
    scale = min(new_w / w, new_h / h)
    fit_w, fit_h = int(w * scale), int(h * scale)
    with torch.no_grad():
        img = F.interpolate(img[None], (fit_h, fit_w), mode='bilinear', align_corners=False)[0]
        # Masks are resized like channels of one image.
        masks = F.interpolate(masks[None], (fit_h, fit_w), mode='bilinear', align_corners=False)[0]
        targets[:, [0, 2]] *= fit_w / new_w
        targets[:, [1, 3]] *= fit_h / new_h
        pad = (0, new_w - fit_w, 0, new_h - fit_h)
        img = F.pad(img, pad, mode='constant', value=0)
        masks = F.pad(masks, pad, mode='constant', value=0)
    return img, targets, masks, num_crowds


def detection_collate(batch: Sequence[Tuple[torch.Tensor, Tuple[np.ndarray, np.ndarray, int]]]):
    """Batch samples whose object counts differ: lists instead of stacked tensors.

    Returns ``(images, (targets, masks, num_crowds))``: images is a list of Tensor[3, H, W],
    targets a list of float Tensor[N_i, 5], masks a list of float Tensor[N_i, H, W] and
    num_crowds a list of int.
    """
    images, targets, masks, num_crowds = [], [], [], []
    for img, (target, mask, crowds) in batch:
        images.append(img)
        targets.append(torch.as_tensor(target, dtype=torch.float32))
        masks.append(torch.as_tensor(mask, dtype=torch.float32))
        num_crowds.append(crowds)
    return images, (targets, masks, num_crowds)


Batch = Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor], List[int]]


def prepare_batch(datum, device: torch.device, preserve_aspect_ratio: bool = False) -> Batch:
    """detection_collate output -> (images Tensor[B, 3, H, W], targets [Tensor[N_i, 5]],
    masks [Tensor[N_i, H, W]], num_crowds [int]) on `device`: one training batch. Images of
    different sizes are an error unless `preserve_aspect_ratio` (``cfg.preserve_aspect_ratio``)."""
    images, (targets, masks, num_crowds) = datum
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [t.to(device, non_blocking=True) for t in targets]
    masks = [m.to(device, non_blocking=True) for m in masks]
    num_crowds = list(num_crowds)
    if len({tuple(img.shape) for img in images}) > 1:
        if not preserve_aspect_ratio:
            raise ValueError(f"images of one batch differ in size: {[tuple(i.shape) for i in images]}")
        # As the original: fit every sample into the size of one randomly chosen sample.
        _, h, w = images[random.randint(0, len(images) - 1)].shape
        for i in range(len(images)):
            images[i], targets[i], masks[i], num_crowds[i] = enforce_size(
                images[i], targets[i], masks[i], num_crowds[i], w, h)
    return torch.stack(images, dim=0), targets, masks, num_crowds


class DatasetPaths(NamedTuple):
    """Image folders and annotation files of a dataset, named like the ``cfg.dataset`` fields."""
    train_images: str
    train_info: str
    valid_images: str
    valid_info: str


def coco_dataset_paths(root: str, splits: Sequence[str] = ('train', 'val')) -> DatasetPaths:
    """The paths of a COCO 2017 tree (the ``--data`` layout of the Ascend scripts)::

        root/train2017/  root/val2017/  root/annotations/instances_{train,val}2017.json

    The layout `python -m data.synthetic` writes (root/train/, root/val/,
    root/instances_{train,val}.json) is accepted too. Only the `splits` asked for must exist
    (eval needs just 'val'). Raises DatasetFileNotFoundError listing everything that is missing.
    """
    synthetic = DatasetPaths(
        train_images=osp.join(root, 'train'),
        train_info=osp.join(root, 'instances_train.json'),
        valid_images=osp.join(root, 'val'),
        valid_info=osp.join(root, 'instances_val.json'))
    if osp.isfile(synthetic.valid_info) or osp.isfile(synthetic.train_info):
        return synthetic
    paths = DatasetPaths(
        train_images=osp.join(root, 'train2017'),
        train_info=osp.join(root, 'annotations', 'instances_train2017.json'),
        valid_images=osp.join(root, 'val2017'),
        valid_info=osp.join(root, 'annotations', 'instances_val2017.json'))
    if not osp.isdir(root):
        raise DatasetFileNotFoundError(f"COCO root folder not found: {root}")
    wanted = [p for split in splits for p in
              ((paths.train_images, paths.train_info) if split == 'train' else
               (paths.valid_images, paths.valid_info))]
    missing = [osp.relpath(p, root) + ('/' if p.endswith('2017') else '')
               for p in wanted if not (osp.isdir(p) if p.endswith('2017') else osp.isfile(p))]
    if missing:
        expected = ', '.join(osp.relpath(p, root) for p in wanted)
        raise DatasetFileNotFoundError(
            f"COCO root {root} is missing {', '.join(missing)} (expected {expected})")
    return paths


def user_dataset_paths(root: Optional[str], explicit: Dict[str, Optional[str]],
                       splits: Sequence[str] = ('train', 'val')) -> Optional[DatasetPaths]:
    """The paths of a dataset given on the command line, or None when none is (the config's own
    dataset is used then).

    root: ``--data`` (a layout `coco_dataset_paths` reads). explicit: the ``--train_images``,
    ``--train_info``, ``--valid_images``, ``--valid_info`` values (None where not given); they
    replace the paths under `root`, or without a root must name every path of the `splits`.
    """
    given = {key: value for key, value in explicit.items() if value is not None}
    if root is None and not given:
        return None
    unknown = sorted(set(given) - set(DatasetPaths._fields))
    if unknown:
        raise ValueError(f"unknown dataset path field(s) {unknown}; known: {list(DatasetPaths._fields)}")
    if root is not None:
        # Paths given explicitly need not exist under the root.
        needed = [s for s in splits if not all(f in given for f in _split_fields(s))]
        base = coco_dataset_paths(root, needed)._asdict() if needed else {}
    else:
        missing = [f'--{f}' for s in splits for f in _split_fields(s) if f not in given]
        if missing:
            raise DatasetFileNotFoundError(f"a dataset given by paths needs {', '.join(missing)} too "
                                           f"(or --data ROOT)")
        base = {}
    fields = {f: given.get(f, base.get(f, '')) for f in DatasetPaths._fields}
    return DatasetPaths(**fields)


def _split_fields(split: str) -> Tuple[str, str]:
    return ('train_images', 'train_info') if split == 'train' else ('valid_images', 'valid_info')


def _info_files(paths: DatasetPaths, splits: Sequence[str]) -> List[str]:
    return [getattr(paths, _split_fields(split)[1]) for split in splits]


def check_dataset_files(dataset: Any, need_val: bool) -> None:
    """Fail before training when an image folder or annotation file of `dataset` (a cfg.dataset)
    is missing; the validation ones only when `need_val`."""
    wanted = [('train_images', True), ('train_info', False)]
    if need_val:
        wanted += [('valid_images', True), ('valid_info', False)]
    for key, is_dir in wanted:
        path = getattr(dataset, key)
        if not (osp.isdir(path) if is_dir else osp.isfile(path)):
            kind = 'folder' if is_dir else 'file'
            raise DatasetFileNotFoundError(f"dataset '{dataset.name}': {key} {kind} not found: {path} "
                                           f"(use --data=<COCO root> or a --dataset whose paths exist)")


# ----------------------------------------------------------------------------- datasets from files

Category = Tuple[int, str]


def read_annotations(paths: DatasetPaths, splits: Sequence[str] = ('train', 'val')) -> Dict[str, dict]:
    """The annotation files of `splits` parsed (info file -> content): for dataset_from_annotations
    to read the classes from, then for the datasets (``COCODetection(annotations=...)``), so each
    file is parsed once (COCO's train json takes many seconds)."""
    return {info_file: _load_json(info_file) for info_file in _info_files(paths, splits)}


def read_categories(info_file: str, content: Optional[dict] = None) -> List[Category]:
    """The ``categories`` of a COCO annotation file (or of its `content`, already parsed) as
    (id, name) pairs, sorted by id.

    Any ids are accepted (COCO's skip numbers); ids must be unique integers. Raises
    DatasetFileNotFoundError / DatasetFormatError with one line naming the file.
    """
    if content is None:
        content = _load_json(info_file)
    cats = content.get('categories') if isinstance(content, dict) else None
    if not isinstance(cats, list) or not cats:
        raise DatasetFormatError(f"{info_file}: no 'categories' list, so the class names are unknown "
                                 f"(every COCO instances file lists its categories)")
    pairs = []
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not isinstance(cat.get('id'), int) or isinstance(cat.get('id'), bool) \
                or not isinstance(cat.get('name'), str):
            raise DatasetFormatError(f"{info_file}: categories[{i}] needs an integer 'id' and a string 'name'")
        pairs.append((cat['id'], cat['name']))
    ids = [cat_id for cat_id, _ in pairs]
    repeated = sorted({cat_id for cat_id in ids if ids.count(cat_id) > 1})
    if repeated:
        raise DatasetFormatError(f"{info_file}: category id(s) {', '.join(map(str, repeated))} listed twice")
    return sorted(pairs)


def dataset_from_annotations(paths: DatasetPaths, splits: Sequence[str] = ('train', 'val'),
                             name: Optional[str] = None, annotations: Optional[Dict[str, dict]] = None) -> Config:
    """A dataset config (the fields of ``cfg.dataset``) whose class names and label map come from
    the annotation files' ``categories``: names in category-id order, ids mapped to 1..N.

    Only the `splits` asked for are read ('train', 'val'). When both are, their categories must
    agree (same ids, same names), else DatasetFormatError naming both files: a model trained on
    one numbering would be scored against another. A file in `annotations` (what
    ``read_annotations`` returns) is not parsed again.
    """
    annotations = annotations or {}
    files = _info_files(paths, splits)
    categories = read_categories(files[0], annotations.get(files[0]))
    for other in files[1:]:
        other_categories = read_categories(other, annotations.get(other))
        if other_categories != categories:
            only_first = sorted(set(categories) - set(other_categories))
            only_other = sorted(set(other_categories) - set(categories))
            raise DatasetFormatError(
                f"the categories of {files[0]} and {other} disagree (only in the first: "
                f"{_format_categories(only_first)}; only in the second: {_format_categories(only_other)})")
    return dataset_base.copy({
        'name': name or osp.basename(osp.dirname(osp.abspath(files[0]))) or files[0],
        'train_images': paths.train_images, 'train_info': paths.train_info,
        'valid_images': paths.valid_images, 'valid_info': paths.valid_info,
        'class_names': tuple(cat_name for _, cat_name in categories),
        'label_map': {cat_id: label for label, (cat_id, _) in enumerate(categories, start=1)},
    })


def _format_categories(categories: Sequence[Category], limit: int = 5) -> str:
    if not categories:
        return 'none'
    shown = ', '.join(f'{cat_id} {cat_name!r}' for cat_id, cat_name in categories[:limit])
    return shown + (', ...' if len(categories) > limit else '')

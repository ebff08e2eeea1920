"""The detections of one image as files: a JSON record list and an instance-id PNG.

eval.py --image/--images with --save_json / --save_masks write them beside each drawn picture
(`result_file_paths`): for OUT/img1.png, OUT/img1.json and OUT/img1_instances.png. Everything here
is pure over its inputs (no ``cfg``); the caller picks the detections (the ones it draws, best
score first).

JSON: {"image": input file name, "height": H, "width": W, "detections": [{"class_name",
"class_id" (0-based index into the class names), "score", "box" [x1, y1, x2, y2] (pixels),
"mask": {"rle": COCO RLE {"size": [H, W], "counts": str}, "polygons": [[x0, y0, x1, y1, ...],
...] (outer outlines along pixel edges, see `mask_polygons`), "area": pixel count}}, ...]}; "mask" is absent for box-only results.

PNG: single channel, 16 bit, the image's size; 0 is background and detection i of the JSON list
(1-based) has value i; where masks overlap, the better-scoring (earlier) detection wins.

labelme (eval.py --images IN:OUT --save_labelme): OUT/labelme/<input stem>.json beside a copy of the
input, one polygon shape per outer contour labelled with the class name (`labelme_document`); the
contours of one detection share a group_id, which data.labelme2coco reads as one instance.
"""
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from utils.functions import write_atomically

ArrayLike = Union[np.ndarray, Tensor]

INSTANCE_PNG_SUFFIX = '_instances.png'
LABELME_FOLDER = 'labelme'
# The labelme release whose file format (5.x: polygon shapes, imageData may be null) is written.
LABELME_VERSION = '5.5.0'
MAX_INSTANCES = np.iinfo(np.uint16).max


def _binary_column_major(masks: ArrayLike) -> np.ndarray:
    """Masks [N, H, W] -> uint8 ndarray [H, W, N] in Fortran order, as pycocotools encodes them.

    A tensor is thresholded, narrowed to uint8 and transposed on its own device before the copy to
    the host (a quarter of the bytes of float masks; the transpose is free on a GPU).
    """
    if isinstance(masks, torch.Tensor):
        binary = masks > 0.5 if masks.is_floating_point() else masks != 0
        # [N, W, H] C-order is [H, W, N] Fortran-order: no copy on the host.
        return binary.to(torch.uint8).transpose(1, 2).contiguous().cpu().numpy().transpose(2, 1, 0)
    masks = np.asarray(masks)
    binary = masks > 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0
    return np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8))


def encode_masks(masks: ArrayLike) -> List[dict]:
    """Binary masks -> COCO RLEs with str counts (json-serialisable).

    Args:
        masks (ndarray or Tensor[N, H, W]): inside where above 0.5 (float) or nonzero (int, bool).
    """
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(_binary_column_major(masks))
    for rle in rles:
        rle['counts'] = rle['counts'].decode('ascii')
    return rles


def result_file_paths(picture_path: str) -> Tuple[str, str]:
    """(JSON path, instance PNG path) beside a drawn picture: same folder and stem,
    <stem>.json and <stem>_instances.png."""
    p = Path(picture_path)
    return str(p.with_suffix('.json')), str(p.with_name(p.stem + INSTANCE_PNG_SUFFIX))


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _binary_masks(masks: ArrayLike) -> np.ndarray:
    """Masks [D, H, W] (float: inside above 0.5; int or bool: nonzero) -> uint8 ndarray of 0/1."""
    if isinstance(masks, Tensor):
        binary = masks > 0.5 if masks.is_floating_point() else masks != 0
        return binary.to(torch.uint8).cpu().numpy()
    masks = np.asarray(masks)
    binary = masks > 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0
    return binary.astype(np.uint8)


def mask_polygons(mask: np.ndarray) -> List[List[int]]:
    """Outer outlines of a binary mask (ndarray[H, W] uint8 0/1) as flat [x0, y0, x1, y1, ...]
    lists of pixel corners.

    The outlines run along pixel edges: pixel (x, y) covers [x, x + 1) x [y, y + 1), COCO's
    convention and data/labelme2coco.py's, so rasterising the polygons the COCO way (pycocotools)
    gives back the mask's pixels, holes filled. Pixels that touch only at a corner share one outline.
    """
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return []
    # Traced inside the mask's bounding rectangle only: a small object in a big photo is cheap.
    # Each pixel becomes 2 x 2, with a zero frame: the contour of the enlarged mask then runs through
    # sub-pixels that sit on the pixel edges, and k // 2 (k counted in the frame) is the corner there.
    window = (mask[y:y + h, x:x + w] != 0).astype(np.uint8)
    big = np.zeros((2 * h + 2, 2 * w + 2), dtype=np.uint8)
    big[1:-1, 1:-1] = window.repeat(2, axis=0).repeat(2, axis=1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        corners = contour.reshape(-1, 2) // 2 + (x, y)
        # Diagonal steps map two sub-pixels onto one corner.
        corners = corners[np.any(corners != np.roll(corners, 1, axis=0), axis=1)]
        if len(corners) >= 3:
            polygons.append(corners.reshape(-1).tolist())
    return polygons


def detections_to_records(classes: ArrayLike, scores: ArrayLike, boxes: ArrayLike, masks: Optional[ArrayLike],
                          class_names: Sequence[str]) -> List[dict]:
    """JSON-serialisable records of one image's detections, best score first.

    Args:
        classes (Tensor[D]) int, 0-based class indices.
        scores (Tensor[D]).
        boxes (Tensor[D, 4]) in pixel (x1, y1, x2, y2) of the original image.
        masks (Tensor[D, H, W]) full-image masks (0/1 or soft, inside above 0.5), or None for
            box-only results (--detect): then the records have no "mask".
        class_names: name of each class index (an index past its end is named by its number).
    Returns:
        [{'class_name', 'class_id', 'score', 'box', 'mask': {'rle', 'polygons', 'area'}}, ...];
        ties in score keep the input order.
    """
    classes_np = _numpy(classes).astype(int).reshape(-1)
    scores_np = _numpy(scores).astype(float).reshape(-1)
    boxes_np = _numpy(boxes).reshape(-1, 4)
    order = np.argsort(-scores_np, kind='stable')
    binary = _binary_masks(masks[torch.from_numpy(order).to(masks.device)] if isinstance(masks, Tensor)
                           else np.asarray(masks)[order]) if masks is not None else None
    rles = encode_masks(binary) if binary is not None else None
    records = []
    for n, i in enumerate(order):
        class_id = int(classes_np[i])
        record = {'class_name': class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id),
                  'class_id': class_id,
                  'score': float(scores_np[i]),
                  'box': boxes_np[i].tolist()}
        if binary is not None:
            record['mask'] = {'rle': rles[n], 'polygons': mask_polygons(binary[n]),
                              'area': int(binary[n].sum())}
        records.append(record)
    return records


def instance_image(masks: Optional[ArrayLike], height: int, width: int) -> np.ndarray:
    """The instance-id image of masks [D, H, W] given best first: ndarray[height, width] uint16,
    0 background, mask i (0-based) painted with i + 1, the earlier mask winning overlaps.
    masks None or empty: all background."""
    out = np.zeros((height, width), dtype=np.uint16)
    if masks is None or masks.shape[0] == 0:
        return out
    if masks.shape[0] > MAX_INSTANCES:
        raise ValueError(f"a 16-bit instance image holds at most {MAX_INSTANCES} detections, "
                         f"got {masks.shape[0]}")
    if tuple(masks.shape[1:]) != (height, width):
        raise ValueError(f"masks are {tuple(masks.shape[1:])} (H, W), the image is {(height, width)}")
    binary = _binary_masks(masks).astype(bool)
    # Worst first, so each better detection overwrites where it overlaps.
    for i in range(binary.shape[0] - 1, -1, -1):
        out[binary[i]] = i + 1
    return out


def _write_atomically(path: str, data: bytes) -> None:
    """`data` to `path` through a temporary file (a crash leaves the old file or none), making
    the folder first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: f.write(data))


def result_document(image: Optional[str], height: int, width: int, detections: List[dict]) -> dict:
    """One image's results: {"image", "height", "width", "detections"} (see the module doc).

    image: the input file name (None for a picture that came from no file); detections:
    `detections_to_records`' list.
    """
    return {'image': image, 'height': int(height), 'width': int(width), 'detections': detections}


def write_json(path: str, doc: dict) -> None:
    """`doc` as a JSON file, written atomically (the folder is made first)."""
    _write_atomically(path, json.dumps(doc).encode('utf-8'))


def labelme_document(image_path: str, height: int, width: int, names: Sequence[str], scores: Sequence[float],
                     polygons: Sequence[Sequence[np.ndarray]]) -> dict:
    """A labelme annotation file's content: per detection i (class names[i], scores[i]) one polygon
    shape per contour of polygons[i] (ndarray[K, 2] x, y pixels); a detection of several contours
    gives them one group_id. imageData is left null: labelme reads the image from image_path (relative
    to the json's folder)."""
    shapes = []
    for i, (name, score, contours) in enumerate(zip(names, scores, polygons)):
        for contour in contours:
            shapes.append({'label': name, 'points': np.asarray(contour, dtype=float).tolist(),
                           'group_id': i + 1 if len(contours) > 1 else None,
                           'description': f'score {float(score):.3f}', 'shape_type': 'polygon',
                           'flags': {}, 'mask': None})
    return {'version': LABELME_VERSION, 'flags': {}, 'shapes': shapes, 'imagePath': image_path,
            'imageData': None, 'imageHeight': int(height), 'imageWidth': int(width)}


def write_instance_png(path: str, masks: Optional[ArrayLike], height: int, width: int) -> None:
    """Write `instance_image(masks, height, width)` as a 16-bit single-channel PNG.

    masks (Tensor[D, H, W]) in the order of the JSON list, best score first.
    """
    ok, encoded = cv2.imencode('.png', instance_image(masks, height, width))
    if not ok:
        raise ValueError(f"could not encode the instance image for {path}")
    _write_atomically(path, encoded.tobytes())

"""Pre- and post-processing for exported YOLACT models, in numpy alone.

`export.py` writes a network whose outputs are per-prior boxes, class scores, mask coefficients and
the prototypes. Everything after that (thresholding, Fast NMS, mask assembly, cropping, resizing
to the image) lives here, so a deployment needs onnxruntime (or torch.jit.load) and numpy only:
this file imports nothing from the repository and can be copied next to the model.

    import cv2, onnxruntime as ort
    from onnx_postprocess import detect, load_metadata

    session = ort.InferenceSession('yolact_base.onnx', providers=['CPUExecutionProvider'])
    meta = load_metadata(session)
    dets = detect(session, cv2.imread('image.jpg'), meta, score_threshold=0.3)
    for c, s, box, mask in zip(dets.classes, dets.scores, dets.boxes, dets.masks): ...

The steps reproduce the repository's `Detect` (Fast NMS, as eval.py uses by default) and
`layers.output_utils.postprocess`; tests/test_export.py checks that they agree.

Layout of the exported network's outputs for a batch of B images and P priors (one row per prior):
    boxes  (float32[B, P, 4]) in relative (x1, y1, x2, y2), decoded from the priors,
    scores (float32[B, P, C]) class scores, background in column 0,
    coeffs (float32[B, P, M]) mask coefficients,
    proto  (float32[B, h, w, M]) prototype masks.
`meta` is the JSON dict export.py stores in the model (ONNX metadata key 'yolact', TorchScript extra
file 'yolact.json'): input size and normalisation, class names, NMS settings, mask activation.
"""
import json
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np

METADATA_KEY = 'yolact'
TORCHSCRIPT_METADATA_FILE = 'yolact.json'

# The channel order images are given in (OpenCV's), matching the repository's FastBaseTransform.
INPUT_CHANNEL_ORDER = 'BGR'


class Detections(NamedTuple):
    """Detections of one image, sorted by decreasing score.

    classes (int64[D]): foreground class index (0-based; meta['class_names'][c] names it).
    scores (float32[D]): box scores (mask-IoU-rescored when the model asks for rescore_bbox).
    boxes (int64[D, 4]) in pixel (x1, y1, x2, y2), clamped to the image.
    masks (bool[D, H, W]): full-size binary masks.
    mask_scores (float32[D] or None): YOLACT++ mask scores (box score x predicted mask IoU), when a
        mask-IoU model was given.
    """
    classes: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    mask_scores: Optional[np.ndarray] = None


# ----------------------------------------------------------------------------- metadata

def load_metadata(source: Any) -> Dict[str, Any]:
    """The export metadata of a model.

    Args:
        source: an onnxruntime.InferenceSession, a dict of TorchScript extra files (as filled by
            ``torch.jit.load(path, _extra_files={'yolact.json': ''})``), a JSON string, or a dict
            that already is the metadata.
    """
    if hasattr(source, 'get_modelmeta'):
        custom = source.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise ValueError(f"the ONNX model has no '{METADATA_KEY}' metadata: "
                             f"was it written by export.py?")
        return json.loads(custom[METADATA_KEY])
    if isinstance(source, dict) and TORCHSCRIPT_METADATA_FILE in source:
        text = source[TORCHSCRIPT_METADATA_FILE]
        return json.loads(text.decode() if isinstance(text, bytes) else text)
    if isinstance(source, (str, bytes)):
        return json.loads(source)
    if isinstance(source, dict) and 'input_size' in source:
        return source
    raise TypeError(f"expected an onnxruntime session, TorchScript extra files, JSON or a "
                    f"metadata dict, got {type(source).__name__}")


# ----------------------------------------------------------------------------- resizing

def _linear_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a 1-d linear resize, as torch's F.interpolate computes them
    (align_corners=False, no antialiasing), in float32 like torch does for float32 input."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    w_hi = np.clip(src - lo.astype(np.float32), 0, 1).astype(np.float32)
    return lo, hi, w_hi


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of the last two axes (like F.interpolate(mode='bilinear', align_corners=False)).

    Args:
        x (float32[..., H, W])
    Returns:
        float32[..., out_h, out_w]
    """
    y_lo, y_hi, wy = _linear_taps(x.shape[-2], out_h)
    x_lo, x_hi, wx = _linear_taps(x.shape[-1], out_w)
    rows = x[..., y_lo, :] * (1 - wy)[:, None] + x[..., y_hi, :] * wy[:, None]
    return rows[..., x_lo] * (1 - wx) + rows[..., x_hi] * wx


# ----------------------------------------------------------------------------- preprocessing

def preprocess(image: np.ndarray, meta: Dict[str, Any]) -> np.ndarray:
    """Image(s) -> the network input, as the repository's FastBaseTransform makes it.

    Args:
        image (uint8 or float[H, W, 3] or [N, H, W, 3]): BGR pixels in 0..255 (cv2.imread's layout).
        meta: export metadata (see `load_metadata`).
    Returns:
        float32[N, 3, S, S], S = meta['input_size'], resized bilinearly, normalised, channels in the
        backbone's order.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"expected a BGR image [H, W, 3] or a batch [N, H, W, 3], "
                         f"got shape {image.shape}")
    size = int(meta['input_size'])
    x = resize_bilinear(image.astype(np.float32).transpose(0, 3, 1, 2), size, size)

    mean = np.asarray(meta['mean'], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(meta['std'], dtype=np.float32).reshape(1, 3, 1, 1)
    if meta['normalize']:
        x = (x - mean) / std
    elif meta['subtract_means']:
        x = x - mean
    elif meta['to_float']:
        x = x / np.float32(255)
    order = [INPUT_CHANNEL_ORDER.index(c) for c in meta['channel_order']]
    return np.ascontiguousarray(x[:, order], dtype=np.float32)


# ----------------------------------------------------------------------------- NMS

def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU.

    Args:
        boxes_a (float[..., A, 4]), boxes_b (float[..., B, 4]) in (x1, y1, x2, y2)
    Returns:
        float[..., A, B]
    """
    def side(lo_idx: int, hi_idx: int) -> np.ndarray:
        # Overlap along one axis, per coordinate to keep the temporaries at [..., A, B].
        hi = np.minimum(boxes_a[..., :, None, hi_idx], boxes_b[..., None, :, hi_idx])
        lo = np.maximum(boxes_a[..., :, None, lo_idx], boxes_b[..., None, :, lo_idx])
        return np.maximum(hi - lo, 0)

    inter = side(0, 2) * side(1, 3)
    area_a = (boxes_a[..., 2] - boxes_a[..., 0]) * (boxes_a[..., 3] - boxes_a[..., 1])
    area_b = (boxes_b[..., 2] - boxes_b[..., 0]) * (boxes_b[..., 3] - boxes_b[..., 1])
    with np.errstate(divide='ignore', invalid='ignore'):
        # Degenerate boxes give NaN, which then never passes `<= threshold`: suppressed, as in torch.
        return inter / (area_a[..., :, None] + area_b[..., None, :] - inter)


def fast_nms(boxes: np.ndarray, scores: np.ndarray, coeffs: np.ndarray, conf_thresh: float,
             nms_thresh: float, top_k: int, max_num_detections: int, cross_class: bool = False
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """YOLACT's Fast NMS over the priors of one image.

    A prior is a candidate when its best foreground score exceeds `conf_thresh`. Per class, the
    `top_k` best candidates are compared all-against-all, and one is dropped when any better-scored
    candidate of its class overlaps it by more than `nms_thresh` (even one that was dropped itself).
    With `cross_class`, the candidates compete across classes, each with its best class score, and
    the result is not capped (as the repository's cross-class Fast NMS).

    Args:
        boxes (float32[P, 4]) in relative (x1, y1, x2, y2)
        scores (float32[P, C]): class scores with the background in column 0.
        coeffs (float32[P, M]): mask coefficients.
    Returns:
        boxes (float32[D, 4]) relative, coeffs (float32[D, M]), classes (int64[D]) foreground index,
        scores (float32[D]); sorted by decreasing score.
    """
    fg = scores[:, 1:].T  # [C-1, P]
    candidate = fg.max(axis=0) > conf_thresh
    if not candidate.any():
        return (np.zeros((0, 4), boxes.dtype), np.zeros((0, coeffs.shape[1]), coeffs.dtype),
                np.zeros(0, np.int64), np.zeros(0, scores.dtype))
    fg, boxes, coeffs = fg[:, candidate], boxes[candidate], coeffs[candidate]

    if cross_class:
        best, classes = fg.max(axis=0), fg.argmax(axis=0)
        order = np.argsort(-best, kind='stable')[:top_k]
        iou = np.triu(box_iou(boxes[order], boxes[order]), k=1)
        kept = order[iou.max(axis=0) <= nms_thresh]
        return boxes[kept], coeffs[kept], classes[kept].astype(np.int64), best[kept]

    order = np.argsort(-fg, axis=1, kind='stable')[:, :top_k]  # [C-1, K]
    ranked_scores = np.take_along_axis(fg, order, axis=1)
    ranked_boxes = boxes[order]                                 # [C-1, K, 4]
    # iou[c, i, j] for i ranked above j: "a better box of my class overlaps me".
    iou = np.triu(box_iou(ranked_boxes, ranked_boxes), k=1)
    keep = iou.max(axis=1) <= nms_thresh                        # [C-1, K]

    classes = np.broadcast_to(np.arange(fg.shape[0])[:, None], keep.shape)[keep]
    kept, kept_scores = order[keep], ranked_scores[keep]
    best_first = np.argsort(-kept_scores, kind='stable')[:max_num_detections]
    kept = kept[best_first]
    return boxes[kept], coeffs[kept], classes[best_first].astype(np.int64), kept_scores[best_first]


# ----------------------------------------------------------------------------- masks and boxes

_ACTIVATIONS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    'sigmoid': lambda x: 1 / (1 + np.exp(-x)),
    'tanh': np.tanh,
    'relu': lambda x: np.maximum(x, 0),
    'none': lambda x: x,
    # Over the detections, as the original's softmax over the last axis of [H, W, D].
    'softmax': lambda x: np.exp(x - x.max(axis=0)) / np.exp(x - x.max(axis=0)).sum(axis=0),
}


def _pixel_interval(lo: np.ndarray, hi: np.ndarray, size: int, padding: int = 0
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Relative coordinates of one axis -> ordered pixel interval, grown by `padding`, in [0, size]."""
    lo, hi = lo * np.float32(size), hi * np.float32(size)
    return np.maximum(np.minimum(lo, hi) - padding, 0), np.minimum(np.maximum(lo, hi) + padding, size)


def crop_masks(masks: np.ndarray, boxes: np.ndarray, padding: int = 1) -> np.ndarray:
    """Zero each mask outside its box grown by `padding` pixels.

    Args:
        masks (float[D, h, w]), boxes (float[D, 4]) in relative (x1, y1, x2, y2)
    Returns:
        float[D, h, w]
    """
    _, h, w = masks.shape
    x1, x2 = _pixel_interval(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = _pixel_interval(boxes[:, 1], boxes[:, 3], h, padding)
    xs = np.arange(w, dtype=np.float32)[None, None, :]
    ys = np.arange(h, dtype=np.float32)[None, :, None]
    inside = ((xs >= x1[:, None, None]) & (xs < x2[:, None, None])
              & (ys >= y1[:, None, None]) & (ys < y2[:, None, None]))
    return masks * inside


def assemble_masks(proto: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray,
                   activation: str = 'sigmoid', crop: bool = True) -> np.ndarray:
    """Linear combination of the prototypes per detection, activated and cropped to its box.

    Args:
        proto (float32[h, w, M]), coeffs (float32[D, M]), boxes (float32[D, 4]) relative (x1, y1, x2, y2)
    Returns:
        float32[D, h, w] soft masks at prototype resolution.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown mask activation {activation!r}; "
                         f"expected one of {sorted(_ACTIVATIONS)}")
    h, w, m = proto.shape
    masks = (coeffs @ proto.reshape(h * w, m).T).reshape(-1, h, w)
    masks = _ACTIVATIONS[activation](masks).astype(np.float32)
    return crop_masks(masks, boxes) if crop else masks


def pixel_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Relative (x1, y1, x2, y2) float[D, 4] -> pixel int64[D, 4], ordered and clamped to the image."""
    x1, x2 = _pixel_interval(boxes[:, 0], boxes[:, 2], width)
    y1, y2 = _pixel_interval(boxes[:, 1], boxes[:, 3], height)
    return np.stack((x1, y1, x2, y2), axis=1).astype(np.int64)


# ----------------------------------------------------------------------------- all together

def postprocess(boxes: np.ndarray, scores: np.ndarray, coeffs: np.ndarray, proto: np.ndarray,
                width: int, height: int, meta: Dict[str, Any], score_threshold: float = 0.0,
                cross_class: bool = False, crop: bool = True,
                maskiou: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> Detections:
    """Final detections of one image from the network outputs of that image.

    Args:
        boxes (float32[P, 4]), scores (float32[P, C]), coeffs (float32[P, M]), proto (float32[h, w, M]):
            one batch entry of the network's outputs.
        width, height: size in pixels of the original image (masks and boxes are given at that size).
        meta: export metadata (NMS settings and mask activation).
        score_threshold: drop detections scoring at or below this before assembling masks.
        cross_class: cross-class Fast NMS instead of per-class.
        crop: zero each mask outside its box (the repository's default).
        maskiou: YOLACT++ only: a function from cropped soft masks float32[D, 1, h, w] to predicted
            IoUs float32[D, C-1], e.g. the exported '<name>.maskiou.onnx' run by onnxruntime.
    """
    det_boxes, det_coeffs, classes, det_scores = fast_nms(
        boxes, scores, coeffs, meta['conf_thresh'], meta['nms_thresh'], meta['top_k'],
        meta['max_num_detections'], cross_class)
    if score_threshold > 0:
        keep = det_scores > score_threshold
        det_boxes, det_coeffs = det_boxes[keep], det_coeffs[keep]
        classes, det_scores = classes[keep], det_scores[keep]

    soft = assemble_masks(proto, det_coeffs, det_boxes, meta['mask_activation'], crop)
    mask_scores = None
    if maskiou is not None and len(classes) > 0:
        predicted = np.asarray(maskiou(np.ascontiguousarray(soft[:, None])))
        mask_scores = det_scores * np.take_along_axis(predicted, classes[:, None], axis=1)[:, 0]
        if meta.get('rescore_bbox'):
            det_scores = mask_scores
    elif maskiou is not None:
        mask_scores = det_scores.copy()

    masks = resize_bilinear(soft, height, width) > 0.5
    return Detections(classes, det_scores, pixel_boxes(det_boxes, width, height), masks, mask_scores)


def detect(session: Any, image: np.ndarray, meta: Optional[Dict[str, Any]] = None,
           score_threshold: float = 0.0, **kwargs) -> Detections:
    """Run an onnxruntime session on one BGR image (uint8[H, W, 3]) and post-process it.

    `kwargs` go to `postprocess` (cross_class, crop, maskiou).
    """
    meta = load_metadata(session) if meta is None else meta
    outputs = session.run(list(meta['output_names']), {meta['input_name']: preprocess(image, meta)})
    boxes, scores, coeffs, proto = (out[0] for out in outputs)
    return postprocess(boxes, scores, coeffs, proto, image.shape[1], image.shape[0], meta,
                       score_threshold=score_threshold, **kwargs)


def onnx_maskiou(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap an onnxruntime session of an exported '<name>.maskiou.onnx' as `postprocess`'s maskiou."""
    name = session.get_inputs()[0].name
    return lambda masks: session.run(None, {name: masks})[0]

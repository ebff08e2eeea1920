"""Detections -> COCO result dicts -> box and mask mAP with pycocotools' COCOeval.

The evaluation itself can also run on faster-coco-eval (``backend='faster'``, eval.py/train.py
``--coco_eval faster``), a C++ re-implementation of COCOeval that gives the same numbers; it is an
optional dependency (requirements-eval.txt).

The one place that knows the COCO results format: boxes as pixel (x, y, width, height), masks as
RLE, category ids of the annotation file. Everything here is pure over its inputs (no ``cfg``).

The numbers are reported the way the original eval.py printed them: AP in percent at each IoU
threshold .50, .55, ... .95 plus their mean ('all'), for 'box' and 'mask'. They come from COCOeval
(area 'all', 100 detections per image), so they equal the first line of COCOeval's summary.
"""
import contextlib
import copy
import io
import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deploy.result_files import encode_masks

# IoU thresholds of the table, in percent: 50, 55, ..., 95.
IOU_THRESHOLDS = tuple(range(50, 100, 5))
# Our names for the two tasks -> COCOeval's iouType.
IOU_TYPES = {'box': 'bbox', 'mask': 'segm'}

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

# --coco_eval choices: the COCOeval implementation that scores the detections.
COCO_EVAL_BACKENDS = ('pycocotools', 'faster')


class CocoEvalBackendError(ValueError):
    """The --coco_eval backend asked for is unknown or not installed."""


def _faster_coco_eval():
    try:
        import faster_coco_eval
    except ImportError:
        raise CocoEvalBackendError(
            "--coco_eval faster needs the faster-coco-eval package: pip install faster-coco-eval "
            "(or pip install -r requirements-eval.txt), or use --coco_eval pycocotools") from None
    return faster_coco_eval


def check_coco_eval_backend(backend: str) -> None:
    """Raise CocoEvalBackendError unless `backend` can be used (before a long inference run)."""
    if backend not in COCO_EVAL_BACKENDS:
        raise CocoEvalBackendError(f"--coco_eval must be one of {', '.join(COCO_EVAL_BACKENDS)}, got {backend!r}")
    if backend == 'faster':
        _faster_coco_eval()


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def category_ids(label_map: Mapping[int, int]) -> Dict[int, int]:
    """Class index (0-based, as Detect reports it) -> COCO category id.

    Args:
        label_map: category_id -> class index + 1, as ``data.coco.get_label_map(cfg.dataset)`` returns it.
    """
    inverse = {}
    for cat_id, label in label_map.items():
        if label - 1 in inverse:
            raise ValueError(f"label map sends two category ids ({inverse[label - 1]} and {cat_id}) "
                             f"to class {label}; it must be one-to-one")
        inverse[int(label) - 1] = int(cat_id)
    return inverse


def box_to_xywh(box: Sequence[float]) -> List[float]:
    """(x1, y1, x2, y2) in pixels -> COCO (x, y, width, height), rounded to 0.1 px as COCO suggests."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [round(v, 1) for v in (x1, y1, x2 - x1, y2 - y1)]


def _scores_pair(scores) -> tuple:
    """postprocess's scores: one Tensor, or [box scores, mask scores] for YOLACT++ re-scoring."""
    if isinstance(scores, (list, tuple)):
        return _numpy(scores[0]).astype(float), _numpy(scores[1]).astype(float)
    s = _numpy(scores).astype(float)
    return s, s


@dataclass
class CocoResults:
    """COCO result dicts of the images evaluated so far.

    Args:
        label_map: category_id -> class index + 1 (``data.coco.get_label_map(cfg.dataset)``).
    """
    label_map: Mapping[int, int]
    bbox: List[dict] = field(default_factory=list)
    segm: List[dict] = field(default_factory=list)
    image_ids: List[int] = field(default_factory=list)

    def __post_init__(self):
        self._cat_ids = category_ids(self.label_map)

    def add(self, image_id: int, classes: ArrayLike, scores, boxes: ArrayLike,
            masks: Optional[ArrayLike] = None) -> None:
        """Record the detections of one image (call it for images without detections too).

        Args:
            classes (Tensor[D]) int, 0-based class indices.
            scores (Tensor[D]), or [box scores, mask scores] as postprocess returns for YOLACT++.
            boxes (Tensor[D, 4]) in pixel (x1, y1, x2, y2).
            masks (Tensor[D, H, W]) binary full-image masks, or None when only boxes are evaluated.
        """
        self.image_ids.append(int(image_id))
        classes = _numpy(classes).astype(int).reshape(-1)
        if classes.shape[0] == 0:
            return
        boxes = _numpy(boxes).reshape(-1, 4)
        box_scores, mask_scores = _scores_pair(scores)
        # Like the original, a detection with an empty box is not reported at all.
        valid = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
        if masks is not None:
            keep = torch.from_numpy(valid).to(masks.device) if isinstance(masks, torch.Tensor) else valid
            rles = encode_masks(masks[keep])
        else:
            rles = None
        for n, i in enumerate(np.flatnonzero(valid)):
            if int(classes[i]) not in self._cat_ids:
                raise ValueError(f"class index {int(classes[i])} has no category id in the label map "
                                 f"(it covers classes 0..{len(self._cat_ids) - 1})")
            cat_id = self._cat_ids[int(classes[i])]
            self.bbox.append({'image_id': int(image_id), 'category_id': cat_id,
                              'bbox': box_to_xywh(boxes[i]), 'score': float(box_scores[i])})
            if rles is not None:
                self.segm.append({'image_id': int(image_id), 'category_id': cat_id,
                                  'segmentation': rles[n], 'score': float(mask_scores[i])})

    def dump(self, bbox_path: str, mask_path: Optional[str]) -> None:
        """Write the box (and mask) results as COCO result json files."""
        outputs = [(self.bbox, bbox_path)] + ([(self.segm, mask_path)] if mask_path else [])
        for results, path in outputs:
            with open(path, 'w') as f:
                json.dump(results, f)


def load_results(coco_gt: COCO, results: Union[str, List[dict]]) -> COCO:
    """A COCO object of detections: ``coco_gt.loadRes``, but also for an empty list (which
    pycocotools cannot load) and without altering the caller's dicts or printing."""
    if isinstance(results, str):
        with open(results) as f:
            results = json.load(f)
    if len(results) > 0:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(copy.deepcopy(results))
    empty = COCO()
    empty.dataset = {'images': list(coco_gt.dataset['images']),
                     'categories': copy.deepcopy(coco_gt.dataset.get('categories', [])),
                     'annotations': []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


@dataclass
class TaskScores:
    """COCOeval's numbers for one task ('box' or 'mask').

    ap: {'all': mean, 50: AP@.50, 55: ..., 95: ...} in percent.
    stats: the 12 numbers of COCOeval.summarize() (fractions; -1 where undefined).
    summary: summarize()'s printed text.
    precision (ndarray[T, R, K]): COCOeval's eval['precision'] at area 'all' and the largest
        maxDets: IoU threshold x recall threshold x category (-1 for a category without ground truth).
    category_ids: the K categories' ids, in that order.
    recall_thresholds (ndarray[R]), iou_thresholds (ndarray[T]): the axes of `precision`.
    """
    ap: Dict[Union[str, int], float]
    stats: List[float]
    summary: str
    precision: Optional[np.ndarray] = None
    category_ids: List[int] = field(default_factory=list)
    recall_thresholds: Optional[np.ndarray] = None
    iou_thresholds: Optional[np.ndarray] = None


def _faster_evaluator(coco_gt: COCO, results: Union[str, List[dict]], iou_type: str):
    """faster-coco-eval's COCOeval over the same ground truth and results. Its COCO objects and
    loadRes add keys to the dicts they are given, so they get copies."""
    fce = _faster_coco_eval()
    if isinstance(results, str):
        with open(results) as f:
            results = json.load(f)
    gt = fce.COCO({**coco_gt.dataset, 'annotations': [dict(a) for a in coco_gt.dataset['annotations']]})
    dt = gt.loadRes(copy.deepcopy(results))
    # print_function=print: its messages go to stdout, where run_cocoeval captures them.
    return fce.COCOeval_faster(gt, dt, iou_type, print_function=print)


def run_cocoeval(coco_gt: COCO, results: Union[str, List[dict]], task: str,
                 image_ids: Optional[Iterable[int]] = None, backend: str = 'pycocotools') -> TaskScores:
    """Evaluate `results` (result dicts or a json path) against `coco_gt` with COCOeval.

    Args:
        task: 'box' or 'mask'.
        image_ids: the images that were evaluated (all of coco_gt's when None). Images left out of
            a partial run must not count as missed ground truth.
        backend: 'pycocotools' or 'faster' (faster-coco-eval; same numbers, less time).
    """
    if task not in IOU_TYPES:
        raise ValueError(f"task must be one of {sorted(IOU_TYPES)}, got {task!r}")
    check_coco_eval_backend(backend)
    if backend == 'faster':
        evaluator = _faster_evaluator(coco_gt, results, IOU_TYPES[task])
    else:
        evaluator = COCOeval(coco_gt, load_results(coco_gt, results), IOU_TYPES[task])
    if image_ids is not None:
        evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    # faster-coco-eval's summary goes on with AR@.50 and AR@.75; the 12 numbers come first.
    params = evaluator.params
    precision = np.asarray(evaluator.eval['precision'])[:, :, :, params.areaRngLbl.index('all'), -1]
    return TaskScores(ap=ap_per_threshold(evaluator), stats=[float(s) for s in evaluator.stats[:12]],
                      summary=summary.getvalue(), precision=precision,
                      category_ids=[int(c) for c in params.catIds],
                      recall_thresholds=np.asarray(params.recThrs), iou_thresholds=np.asarray(params.iouThrs))


def ap_per_threshold(evaluator: COCOeval) -> Dict[Union[str, int], float]:
    """AP in percent at each IoU threshold and their mean, from an accumulated COCOeval.

    Uses area range 'all' and the largest maxDets, as summarize()'s first line; classes without
    ground truth (precision -1) are left out of the mean, as COCOeval does.
    """
    params = evaluator.params
    precision = evaluator.eval['precision']  # [T, R, K, A, M]
    area = params.areaRngLbl.index('all')
    dets = len(params.maxDets) - 1
    ap: Dict[Union[str, int], float] = {}
    for t, iou in enumerate(params.iouThrs):
        p = precision[t, :, :, area, dets]
        p = p[p > -1]
        ap[int(round(iou * 100))] = float(p.mean() * 100) if p.size else 0.0
    # 'all' comes first, like the original's table.
    per_iou = [ap[k] for k in IOU_THRESHOLDS if k in ap]
    return {'all': sum(per_iou) / len(per_iou) if per_iou else 0.0, **ap}


def evaluate_results(coco_gt: COCO, results: CocoResults, tasks: Sequence[str] = ('box', 'mask'),
                     backend: str = 'pycocotools') -> Dict[str, TaskScores]:
    """Box and/or mask scores of `results` over the images it holds: {task: TaskScores}."""
    out: Dict[str, TaskScores] = {}
    for task in tasks:
        dets = results.bbox if task == 'box' else results.segm
        out[task] = run_cocoeval(coco_gt, dets, task, image_ids=results.image_ids, backend=backend)
    return out


def format_map_table(maps: Mapping[str, Mapping[Union[str, int], float]]) -> str:
    """The original eval.py's table: one column per key ('all', .50 ... .95), one row per task."""
    tasks = [t for t in ('box', 'mask') if t in maps]
    if not tasks:
        return ''
    keys = list(maps[tasks[0]].keys())

    def row(cells: Sequence[str]) -> str:
        return ''.join(f' {c:>5} |' for c in cells)

    header = row([''] + [f'.{k} ' if isinstance(k, int) else f'{k} ' for k in keys])
    separator = '-------+' * (len(keys) + 1)
    lines = [header, separator]
    for task in tasks:
        values = [maps[task][k] for k in keys]
        lines.append(row([task] + [f'{v:.2f}' if v < 100 else f'{v:.1f}' for v in values]))
    lines.append(separator)
    return '\n'.join(lines)


def parse_map_table(text: str) -> Dict[str, Dict[Union[str, int], float]]:
    """Read back a table written by `format_map_table` (the rows of the last table in `text`)."""
    maps: Dict[str, Dict[Union[str, int], float]] = {}
    keys: List[Union[str, int]] = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split('|')[:-1]]
        if len(cells) < 2:
            continue
        if cells[0] == '' and cells[1] == 'all':
            keys = ['all'] + [int(c.lstrip('.')) for c in cells[2:]]
            maps = {}
        elif keys and cells[0] in IOU_TYPES:
            maps[cells[0]] = {k: float(v) for k, v in zip(keys, cells[1:])}
    return maps


# COCOeval.summarize()'s 12 numbers, in its order, under the names metrics.json gives them.
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def class_ap(scores: TaskScores) -> List[Optional[Dict[str, float]]]:
    """Per category (in `scores.category_ids` order): {'AP', 'AP50', 'AP75'} in percent, or None
    for a category without ground truth in the evaluated images.

    The same precision entries as COCOeval's stats[0], grouped by category: each category's AP is
    the mean over IoU thresholds and recall thresholds, so the mean of the rows is stats[0].
    """
    if scores.precision is None:
        raise ValueError("these TaskScores carry no precision array (run_cocoeval keeps it)")
    ious = [int(round(t * 100)) for t in scores.iou_thresholds]
    rows: List[Optional[Dict[str, float]]] = []
    for k in range(scores.precision.shape[2]):
        p = scores.precision[:, :, k]
        # accumulate() fills a category's precision for every threshold or for none.
        if (p <= -1).all():
            rows.append(None)
            continue
        rows.append({'AP': float(p.mean() * 100),
                     'AP50': float(p[ious.index(50)].mean() * 100) if 50 in ious else float('nan'),
                     'AP75': float(p[ious.index(75)].mean() * 100) if 75 in ious else float('nan')})
    return rows


def gt_instances(coco_gt: COCO, image_ids: Iterable[int]) -> Dict[int, int]:
    """Non-crowd ground-truth instances per category id in the images `image_ids`."""
    counts = {int(c): 0 for c in coco_gt.getCatIds()}
    for image_id in set(int(i) for i in image_ids):
        for ann in coco_gt.imgToAnns.get(image_id, []):
            if not ann.get('iscrowd', 0):
                counts[int(ann['category_id'])] = counts.get(int(ann['category_id']), 0) + 1
    return counts


def confusion_matrix(coco_gt: COCO, detections: Sequence[dict], image_ids: Iterable[int],
                     iou_threshold: float = 0.5, score_threshold: float = 0.3) -> np.ndarray:
    """Counts of (true class, predicted class) over the images `image_ids`.

    Per image, the detections scoring at least `score_threshold` are taken best first, and each is
    matched to the unmatched non-crowd ground truth instance (of any class) it overlaps most, if
    that IoU is at least `iou_threshold`. The IoU is of masks when the detections are mask results
    ('segmentation'), else of boxes ('bbox'). A detection left unmatched that lies on a crowd
    region (IoU >= threshold, computed as COCOeval does for crowds) is ignored, as COCOeval ignores it.

    Args:
        detections: COCO result dicts (CocoResults.segm or .bbox).
    Returns:
        ndarray[K + 1, K + 1] int64 over the K categories of `coco_gt` in sorted id order, then
        background: rows are the true class (the last row: detections that match nothing), columns
        the predicted class (the last column: ground truth that no detection matched).
    """
    cat_ids = sorted(int(c) for c in coco_gt.getCatIds())
    index = {c: i for i, c in enumerate(cat_ids)}
    background = len(cat_ids)
    counts = np.zeros((background + 1, background + 1), dtype=np.int64)
    ids = set(int(i) for i in image_ids)
    by_image: Dict[int, List[dict]] = {i: [] for i in ids}
    for det in detections:
        if det['score'] >= score_threshold and int(det['image_id']) in by_image:
            by_image[int(det['image_id'])].append(det)
    use_masks = any('segmentation' in d for d in detections)
    for image_id in sorted(ids):
        anns = coco_gt.imgToAnns.get(image_id, [])
        gts = [a for a in anns if not a.get('iscrowd', 0)]
        crowds = [a for a in anns if a.get('iscrowd', 0)]
        dets = sorted(by_image[image_id], key=lambda d: -d['score'])

        def regions(items, is_gt):
            if use_masks:
                return [coco_gt.annToRLE(a) if is_gt else a['segmentation'] for a in items]
            return [list(a['bbox']) for a in items]

        iou = np.zeros((len(dets), len(gts)))
        crowd_iou = np.zeros((len(dets), len(crowds)))
        if dets and gts:
            iou = np.asarray(mask_utils.iou(regions(dets, False), regions(gts, True), [0] * len(gts)))
        if dets and crowds:
            crowd_iou = np.asarray(mask_utils.iou(regions(dets, False), regions(crowds, True), [1] * len(crowds)))
        matched = np.zeros(len(gts), dtype=bool)
        for d, det in enumerate(dets):
            predicted = index[int(det['category_id'])]
            candidates = np.where(matched, -1.0, iou[d]) if gts else np.zeros(0)
            best = int(candidates.argmax()) if candidates.size else -1
            if best >= 0 and candidates[best] >= iou_threshold:
                matched[best] = True
                counts[index[int(gts[best]['category_id'])], predicted] += 1
            elif not (crowds and crowd_iou[d].max() >= iou_threshold):
                counts[background, predicted] += 1
        for g, gt in enumerate(gts):
            if not matched[g]:
                counts[index[int(gt['category_id'])], background] += 1
    return counts

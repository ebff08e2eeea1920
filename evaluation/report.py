"""What a dataset evaluation reports beyond the mAP: a per-class table, metrics.json, and two
plots (precision-recall curves and a confusion matrix), all written to one results folder.

    DIR/metrics.json          checkpoint, config, dataset (name and annotation file), image count,
                              seconds, the 12 COCOeval
                              numbers of box and mask (named, in percent), the per-class table and
                              the confusion matrix counts
    DIR/pr_curve.png          precision against recall per class (thin) and their mean (bold), for
                              box and mask, at IoU .50 and averaged over .50:.95
    DIR/confusion_matrix.png  share of each true class (rows) predicted as each class (columns),
                              with a background row (detections that match nothing) and column
                              (missed ground truth); see coco_results.confusion_matrix

The numbers come from COCOeval (evaluation/coco_results.py); this module only arranges and draws them.
"""
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from evaluation.coco_results import STAT_NAMES, TaskScores, class_ap
from utils.functions import write_atomically

METRICS_FILE = 'metrics.json'
PR_CURVE_FILE = 'pr_curve.png'
CONFUSION_FILE = 'confusion_matrix.png'
# The confusion matrix counts detections at or above this score, matched at this IoU.
CONFUSION_SCORE = 0.3
CONFUSION_IOU = 0.5
# Classes named in a plot's legend / on the confusion matrix axes up to these counts.
LEGEND_CLASSES = 10
LABELLED_CLASSES = 30


@dataclass
class ClassRow:
    """One class of the per-class table: AP, AP50, AP75 in percent per task (None: no ground truth)."""
    name: str
    category_id: int
    instances: int
    ap: Dict[str, Optional[Dict[str, float]]] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {'name': self.name, 'category_id': self.category_id, 'instances': self.instances, **self.ap}

    @staticmethod
    def from_dict(row: Mapping[str, Any]) -> 'ClassRow':
        return ClassRow(row['name'], int(row['category_id']), int(row['instances']),
                        {t: row[t] for t in ('box', 'mask') if t in row})


def class_rows(scores: Mapping[str, TaskScores], names: Mapping[int, str], instances: Mapping[int, int]
               ) -> List[ClassRow]:
    """The per-class table of `scores` ({'box': ..., 'mask': ...}), one row per category id.

    Args:
        names: category id -> class name. instances: category id -> non-crowd ground truth count.
    """
    first = next(iter(scores.values()))
    rows = [ClassRow(names.get(c, str(c)), c, int(instances.get(c, 0))) for c in first.category_ids]
    for task, task_scores in scores.items():
        if task_scores.category_ids != first.category_ids:
            raise ValueError(f"the {task} scores cover other categories than the {next(iter(scores))} scores")
        for row, ap in zip(rows, class_ap(task_scores)):
            row.ap[task] = ap
    return rows


def mean_of_rows(rows: Sequence[ClassRow], task: str, key: str = 'AP') -> float:
    """The mean of a column over the classes with ground truth (COCOeval's mAP for key 'AP')."""
    values = [r.ap[task][key] for r in rows if r.ap.get(task) is not None]
    return sum(values) / len(values) if values else float('nan')


def format_class_table(rows: Sequence[ClassRow]) -> str:
    """The per-class table as text: instances, then AP / AP50 / AP75 of box and mask; '-' marks a
    class without ground truth (left out of the mean in the last row)."""
    tasks = [t for t in ('box', 'mask') if rows and t in rows[0].ap]
    width = max([len('class'), len('mean')] + [len(r.name) for r in rows])
    keys = ('AP', 'AP50', 'AP75')
    header = f"{'class':<{width}} | {'inst':>6} | " + ' | '.join(
        ' '.join(f'{task + " " + k:>9}' for k in keys) for task in tasks)
    lines = [header, '-' * len(header)]

    def cells(values: Optional[Dict[str, float]]) -> str:
        return ' '.join(f'{values[k]:9.2f}' if values is not None else f'{"-":>9}' for k in keys)

    for r in rows:
        lines.append(f'{r.name:<{width}} | {r.instances:>6} | ' + ' | '.join(cells(r.ap[t]) for t in tasks))
    lines.append('-' * len(header))
    means = {t: {k: mean_of_rows(rows, t, k) for k in keys} for t in tasks}
    lines.append(f"{'mean':<{width}} | {sum(r.instances for r in rows):>6} | "
                 + ' | '.join(cells(means[t]) for t in tasks))
    return '\n'.join(lines)


def _number(value: float) -> Optional[float]:
    """JSON has no NaN; COCOeval's -1 means undefined: both become null."""
    return None if value is None or not math.isfinite(value) or value < 0 else round(float(value), 4)


def metrics(scores: Mapping[str, TaskScores], rows: Sequence[ClassRow], confusion: Optional[np.ndarray],
            confusion_by: str, **about: Any) -> Dict[str, Any]:
    """metrics.json's content. `about`: checkpoint, config, dataset, images, seconds, ... (first)."""
    out: Dict[str, Any] = dict(about)
    for task, s in scores.items():
        out[task] = {name: _number(v * 100) for name, v in zip(STAT_NAMES, s.stats)}
    out['classes'] = [{**r.as_dict(), **{t: None if ap is None else {k: _number(v) for k, v in ap.items()}
                                         for t, ap in r.ap.items()}} for r in rows]
    if confusion is not None:
        out['confusion_matrix'] = {
            'iou': CONFUSION_IOU, 'score_threshold': CONFUSION_SCORE, 'matched_by': confusion_by,
            'rows': 'true class', 'columns': 'predicted class',
            'labels': [r.name for r in rows] + ['background'], 'counts': confusion.tolist()}
    return out


def write_json(path: str, content: Dict[str, Any]) -> None:
    write_atomically(path, lambda f: f.write((json.dumps(content, indent=1) + '\n').encode()))


def read_metrics(path: str) -> Dict[str, Any]:
    """A metrics.json (or the folder holding one); raises FileNotFoundError / ValueError."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a metrics.json ({err})") from None


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib
    matplotlib.use('Agg')  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    def write(f):
        fig.savefig(f, format='png', dpi=100)
    write_atomically(path, write)


def plot_pr_curves(scores: Mapping[str, TaskScores], names: Sequence[str], path: str) -> None:
    """pr_curve.png: one panel per task and IoU (.50, and the mean over .50:.95); each class thin,
    the mean over classes with ground truth bold; a legend names the classes when there are at
    most LEGEND_CLASSES."""
    plt = _pyplot()
    tasks = list(scores)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        s = scores[task]
        ious = [int(round(t * 100)) for t in s.iou_thresholds]
        for col, (title, curves) in enumerate((('IoU .50', s.precision[ious.index(50)]),
                                                ('IoU .50:.95', s.precision.mean(axis=0)))):
            ax = axes[row, col]
            has_gt = (s.precision > -1).all(axis=(0, 1))
            few = len(names) <= LEGEND_CLASSES
            for k in np.flatnonzero(has_gt):
                ax.plot(s.recall_thresholds, curves[:, k], linewidth=1.2 if few else 0.6,
                        alpha=0.9 if few else 0.35, label=f'{names[k]} {curves[:, k].mean() * 100:.1f}' if few else None)
            if has_gt.any():
                mean = curves[:, has_gt].mean(axis=1)
                ax.plot(s.recall_thresholds, mean, color='black', linewidth=2.5,
                        label=f'mean of {int(has_gt.sum())} classes {mean.mean() * 100:.1f}')
            ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel='recall', ylabel='precision',
                   title=f'{task} precision-recall, {title}')
            ax.grid(alpha=0.3)
            if has_gt.any():
                ax.legend(loc='lower left', fontsize='small' if few else 'medium')
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(counts: np.ndarray, names: Sequence[str], path: str, matched_by: str) -> None:
    """confusion_matrix.png: `counts` (coco_results.confusion_matrix) normalised per true class
    (each row sums to 1), classes named on the axes up to LABELLED_CLASSES of them."""
    plt = _pyplot()
    labels = list(names) + ['background']
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    n = len(labels)
    side = min(max(5.0, 0.35 * n + 3), 20.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(shares, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='share of the true class')
    if n <= LABELLED_CLASSES + 1:
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
        if n <= LEGEND_CLASSES + 1:
            for i in range(n):
                for j in range(n):
                    if counts[i, j]:
                        ax.text(j, i, f'{shares[i, j]:.2f}', ha='center', va='center', fontsize=8,
                                color='white' if shares[i, j] > 0.5 else 'black')
    else:
        # Too many to name: the background row and column are the last ones.
        ax.set_xticks([n - 1], ['background'], rotation=90)
        ax.set_yticks([n - 1], ['background'])
    ax.set(xlabel='predicted class', ylabel='true class',
           title=f'confusion matrix ({matched_by} IoU >= {CONFUSION_IOU}, score >= {CONFUSION_SCORE})')
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_report(folder: str, scores: Mapping[str, TaskScores], rows: Sequence[ClassRow],
                 confusion: Optional[np.ndarray], confusion_by: str, **about: Any) -> Dict[str, Any]:
    """Write metrics.json, pr_curve.png and confusion_matrix.png (when `confusion` is given) to
    `folder`; returns metrics.json's content."""
    os.makedirs(folder, exist_ok=True)
    content = metrics(scores, rows, confusion, confusion_by, **about)
    names = [r.name for r in rows]
    plot_pr_curves(scores, names, os.path.join(folder, PR_CURVE_FILE))
    if confusion is not None:
        plot_confusion(confusion, names, os.path.join(folder, CONFUSION_FILE), confusion_by)
    # Last: a metrics.json on disk means the plots beside it are of the same evaluation.
    write_json(os.path.join(folder, METRICS_FILE), content)
    return content

"""Dataset evaluation: COCO box and mask mAP of a network (or its FPS), shared by eval.py and
train.py's validation.

    from evaluation.evaluator import EvalOptions, evaluate
    evaluate(net, dataset, opts=EvalOptions(max_images=100))

eval.py re-exports `evaluate` and `validation_map`, so the original's
`eval.evaluate(net, dataset, train_mode=True)` keeps working. The COCO conversion and COCOeval are
in evaluation/coco_results.py, the network runner in deploy/inference.py.
"""
import dataclasses
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from data.coco import get_label_map
from deploy.inference import NetRunner, benchmark, configure_detect
from evaluation.coco_results import CocoResults, confusion_matrix, evaluate_results, format_map_table, gt_instances
from evaluation.report import CONFUSION_IOU, CONFUSION_SCORE, class_rows, format_class_table, write_report
from layers.output_utils import postprocess


@dataclass
class EvalOptions:
    """What a dataset evaluation uses of eval.py's flags, with their defaults (same names)."""
    fast_nms: bool = True  # the paper's Fast NMS; False: greedy NMS
    cross_class_nms: bool = False
    amp: bool = False
    amp_dtype: Optional[torch.dtype] = None  # None: utils.device.autocast_dtype decides
    top_k: int = 5  # detections kept per image by --benchmark
    crop: bool = True  # crop masks with their predicted box
    score_threshold: float = 0
    max_images: int = -1  # -1: all
    shuffle: bool = False
    no_sort: bool = False  # dataset order instead of the hashed image-id order
    seed: Optional[int] = None
    benchmark: bool = False  # time the network instead of scoring it
    no_bar: bool = False
    output_coco_json: bool = False
    bbox_det_file: str = 'results/bbox_detections.json'
    mask_det_file: str = 'results/mask_detections.json'
    coco_eval: str = 'pycocotools'
    results_dir: Optional[str] = None  # metrics.json and plots go here (None: not written)
    checkpoint: Optional[str] = None  # what metrics.json names as the evaluated model
    iteration: Optional[int] = None  # the training iteration of a validation


def _id_hash(x: int) -> int:
    """A fixed 32-bit integer mix of an image id (the original's order for partial evaluations,
    so --max_images N picks the same images on every Python and pycocotools version)."""
    mask = 0xFFFFFFFF
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x045D9F3B) & mask
    return ((x >> 16) ^ x) & mask


def eval_order(ids: Sequence[int], shuffle: bool = False, no_sort: bool = False,
               seed: Optional[int] = None) -> List[int]:
    """Dataset indices in evaluation order: shuffled (--shuffle), as stored (--no_sort), or by
    the hash of the image id (default)."""
    order = list(range(len(ids)))
    if shuffle:
        (random.Random(seed) if seed is not None else random).shuffle(order)
    elif not no_sort:
        order.sort(key=lambda i: _id_hash(int(ids[i])))
    return order


def _options(opts: Optional[EvalOptions], overrides: Dict[str, Any]) -> EvalOptions:
    """`opts` (default: EvalOptions()) with `overrides` by option name."""
    opts = opts if opts is not None else EvalOptions()
    valid = {f.name for f in dataclasses.fields(opts)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"evaluate() got unknown options {unknown}; valid: {sorted(valid)}")
    return dataclasses.replace(opts, **overrides)


def _network_input(dataset, index: int, predictor: NetRunner) -> Tuple[torch.Tensor, int, int]:
    """(Tensor[1, 3, h, w] backbone input, image height, width) of one dataset image."""
    if dataset.transform is not None:
        img, _, _, height, width, _ = dataset.pull_item(index)
        return img.unsqueeze(0), height, width
    img = dataset.pull_image(index)
    with torch.no_grad():
        batch = predictor.transform(predictor.to_device([img]))
    return batch, img.shape[0], img.shape[1]


def evaluate(net: torch.nn.Module, dataset, train_mode: bool = False, opts: Optional[EvalOptions] = None,
             verbose: Optional[bool] = None, **overrides) -> Optional[Dict[str, Any]]:
    """COCO box and mask AP of `net` on `dataset` (or, with `benchmark`, its FPS).

    Args:
        net: Yolact (or a DataParallel/DDP wrapper of one); put in eval mode for the call.
        dataset: a COCODetection (``ids``, ``coco`` ground truth, ``pull_item``/``pull_image``).
        train_mode: called from training: quiet unless `verbose`.
        opts: the options (eval.py passes its parsed flags); default: EvalOptions().
        verbose: print progress bar and tables (default: not train_mode).
        overrides: option values by flag name, e.g. ``max_images=50, fast_nms=False``.
    Returns:
        {'box': {'all': mAP, 50: AP50, 55: ..., 95: AP95}, 'mask': {...} (percent),
         'box_stats': [12 COCOeval stats], 'mask_stats': [...], 'classes': the per-class table
         (eval_report.ClassRow.as_dict() rows)}; 'mask*' is absent when the
        config's eval_mask_branch is off (--detect). None when the dataset has no ground truth (the
        json files are written) or with `benchmark` (the FPS is printed).
    """
    opts = _options(opts, overrides)
    verbose = (not train_mode) if verbose is None else verbose
    configure_detect(net, opts.fast_nms, opts.cross_class_nms)
    was_training = net.training
    net.eval()
    try:
        predictor = NetRunner(net, amp=opts.amp, amp_dtype=opts.amp_dtype)
        order = eval_order(dataset.ids, opts.shuffle, opts.no_sort, opts.seed)
        if opts.max_images >= 0:
            order = order[:opts.max_images]
        if opts.benchmark:
            benchmark(predictor, dataset.pull_image, order, opts.top_k, opts.crop, opts.score_threshold,
                      no_bar=opts.no_bar or not verbose)
            return None
        return evaluate_dataset(predictor, dataset, order, opts, verbose)
    finally:
        net.train(was_training)


def validation_map(net: torch.nn.Module, dataset, max_images: int, amp_dtype: Optional[torch.dtype] = None,
                   coco_eval: str = 'pycocotools', results_dir: Optional[str] = None,
                   iteration: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """Training's validation: box and mask mAP of `net` on (at most) `max_images` images with the
    default options, quietly: {'box': {'all': mAP, 50: AP50, ...}, 'mask': {...}, 'classes': [...]}.
    With `results_dir`, metrics.json and the plots are written there. The net is left in train mode."""
    overrides: Dict[str, Any] = {'max_images': max_images, 'no_bar': True, 'coco_eval': coco_eval,
                                 'results_dir': results_dir, 'iteration': iteration}
    if amp_dtype is not None:
        overrides.update(amp=True, amp_dtype=amp_dtype)
    try:
        with torch.no_grad():
            return evaluate(net, dataset, train_mode=True, opts=EvalOptions(), **overrides)
    finally:
        net.train()


def evaluate_dataset(predictor: NetRunner, dataset, order: Sequence[int], opts: EvalOptions,
                     verbose: bool) -> Optional[Dict[str, Any]]:
    """Run the network over `order`'s images, collect COCO results and score them (and write the
    results folder, opts.results_dir)."""
    start = time.perf_counter()
    with_masks = bool(predictor.config.eval_mask_branch)
    results = CocoResults(getattr(dataset, 'label_map', None) or get_label_map(predictor.config.dataset))
    for index in tqdm(order, unit='img', disable=opts.no_bar or not verbose):
        batch, height, width = _network_input(dataset, index, predictor)
        det_output = predictor.run_batch(batch)
        classes, scores, boxes, masks = postprocess(det_output, width, height, crop_masks=opts.crop,
                                                    score_threshold=opts.score_threshold, config=predictor.config)
        results.add(dataset.ids[index], classes, scores, boxes, masks if with_masks else None)

    if opts.output_coco_json:
        for path in (opts.bbox_det_file, opts.mask_det_file if with_masks else None):
            if path and os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
        results.dump(opts.bbox_det_file, opts.mask_det_file if with_masks else None)
        if verbose:
            print(f'Detections written to {opts.bbox_det_file}'
                  + (f' and {opts.mask_det_file}' if with_masks else ''))
    if not getattr(dataset, 'has_gt', True):
        if verbose:
            print('This dataset has no ground truth: mAP not computed.')
        return None

    tasks = ('box', 'mask') if with_masks else ('box',)
    scores = evaluate_results(dataset.coco, results, tasks, backend=opts.coco_eval)
    names = {int(c): cat['name'] for c, cat in dataset.coco.cats.items()}
    rows = class_rows(scores, names, gt_instances(dataset.coco, results.image_ids))
    summary: Dict[str, Any] = {}
    for task in tasks:
        summary[task] = scores[task].ap
        summary[f'{task}_stats'] = scores[task].stats
    summary['classes'] = [r.as_dict() for r in rows]
    if verbose:
        print_results(scores, len(order), rows)
    if opts.results_dir:
        confusion = confusion_matrix(dataset.coco, results.segm if with_masks else results.bbox,
                                     results.image_ids, CONFUSION_IOU, CONFUSION_SCORE)
        write_report(opts.results_dir, scores, rows, confusion, 'mask' if with_masks else 'box',
                     checkpoint=opts.checkpoint, iteration=opts.iteration, config=predictor.config.name,
                     dataset=predictor.config.dataset.name, annotations=getattr(dataset, 'info_file', None),
                     images=len(order), coco_eval=opts.coco_eval,
                     seconds=round(time.perf_counter() - start, 2))
        if verbose:
            print(f'Metrics and plots written to {opts.results_dir}/')
    return summary


def print_results(scores, num_images: int, rows=None) -> None:
    """The original's mAP table, the per-class table (`rows`, eval_report.class_rows), then
    COCOeval's 12-number summary for each task."""
    print(f'\nmAP over {num_images} images (COCOeval):\n')
    print(format_map_table({task: s.ap for task, s in scores.items()}))
    if rows:
        print('\nPer class (AP in percent; inst: ground truth instances; -: none, not in the mean):\n')
        print(format_class_table(rows))
    for task, s in scores.items():
        print(f'\n{task} (COCOeval summary):')
        print(s.summary.rstrip())
    print()

"""Time the two --coco_eval backends (pycocotools, faster-coco-eval) on a synthetic COCO-sized set
(not a test: it prints figures and how far the two backends' numbers are apart).

    python benchmarks/coco_eval_bench.py [--images 5000] [--objects 7] [--detections 20] [--json out.json]

The set is made in memory, no images rendered: COCO val2017's shape (5,000 images of 640x480, about
7 objects each, 80 categories, small/medium/large objects, ~1% crowd regions), ground truth as
polygons like instances_val2017.json, and detections as eval.py writes them (RLE masks, pixel
boxes, scores): each object found with probability 0.8 by a slightly moved and resized polygon,
10% of them under a wrong class, plus false positives up to --detections per image. Both backends
score the same detections through evaluation.coco_results.run_cocoeval, which eval.py and train.py's
validation call; the time includes everything that call does (loading the results, evaluate,
accumulate, summarize; for faster-coco-eval also building its own COCO objects). Wall-clock and CPU
time (of all threads) are printed: on a shared machine the CPU time varies less.
"""
import argparse
import contextlib
import copy
import io
import json
import os
import platform
import sys
import time
from typing import Dict, List, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from evaluation.coco_results import COCO_EVAL_BACKENDS, check_coco_eval_backend, run_cocoeval  # noqa: E402

WIDTH, HEIGHT, CATEGORIES = 640, 480, 80
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> List[float]:
    """A star-shaped polygon of 5-12 vertices around (cx, cy), clipped to the image: [x0, y0, ...]."""
    n = int(rng.integers(5, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.6, 1.0, n)
    xs = np.clip(cx + radii * np.cos(angles), 0, WIDTH - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, HEIGHT - 1)
    return np.stack([xs, ys], 1).reshape(-1).round(2).tolist()


def rle_of(poly: List[float]) -> dict:
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], HEIGHT, WIDTH))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def detection(rng: np.random.Generator, image_id: int, cat: int, poly: List[float], score: float) -> Tuple[dict, dict]:
    """The box and the mask result dict of one detection shaped like `poly`."""
    rle = rle_of(poly)
    box = [round(float(v), 1) for v in mask_utils.toBbox(rle)]
    return ({'image_id': image_id, 'category_id': cat, 'bbox': box, 'score': score},
            {'image_id': image_id, 'category_id': cat, 'segmentation': rle, 'score': score})


def make_set(images: int, objects: float, detections: int, seed: int) -> Tuple[dict, List[dict], List[dict]]:
    """(ground-truth dataset dict, box results, mask results)."""
    rng = np.random.default_rng(seed)
    gt = {'images': [], 'annotations': [],
          'categories': [{'id': c, 'name': f'class{c}'} for c in range(1, CATEGORIES + 1)]}
    bbox, segm = [], []
    for image_id in range(1, images + 1):
        gt['images'].append({'id': image_id, 'file_name': f'{image_id:012d}.jpg', 'width': WIDTH, 'height': HEIGHT})
        found = 0
        for _ in range(int(np.clip(rng.poisson(objects), 1, 30))):
            cat = int(rng.integers(1, CATEGORIES + 1))
            radius = float(np.exp(rng.uniform(np.log(6), np.log(200))))  # small, medium and large
            cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
            poly = polygon(rng, cx, cy, radius)
            rle = rle_of(poly)
            area = float(mask_utils.area(rle))
            if area < 1:
                continue
            crowd = rng.uniform() < 0.01
            ann = {'id': len(gt['annotations']) + 1, 'image_id': image_id, 'category_id': cat,
                   'bbox': [float(v) for v in mask_utils.toBbox(rle)], 'area': area, 'iscrowd': int(crowd),
                   'segmentation': rle if crowd else [poly]}
            gt['annotations'].append(ann)
            if crowd or rng.uniform() > 0.8 or found >= detections:
                continue
            # The same outline, moved by ~5% of its size and scaled by up to 10%.
            xy = np.array(poly).reshape(-1, 2)
            centre = np.array([cx, cy])
            xy = centre + (xy - centre) * rng.uniform(0.9, 1.1) + rng.normal(0, radius * 0.05, 2)
            moved = np.clip(xy, 0, [WIDTH - 1, HEIGHT - 1]).reshape(-1).round(2).tolist()
            label = cat if rng.uniform() < 0.9 else int(rng.integers(1, CATEGORIES + 1))
            box, mask = detection(rng, image_id, label, moved, float(rng.uniform(0.3, 1.0)))
            bbox.append(box)
            segm.append(mask)
            found += 1
        for _ in range(detections - found):  # false positives, mostly low-scoring
            poly = polygon(rng, rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT),
                           float(np.exp(rng.uniform(np.log(6), np.log(150)))))
            if mask_utils.area(rle_of(poly)) < 1:
                continue
            box, mask = detection(rng, image_id, int(rng.integers(1, CATEGORIES + 1)), poly,
                                  float(rng.uniform(0.0, 0.6)))
            bbox.append(box)
            segm.append(mask)
    return gt, bbox, segm


def fresh_coco(dataset: dict) -> COCO:
    """A pycocotools COCO of its own copy of `dataset` (COCOeval rewrites the ground truth it
    scores: polygons become RLEs), so each run starts from the same state."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=5000)
    p.add_argument('--objects', type=float, default=7.0, help='mean ground-truth objects per image')
    p.add_argument('--detections', type=int, default=20, help='detections per image')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--backends', nargs='+', default=list(COCO_EVAL_BACKENDS), choices=COCO_EVAL_BACKENDS)
    p.add_argument('--json', default=None, help='also write the figures here')
    args = p.parse_args()
    for backend in args.backends:
        check_coco_eval_backend(backend)

    start = time.perf_counter()
    dataset, bbox, segm = make_set(args.images, args.objects, args.detections, args.seed)
    print(f'{len(dataset["images"])} images, {len(dataset["annotations"])} ground-truth objects, '
          f'{len(bbox)} detections (made in {time.perf_counter() - start:.0f} s); '
          f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
          f'load {os.getloadavg()[0]:.1f}')

    results: Dict[str, Dict[str, dict]] = {}
    for backend in args.backends:
        for task, dets in (('box', bbox), ('mask', segm)):
            coco_gt = fresh_coco(dataset)
            start, cpu_start, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
            scores = run_cocoeval(coco_gt, dets, task, backend=backend)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            results.setdefault(backend, {})[task] = {'seconds': seconds, 'cpu_seconds': cpu, 'stats': scores.stats,
                                                     'load': [load, os.getloadavg()[0]]}
            print(f'{backend:>12} {task:>4}: {seconds:7.1f} s wall, {cpu:7.1f} s CPU (load {load:.1f}-'
                  f'{os.getloadavg()[0]:.1f})   ' +
                  ' '.join(f'{n}={v:.4f}' for n, v in zip(STAT_NAMES, scores.stats)), flush=True)

    if len(results) == 2:
        a, b = (results[name] for name in COCO_EVAL_BACKENDS)
        for task in ('box', 'mask'):
            diff = max(abs(x - y) for x, y in zip(a[task]['stats'], b[task]['stats']))
            print(f'{task}: pycocotools {a[task]["seconds"]:.1f} s, faster {b[task]["seconds"]:.1f} s '
                  f'({a[task]["seconds"] / b[task]["seconds"]:.1f}x wall, '
                  f'{a[task]["cpu_seconds"] / b[task]["cpu_seconds"]:.1f}x CPU); '
                  f'largest difference of the 12 numbers {diff:.2e}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'images': args.images, 'detections': len(bbox), 'objects': len(dataset['annotations']),
                       'results': results}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())

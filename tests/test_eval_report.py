"""evaluation/report.py and the per-class parts of evaluation/coco_results.py: the per-class table (its
mean is COCOeval's mAP), confusion counts on a hand-built case, metrics.json and the two plots."""
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from test_eval import _perturbed_results, coco_gt  # noqa: F401 (coco_gt: a fixture)

from evaluation.coco_results import (
    STAT_NAMES,
    TaskScores,
    confusion_matrix,
    evaluate_results,
    gt_instances,
    run_cocoeval,
)
from evaluation.report import (
    CONFUSION_FILE,
    METRICS_FILE,
    PR_CURVE_FILE,
    ClassRow,
    class_rows,
    format_class_table,
    mean_of_rows,
    read_metrics,
    write_report,
)

SIDE = 60


def _coco(categories, annotations, images=(1, 2)) -> COCO:
    """A ground truth of `images` (SIDE x SIDE) whose annotations are boxes (x, y, w, h) with the
    masks filling them."""
    coco = COCO()
    anns = []
    for n, (image_id, cat_id, box, crowd) in enumerate(annotations, start=1):
        x, y, w, h = box
        polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
        anns.append({'id': n, 'image_id': image_id, 'category_id': cat_id, 'bbox': list(box), 'area': w * h,
                     'iscrowd': crowd, 'segmentation': [polygon]})
    coco.dataset = {'images': [{'id': i, 'width': SIDE, 'height': SIDE} for i in images],
                    'categories': [{'id': c, 'name': name} for c, name in categories], 'annotations': anns}
    coco.createIndex()
    return coco


def _det(image_id, cat_id, box, score, masks=False) -> dict:
    if not masks:
        return {'image_id': image_id, 'category_id': cat_id, 'bbox': list(box), 'score': score}
    x, y, w, h = box
    m = np.zeros((SIDE, SIDE), np.uint8, order='F')
    m[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(m)
    rle['counts'] = rle['counts'].decode('ascii')
    return {'image_id': image_id, 'category_id': cat_id, 'segmentation': rle, 'score': score}


@pytest.mark.parametrize('backend', ['pycocotools', 'faster'])
def test_mean_of_the_class_rows_is_cocoevals_map(coco_gt, backend):  # noqa: F811
    results = _perturbed_results(coco_gt)
    scores = evaluate_results(coco_gt, results, backend=backend)
    names = {c: cat['name'] for c, cat in coco_gt.cats.items()}
    rows = class_rows(scores, names, gt_instances(coco_gt, results.image_ids))
    assert [r.category_id for r in rows] == sorted(coco_gt.cats)
    assert sum(r.instances for r in rows) == sum(1 for a in coco_gt.dataset['annotations'] if not a['iscrowd'])
    for task in ('box', 'mask'):
        assert mean_of_rows(rows, task) == pytest.approx(scores[task].stats[0] * 100, abs=1e-9)
        assert mean_of_rows(rows, task, 'AP50') == pytest.approx(scores[task].stats[1] * 100, abs=1e-9)
        assert mean_of_rows(rows, task, 'AP75') == pytest.approx(scores[task].stats[2] * 100, abs=1e-9)
        assert len({round(r.ap[task]['AP'], 3) for r in rows}) > 1  # the classes really differ
    text = format_class_table(rows)
    assert text.splitlines()[-1].split()[0] == 'mean'
    assert f"{mean_of_rows(rows, 'mask'):.2f}" in text.splitlines()[-1]


def test_a_class_without_ground_truth_is_marked_and_left_out_of_the_mean():
    gt = _coco([(1, 'cat'), (2, 'dog'), (5, 'owl')],
               [(1, 1, (0, 0, 20, 20), 0), (1, 2, (30, 30, 20, 20), 0), (2, 1, (10, 10, 30, 30), 0)])
    dets = [_det(1, 1, (0, 0, 20, 20), 0.9), _det(1, 5, (30, 30, 20, 20), 0.8), _det(2, 1, (10, 10, 30, 30), 0.7)]
    scores = {'box': run_cocoeval(gt, dets, 'box', image_ids=[1, 2])}
    rows = class_rows(scores, {1: 'cat', 2: 'dog', 5: 'owl'}, gt_instances(gt, [1, 2]))
    assert [(r.name, r.instances) for r in rows] == [('cat', 2), ('dog', 1), ('owl', 0)]
    assert rows[0].ap['box']['AP'] == pytest.approx(100) and rows[1].ap['box']['AP'] == 0
    assert rows[2].ap['box'] is None  # detections of owl, but no owl to find
    assert mean_of_rows(rows, 'box') == pytest.approx(50) == pytest.approx(scores['box'].stats[0] * 100)
    owl = [line for line in format_class_table(rows).splitlines() if line.startswith('owl')][0]
    assert owl.split('|')[1].strip() == '0' and owl.split('|')[2].split() == ['-', '-', '-']


@pytest.mark.parametrize('masks', [False, True])
def test_confusion_counts_of_a_hand_built_case(masks):
    """Classes a, b, c (ids 1, 2, 7). Image 1: a found; b found as a; a crowd of c.
    Image 2: a missed; a false c; a second, lower detection of the found b; one below the score."""
    gt = _coco([(1, 'a'), (2, 'b'), (7, 'c')],
               [(1, 1, (0, 0, 20, 20), 0), (1, 2, (30, 0, 20, 20), 0), (1, 7, (0, 30, 30, 30), 1),
                (2, 1, (0, 0, 10, 10), 0), (2, 2, (30, 30, 20, 20), 0)])
    dets = [_det(1, 1, (0, 0, 20, 19), 0.9, masks),   # a -> a
            _det(1, 1, (30, 0, 20, 20), 0.8, masks),  # b -> a
            _det(1, 7, (0, 30, 20, 20), 0.7, masks),  # on the crowd region: ignored
            _det(2, 7, (40, 0, 15, 15), 0.6, masks),  # nothing there: background -> c
            _det(2, 2, (30, 30, 20, 20), 0.5, masks),  # b -> b
            _det(2, 2, (31, 30, 19, 20), 0.4, masks),  # b again, already taken: background -> b
            _det(2, 1, (0, 0, 10, 10), 0.2, masks)]   # below 0.3: not counted, so a is missed
    counts = confusion_matrix(gt, dets, [1, 2], iou_threshold=0.5, score_threshold=0.3)
    expected = np.array([[1, 0, 0, 1],   # a: found once, missed once
                         [1, 1, 0, 0],   # b: once taken for a, once found
                         [0, 0, 0, 0],   # c: only a crowd
                         [0, 1, 1, 0]])  # background: a duplicate b, a c from nothing
    np.testing.assert_array_equal(counts, expected)
    # Only image 2: image 1's detections and ground truth are not counted.
    only_2 = confusion_matrix(gt, dets, [2])
    np.testing.assert_array_equal(only_2, [[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]])


def _scores(num_classes: int, seed: int = 0) -> TaskScores:
    """COCOeval-shaped precision (10 IoUs x 101 recalls x K classes), falling with recall and IoU;
    the last class has no ground truth when there are several."""
    rng = np.random.default_rng(seed)
    recall = np.linspace(0, 1, 101)
    reach = rng.uniform(0.3, 1.0, num_classes)
    ious = np.linspace(0.5, 0.95, 10)
    precision = np.clip(1 - recall[None, :, None] / reach[None, None, :], 0, 1) * (1.5 - ious)[:, None, None]
    precision = np.clip(precision, 0, 1)
    if num_classes > 1:
        precision[:, :, -1] = -1
    stats = [0.4] * 12
    return TaskScores(ap={'all': 40.0}, stats=stats, summary='', precision=precision,
                      category_ids=list(range(1, num_classes + 1)), recall_thresholds=recall, iou_thresholds=ious)


@pytest.mark.parametrize('num_classes', [1, 80])
def test_report_writes_metrics_and_legible_plots(tmp_path, num_classes):
    scores = {'box': _scores(num_classes, 0), 'mask': _scores(num_classes, 1)}
    names = {c: f'class{c}' for c in range(1, num_classes + 1)}
    rows = class_rows(scores, names, {c: 3 for c in names})
    counts = np.random.default_rng(0).integers(0, 5, (num_classes + 1, num_classes + 1))
    folder = tmp_path / 'report'
    write_report(str(folder), scores, rows, counts, 'mask', checkpoint='w/x_1_10.pth', config='x_config',
                 dataset='tiny', images=4, seconds=1.5)

    metrics = read_metrics(str(folder))
    assert json.loads((folder / METRICS_FILE).read_text()) == metrics
    assert (metrics['checkpoint'], metrics['config'], metrics['dataset'], metrics['images']) == \
        ('w/x_1_10.pth', 'x_config', 'tiny', 4)
    assert list(metrics['box']) == list(STAT_NAMES) and metrics['mask']['AP'] == 40.0
    assert len(metrics['classes']) == num_classes and metrics['classes'][0]['instances'] == 3
    assert metrics['classes'][0]['mask']['AP'] == pytest.approx(rows[0].ap['mask']['AP'], abs=1e-4)
    if num_classes > 1:
        assert metrics['classes'][-1]['box'] is None
    matrix = metrics['confusion_matrix']
    assert matrix['labels'][-1] == 'background' and matrix['counts'] == counts.tolist()
    assert (matrix['iou'], matrix['score_threshold'], matrix['matched_by']) == (0.5, 0.3, 'mask')

    pr = cv2.imread(str(folder / PR_CURVE_FILE))
    assert pr is not None and pr.shape[0] >= 800 and pr.shape[1] >= 900  # 2 tasks x 2 IoU panels
    assert len(np.unique(pr.reshape(-1, 3), axis=0)) > 20  # curves in colour, not a blank canvas
    confusion = cv2.imread(str(confusion_path := folder / CONFUSION_FILE))
    assert confusion is not None and min(confusion.shape[:2]) >= 500, confusion_path
    # One class: a 2 x 2 matrix on a readable canvas; 80 classes: a bigger one.
    assert (confusion.shape[0] > 1200) == (num_classes == 80)
    assert not list(folder.glob('.*.tmp'))  # written atomically: no temporary files left


def test_class_rows_round_trip_through_the_log():
    row = ClassRow('cat', 3, 7, {'box': {'AP': 1.0, 'AP50': 2.0, 'AP75': 0.5}, 'mask': None})
    assert ClassRow.from_dict(json.loads(json.dumps(row.as_dict()))) == row

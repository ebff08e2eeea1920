"""eval.py and evaluation/coco_results.py: COCO conversion, COCOeval numbers, dataset evaluation, CLI errors."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import eval as eval_script
from data.coco import COCODetection
from data.config import ConfigError, cfg, set_cfg
from deploy.result_files import encode_masks
from evaluation import evaluator
from evaluation.coco_results import (
    CocoEvalBackendError,
    CocoResults,
    box_to_xywh,
    category_ids,
    check_coco_eval_backend,
    evaluate_results,
    format_map_table,
    parse_map_table,
)
from tests.eval_helpers import (
    ScriptedNet,
    detection_from_masks,
    gt_detections,
    register,
    save_tiny_checkpoint,
    tiny_config,
)
from utils.augmentations import BaseTransform
from utils.checkpoint import config_name_from_checkpoint
from yolact import Yolact

# Device the networks run on; the GPU check runs this file with YOLACT_TEST_DEVICE=cuda.
DEVICE = os.environ.get('YOLACT_TEST_DEVICE', 'cpu')
LABEL_MAP = {i: i for i in range(1, 7)}  # synthetic: category ids 1..6 are classes 1..6


pytestmark = pytest.mark.usefixtures('restore_cfg')


@pytest.fixture
def tiny(monkeypatch):
    """The tiny config registered and active."""
    attr = register(monkeypatch, tiny_config())
    set_cfg(attr)
    return attr


@pytest.fixture(scope='module')
def coco_gt(synthetic_root):
    coco = COCO()
    with open(synthetic_root / 'instances_val.json') as f:
        coco.dataset = json.load(f)
    coco.createIndex()
    return coco


def _gt_results(coco, keep=lambda image_id, n: True, shift=0.0) -> CocoResults:
    """Ground truth of every image as detections (score 1), optionally thinned or box-shifted."""
    results = CocoResults(LABEL_MAP)
    for image_id in sorted(coco.imgs):
        classes, scores, boxes, masks = gt_detections(coco, image_id)
        chosen = torch.tensor([keep(image_id, n) for n in range(len(classes))], dtype=torch.bool)
        boxes = boxes.clone()
        boxes[:, [0, 2]] += shift
        results.add(image_id, classes[chosen], scores[chosen], boxes[chosen], masks[chosen])
    return results


# ----------------------------------------------------------------------------- conversion

def test_conversion_formats():
    assert box_to_xywh([10, 20, 15.04, 30]) == [10.0, 20.0, 5.0, 10.0]
    assert category_ids({1: 1, 3: 2, 7: 3}) == {0: 1, 1: 3, 2: 7}
    with pytest.raises(ValueError, match='one-to-one'):
        category_ids({1: 1, 2: 1})

    masks = np.zeros((2, 4, 5), dtype=np.uint8)
    masks[0, 1:3, 2:4] = 1
    rles = encode_masks(torch.from_numpy(masks).float())
    assert all(isinstance(r['counts'], str) for r in rles)  # json-serialisable
    from pycocotools import mask as mask_utils
    decoded = mask_utils.decode([dict(r, counts=r['counts'].encode()) for r in rles])
    assert decoded.transpose(2, 0, 1).tolist() == masks.tolist()
    assert encode_masks(masks) == rles == encode_masks(torch.from_numpy(masks).bool())

    res = CocoResults({5: 1, 9: 2})
    res.add(3, torch.tensor([1, 0]), torch.tensor([0.5, 0.25]),
            torch.tensor([[1, 1, 4, 3], [2, 2, 2, 4]]), torch.from_numpy(masks))
    # The second box has no width: dropped, as the original does.
    assert res.bbox == [{'image_id': 3, 'category_id': 9, 'bbox': [1.0, 1.0, 3.0, 2.0], 'score': 0.5}]
    assert len(res.segm) == 1 and res.segm[0]['category_id'] == 9 and res.image_ids == [3]
    with pytest.raises(ValueError, match='no category id'):
        res.add(4, torch.tensor([5]), torch.tensor([1.0]), torch.tensor([[0, 0, 2, 2]]), torch.ones(1, 4, 5))


def test_table_format_round_trips():
    maps = {'box': {'all': 12.345, 50: 100.0, 55: 3.0}, 'mask': {'all': 0.0, 50: 99.999, 55: 7.5}}
    table = format_map_table(maps)
    lines = table.splitlines()
    assert lines[0] == '       |  all  |  .50  |  .55  |'
    assert lines[2] == '   box | 12.35 | 100.0 |  3.00 |'
    assert parse_map_table('noise\n' + table) == {'box': {'all': 12.35, 50: 100.0, 55: 3.0},
                                                  'mask': {'all': 0.0, 50: 100.0, 55: 7.5}}


# ----------------------------------------------------------------------------- the evaluation measures

def test_ground_truth_as_detections_scores_100(coco_gt):
    scores = evaluate_results(coco_gt, _gt_results(coco_gt))
    for task in ('box', 'mask'):
        assert set(scores[task].ap) == {'all', 50, 55, 60, 65, 70, 75, 80, 85, 90, 95}
        assert all(v == pytest.approx(100.0) for v in scores[task].ap.values()), scores[task].ap
        assert scores[task].stats[0] == pytest.approx(1.0)


def _expected_ap_when_thinned(coco, keep) -> float:
    """Hand-computed COCO AP when every kept detection is a perfect match with score 1: per class
    precision is 1 up to recall k/n and 0 beyond, so AP = #(recall thresholds <= k/n) / 101
    (0 when k = 0)."""
    kept, total = {}, {}
    for image_id in coco.imgs:
        anns = [a for a in coco.imgToAnns[image_id] if not a.get('iscrowd', 0)]
        for n, a in enumerate(anns):
            total[a['category_id']] = total.get(a['category_id'], 0) + 1
            kept[a['category_id']] = kept.get(a['category_id'], 0) + int(keep(image_id, n))
    rec_thresholds = np.linspace(0, 1, 101)
    per_class = [np.sum(rec_thresholds <= kept[c] / total[c]) / 101 if kept[c] else 0.0 for c in total]
    return 100 * float(np.mean(per_class))


def test_removing_half_of_the_detections_lowers_ap(coco_gt):
    def keep(image_id, n):
        return n % 2 == 0

    expected = _expected_ap_when_thinned(coco_gt, keep)
    assert 0 < expected < 90
    scores = evaluate_results(coco_gt, _gt_results(coco_gt, keep=keep))
    for task in ('box', 'mask'):
        assert scores[task].ap['all'] == pytest.approx(expected, abs=1e-6)
        assert scores[task].ap[50] == pytest.approx(expected, abs=1e-6)


def test_shifted_boxes_lower_box_ap_but_not_mask_ap(coco_gt):
    scores = evaluate_results(coco_gt, _gt_results(coco_gt, shift=4.0))
    assert scores['box'].ap['all'] < 90
    assert scores['box'].ap[95] < scores['box'].ap[50]
    assert scores['mask'].ap['all'] == pytest.approx(100.0)


def test_zero_detections_evaluate_to_zero(coco_gt):
    results = CocoResults(LABEL_MAP)
    for image_id in coco_gt.imgs:
        results.add(image_id, torch.zeros(0), torch.zeros(0), torch.zeros(0, 4), torch.zeros(0, 8, 8))
    scores = evaluate_results(coco_gt, results)
    for task in ('box', 'mask'):
        assert all(v == 0 for v in scores[task].ap.values())
        assert scores[task].stats[0] == 0


def test_partial_runs_only_count_the_images_evaluated(coco_gt):
    """GT of images that were not run must not count as misses (--max_images)."""
    first = sorted(coco_gt.imgs)[0]
    results = CocoResults(LABEL_MAP)
    results.add(first, *gt_detections(coco_gt, first))
    assert evaluate_results(coco_gt, results)['mask'].ap['all'] == pytest.approx(100.0)
    missed = CocoResults(LABEL_MAP)
    missed.add(first, torch.zeros(0), torch.zeros(0), torch.zeros(0, 4), None)
    assert evaluate_results(coco_gt, missed, tasks=('box',))['box'].ap['all'] == 0


# ----------------------------------------------------------------------------- the faster-coco-eval backend

def _perturbed_results(coco, seed: int = 0) -> CocoResults:
    """Ground truth turned into imperfect detections: random scores, jittered boxes, masks grown or
    shrunk by a pixel, a quarter of the objects missed, wrong-class duplicates and false positives."""
    rng = np.random.default_rng(seed)
    results = CocoResults(LABEL_MAP)
    for image_id in sorted(coco.imgs):
        classes, _, boxes, masks = gt_detections(coco, image_id)
        n, (h, w) = len(classes), masks.shape[1:]
        keep = torch.from_numpy(rng.uniform(size=n) > 0.25)
        boxes = boxes + torch.from_numpy(rng.normal(0, 2.0, (n, 4))).float()
        grown = torch.nn.functional.max_pool2d(masks[:, None], 3, 1, 1)[:, 0]
        shrunk = -torch.nn.functional.max_pool2d(-masks[:, None], 3, 1, 1)[:, 0]
        masks = torch.where(torch.from_numpy(rng.uniform(size=n) > 0.5)[:, None, None], grown, shrunk)
        classes, boxes, masks = classes[keep], boxes[keep], masks[keep]
        wrong = (classes + 1) % 6  # the same objects under another class
        fake = torch.zeros(2, h, w)
        fake[0, :h // 3, :w // 4] = 1
        fake[1, h // 2:, w // 2:] = 1
        fake_boxes = torch.tensor([[0, 0, w // 4, h // 3], [w // 2, h // 2, w, h]], dtype=torch.float32)
        all_classes = torch.cat([classes, wrong, torch.tensor([0, 3])])
        results.add(image_id, all_classes, torch.from_numpy(rng.uniform(0.05, 1.0, len(all_classes))).float(),
                    torch.cat([boxes, boxes, fake_boxes]), torch.cat([masks, masks, fake]))
    return results


@pytest.mark.parametrize('detections', ['ground_truth', 'perturbed', 'none'])
def test_faster_backend_gives_the_same_12_numbers(coco_gt, detections):
    if detections == 'ground_truth':
        results = _gt_results(coco_gt)
    elif detections == 'perturbed':
        results = _perturbed_results(coco_gt)
    else:
        results = CocoResults(LABEL_MAP)
        for image_id in sorted(coco_gt.imgs)[:3]:  # a partial run, too
            results.add(image_id, torch.zeros(0), torch.zeros(0), torch.zeros(0, 4), torch.zeros(0, 8, 8))
    reference = evaluate_results(coco_gt, results, backend='pycocotools')
    faster = evaluate_results(coco_gt, results, backend='faster')
    for task in ('box', 'mask'):
        assert len(faster[task].stats) == 12
        assert faster[task].stats == pytest.approx(reference[task].stats, abs=1e-3), task
        assert faster[task].ap == pytest.approx(reference[task].ap, abs=0.1), task
        assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]' in faster[task].summary
    if detections == 'perturbed':  # a score with room on both sides, so a difference would show
        assert 0.1 < reference['box'].stats[0] < 0.9 and 0.1 < reference['mask'].stats[0] < 0.9


def test_missing_faster_backend_says_how_to_install_it(monkeypatch, coco_gt):
    monkeypatch.setitem(sys.modules, 'faster_coco_eval', None)  # `import faster_coco_eval` fails
    with pytest.raises(CocoEvalBackendError, match='pip install faster-coco-eval'):
        check_coco_eval_backend('faster')
    with pytest.raises(CocoEvalBackendError, match='pip install faster-coco-eval'):
        evaluate_results(coco_gt, _gt_results(coco_gt), backend='faster')
    check_coco_eval_backend('pycocotools')
    with pytest.raises(CocoEvalBackendError, match='one of pycocotools, faster'):
        check_coco_eval_backend('detectron2')


# ----------------------------------------------------------------------------- eval.evaluate on a dataset

def _dataset(synthetic_root):
    return COCODetection(str(synthetic_root / 'val'), str(synthetic_root / 'instances_val.json'),
                         transform=BaseTransform(cfg), config=cfg)


def _scripted_gt_net(dataset, perturb=None):
    """A network that 'predicts' each image's ground truth, images taken in dataset order."""
    def script(call, batch):
        image_id = dataset.ids[call]
        classes, scores, boxes, masks = gt_detections(dataset.coco, image_id)
        if perturb is not None:
            classes, scores, boxes, masks = perturb(call, classes, scores, boxes, masks)
        if len(classes) == 0:
            return [None]
        det = detection_from_masks(classes, scores, masks, boxes)
        return [{k: v.to(batch.device) for k, v in det.items()}]
    return ScriptedNet(script).to(DEVICE)


def test_evaluate_scores_a_perfect_network_100(tiny, synthetic_root):
    dataset = _dataset(synthetic_root)
    net = _scripted_gt_net(dataset)
    result = eval_script.evaluate(net, dataset, train_mode=True, no_sort=True)
    assert net.calls == len(dataset)
    for task in ('box', 'mask'):
        assert result[task]['all'] == pytest.approx(100.0), result[task]
        assert len(result[f'{task}_stats']) == 12 and result[f'{task}_stats'][0] == pytest.approx(1.0)


def test_evaluate_zero_detections_and_max_images(tiny, synthetic_root, capsys):
    dataset = _dataset(synthetic_root)
    net = ScriptedNet(lambda call, batch: [None]).to(DEVICE)
    result = eval_script.evaluate(net, dataset, train_mode=True, max_images=2)
    assert net.calls == 2
    assert result['box']['all'] == 0 and result['mask']['all'] == 0
    assert capsys.readouterr().out == ''  # train mode is quiet


def test_printed_map_equals_pycocotools_on_the_json_files(tiny, synthetic_root, tmp_path, capsys):
    rng = np.random.default_rng(0)

    def perturb(call, classes, scores, boxes, masks):
        # Random scores, every third box shifted, every fourth object missed, one false positive.
        n = len(classes)
        scores = torch.from_numpy(rng.uniform(0.1, 1.0, n)).float()
        boxes = boxes.clone()
        boxes[::3, [0, 2]] += 3
        keep = torch.arange(n) % 4 != 3
        classes, scores, boxes, masks = classes[keep], scores[keep], boxes[keep], masks[keep]
        fake_mask = torch.zeros(1, *masks.shape[1:])
        fake_mask[0, :20, :30] = 1
        return (torch.cat([classes, torch.tensor([call % 6])]), torch.cat([scores, torch.tensor([0.5])]),
                torch.cat([boxes, torch.tensor([[0., 0., 30., 20.]])]), torch.cat([masks, fake_mask]))

    dataset = _dataset(synthetic_root)
    bbox_file, mask_file = tmp_path / 'out' / 'bbox.json', tmp_path / 'out' / 'mask.json'
    result = eval_script.evaluate(_scripted_gt_net(dataset, perturb), dataset, no_sort=True, no_bar=True,
                                  output_coco_json=True, bbox_det_file=str(bbox_file),
                                  mask_det_file=str(mask_file))
    printed = parse_map_table(capsys.readouterr().out)

    gt = COCO(str(synthetic_root / 'instances_val.json'))
    for task, iou_type, path in (('box', 'bbox', bbox_file), ('mask', 'segm', mask_file)):
        direct = COCOeval(gt, gt.loadRes(str(path)), iou_type)
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
        precision = direct.eval['precision'][:, :, :, 0, -1]
        per_iou = [100 * precision[t][precision[t] > -1].mean() for t in range(10)]
        assert 5 < direct.stats[0] * 100 < 95  # a non-trivial score
        assert printed[task]['all'] == round(direct.stats[0] * 100, 2)
        assert [printed[task][k] for k in range(50, 100, 5)] == [round(v, 2) for v in per_iou]
        assert result[f'{task}_stats'] == pytest.approx(list(direct.stats))
        assert result[task]['all'] == pytest.approx(direct.stats[0] * 100)
    assert printed['box']['all'] < printed['mask']['all']  # the shifted boxes only hurt boxes

    rng = np.random.default_rng(0)  # the same detections again, scored by faster-coco-eval
    faster = eval_script.evaluate(_scripted_gt_net(dataset, perturb), dataset, train_mode=True, no_sort=True,
                                  coco_eval='faster')
    for task in ('box', 'mask'):
        assert faster[f'{task}_stats'] == pytest.approx(result[f'{task}_stats'], abs=1e-3)


def test_eval_order_and_options():
    ids = [5, 1, 9, 3]
    assert eval_script.eval_order(ids, no_sort=True) == [0, 1, 2, 3]
    hashed = eval_script.eval_order(ids)
    assert sorted(hashed) == [0, 1, 2, 3]
    assert hashed == eval_script.eval_order(ids)  # deterministic
    assert eval_script.eval_order(ids, shuffle=True, seed=3) == eval_script.eval_order(ids, shuffle=True, seed=3)
    # The original's hash of image id 1 (a fixed 32-bit mix), computed by hand from its formula.
    x = 1
    x = (((x >> 16) ^ x) * 0x045d9f3b) & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * 0x045d9f3b) & 0xFFFFFFFF
    assert eval_script._id_hash(1) == ((x >> 16) ^ x) & 0xFFFFFFFF
    with pytest.raises(TypeError, match='unknown options'):
        eval_script._options(None, {'max_imgs': 3})


def test_options_are_a_value_passed_down_not_a_module_global():
    # The flags' defaults are the dataclass's, and parsing leaves nothing behind in the module.
    assert eval_script.parse_args([]) == eval_script.EvalArgs()
    assert eval_script.parse_args(['--max_images', '3']).max_images == 3
    assert not hasattr(eval_script, 'args')
    assert isinstance(eval_script.EvalArgs(), eval_script.EvalOptions)
    assert eval_script.evaluate is evaluator.evaluate and eval_script.validation_map is evaluator.validation_map


# ----------------------------------------------------------------------------- flags and setup

def test_boolean_flags_really_turn_off():
    parse = eval_script.parse_args
    assert parse([]).fast_nms is True and parse([]).crop is True
    assert parse(['--fast_nms', 'False']).fast_nms is False
    assert parse(['--fast_nms=false']).fast_nms is False
    assert parse(['--no_fast_nms']).fast_nms is False
    assert parse(['--cross_class_nms']).cross_class_nms is True
    assert parse(['--no_crop']).crop is False
    assert parse(['--display_masks', 'no', '--no_display_text']).display_masks is False
    assert parse(['--shuffle', '--max_images', '3']).shuffle is True
    assert parse(['--eval_device', 'cpu']).node_device == 'cpu'
    assert parse(['--node_device', 'npu:1']).node_device == 'npu:1'
    with pytest.raises(SystemExit):
        parse(['--fast_nms', 'maybe'])


def test_config_is_inferred_from_the_checkpoint_name():
    name = config_name_from_checkpoint
    assert name('weights/yolact_base_54_800000.pth') == 'yolact_base_config'
    assert name('yolact_plus_resnet50_54_800000.pth') == 'yolact_plus_resnet50_config'
    assert name('/x/yolact_im700_3_1000_interrupt.pth') == 'yolact_im700_config'
    with pytest.raises(ConfigError, match='pass --config'):
        name('model.pth')


def test_interrupt_and_latest_checkpoints(tmp_path):
    from utils.checkpoint import CheckpointError
    for name in ('yolact_base_2_100.pth', 'yolact_base_10_900.pth', 'yolact_im400_3_5000.pth',
                 'yolact_base_4_300_interrupt.pth'):
        (tmp_path / name).write_bytes(b'')
    resolve = eval_script.resolve_checkpoint
    folder = str(tmp_path)
    opts = eval_script.parse_args(['--trained_model', 'latest'])
    assert resolve(opts, folder).endswith('yolact_base_10_900.pth')
    opts = eval_script.parse_args(['--trained_model', 'latest', '--config', 'yolact_im400_config'])
    assert resolve(opts, folder).endswith('yolact_im400_3_5000.pth')
    opts = eval_script.parse_args(['--trained_model', 'interrupt'])
    assert resolve(opts, folder).endswith('yolact_base_4_300_interrupt.pth')
    opts = eval_script.parse_args(['--trained_model', 'latest', '--config', 'yolact_darknet53'])
    with pytest.raises(CheckpointError, match='checkpoint not found: checkpoint of yolact_darknet53'):
        resolve(opts, folder)


def _run_main(argv, capsys):
    rc = eval_script.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_errors_are_one_line(tiny, tmp_path, synthetic_root, monkeypatch, capsys):
    ckpt = tmp_path / 'yolact_evaltiny_1_10.pth'
    save_tiny_checkpoint(str(ckpt), tiny)
    base = ['--node_device', DEVICE, '--no_bar']

    rc, _, err = _run_main(['--trained_model', str(tmp_path / 'missing_1_2.pth')] + base, capsys)
    assert rc == 1 and err.strip().count('\n') == 0 and 'checkpoint not found' in err

    unknown = tmp_path / 'nosuchnet_1_2.pth'
    unknown.write_bytes(ckpt.read_bytes())
    rc, _, err = _run_main(['--trained_model', str(unknown)] + base, capsys)
    assert rc == 1 and "unknown config 'nosuchnet_config'" in err and 'yolact_base_config' in err

    # A config with another number of mask prototypes cannot hold the checkpoint.
    other = register(monkeypatch, tiny_config('yolact_evaltiny4', prototypes=4))
    rc, _, err = _run_main(['--trained_model', str(ckpt), '--config', other,
                            '--val_data', str(synthetic_root)] + base, capsys)
    assert rc == 1 and 'does not match config' in err and err.strip().count('\n') == 0

    rc, _, err = _run_main(['--trained_model', str(ckpt), '--val_data', str(tmp_path / 'nowhere')] + base, capsys)
    assert rc == 1 and 'nowhere' in err and 'not found' in err

    rc, _, err = _run_main(['--trained_model', str(ckpt), '--image', str(tmp_path / 'no.png')] + base, capsys)
    assert rc == 1 and 'no.png' in err and 'not found' in err

    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    rc, out, err = _run_main(['--trained_model', str(ckpt), '--val_data', str(synthetic_root),
                              '--results_dir', str(blocker / 'metrics')] + base, capsys)
    assert rc == 1 and err.strip().count('\n') == 0 and '--results_dir' in err and 'not a writable folder' in err
    assert 'Loading model' not in out

    monkeypatch.setitem(sys.modules, 'faster_coco_eval', None)  # as if not installed
    rc, out, err = _run_main(['--trained_model', str(ckpt), '--val_data', str(synthetic_root),
                              '--coco_eval', 'faster'] + base, capsys)
    assert rc == 1 and err.strip().count('\n') == 0 and 'pip install faster-coco-eval' in err
    assert 'Loading model' not in out  # refused before any work


def test_cli_evaluates_a_synthetic_checkpoint(tiny, tmp_path, synthetic_root, monkeypatch, capsys):
    """A checkpoint of a synthetic-data config, once with random detections (json written and
    scored) and once with a confidence threshold no detection passes."""
    ckpt = tmp_path / 'yolact_evaltiny_2_20.pth'
    save_tiny_checkpoint(str(ckpt), tiny)
    bbox_file, mask_file = tmp_path / 'b.json', tmp_path / 'm.json'
    argv = ['--trained_model', str(ckpt), '--val_data', str(synthetic_root), '--node_device', DEVICE,
            '--no_bar', '--max_images', '2']
    rc, out, err = _run_main(argv + ['--output_coco_json', '--bbox_det_file', str(bbox_file),
                                     '--mask_det_file', str(mask_file)], capsys)
    assert rc == 0, err
    assert 'Parsed yolact_evaltiny_config from the file name' in out
    printed = parse_map_table(out)
    assert set(printed) == {'box', 'mask'} and all(math.isfinite(v) for v in printed['box'].values())
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]' in out
    assert len(json.loads(bbox_file.read_text())) > 0
    # The per-class table, and metrics.json with the plots beside the checkpoint by default.
    assert 'Per class (AP in percent' in out and 'mean' in out
    metrics = json.loads((tmp_path / 'yolact_evaltiny_2_20_metrics' / 'metrics.json').read_text())
    assert (metrics['checkpoint'], metrics['config'], metrics['images']) == (str(ckpt), 'yolact_evaltiny', 2)
    assert metrics['annotations'] == str(synthetic_root / 'instances_val.json')
    assert metrics['box']['AP'] == pytest.approx(printed['box']['all'], abs=0.006)
    assert {p.name for p in (tmp_path / 'yolact_evaltiny_2_20_metrics').iterdir()} == \
        {'metrics.json', 'pr_curve.png', 'confusion_matrix.png'}

    register(monkeypatch, tiny_config(conf_thresh=1.0))  # nothing scores above 1
    compiled = []  # --compile hands the loaded network to Yolact.compile_network (tested on its own)
    monkeypatch.setattr(Yolact, 'compile_network', lambda net, **kwargs: compiled.append(net.training))
    rc, out, err = _run_main(argv + ['--compile', '--results_dir', str(tmp_path / 'chosen')], capsys)
    assert rc == 0, err
    assert parse_map_table(out)['mask']['all'] == 0.0
    assert json.loads((tmp_path / 'chosen' / 'metrics.json').read_text())['mask']['AP'] == 0.0
    assert compiled == [False]

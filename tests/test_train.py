"""train.py: schedule, autoscaling, checkpoints names, logging, overfitting one batch,
and end-to-end runs of `train.main` on the tiny synthetic dataset.

The tiny config used here (and by test_distributed.py / test_reliability_train.py) is defined in
this file and registered in data.config for the test only; it is a YOLACT with a one-block-per-stage
ResNet, 96 px input, 32-channel FPN and 8 prototypes, so an iteration takes a fraction of a second.
"""
import argparse
import json
import math
import os
import types
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

import data.config as config_module
import training.schedule
import training.step
import training.trainer
from data.coco import prepare_batch
from data.config import cfg, set_cfg

REPO = Path(__file__).resolve().parents[1]
OVERFIT_EVAL_STEPS = 100
TINY_CONFIG = 'tiny_train_config'


# ----------------------------------------------------------------------------------------------
# The tiny config and helpers shared with the other train test files
# ----------------------------------------------------------------------------------------------

def make_tiny_config(paths, **overrides):
    """A small YOLACT config on the synthetic dataset at `paths` (a DatasetPaths or a dict)."""
    c = config_module
    paths = paths._asdict() if hasattr(paths, '_asdict') else dict(paths)
    fields = {
        'name': 'tiny_train',
        'dataset': c.synthetic_dataset.copy(paths),
        'num_classes': len(c.synthetic_dataset.class_names) + 1,
        'max_size': 96,
        'max_iter': 4,
        'lr': 1e-3,
        'lr_steps': (1000,),
        'lr_warmup_init': 1e-4,
        'lr_warmup_until': 2,
        'backbone': c.resnet18_backbone.copy({
            'args': ([1, 1, 1, 1], [0, 0, 0, 0], 1, [], c.BasicBlock),
            'selected_layers': [1, 2, 3],
            'use_pixel_scales': True,
            'preapply_sqrt': False,
            'use_square_anchors': True,
            'pred_aspect_ratios': [[[1, 1 / 2, 2]]] * 5,
            'pred_scales': [[6], [12], [24], [48], [96]],
        }),
        'fpn': c.yolact_base_config.fpn.copy({'num_features': 32}),
        'mask_proto_net': [(32, 3, {'padding': 1}), (None, -2, {}), (32, 3, {'padding': 1}), (8, 1, {})],
        'extra_head_net': [(32, 3, {'padding': 1})],
    }
    fields.update(overrides)
    return c.yolact_resnet50_config.copy(fields)


def register_tiny_config(paths, name: str = TINY_CONFIG, **overrides) -> None:
    """Make `--config <name>` resolve to the tiny config (set_cfg looks names up in data.config)."""
    setattr(config_module, name, make_tiny_config(paths, **overrides))


def tiny_args(tmp_path: Path, *extra: str, seed: int = 3) -> List[str]:
    """train.py flags for a short CPU run of the tiny config in `tmp_path`."""
    return ['--config', TINY_CONFIG, '--batch_size', '2', '--no_autoscale', '--num_workers', '0',
            '--node_device', 'cpu', '--save_folder', str(tmp_path / 'weights'),
            '--log_folder', str(tmp_path / 'logs'), '--validation_epoch', '-1', '--seed', str(seed),
            '--log_interval', '1', *extra]


def train_losses(log_folder: Path, session: Optional[int] = None) -> Dict[int, Dict[str, float]]:
    """iteration -> logged loss terms (incl. 'T') from the tiny config's JSON-lines log."""
    from utils.logger import read_entries
    entries = read_entries(str(log_folder / 'tiny_train.log'), 'train', session)
    return {e['data']['iter']: e['data']['loss'] for e in entries}


def subprocess_env() -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), str(REPO / 'tests'), env.get('PYTHONPATH', '')])
    env.pop('WORLD_SIZE', None)
    env.pop('RANK_SIZE', None)
    return env


# A `python -c` program: register the tiny config for the paths in argv[1], run train.main(argv[2:]).
SUBPROCESS_MAIN = (
    "import json, sys\n"
    "from test_train import register_tiny_config\n"
    "register_tiny_config(json.loads(sys.argv[1]))\n"
    "import train\n"
    "sys.exit(train.main(sys.argv[2:]))\n")


@pytest.fixture
def tiny(synthetic_paths, monkeypatch):
    """Register the tiny config for this test; restore the global cfg afterwards."""
    saved = cfg.copy()
    monkeypatch.setattr(config_module, TINY_CONFIG, make_tiny_config(synthetic_paths), raising=False)
    yield synthetic_paths
    cfg.replace(saved)


def parse(*argv: str) -> argparse.Namespace:
    import train
    return train.build_parser().parse_args(list(argv))


# ----------------------------------------------------------------------------------------------
# Flags, schedule, autoscaling
# ----------------------------------------------------------------------------------------------

def test_boolean_flags_really_turn_off():
    a = parse()
    assert (a.log, a.interrupt, a.autoscale, a.keep_latest, a.amp) == (True, True, True, False, False)
    b = parse('--no_log', '--no_interrupt', '--no_autoscale', '--keep_latest', '--amp')
    assert (b.log, b.interrupt, b.autoscale, b.keep_latest, b.amp) == (False, False, False, True, True)
    assert parse('--weight_decay', '0.01').decay == 0.01
    assert parse('--learning_rate', '0.5').lr == 0.5


def test_learning_rate_warmup_then_steps():
    s = training.schedule.Schedule(lr=1e-3, momentum=0.9, decay=5e-4, gamma=0.1, max_iter=100, lr_steps=[50, 80],
                       warmup_init=1e-4, warmup_until=10, optimizer='sgd')
    assert training.schedule.learning_rate(0, s) == pytest.approx(1e-4)
    assert training.schedule.learning_rate(5, s) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway up the ramp
    assert training.schedule.learning_rate(10, s) == pytest.approx(1e-3)
    assert training.schedule.learning_rate(49, s) == pytest.approx(1e-3)
    assert training.schedule.learning_rate(50, s) == pytest.approx(1e-4)
    assert training.schedule.learning_rate(80, s) == pytest.approx(1e-5)
    no_warmup = training.schedule.Schedule(**{**vars(s), 'warmup_until': 0})
    assert training.schedule.learning_rate(0, no_warmup) == pytest.approx(1e-3)


def test_autoscale_follows_global_batch_and_freezes_bn(tiny):
    import train
    # Per-process batch 2 on one process: factor 2/8 on lr, max_iter and lr_steps; BN frozen (< 6).
    config, sched, _ = train.configure(parse('--config', TINY_CONFIG, '--batch_size', '2', '--max_iter', '10'),
                                       train.DistInfo())
    assert sched.scale == pytest.approx(0.25)
    assert sched.lr == pytest.approx(1e-3 * 0.25) == pytest.approx(config.lr)
    assert sched.max_iter == 40 and sched.lr_steps == [4000] and config.max_iter == 40
    assert config.freeze_bn is True and sched.optimizer == config.optimizer == 'sgd'
    # 2 processes x batch 4 = the reference batch 8: nothing scaled; per-process 4 < 6: frozen.
    config, sched, _ = train.configure(parse('--config', TINY_CONFIG, '--batch_size', '4'), train.DistInfo(0, 2, 0))
    assert (sched.scale, sched.lr, sched.max_iter) == (1.0, pytest.approx(1e-3), 4)
    assert config.freeze_bn is True
    # 2 processes x batch 8: factor 2; per-process batch 8 keeps BN training.
    config, sched, _ = train.configure(parse('--config', TINY_CONFIG, '--batch_size', '8'), train.DistInfo(1, 2, 1))
    assert (sched.lr, sched.max_iter, sched.lr_steps) == (pytest.approx(2e-3), 2, [500])
    assert config.freeze_bn is False
    # --no_autoscale and an explicit --lr are taken as given.
    _, sched, _ = train.configure(parse('--config', TINY_CONFIG, '--batch_size', '2', '--no_autoscale',
                                        '--lr', '0.02', '--momentum', '0.5'), train.DistInfo())
    assert (sched.lr, sched.momentum, sched.max_iter) == (0.02, 0.5, 4)


def test_data_flag_points_the_dataset_at_a_coco_root(tiny, tmp_path):
    import train
    root = tmp_path / 'coco'
    for d in ('train2017', 'val2017', 'annotations'):
        (root / d).mkdir(parents=True)
    categories = [{'id': 7, 'name': 'cat'}, {'id': 3, 'name': 'dog'}]
    for split in ('train', 'val'):
        (root / 'annotations' / f'instances_{split}2017.json').write_text(json.dumps({'categories': categories}))
    before = (cfg.name, cfg.dataset, cfg.num_classes)
    config, _, annotations = train.configure(parse('--config', TINY_CONFIG, '--data', str(root)), train.DistInfo())
    assert config.dataset.train_images == str(root / 'train2017')
    assert config.dataset.valid_info == str(root / 'annotations' / 'instances_val2017.json')
    # The classes are the annotations' (in id order), and the class layers follow.
    assert config.dataset.class_names == ('dog', 'cat') and config.dataset.label_map == {3: 1, 7: 2}
    assert config.num_classes == 3
    # The files read for the classes come back parsed, for the datasets; the global cfg is untouched.
    assert sorted(annotations) == sorted([config.dataset.train_info, config.dataset.valid_info])
    assert annotations[config.dataset.train_info]['categories'] == categories
    assert (cfg.name, cfg.dataset, cfg.num_classes) == before


# ----------------------------------------------------------------------------------------------
# utils: MovingAverage, SavePath, Log
# ----------------------------------------------------------------------------------------------

def test_moving_average_window_and_non_finite():
    from utils.functions import MovingAverage
    avg = MovingAverage(max_window_size=3)
    assert avg.get_avg() == 0
    for v in (1.0, 2.0, float('nan'), 3.0, 10.0):
        avg.add(v)
    assert len(avg) == 3 and avg.get_avg() == pytest.approx(5.0)  # (2 + 3 + 10) / 3, NaN ignored


def test_save_path_names_latest_and_interrupt(tmp_path):
    from utils.functions import SavePath
    assert SavePath('yolact_base', 3, 1200).get_path('w') == os.path.join('w', 'yolact_base_3_1200.pth')
    p = SavePath.from_str('w/yolact_plus_base_54_800000.pth')
    assert (p.model_name, p.epoch, p.iteration) == ('yolact_plus_base', 54, 800000)
    p = SavePath.from_str('yolact_base_2_99_interrupt.pth')
    assert (p.model_name, p.iteration) == ('yolact_base', 99)
    with pytest.raises(ValueError):
        SavePath.from_str('resnet101_reducedfc.pth')
    for name in ('yolact_base_1_100.pth', 'yolact_base_1_100.state.pt', 'yolact_base_2_250.pth',
                 'yolact_base_2_250.state.pt', 'yolact_base_im700_9_99999.pth', 'yolact_base_3_300_interrupt.pth',
                 'yolact_base_3_300_interrupt.state.pt', 'yolact_base_best.pth', 'yolact_base_best.state.pt'):
        (tmp_path / name).write_bytes(b'x')
    # The best validation's copy is newer than any but never the latest (nor an interrupt save).
    os.utime(tmp_path / 'yolact_base_best.pth', (2e9, 2e9))
    assert SavePath.is_best(SavePath.best_path('yolact_base', str(tmp_path)))
    assert SavePath.get_latest(str(tmp_path), 'yolact_base').endswith('yolact_base_3_300_interrupt.pth')
    assert SavePath.get_latest(str(tmp_path), 'yolact_base', include_interrupt=False).endswith('yolact_base_2_250.pth')
    assert SavePath.get_latest(str(tmp_path), 'yolact_base_im700').endswith('_9_99999.pth')
    assert SavePath.get_latest(str(tmp_path), 'yolact_darknet53') is None
    assert SavePath.get_interrupt(str(tmp_path)).endswith('yolact_base_3_300_interrupt.pth')
    SavePath.remove_interrupt(str(tmp_path))
    assert SavePath.get_interrupt(str(tmp_path)) is None


def test_log_appends_sessions_as_json_lines(tmp_path):
    from utils.logger import Log, read_entries, read_log
    log = Log('run', str(tmp_path / 'logs'), {'lr': 1e-3, 'folder': tmp_path})
    log.log('train', loss={'B': torch.tensor(1.5), 'C': float('nan')}, iter=0)
    log.log('val', {50: 12.5}, iter=1)
    again = Log('run', str(tmp_path / 'logs'), {'lr': 2e-3})
    again.log('train', loss={'B': 1.0}, iter=2)
    lines = (tmp_path / 'logs' / 'run.log').read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line) for line in lines)
    entries = list(read_log(str(tmp_path / 'logs' / 'run.log')))
    assert [e['type'] for e in entries] == ['session', 'train', 'val', 'session', 'train']
    assert [e['session'] for e in entries] == [0, 0, 0, 1, 1]
    assert entries[0]['data'] == {'lr': 1e-3, 'folder': str(tmp_path)}
    assert entries[1]['data']['loss'] == {'B': 1.5, 'C': 'nan'}
    assert entries[2]['data'] == {'50': 12.5, 'iter': 1}
    assert [e['data']['iter'] for e in read_entries(str(tmp_path / 'logs' / 'run.log'), 'train', 1)] == [2]
    Log('run', str(tmp_path / 'logs'), {}, overwrite=True)
    assert len((tmp_path / 'logs' / 'run.log').read_text().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def _tiny_model_and_batch(seed: int = 0, images=(0, 1)):
    """A freshly initialised tiny Yolact (frozen BN) in a NetLoss, and one batch without augmentation."""
    import train
    from data.coco import COCODetection, detection_collate
    from data.config import MEANS, STD
    from utils.augmentations import BaseTransform
    from yolact import Yolact
    cfg.freeze_bn = True
    ds = COCODetection(cfg.dataset.train_images, cfg.dataset.train_info, transform=BaseTransform(cfg, MEANS, STD), config=cfg)
    batch = prepare_batch(detection_collate([ds[i] for i in images]), torch.device('cpu'),
                                cfg.preserve_aspect_ratio)
    torch.manual_seed(seed)
    net = Yolact(cfg)
    net.init_weights(None)
    net.train()
    return net, train.NetLoss(net, train.build_criterion(cfg)), batch


def test_overfitting_one_batch_reduces_the_loss_five_fold(tiny):
    """Issue 3, done-when 3: train_step on one batch drives the total loss down >= 5x."""
    set_cfg(TINY_CONFIG)
    net, model, batch = _tiny_model_and_batch()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    first = None
    for step in range(80):  # noqa: B007 - the message after the loop reports the step count
        result = training.step.train_step(model, optimizer, batch)
        assert result.finite and set(result.losses) >= {'B', 'C', 'M'}
        first = first if first is not None else result.total
        if result.total <= first / 5:
            break
    assert result.total <= first / 5, f'loss went from {first:.3f} to {result.total:.3f} in {step + 1} steps'


def test_main_trains_writes_checkpoints_and_log_then_resume_continues(tiny, tmp_path, capsys):
    """Issue 3, done-when 4: an end-to-end CPU run, then --resume latest continues the count."""
    import train
    from utils.checkpoint import load_state_dict_file
    rc = train.main(tiny_args(tmp_path, '--max_iter', '4', '--save_interval', '2'))
    assert rc == 0
    out = capsys.readouterr().out
    assert 'training from scratch' in out
    # A progress line per iteration (--log_interval 1): loss terms, total, ETA, fps, avg fps.
    progress = [line for line in out.splitlines() if line.startswith('[  0]')]
    assert len(progress) == 4
    assert all(k in progress[-1] for k in ('B: ', 'C: ', 'M: ', 'S: ', 'T: ', 'ETA: ', 'fps: ', 'avg fps: '))
    assert 'Train summary: iterations=4 images_per_sec=' in out
    weights = tmp_path / 'weights'
    names = sorted(p.name for p in weights.iterdir())
    # Epochs have 8 images / batch 2 = 4 iterations: iteration 2 ends in epoch 0, 4 is the final save.
    assert names == ['tiny_train_0_2.classes.json', 'tiny_train_0_2.pth', 'tiny_train_0_2.state.pt',
                     'tiny_train_0_4.classes.json', 'tiny_train_0_4.pth', 'tiny_train_0_4.state.pt']
    state_dict = load_state_dict_file(str(weights / 'tiny_train_0_4.pth'))
    assert all(v.dtype != torch.float16 for v in state_dict.values())
    losses = train_losses(tmp_path / 'logs')
    assert sorted(losses) == [0, 1, 2, 3]
    assert all(math.isfinite(v) for terms in losses.values() for v in terms.values())
    assert set(losses[0]) >= {'B', 'C', 'M', 'S', 'T'}
    assert losses[0]['T'] == pytest.approx(sum(v for k, v in losses[0].items() if k != 'T'), abs=1e-3)

    rc = train.main(tiny_args(tmp_path, '--max_iter', '6', '--save_interval', '2', '--resume', 'latest'))
    assert rc == 0
    assert (weights / 'tiny_train_1_6.pth').exists()
    assert sorted(train_losses(tmp_path / 'logs', session=1)) == [4, 5]

    # Resuming a finished run trains nothing and writes no duplicate checkpoint.
    before = sorted(p.name for p in weights.iterdir())
    capsys.readouterr()
    assert train.main(tiny_args(tmp_path, '--max_iter', '6', '--resume', 'latest')) == 0
    assert 'nothing to train' in capsys.readouterr().out
    assert sorted(p.name for p in weights.iterdir()) == before

    # A weights-only checkpoint (e.g. from the original code): the iteration comes from its name.
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'tiny_train_1_7.pth').write_bytes((weights / 'tiny_train_1_6.pth').read_bytes())
    capsys.readouterr()
    rc = train.main(tiny_args(tmp_path, '--max_iter', '8', '--resume', str(other / 'tiny_train_1_7.pth')))
    assert rc == 0
    assert 'No training state beside' in capsys.readouterr().out
    assert sorted(train_losses(tmp_path / 'logs', session=3)) == [7]  # session 2 was the no-op


def test_pretrained_backbone_is_used_when_present(tiny, tmp_path, monkeypatch):
    from yolact import Yolact
    config = config_module.config_for(TINY_CONFIG)
    seen = []
    monkeypatch.setattr(Yolact, 'init_weights', lambda self, backbone_path: seen.append(backbone_path))
    net = object.__new__(Yolact)
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(tmp_path / 'cwd')  # no weights/ folder here, whatever the repository holds
    assert training.trainer.init_weights(net, config, str(tmp_path)) is None and seen == [None]
    (tmp_path / config.backbone.path).write_bytes(b'weights')
    path = os.path.join(str(tmp_path), config.backbone.path)
    assert training.trainer.init_weights(net, config, str(tmp_path)) == path and seen[-1] == path
    # A backbone without published weights (the demo's half-width ResNet-18) has no file to look for.
    config.backbone = config.backbone.copy({'path': None})
    assert training.trainer.init_weights(net, config, str(tmp_path)) is None and seen[-1] is None


def test_same_seed_gives_identical_losses(tiny, tmp_path):
    import train
    runs = []
    for name in ('a', 'b'):
        assert train.main(tiny_args(tmp_path / name, '--max_iter', '3')) == 0
        runs.append(train_losses(tmp_path / name / 'logs'))
    assert runs[0] == runs[1] and sorted(runs[0]) == [0, 1, 2]
    assert train.main(tiny_args(tmp_path / 'c', '--max_iter', '3', seed=4)) == 0
    assert train_losses(tmp_path / 'c' / 'logs') != runs[0]


def test_keep_latest_keeps_only_the_newest_and_the_milestones(tiny, tmp_path):
    import train
    rc = train.main(tiny_args(tmp_path, '--max_iter', '4', '--save_interval', '1', '--keep_latest',
                              '--keep_latest_interval', '2', '--no_log'))
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / 'weights').iterdir())
    assert names == ['tiny_train_0_2.classes.json', 'tiny_train_0_2.pth', 'tiny_train_0_2.state.pt',
                     'tiny_train_0_4.classes.json', 'tiny_train_0_4.pth', 'tiny_train_0_4.state.pt']
    assert not (tmp_path / 'logs').exists()


def test_validation_runs_every_validation_epoch_and_at_the_end(tiny, tmp_path, capsys):
    """--validation_epoch 1: mAP through evaluation.evaluator.evaluate after epoch 1 (the original skips epoch 0)
    and once more when training ends; both logged."""
    import train
    from utils.logger import read_entries
    # The run holds its config as a value: a global cfg of another model (21 classes, 550 px) is
    # neither read nor written.
    set_cfg('yolact_resnet50_pascal_config')
    before = dict(vars(cfg))
    rc = train.main(tiny_args(tmp_path, '--batch_size', '4', '--max_iter', '5', '--validation_epoch', '1',
                              '--validation_size', '2'))
    assert rc == 0
    assert vars(cfg) == before
    out = capsys.readouterr().out
    assert out.count('Computing validation mAP') == 2
    entries = read_entries(str(tmp_path / 'logs' / 'tiny_train.log'), 'val')
    # 8 images / batch 4 = 2 iterations per epoch: epoch 1 ends at iteration 4, training at 5.
    assert [(e['data']['epoch'], e['data']['iter']) for e in entries] == [(1, 4), (2, 5)]
    for e in entries:
        assert set(e['data']) >= {'box', 'mask', 'elapsed'}
        assert 0 <= e['data']['box']['all'] <= 100 and '50' in e['data']['mask']


def test_coco_eval_flag_reaches_the_validation(monkeypatch):
    from evaluation import evaluator
    assert parse().coco_eval == 'pycocotools' and parse('--coco_eval', 'faster').coco_eval == 'faster'
    seen = {}

    def fake_evaluate(net, dataset, train_mode=False, opts=None, **overrides):
        seen.update(overrides, train_mode=train_mode)
        return {'box': {'all': 1.0}}

    monkeypatch.setattr(evaluator, 'evaluate', fake_evaluate)
    evaluator.validation_map(torch.nn.Linear(1, 1), None, 7, coco_eval='faster')
    assert seen == {'max_images': 7, 'no_bar': True, 'coco_eval': 'faster', 'train_mode': True,
                    'results_dir': None, 'iteration': None}


def test_optimizer_choice_from_config():
    import train
    from data.config import ConfigError
    net = torch.nn.Linear(2, 2)
    sched = types.SimpleNamespace(lr=0.01, momentum=0.9, decay=5e-4, optimizer='sgd')
    opt = train.build_optimizer(net, sched)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]['momentum'] == 0.9
    sched.optimizer = 'adamw'
    opt = train.build_optimizer(net, sched)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]['weight_decay'] == 5e-4
    assert opt.defaults['fused']  # one kernel on the CPU instead of a per-tensor loop
    # A step must bump the parameters' version counters: caches keyed on them (the weights of a
    # channels-last model under autocast) would otherwise keep serving the old weights.
    net(torch.ones(1, 2)).sum().backward()
    before = net.weight._version
    opt.step()
    assert net.weight._version > before
    sched.optimizer = 'rmsprop'
    with pytest.raises(ConfigError, match="'rmsprop'"):
        train.build_optimizer(net, sched)


def test_overfit_batch_is_found_again_by_eval(tiny):
    """Train and evaluation agree end to end (class indices, box coding, mask assembly, COCO ids):
    a tiny net overfit on two images scores a clearly non-zero box and mask mAP on them."""
    import eval as eval_script
    from data.coco import COCODetection
    from utils.augmentations import BaseTransform
    set_cfg(TINY_CONFIG)
    cfg.max_size = 128  # the synthetic shapes are small; 96 px leaves some a few pixels wide
    net, model, batch = _tiny_model_and_batch(images=(0, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(OVERFIT_EVAL_STEPS):
        training.step.train_step(model, optimizer, batch)
    ds = COCODetection(cfg.dataset.train_images, cfg.dataset.train_info, transform=BaseTransform(cfg), config=cfg)
    ds.ids = ds.ids[:2]  # the two training images
    result = eval_script.evaluate(net, ds, train_mode=True, opts=eval_script.EvalArgs(),
                                  no_bar=True, max_images=2, fast_nms=True)
    assert result['box']['all'] > 30 and result['mask']['all'] > 30, result

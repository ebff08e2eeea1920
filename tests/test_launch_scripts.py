"""The test/*.sh launch scripts (run for real on CPU with a tiny synthetic dataset) and the
summary helper they call (training/launch_summary.py)."""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from data.synthetic import generate
from training import launch_summary as ls
from utils.logger import Log

REPO = Path(__file__).resolve().parent.parent
TEST_DIR = REPO / 'test'
DEMO_CONFIG = 'yolact_resnet18_synthetic_config'
DEMO_NAME = 'yolact_resnet18_synthetic'
FPS_LINE = re.compile(r'^Final Performance images/sec : (\S+)$', re.M)
ACC_LINE = re.compile(r'^Final Train Accuracy : box mAP:(\d+\.\d\d), mask mAP:(\d+\.\d\d)$', re.M)
E2E_LINE = re.compile(r'^E2E Training Duration sec : (\d+)$', re.M)
TINY_TRAIN, TINY_VAL = 4, 2


# ----------------------------------------------------------------------------- helpers

def write_log(folder: Path, sessions: List[Optional[Dict]]) -> Path:
    """A JSON-lines log written by utils.logger.Log: one session per item, each with a few
    train records and, when the item is not None, a summary record with those fields."""
    for summary in sessions:
        log = Log(DEMO_NAME, str(folder), {'batch_size': 2})
        for it in range(3):
            log.log('train', loss={'B': 1.0, 'T': 3.0}, iter=it, elapsed=0.5)
        if summary is not None:
            log.log('summary', **summary)
    return folder / f'{DEMO_NAME}.log'


def case_fields(path: Path) -> Dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(' = ')
        assert sep, f'not a "Key = value" line: {line!r}'
        fields[key] = value
    return fields


def script_env(tmp_path: Path, synthetic_dir: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ('NODE_DEVICE', 'RANK_SIZE', 'RANK_ID', 'ASCEND_DEVICE_ID', 'WORLD_SIZE', 'RANK',
                        'LOCAL_RANK', 'MASTER_PORT', 'MASTER_ADDR', 'EVAL_ARGS')}
    env.update(PYTHON=sys.executable, YOLACT_OUTPUT_DIR=str(tmp_path / 'output'),
               SYNTHETIC_DIR=str(synthetic_dir), SYNTHETIC_TRAIN=str(TINY_TRAIN), SYNTHETIC_VAL=str(TINY_VAL))
    env.update(extra)
    return env


def run_script(name: str, args: List[str], env: Dict[str, str], cwd: Path = REPO,
               timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', str(TEST_DIR / name)] + args, cwd=str(cwd), env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def tail(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-4000:]


@pytest.fixture
def fake_cann(tmp_path) -> Path:
    """An ASCEND_HOME whose ascend-toolkit/set_env.sh announces itself and sets a variable."""
    home = tmp_path / 'Ascend'
    (home / 'ascend-toolkit').mkdir(parents=True)
    (home / 'ascend-toolkit' / 'set_env.sh').write_text(
        'echo "FAKE CANN set_env.sh sourced"\nexport FAKE_CANN_TOOLKIT=1\n')
    return home


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory) -> Path:
    """A tiny synthetic set (4 train / 2 val) laid out as a COCO 2017 root (what users pass)."""
    root = tmp_path_factory.mktemp('launch_synthetic')
    generate(str(root), TINY_TRAIN, TINY_VAL, seed=0, workers=1, progress=False)
    view = root / 'coco_layout'
    (view / 'annotations').mkdir(parents=True)
    (view / 'train2017').symlink_to('../train')
    (view / 'val2017').symlink_to('../val')
    (view / 'annotations' / 'instances_train2017.json').symlink_to('../../instances_train.json')
    (view / 'annotations' / 'instances_val2017.json').symlink_to('../../instances_val.json')
    return view


# ----------------------------------------------------------------------------- summary helper

def test_train_result_reads_the_last_session(tmp_path):
    path = write_log(tmp_path, [
        {'iter': 10, 'images_per_sec': 1.5, 'final_loss': 9.0, 'checkpoint': '/a/old_0_10.pth'},
        {'iter': 20, 'images_per_sec': 2.5, 'final_loss': 4.25, 'checkpoint': '/a/new_1_20.pth'}])
    result = ls.result_from_json_log(str(path))
    assert (result.images_per_sec, result.final_loss, result.iterations, result.checkpoint) == \
        (2.5, 4.25, 20, '/a/new_1_20.pth')


def test_unfinished_last_session_reports_nothing(tmp_path):
    # A crashed rerun must not be summarised with the numbers of the run before it.
    path = write_log(tmp_path, [{'iter': 10, 'images_per_sec': 1.5, 'final_loss': 9.0}, None])
    assert ls.result_from_json_log(str(path)) is None
    with pytest.raises(ls.SummaryError, match='no training summary'):
        ls.train_result(str(tmp_path), console=str(tmp_path / 'missing.log'))


def test_nan_fps_from_the_json_log(tmp_path):
    # train.py writes non-finite floats as strings.
    write_log(tmp_path, [{'iter': 1, 'images_per_sec': float('nan'), 'final_loss': 3.0}])
    result = ls.train_result(str(tmp_path))
    assert math.isnan(result.images_per_sec) and result.final_loss == 3.0


def test_console_fallback_without_json_log(tmp_path):
    console = tmp_path / 'train_0.log'
    console.write_text('Begin training!\n[  0]       0 || B: 1.0 | T: 2.0 || fps: 3.00 | avg fps: nan\n'
                       'Training finished at iteration 8; saved /w/x_y_0_8.pth.\n'
                       'Train summary: iterations=8 images_per_sec=0.169 final_loss=22.7241 nonfinite_skipped=0\n')
    result = ls.train_result(str(tmp_path / 'no_logs'), str(console))
    assert (result.images_per_sec, result.final_loss, result.iterations, result.checkpoint) == \
        (0.169, 22.7241, 8, '/w/x_y_0_8.pth')


def test_final_checkpoint_is_the_one_the_summary_names(tmp_path):
    weights = tmp_path / 'weights'
    weights.mkdir()
    named = weights / f'{DEMO_NAME}_0_5.pth'
    named.write_bytes(b'x')
    (weights / f'{DEMO_NAME}_9_99999.pth').write_bytes(b'x')  # stale, higher iteration, newer file
    write_log(tmp_path / 'logs', [{'iter': 5, 'images_per_sec': 1.0, 'final_loss': 1.0,
                                   'checkpoint': str(named)}])
    assert ls.final_checkpoint(str(weights), str(tmp_path / 'logs')) == str(named)


def test_log_sessions_older_than_the_run_are_ignored(tmp_path):
    # An earlier run logged to the folder; this one ran with --no_log: its console output counts.
    weights = tmp_path / 'weights'
    weights.mkdir()
    old, new = weights / f'{DEMO_NAME}_0_900.pth', weights / f'{DEMO_NAME}_0_5.pth'
    for path in (old, new):
        path.write_bytes(b'x')
    write_log(tmp_path / 'logs', [{'iter': 900, 'images_per_sec': 9.0, 'final_loss': 1.0,
                                   'checkpoint': str(old)}])
    console = tmp_path / 'train_0.log'
    console.write_text(f'Training finished at iteration 5; saved {new}.\n'
                       'Train summary: iterations=5 images_per_sec=2.000 final_loss=7.5000 nonfinite_skipped=0\n')
    since = time.time() + 1
    assert ls.result_from_json_log(str(tmp_path / 'logs' / f'{DEMO_NAME}.log'), since) is None
    assert ls.train_result(str(tmp_path / 'logs'), str(console), since).images_per_sec == 2.0
    assert ls.final_checkpoint(str(weights), str(tmp_path / 'logs'), str(console), since) == str(new)
    assert ls.final_checkpoint(str(weights), str(tmp_path / 'logs'), str(console)) == str(old)


def test_final_checkpoint_without_a_summary_is_the_newest_file(tmp_path):
    names = [f'{DEMO_NAME}_0_900.pth', 'renamed_by_hand.pth', f'{DEMO_NAME}_1_1000.pth',
             f'{DEMO_NAME}_1_1200_interrupt.pth', f'{DEMO_NAME}_best.pth']
    now = time.time()
    for age, name in zip((300, 100, 100, 0, 0), names):
        (tmp_path / name).write_bytes(b'x')
        os.utime(tmp_path / name, (now - age, now - age))
    # Equally new: the higher iteration wins; interrupt saves and the best validation's copy are
    # never the final checkpoint.
    assert ls.final_checkpoint(str(tmp_path)) == str(tmp_path / f'{DEMO_NAME}_1_1000.pth')
    os.remove(tmp_path / f'{DEMO_NAME}_1_1000.pth')
    assert ls.final_checkpoint(str(tmp_path)) == str(tmp_path / 'renamed_by_hand.pth')


def test_final_checkpoint_missing(tmp_path):
    with pytest.raises(ls.SummaryError, match=r'no checkpoint \(\*\.pth\) found'):
        ls.final_checkpoint(str(tmp_path))


def test_eval_accuracy_from_metrics_json(tmp_path):
    from evaluation.report import write_json
    folder = tmp_path / 'eval_0_metrics'
    folder.mkdir()
    write_json(str(folder / 'metrics.json'), {'box': {'AP': 31.23, 'AP50': 50.0}, 'mask': {'AP': 29.88}})
    assert ls.eval_accuracy(str(folder)) == (31.23, 29.88)
    assert ls.eval_accuracy(str(folder / 'metrics.json')) == (31.23, 29.88)
    write_json(str(folder / 'metrics.json'), {'box': {'AP': 12.5}})  # eval.py --detect: boxes only
    assert ls.eval_accuracy(str(folder)) == (12.5, None)
    (folder / 'metrics.json').write_text('{"box": ')
    with pytest.raises(ls.SummaryError, match='no box AP'):
        ls.eval_accuracy(str(folder))
    with pytest.raises(ls.SummaryError, match='metrics.json not found'):
        ls.eval_accuracy(str(tmp_path / 'missing'))


def test_report_block_and_case_fields(tmp_path):
    result = ls.TrainResult(images_per_sec=16.0, final_loss=5.123456)
    block, fields = ls.report('YOLACT_bs4_2p_acc', 2, 4, 'npu', result, 77, accuracy=(31.23, 29.88))
    assert block == ['------------------ Final result ------------------',
                     'Final Performance images/sec : 16.000',
                     'Final Train Accuracy : box mAP:31.23, mask mAP:29.88',
                     'E2E Training Duration sec : 77']
    # 2 processes x 4 images at 16 images/s: 500 ms per iteration.
    assert fields['TrainingTime'] == '500.00'
    assert (fields['Network'], fields['RankSize'], fields['BatchSize'], fields['NodeDevice']) == \
        ('YOLACT', '2', '4', 'npu')
    assert (fields['ActualFPS'], fields['ActualLoss'], fields['E2ETrainingTime']) == ('16.000', '5.1235', '77')
    assert fields['TrainAccuracy'] == 'box mAP:31.23, mask mAP:29.88'
    ls.write_case_file(str(tmp_path / 'case.log'), fields)
    assert case_fields(tmp_path / 'case.log') == fields

    block, fields = ls.report('YOLACT_bs8_1p_perf', 1, 8, 'cpu', ls.TrainResult(float('nan'), 2.0), 5)
    assert 'Final Performance images/sec : nan' in block
    assert not any(line.startswith('Final Train Accuracy') for line in block)
    assert 'TrainAccuracy' not in fields and fields['TrainingTime'] == 'nan'


# ----------------------------------------------------------------------------- the scripts

ENV_PROBE = ('source test/env_npu.sh; echo "rc=$? toolkit=${FAKE_CANN_TOOLKIT:-} '
             'queue=${TASK_QUEUE_ENABLE} level=${ASCEND_GLOBAL_LOG_LEVEL}"')


def test_env_npu_sources_the_cann_toolkit(fake_cann):
    env = dict(os.environ, ASCEND_HOME=str(fake_cann), TASK_QUEUE_ENABLE='2')
    env.pop('ASCEND_GLOBAL_LOG_LEVEL', None)
    proc = subprocess.run(['bash', '-c', ENV_PROBE], cwd=str(REPO), env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    # The toolkit's set_env.sh ran; a value the user set is kept; unset ones get the defaults.
    assert proc.stdout.splitlines() == ['FAKE CANN set_env.sh sourced', 'rc=0 toolkit=1 queue=2 level=3']


def test_env_npu_without_cann_is_harmless(tmp_path):
    env = dict(os.environ, ASCEND_HOME=str(tmp_path / 'none'))
    for name in ('TASK_QUEUE_ENABLE', 'ASCEND_GLOBAL_LOG_LEVEL', 'ASCEND_TOOLKIT_HOME'):
        env.pop(name, None)
    proc = subprocess.run(['bash', '-c', 'set -eu; ' + ENV_PROBE], cwd=str(REPO), env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert proc.returncode == 0 and proc.stdout == 'rc=0 toolkit= queue=1 level=3\n'
    assert 'set_env.sh not found' in proc.stderr


def test_npu_run_sources_env_npu_and_fails_clearly_without_torch_npu(tmp_path, tiny_coco, fake_cann):
    proc = run_script('train_performance_1p.sh',
                      [str(tiny_coco), '--node_device=npu', f'--config={DEMO_CONFIG}', '--num_workers=0',
                       '--batch_size=1', '--max_iter=1'],
                      script_env(tmp_path, tmp_path / 'unused', ASCEND_HOME=str(fake_cann)))
    assert 'FAKE CANN set_env.sh sourced' in proc.stdout
    if importlib.util.find_spec('torch_npu') is None:
        assert proc.returncode == 1, tail(proc)
        assert 'needs the torch_npu package' in proc.stdout and 'training failed' in proc.stdout

def test_usage_errors_fail_fast(tmp_path):
    env = script_env(tmp_path, tmp_path / 'unused', NODE_DEVICE='cpu')
    for args in (['/no/such/coco'], ['--data_path=/no/such/coco']):
        proc = run_script('train_performance_1p.sh', args, env)
        assert proc.returncode == 2, tail(proc)
        assert 'data path not found: /no/such/coco' in proc.stdout
    proc = run_script('train_full_1p.sh', ['--batch_size=eight'], env)
    assert proc.returncode == 2 and '--batch_size must be a non-negative integer' in proc.stdout
    proc = run_script('train_full_8p.sh', ['--node_device=tpu'], env)
    assert proc.returncode == 2 and "unknown device 'tpu'" in proc.stdout
    proc = run_script('train_full_8p.sh', ['--help'], env)
    assert proc.returncode == 0 and proc.stdout.startswith('usage: bash train_full_8p.sh')
    # Several nodes: the settings are checked before anything starts.
    for extra, message in (({'NNODES': 'two'}, "NNODES must be a node count or MIN:MAX, got 'two'"),
                           ({'NNODES': '2', 'NODE_RANK': '2', 'MASTER_ADDR': '10.0.0.1'},
                            'NODE_RANK must be 0..1 for NNODES=2'),
                           ({'NNODES': '2', 'NODE_RANK': '1'}, 'set MASTER_ADDR'),
                           ({'NNODES': '1:4'}, 'needs RDZV_ENDPOINT'),
                           ({'MAX_RESTARTS': '-1'}, 'MAX_RESTARTS must be a non-negative integer')):
        proc = run_script('train_performance_8p.sh', [], dict(env, **extra))
        assert proc.returncode == 2 and message in proc.stdout, tail(proc)


def test_failing_training_fails_the_script(tmp_path):
    # A folder that is not a COCO root: train.py stops before training; the script must not go on
    # to a summary.
    bad_root = tmp_path / 'not_coco'
    bad_root.mkdir()
    proc = run_script('train_full_1p.sh', [f'--data_path={bad_root}', f'--config={DEMO_CONFIG}'],
                      script_env(tmp_path, tmp_path / 'unused', NODE_DEVICE='cpu'))
    assert proc.returncode != 0, tail(proc)
    assert 'training failed' in proc.stdout and str(bad_root) in proc.stdout
    assert 'Final Performance' not in proc.stdout


def test_performance_1p_without_arguments_uses_synthetic_data(tmp_path, fake_cann):
    """Done-when 5: no data path -> the synthetic dataset is generated and used, and the device is
    detected; a finite images/sec is printed. (Batch and iterations are made tiny for CI.)"""
    synthetic = tmp_path / 'synthetic'
    proc = run_script('train_performance_1p.sh', ['--batch_size=1', '--max_iter=1', '--num_workers=0'],
                      script_env(tmp_path, synthetic, ASCEND_HOME=str(fake_cann)))
    assert proc.returncode == 0, tail(proc)
    # CANN is "installed" but torch_npu is not: the device probe falls back, env_npu.sh stays out.
    assert 'FAKE CANN' not in proc.stdout
    assert f'no data path given: training on the synthetic shapes dataset in {synthetic}' in proc.stdout
    assert '(detected; override with --node_device= or NODE_DEVICE)' in proc.stdout
    assert f'--data={synthetic} ' in proc.stdout
    with open(synthetic / 'instances_train.json') as f:
        assert len(json.load(f)['images']) == TINY_TRAIN
    # --max_iter=1 is single-card-equivalent at batch 8: 8 iterations at batch 1.
    assert f'{DEMO_NAME}: iterations 0 -> 8, 1 process(es) x batch 1' in proc.stdout
    fps = float(FPS_LINE.search(proc.stdout).group(1))
    assert math.isfinite(fps) and fps > 0
    assert not ACC_LINE.search(proc.stdout)
    assert (tmp_path / 'output' / '0' / 'YOLACT_bs1_1p_perf.log').is_file()


def test_full_1p_evaluates_the_final_checkpoint(tmp_path, tiny_coco):
    env = script_env(tmp_path, tmp_path / 'unused', NODE_DEVICE='cpu', ASCEND_DEVICE_ID='3')
    # A leftover of an earlier run, with a higher iteration in its name: not this run's result
    # (and not loadable, so evaluating it would fail the run).
    stale = tmp_path / 'output' / '3' / 'YOLACT_bs1_1p_acc' / 'weights' / f'{DEMO_NAME}_9_99999.pth'
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b'not a checkpoint')
    proc = run_script('train_full_1p.sh',
                      [f'--data_path={tiny_coco}', f'--config={DEMO_CONFIG}', '--batch_size=1', '--max_iter=2',
                       '--no_autoscale', '--validation_epoch=-1', '--num_workers=0'], env)
    assert proc.returncode == 0, tail(proc)
    final = stale.parent / f'{DEMO_NAME}_0_2.pth'
    assert f'evaluating the final checkpoint {final}' in proc.stdout
    out = tmp_path / 'output' / '3'
    assert f'--trained_model={final}' in (out / 'eval_3.log').read_text()
    box, mask = ACC_LINE.search(proc.stdout).groups()
    assert 0 <= float(box) <= 100 and 0 <= float(mask) <= 100
    assert FPS_LINE.search(proc.stdout) and E2E_LINE.search(proc.stdout)
    fields = case_fields(out / 'YOLACT_bs1_1p_acc.log')
    assert fields['TrainAccuracy'] == f'box mAP:{box}, mask mAP:{mask}'
    assert list(fields) == ['Network', 'RankSize', 'BatchSize', 'DeviceType', 'NodeDevice', 'CaseName',
                            'ActualFPS', 'TrainingTime', 'TrainAccuracy', 'ActualLoss', 'E2ETrainingTime']
    assert fields['CaseName'] == 'YOLACT_bs1_1p_acc' and int(fields['E2ETrainingTime']) >= 0

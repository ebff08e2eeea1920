"""train.py reliability (issue 7): bad input fails in one line before training, SIGTERM saves and
resumes exactly, a failed checkpoint write loses nothing, non-finite losses are skipped and counted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import (  # noqa: F401
    SUBPROCESS_MAIN,
    TINY_CONFIG,
    _tiny_model_and_batch,
    subprocess_env,
    tiny,
    tiny_args,
    train_losses,
)

import training.step

REPO = Path(__file__).resolve().parents[1]


def run_main(argv, capsys):
    """train.main(argv) -> (exit status, stdout, stderr)."""
    import train
    rc = train.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f'expected one error line, got: {err!r}'
    assert lines[0].startswith('error: ')
    for fragment in fragments:
        assert fragment in lines[0], f'{fragment!r} not in {lines[0]!r}'


# ----------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing trained or written
# ----------------------------------------------------------------------------------------------

class _RunsCode:
    """Unpickling this would create the marker file (a checkpoint carrying code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _bad_rows(tmp_path: Path):
    """(flags, expected fragments of the error line) for each bad input."""
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    malicious = tmp_path / 'tiny_train_0_5.pth'
    torch.save({'weights': _RunsCode(str(tmp_path / 'code_ran'))}, malicious)
    truncated = tmp_path / 'trunc' / 'tiny_train_0_7.pth'
    truncated.parent.mkdir()
    torch.save({'w': torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    not_a_state_dict = tmp_path / 'list_0_1.pth'
    torch.save([1, 2, 3], not_a_state_dict)
    return {
        'batch_size_0': (['--batch_size', '0'], ['--batch_size', '0']),
        'negative_max_iter': (['--max_iter', '-5'], ['--max_iter', '-5']),
        'zero_save_interval': (['--save_interval', '0'], ['--save_interval']),
        'unwritable_save_folder': (['--save_folder', str(blocker / 'weights')],
                                   ['--save_folder', str(blocker / 'weights'), 'not a writable folder']),
        'unknown_config': (['--config', 'no_such_config'], ['unknown config', 'no_such_config']),
        'unknown_dataset': (['--dataset', 'no_such_dataset'], ['unknown dataset', 'no_such_dataset']),
        'missing_data_root': (['--data', str(tmp_path / 'nowhere')], ['COCO root', str(tmp_path / 'nowhere')]),
        'missing_resume_file': (['--resume', str(tmp_path / 'gone.pth')], ['checkpoint not found', 'gone.pth']),
        'resume_latest_none': (['--resume', 'latest'], ['no tiny_train_*.pth']),
        'resume_interrupt_none': (['--resume', 'interrupt'], ['no *_interrupt.pth']),
        'resume_code_pickle': (['--resume', str(malicious)], ['refused', str(malicious)]),
        'resume_truncated': (['--resume', str(truncated)], [str(truncated), 'truncated or corrupt']),
        'resume_not_state_dict': (['--resume', str(not_a_state_dict)], ['not a state_dict']),
        'no_gpu_for_cuda': (['--node_device', 'cuda'], ['no CUDA GPU']),
        'npu_without_torch_npu': (['--node_device', 'npu'], ['torch_npu']),
        'coco_eval_faster_not_installed': (['--coco_eval', 'faster'], ['pip install faster-coco-eval']),
    }


ROWS = ['batch_size_0', 'negative_max_iter', 'zero_save_interval', 'unwritable_save_folder', 'unknown_config',
        'unknown_dataset', 'missing_data_root', 'missing_resume_file', 'resume_latest_none',
        'resume_interrupt_none', 'resume_code_pickle', 'resume_truncated', 'resume_not_state_dict',
        'no_gpu_for_cuda', 'npu_without_torch_npu', 'coco_eval_faster_not_installed']


@pytest.mark.parametrize('row', ROWS)
def test_bad_input_fails_in_one_line_before_training(row, tiny, tmp_path, capsys, monkeypatch):
    flags, fragments = _bad_rows(tmp_path)[row]
    monkeypatch.setitem(sys.modules, 'torch_npu', None)  # `import torch_npu` fails, as without Ascend
    monkeypatch.setitem(sys.modules, 'faster_coco_eval', None)  # as if the optional package were missing
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    rc, out, err = run_main(tiny_args(tmp_path, '--max_iter', '2') + flags, capsys)
    assert_one_line_error(rc, err, *fragments)
    assert 'Begin training' not in out
    assert not (tmp_path / 'code_ran').exists()
    weights = tmp_path / 'weights'
    assert not weights.exists() or not [p for p in weights.iterdir() if p.name.startswith('tiny_train')]


def test_missing_annotation_file_of_the_dataset(tiny, tmp_path, capsys, monkeypatch):
    from test_train import make_tiny_config
    missing = str(tmp_path / 'missing.json')
    monkeypatch.setattr(sys.modules['data.config'], TINY_CONFIG,
                        make_tiny_config(tiny._replace(train_info=missing)))
    rc, out, err = run_main(tiny_args(tmp_path), capsys)
    assert_one_line_error(rc, err, 'train_info', missing)


def test_checkpoint_of_another_config_is_refused(tiny, tmp_path, capsys):
    other = tmp_path / 'tiny_train_0_9.pth'
    torch.save({'backbone.conv1.weight': torch.zeros(3, 3)}, other)
    rc, out, err = run_main(tiny_args(tmp_path, '--resume', str(other)), capsys)
    assert_one_line_error(rc, err, str(other), 'does not match config')


# ----------------------------------------------------------------------------------------------
# SIGTERM mid-run, then exact resume
# ----------------------------------------------------------------------------------------------

def _wait_for_iteration(log_path: Path, iteration: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    from utils.logger import read_entries
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f'training ended (status {proc.returncode}) before iteration {iteration}')
        if any(e['data']['iter'] >= iteration for e in read_entries(str(log_path), 'train')):
            return
        time.sleep(0.05)
    raise AssertionError(f'iteration {iteration} not reached in {timeout}s')


def _processes_mentioning(text: str):
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path('/proc', pid, 'cmdline').read_bytes().decode(errors='replace')
        except OSError:
            continue
        if text in cmdline:
            found.append(int(pid))
    return found


def test_sigterm_saves_and_resume_reproduces_the_uninterrupted_run(tiny, tmp_path, capsys):
    """Issue 7, done-when 2. The killed run uses DataLoader workers, the others none: per-sample
    seeding makes the data identical either way."""
    import train
    flags = ('--max_iter', '10', '--save_interval', '100')
    assert train.main(tiny_args(tmp_path / 'ref', *flags)) == 0
    reference = train_losses(tmp_path / 'ref' / 'logs')
    ref_weights = torch.load(tmp_path / 'ref' / 'weights' / 'tiny_train_2_10.pth', weights_only=True)

    run = tmp_path / 'killed'
    cmd = [sys.executable, '-c', SUBPROCESS_MAIN, json.dumps(dict(tiny._asdict())),
           *tiny_args(run, *flags), '--num_workers', '2']
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_iteration(run / 'logs' / 'tiny_train.log', 2, proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert 'Stopped by SIGTERM' in out and '--resume=interrupt' in out
    assert 'Traceback' not in out
    assert _processes_mentioning(str(run)) == []  # DataLoader workers are gone too
    interrupt = train.SavePath.get_interrupt(str(run / 'weights'))
    stopped_at = train.SavePath.from_str(interrupt).iteration
    assert 2 < stopped_at < 10
    killed_losses = train_losses(run / 'logs')
    assert sorted(killed_losses) == list(range(stopped_at))

    capsys.readouterr()
    assert train.main(tiny_args(run, *flags, '--resume', 'interrupt')) == 0
    assert f'Resuming training, loading {interrupt}' in capsys.readouterr().out
    resumed_losses = train_losses(run / 'logs', session=1)
    assert sorted(resumed_losses) == list(range(stopped_at, 10))
    assert {**killed_losses, **resumed_losses} == reference
    final = torch.load(run / 'weights' / 'tiny_train_2_10.pth', weights_only=True)
    assert final.keys() == ref_weights.keys()
    assert all(torch.equal(final[k], ref_weights[k]) for k in final)


# ----------------------------------------------------------------------------------------------
# A checkpoint write that fails
# ----------------------------------------------------------------------------------------------

def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    """Issue 7, done-when 3: the 4th torch.save (the weights of the second checkpoint) dies half-way;
    training stops with one line, the first checkpoint is intact and --keep_latest kept it."""
    import train
    from utils.checkpoint import load_state_dict_file
    real_save = torch.save
    calls = []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 4:
            f.write(b'PK\x03\x04 half a checkpoint')
            raise OSError(28, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', failing_save)
    rc, out, err = run_main(tiny_args(tmp_path, '--max_iter', '4', '--save_interval', '2', '--keep_latest'),
                            capsys)
    assert_one_line_error(rc, err, 'tiny_train_0_4.pth', 'No space left on device', 'intact')
    weights = tmp_path / 'weights'
    assert not (weights / 'tiny_train_0_4.pth').exists()
    assert not [p for p in weights.iterdir() if p.name.endswith('.tmp')]
    previous = weights / 'tiny_train_0_2.pth'
    assert len(load_state_dict_file(str(previous))) > 0
    monkeypatch.setattr(torch, 'save', real_save)
    # The orphaned training state of the failed save is not taken for a checkpoint.
    assert train.SavePath.get_latest(str(weights), 'tiny_train') == str(previous)
    rc, out, err = run_main(tiny_args(tmp_path, '--max_iter', '4', '--resume', 'latest'), capsys)
    assert rc == 0 and f'loading {previous}' in out
    assert sorted(train_losses(tmp_path / 'logs', session=1)) == [2, 3]


# ----------------------------------------------------------------------------------------------
# Non-finite losses
# ----------------------------------------------------------------------------------------------

def test_nonfinite_step_makes_no_update(tiny):
    from data.config import set_cfg
    set_cfg(TINY_CONFIG)
    net, model, batch = _tiny_model_and_batch()
    # A NaN weight makes every prediction NaN: the loss (whose BCE would reject NaN input) is not
    # called, the terms come back NaN and nothing is updated.
    with torch.no_grad():
        net.prediction_layers[0].bbox_layer.weight[0, 0, 0, 0] = float('nan')
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    result = training.step.train_step(model, optimizer, batch)
    assert not result.finite
    assert set(result.losses) >= {'B', 'C', 'M'}
    after = net.state_dict()
    assert all(torch.allclose(after[k], v, rtol=0, atol=0, equal_nan=True) for k, v in before.items())
    assert optimizer.state_dict()['state'] == {}  # no momentum buffer was created


class _NaNOn(torch.nn.Module):
    """The real loss, with every term NaN on the given call numbers (0-based)."""

    def __init__(self, criterion, bad_calls):
        super().__init__()
        self.criterion = criterion
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def forward(self, *args):
        losses = self.criterion(*args)
        bad = self.calls in self.bad_calls or 'all' in self.bad_calls
        self.calls += 1
        return {k: v * float('nan') for k, v in losses.items()} if bad else losses


def test_nonfinite_losses_are_skipped_logged_and_counted(tiny, tmp_path, capsys, monkeypatch):
    import train
    from utils.logger import read_entries
    real = train.build_criterion
    monkeypatch.setattr(train, 'build_criterion', lambda config: _NaNOn(real(config), {1, 2}))
    rc, out, err = run_main(tiny_args(tmp_path, '--max_iter', '5', '--max_nonfinite', '3'), capsys)
    assert rc == 0, err
    assert out.count('update skipped') == 2
    log = str(tmp_path / 'logs' / 'tiny_train.log')
    skipped = read_entries(log, 'nonfinite')
    assert [(e['data']['iter'], e['data']['in_a_row'], e['data']['total']) for e in skipped] == [(1, 1, 1), (2, 2, 2)]
    assert read_entries(log, 'summary')[0]['data']['nonfinite_skipped'] == 2
    assert 'nonfinite_skipped=2' in out


def test_too_many_nonfinite_losses_in_a_row_stop_training(tiny, tmp_path, capsys, monkeypatch):
    import train
    real = train.build_criterion
    monkeypatch.setattr(train, 'build_criterion', lambda config: _NaNOn(real(config), {'all'}))
    rc, out, err = run_main(tiny_args(tmp_path, '--max_iter', '20', '--max_nonfinite', '3'), capsys)
    assert_one_line_error(rc, err, '3 non-finite losses in a row', 'Lower --lr')
    assert out.count('update skipped') == 3

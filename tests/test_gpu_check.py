"""benchmarks/gpu_check.py (issue 25): `--dry_run` runs every section's code on the CPU at tiny
sizes and reports them all ok; without a CUDA device the GPU run stops with one line."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'benchmarks' / 'gpu_check.py'
NO_CUDA = 'error: no CUDA device (use --dry_run to check the script on the CPU)'


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'RANK_SIZE')}
    # Shared CPUs: OpenMP threads that spin while waiting slow every process down (benchmarks/README.md).
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    return env


def _script_module():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_section_ok(tmp_path):
    out = tmp_path / 'check.json'
    proc = subprocess.run([sys.executable, str(SCRIPT), '--dry_run', '--json', str(out)], cwd=str(tmp_path),
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sum(line.startswith('section ') for line in proc.stdout.splitlines()) == 1  # one summary table
    result = json.loads(out.read_text())
    assert result['ok'] is True and result['dry_run'] is True
    sections = result['sections']
    assert list(sections) == ['parity', 'train', 'infer', 'torchrun']
    for name, sec in sections.items():
        assert sec['status'] == 'ok', (name, sec)
        assert all(c['status'] in ('ok', 'skip') for c in sec['checks']), (name, sec['checks'])

    parity = [c for c in sections['parity']['checks'] if c['status'] == 'ok']
    assert len(parity) == 4 and all(c['max_rel_error'] <= 1e-3 for c in parity)

    trained = [c for c in sections['train']['checks'] if c['status'] == 'ok']
    # YOLACT++ under AMP on the CPU too: backbone.DCN runs deform_conv2d in float32 under autocast.
    assert {(c['model'], c['amp']) for c in trained} >= {('yolact_base', False), ('yolact_base', True),
                                                         ('yolact_plus_base', False), ('yolact_plus_base', True)}
    for c in trained:
        assert len(c['losses']) == c['steps'] and all(math.isfinite(x) for x in c['losses']), c
        assert c['loss_last'] < c['loss_first'] and c['img_per_s'] > 0, c
    # What the dry run cannot do is said, not hidden: the compiled rows are skipped with a reason.
    assert any(c['status'] == 'skip' and 'compile' in c['name'] for c in sections['train']['checks'])

    inferred = [c for c in sections['infer']['checks'] if c['status'] == 'ok']
    assert {c['amp'] for c in inferred} == {False, True}
    assert all(c['fps_end_to_end'] > 0 and c['fps_network'] > 0 for c in inferred)

    launched = {c['name']: c for c in sections['torchrun']['checks']}
    assert launched['torchrun train.py (1 process)']['returncode'] == 0
    assert launched['torchrun train.py (1 process)']['summary'].startswith('Train summary: iterations=3')
    assert launched['process group backend']['backend'] == 'gloo'


def test_without_cuda_the_gpu_run_stops_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('this machine has a CUDA device, so the no-device error cannot be shown')
    out = tmp_path / 'check.json'
    proc = subprocess.run([sys.executable, str(SCRIPT), '--json', str(out)], cwd=str(tmp_path), env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == NO_CUDA and proc.stdout == ''
    assert not out.exists()


def test_sections_and_budgets_flags():
    gpu_check = _script_module()
    parser = gpu_check.build_parser()
    args = parser.parse_args(['--sections', 'torchrun,parity', '--budgets', 'train=300,infer=90'])
    assert args.sections == ['parity', 'torchrun']  # always in the script's order
    assert args.budgets == dict(gpu_check.DEFAULT_BUDGETS, train=300.0, infer=90.0)
    assert sum(gpu_check.DEFAULT_BUDGETS.values()) <= gpu_check.TIME_LIMIT_S
    for bad in (['--sections', 'parity,speed'], ['--budgets', 'train'], ['--budgets', 'eval=10']):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_a_section_past_its_budget_skips_the_rest_and_says_so():
    gpu_check = _script_module()
    sec = gpu_check.Section('train', budget_s=0.0, deadline=float('inf'))
    sec.run('never', lambda: pytest.fail('ran past the budget'))
    live = gpu_check.Section('infer', budget_s=60.0, deadline=float('inf'))
    live.run('compiled', lambda: pytest.fail('started without the time it needs'), needs_s=120.0)
    live.run('broken', lambda: 1 / 0)
    assert [c.status for c in sec.checks] == ['skip'] and 'budget' in sec.checks[0].figure
    assert sec.status == 'ok'
    assert [c.status for c in live.checks] == ['skip', 'FAIL'] and 'ZeroDivisionError' in live.checks[1].figure
    assert live.status == 'FAIL'
    table = gpu_check.format_table({'train': sec, 'infer': live})
    assert 'skip' in table and 'FAIL' in table

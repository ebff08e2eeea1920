"""Several nodes and elastic restarts through test/train_performance_8p.sh, on CPU with gloo.

"Nodes" are separate torchrun launches on 127.0.0.1 sharing one output folder (as nodes share a
file system). Each run is a few iterations of the demo config on a tiny synthetic set; the final
checkpoints are compared with an uninterrupted one-node, two-process run: bit for bit, because the
data order, the RNG states and the gradient sums do not depend on where the processes run (given
the same threads per process: torchrun sets OMP_NUM_THREADS=1 only for several processes per node).
"""
import json
import math
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
from test_distributed import free_port
from test_launch_scripts import (  # noqa: F401
    ACC_LINE,
    DEMO_CONFIG,
    DEMO_NAME,
    E2E_LINE,
    FPS_LINE,
    TEST_DIR,
    case_fields,
    script_env,
    tiny_coco,
)

ITERS, SAVE_EVERY = 12, 4
TIMEOUT = 300  # seconds for one launch; every process started here is killed after it


def launch(tmp_path: Path, data: Path, output: Path, **env: str) -> subprocess.Popen:
    """train_performance_8p.sh on `data` (given relative to the caller's directory, `tmp_path`),
    output under `output`, in the background."""
    args = [os.path.relpath(data, tmp_path), f'--config={DEMO_CONFIG}', '--batch_size=1', f'--max_iter={ITERS}', '--no_autoscale',
            '--num_workers=0', f'--save_interval={SAVE_EVERY}']
    full_env = script_env(tmp_path, tmp_path / 'unused', NODE_DEVICE='cpu', YOLACT_OUTPUT_DIR=str(output),
                          MASTER_ADDR='127.0.0.1', OMP_NUM_THREADS='1', **env)
    return subprocess.Popen(['bash', str(TEST_DIR / 'train_performance_8p.sh')] + args, env=full_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(procs: List[subprocess.Popen]) -> List[str]:
    """Wait for every launch (bounded); kill what is left; return their outputs."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return outputs


def run_dir(output: Path) -> Path:
    return output / '0' / 'YOLACT_bs1_2p_perf'


def final_weights(output: Path) -> Dict[str, torch.Tensor]:
    found = sorted((run_dir(output) / 'weights').glob(f'{DEMO_NAME}_*_{ITERS}.pth'))
    assert len(found) == 1, sorted(p.name for p in (run_dir(output) / 'weights').iterdir())
    return torch.load(found[0], map_location='cpu', weights_only=True)


def max_abs_diff(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def sessions(output: Path) -> List[Dict]:
    lines = (run_dir(output) / 'logs' / f'{DEMO_NAME}.log').read_text().splitlines()
    return [e['data'] for e in map(json.loads, lines) if e['type'] == 'session']


@pytest.fixture(scope='module')
def one_node(tiny_coco, tmp_path_factory):
    """The reference: one node, two processes (RANK_SIZE=2), no interruption: (output, console)."""
    tmp = tmp_path_factory.mktemp('one_node')
    proc = launch(tmp, tiny_coco, tmp / 'output', RANK_SIZE='2')
    out, = finish([proc])
    assert proc.returncode == 0, out[-4000:]
    return tmp / 'output', out


@pytest.fixture(scope='module')
def one_node_run(one_node) -> Path:
    return one_node[0]


def test_performance_8p_two_processes_on_cpu(one_node):
    """RANK_SIZE=2 runs two gloo processes; rank 0 alone writes; the summary prints."""
    output, console = one_node
    assert 'torch.distributed.run' in console and '--nproc_per_node=2' in console and '--standalone' in console
    assert console.count('Begin training!') == 1  # only rank 0 prints
    assert '1 node(s) x 2 process(es) x batch 1' in console and '2 process(es) x batch 1' in console
    fps = float(FPS_LINE.search(console).group(1))
    assert math.isfinite(fps) and fps > 0
    assert E2E_LINE.search(console) and not ACC_LINE.search(console)

    out, run = output / '0', run_dir(output)
    assert sorted(p.name for p in (run / 'weights').iterdir()) == sorted(
        f'{DEMO_NAME}_{it // 2 - 1}_{it}{ext}' for it in range(SAVE_EVERY, ITERS + 1, SAVE_EVERY)
        for ext in ('.pth', '.state.pt', '.classes.json'))  # 2 images per iteration, 4 per epoch
    entries = [json.loads(line) for line in (run / 'logs' / f'{DEMO_NAME}.log').read_text().splitlines()]
    assert [s['world_size'] for s in sessions(output)] == [2]
    assert [e['data']['iter'] for e in entries if e['type'] == 'train'] == list(range(ITERS))
    assert (out / 'train_0.log').read_text().count('Train summary:') == 1
    fields = case_fields(out / 'YOLACT_bs1_2p_perf.log')
    assert (fields['RankSize'], fields['BatchSize'], fields['CaseName'], fields['NodeDevice']) == \
        ('2', '1', 'YOLACT_bs1_2p_perf', 'cpu')
    assert float(fields['ActualFPS']) == pytest.approx(fps, abs=1e-3)
    assert math.isfinite(float(fields['ActualLoss']))


def test_two_nodes_end_with_the_weights_of_one_node(one_node_run, tiny_coco, tmp_path):
    output, port = tmp_path / 'shared_output', str(free_port())
    outs = finish([launch(tmp_path, tiny_coco, output, RANK_SIZE='1', NNODES='2', NODE_RANK=str(rank),
                          MASTER_PORT=port) for rank in (0, 1)])
    node0, node1 = outs
    for out in outs:
        assert '--nnodes=2' in out and f'--master_port={port}' in out, out[-4000:]
    assert '--node_rank=0' in node0 and '--node_rank=1' in node1
    # Global rank 0 ran on node 0: it alone trained verbosely, wrote and reports.
    assert node0.count('Begin training!') == 1 and 'Begin training!' not in node1
    assert FPS_LINE.search(node0) and not FPS_LINE.search(node1)
    assert 'global rank 0 ran on another node' in node1
    assert (output / '0' / 'train_0_node0.log').is_file() and (output / '0' / 'train_0_node1.log').is_file()
    assert [s['world_size'] for s in sessions(output)] == [2]
    assert max_abs_diff(final_weights(output), final_weights(one_node_run)) == 0


def _worker_pid(tag: str, rank: int) -> Optional[int]:
    """The pid of the train.py process of global `rank` started with YOLACT_TEST_TAG=tag."""
    for proc in Path('/proc').iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / 'environ').read_bytes().split(b'\0')
            cmdline = (proc / 'cmdline').read_bytes()
        except OSError:
            continue
        if f'YOLACT_TEST_TAG={tag}'.encode() in environ and f'RANK={rank}'.encode() in environ \
                and b'train.py' in cmdline:
            return int(proc.name)
    return None


def test_killed_worker_is_restarted_and_the_run_ends_with_uninterrupted_weights(one_node_run, tiny_coco,
                                                                                 tmp_path):
    output, tag = tmp_path / 'output', uuid.uuid4().hex
    proc = launch(tmp_path, tiny_coco, output, RANK_SIZE='2', MAX_RESTARTS='1', MASTER_PORT=str(free_port()),
                  YOLACT_TEST_TAG=tag)
    weights = run_dir(output) / 'weights'
    deadline, killed_after = time.monotonic() + TIMEOUT, None
    try:
        while killed_after is None and proc.poll() is None and time.monotonic() < deadline:
            done = sorted(weights.glob(f'{DEMO_NAME}_*.pth')) if weights.is_dir() else []
            pid = _worker_pid(tag, rank=1)
            if done and pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed_after = done
            time.sleep(0.02)
    finally:
        out, = finish([proc])
    assert killed_after, f'no worker was killed (finished before the first checkpoint?)\n{out[-4000:]}'
    assert proc.returncode == 0, out[-4000:]
    # The static rendezvous (--master_port): restarted workers join under a fresh store prefix.
    assert '--max-restarts=1' in out and '--master_port=' in out and '--resume=auto' in out
    # The restart is in the console and in the JSON log, with the iteration it resumed from.
    first, again = sessions(output)
    assert (first['restart'], first['start_iter'], first['resumed_from']) == (0, 0, None)
    assert again['restart'] == 1 and again['start_iter'] % SAVE_EVERY == 0 and 0 < again['start_iter'] < ITERS
    assert again['resumed_from'].endswith(f"_{again['start_iter']}.pth")
    assert f"torchrun restart 1: Resuming training, loading {again['resumed_from']}" in out
    assert f"iterations {again['start_iter']} -> {ITERS}" in out
    assert FPS_LINE.search(out)
    assert max_abs_diff(final_weights(output), final_weights(one_node_run)) == 0

"""train.py across processes and devices (issue 5): launch environments, DDP on gloo, AMP on CPU,
and the NPU path through a fake `torch_npu` that records what train.py asks of it."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_train import (  # noqa: F401
    TINY_CONFIG,
    _tiny_model_and_batch,
    register_tiny_config,
    subprocess_env,
    tiny,
    tiny_args,
    train_losses,
)

import training.step

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device('cpu')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# Launch environments
# ----------------------------------------------------------------------------------------------

def test_dist_info_from_torchrun_and_ascend_environments():
    from training.distributed import DistInfo, dist_info_from_env
    assert dist_info_from_env({}) == DistInfo(0, 1, 0)
    torchrun = {'WORLD_SIZE': '8', 'RANK': '5', 'LOCAL_RANK': '1'}
    assert dist_info_from_env(torchrun) == DistInfo(5, 8, 1)
    ascend = {'RANK_SIZE': '8', 'RANK_ID': '3', 'ASCEND_DEVICE_ID': '3'}
    info = dist_info_from_env(ascend)
    assert info == DistInfo(3, 8, 3) and info.distributed and not info.is_main
    # Ascend 1p on card 6: one process that computes on npu:6.
    assert dist_info_from_env({'RANK_SIZE': '1', 'ASCEND_DEVICE_ID': '6'}) == DistInfo(0, 1, 6)
    # torchrun's variables win over Ascend's (the 8p scripts launch torchrun with RANK_SIZE set).
    assert dist_info_from_env({**ascend, **torchrun}) == DistInfo(5, 8, 1)
    # torch.distributed.launch passes --local_rank.
    assert dist_info_from_env(torchrun, local_rank=0).local_rank == 0
    with pytest.raises(ValueError, match='RANK_ID'):
        dist_info_from_env({'RANK_SIZE': '2'})
    with pytest.raises(ValueError, match='rank 4 of world size 2'):
        dist_info_from_env({'WORLD_SIZE': '2', 'RANK': '4'})
    with pytest.raises(ValueError, match='WORLD_SIZE'):
        dist_info_from_env({'WORLD_SIZE': 'two'})


# ----------------------------------------------------------------------------------------------
# DDP: one step on 2 processes == one process on the concatenated batch
# ----------------------------------------------------------------------------------------------

def _one_step(model, net, batch):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return training.step.train_step(model, optimizer, batch)


def _ddp_step_worker(rank: int, world: int, port: int, paths: dict, out_dir: str) -> None:
    import torch.distributed as dist

    from data.config import set_cfg
    from training import distributed
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    register_tiny_config(paths)
    set_cfg(TINY_CONFIG)
    info = distributed.DistInfo(rank, world, rank)
    distributed.init_distributed(info, CPU)
    try:
        net, model, (images, targets, masks, crowds) = _tiny_model_and_batch(seed=0)
        ddp = distributed.wrap_ddp(model, CPU, info)
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        # Each rank gets a different image with the same ground truth (see the test).
        result = _one_step(ddp, net, (images[rank:rank + 1], targets[:1], masks[:1], crowds[:1]))
        # Without --seed every rank uses rank 0's random seed.
        seed = distributed.broadcast_from_rank0(1000 + rank)
        torch.save({'total': result.total, 'seed': seed, 'state': net.state_dict() if rank == 0 else None},
                   os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_ddp_step_equals_one_process_on_the_concatenated_batch(tiny, tmp_path):
    """Issue 5, done-when 2. Both halves hold the same ground truth (on different images), so
    they have the same number of positives and the loss of the whole batch - normalised by its
    positives - is exactly the mean of the halves' losses, which is what DDP's gradient averaging
    optimises. BatchNorm is frozen (per-process batch 1 < 6), so no batch statistics differ."""
    from data.config import set_cfg
    mp.spawn(_ddp_step_worker, args=(2, free_port(), dict(tiny._asdict()), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    rank1 = torch.load(tmp_path / 'rank1.pt', weights_only=True)

    set_cfg(TINY_CONFIG)
    net, model, (images, targets, masks, crowds) = _tiny_model_and_batch(seed=0)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    result = _one_step(model, net, (images[:2], targets[:1] * 2, masks[:1] * 2, crowds[:1] * 2))

    assert rank0['seed'] == rank1['seed'] == 1000
    assert rank0['total'] != pytest.approx(rank1['total'], rel=1e-3)  # the halves really differ
    assert result.total == pytest.approx((rank0['total'] + rank1['total']) / 2, rel=1e-5)
    single = net.state_dict()
    moved = 0
    for key, value in single.items():
        torch.testing.assert_close(rank0['state'][key], value, rtol=1e-4, atol=1e-6, msg=key)
        moved += int(not torch.equal(value, initial[key]))
    assert moved > 20  # the step changed the weights, so the comparison means something


def _ddp_main_worker(rank: int, world: int, port: int, paths: dict, argv: list, out_dir: str) -> None:
    import train
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    register_tiny_config(paths)
    with open(os.path.join(out_dir, f'console{rank}.txt'), 'w') as console:
        sys.stdout = sys.stderr = console
        rc = train.main(argv)
    Path(out_dir, f'rc{rank}').write_text(str(rc))


def test_two_process_training_only_rank0_writes(tiny, tmp_path):
    """torchrun-style environment, gloo, DistributedSampler: both ranks train in lockstep across an
    epoch boundary; rank 0 alone prints, logs and saves."""
    argv = tiny_args(tmp_path, '--max_iter', '3', '--save_interval', '2')
    mp.spawn(_ddp_main_worker, args=(2, free_port(), dict(tiny._asdict()), argv, str(tmp_path)),
             nprocs=2, join=True)
    assert (tmp_path / 'rc0').read_text() == '0' and (tmp_path / 'rc1').read_text() == '0'
    names = sorted(p.name for p in (tmp_path / 'weights').iterdir())
    # 8 images / 2 ranks / batch 2 = 2 iterations per epoch.
    assert names == ['tiny_train_0_2.classes.json', 'tiny_train_0_2.pth', 'tiny_train_0_2.state.pt',
                     'tiny_train_1_3.classes.json', 'tiny_train_1_3.pth', 'tiny_train_1_3.state.pt']
    from utils.logger import read_entries
    log = str(tmp_path / 'logs' / 'tiny_train.log')
    sessions = read_entries(log, 'session')
    assert len(sessions) == 1 and sessions[0]['data']['world_size'] == 2
    assert sorted(train_losses(tmp_path / 'logs')) == [0, 1, 2]
    # Global batch 4 with --no_autoscale: the progress line counts images of both ranks.
    console0 = (tmp_path / 'console0.txt').read_text()
    assert 'Begin training' in console0 and '2 process(es) x batch 2' in console0
    assert (tmp_path / 'console1.txt').read_text().strip() == ''


def _agree_on_resume_worker(rank: int, world: int, port: int, node_dirs: list, out_dir: str) -> None:
    from training import distributed
    from training.state import agree_on_resume
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    os.chdir(node_dirs[rank])  # each "node" has its own disk; --save_folder is the relative 'weights'
    info = distributed.DistInfo(rank, world, rank)
    distributed.init_distributed(info, CPU)
    try:
        agree_on_resume('latest', 'weights', 'tiny', info)
        outcome = 'resumed'
    except FileNotFoundError as err:
        outcome = str(err)
    finally:
        distributed.shutdown()
    Path(out_dir, f'outcome{rank}').write_text(outcome)


def test_a_node_that_cannot_see_rank0s_checkpoint_fails_clearly(tmp_path):
    """Issue 13: the checkpoint folder must be shared; a rank that cannot see the file rank 0
    resumes from stops every rank with one message, instead of training from other weights."""
    node_dirs = [tmp_path / 'node0', tmp_path / 'node1']
    for d in node_dirs:
        (d / 'weights').mkdir(parents=True)
    torch.save({}, node_dirs[0] / 'weights' / 'tiny_0_2.pth')  # only node 0's disk has it
    mp.spawn(_agree_on_resume_worker, args=(2, free_port(), [str(d) for d in node_dirs], str(tmp_path)),
             nprocs=2, join=True)
    for rank in (0, 1):
        outcome = (tmp_path / f'outcome{rank}').read_text()
        assert outcome.startswith('rank(s) 1 cannot see weights/tiny_0_2.pth') and 'shared' in outcome


# ----------------------------------------------------------------------------------------------
# AMP
# ----------------------------------------------------------------------------------------------

def test_amp_dtype_and_grad_scaler_per_device():
    from utils.device import autocast_dtype, grad_scaler  # the CPU-capability cases are in test_device.py
    assert autocast_dtype(CPU, amp=False) is None
    assert autocast_dtype(torch.device('cuda', 0), amp=True) == torch.float16
    assert autocast_dtype(CPU, True, torch.float16) == torch.float16
    assert autocast_dtype(torch.device('cuda', 0), True, torch.bfloat16) == torch.bfloat16
    assert grad_scaler(CPU, torch.bfloat16) is None
    assert grad_scaler(CPU, None) is None
    scaler = grad_scaler(CPU, torch.float16)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()


def test_amp_bfloat16_training_on_cpu_has_finite_losses_and_fp32_checkpoints(tiny, tmp_path, capsys):
    """Issue 5, done-when 3 (training side)."""
    import train
    from utils.checkpoint import load_state_dict_file
    # bf16 named explicitly: plain --amp is float32 on a CPU without native bf16 (test_device.py).
    assert train.main(tiny_args(tmp_path, '--amp', '--amp_dtype', 'bf16', '--max_iter', '3')) == 0
    losses = train_losses(tmp_path / 'logs')
    assert sorted(losses) == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(v)) for terms in losses.values() for v in terms.values())
    weights = load_state_dict_file(str(tmp_path / 'weights' / 'tiny_train_0_3.pth'))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}


def test_netloss_runs_the_net_under_autocast_and_the_loss_in_float32(tiny):
    import train
    from data.config import set_cfg
    set_cfg(TINY_CONFIG)
    net, _, batch = _tiny_model_and_batch()
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, net_, preds, *rest):
            seen['pred_dtypes'] = {k: v.dtype for k, v in preds.items()}
            seen['autocast'] = torch.is_autocast_enabled('cpu')
            return {'B': preds['loc'].sum() * 0}

    model = train.NetLoss(net, Recorder(), amp_dtype=torch.bfloat16)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=False):
        model(*batch)
    assert seen['autocast'] is False
    assert set(seen['pred_dtypes'].values()) == {torch.float32}
    # The network itself ran in bfloat16.
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert net(batch[0])['loc'].dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------
# NPU through a fake torch_npu
# ----------------------------------------------------------------------------------------------

FAKE_TORCH_NPU = '''
"""Stand-in for torch_npu: registers the 'npu' device name and records what is asked of it."""
import json, os, types
import torch

CALLS = []

def _record(name, *args):
    CALLS.append([name, [str(a) for a in args]])

torch.utils.rename_privateuse1_backend('npu')
npu = types.ModuleType('torch.npu')
npu.set_device = lambda device: _record('set_device', device)
npu.device_count = lambda: 8
npu.is_available = lambda: True
npu.synchronize = lambda *args: _record('synchronize', *args)
torch.npu = npu
'''

NPU_DRIVER = '''
import json, os, sys
from test_train import register_tiny_config
register_tiny_config(json.loads(sys.argv[1]))
import torch_npu, torch.distributed, train

class Reached(Exception):
    pass

report = []

def fake_init_process_group(backend, **kwargs):
    report[-1].update(backend=backend, rank=kwargs.get('rank'), world_size=kwargs.get('world_size'))
    raise Reached

real_select = train.select_device
def recording_select(*args):
    device = real_select(*args)
    report[-1]['device'] = str(device)
    return device

def fake_rendezvous(url, rank, world_size, **kwargs):  # no peers here: an in-memory store
    yield torch.distributed.HashStore(), rank, world_size

torch.distributed.init_process_group = fake_init_process_group
torch.distributed.rendezvous = fake_rendezvous
train.select_device = recording_select
for env in ({'RANK_SIZE': '2', 'RANK_ID': '1', 'ASCEND_DEVICE_ID': '1'},
            {'WORLD_SIZE': '4', 'RANK': '3', 'LOCAL_RANK': '1'}):
    for key in ('RANK_SIZE', 'RANK_ID', 'ASCEND_DEVICE_ID', 'WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
        os.environ.pop(key, None)
    os.environ.update(env)
    report.append({})
    try:
        train.main(sys.argv[2:])
    except Reached:
        pass
    report[-1]['npu_calls'] = list(torch_npu.CALLS)
    torch_npu.CALLS.clear()
print('REPORT ' + json.dumps(report))
'''


def test_npu_selects_the_rank_card_hccl_and_set_device_with_a_fake_torch_npu(tiny, tmp_path):
    """Issue 5, done-when 4: `--node_device npu` imports torch_npu, computes on npu:<local rank>,
    calls torch.npu.set_device and joins the group with hccl (Ascend and torchrun environments)."""
    fake = tmp_path / 'fake'
    (fake / 'torch_npu').mkdir(parents=True)
    (fake / 'torch_npu' / '__init__.py').write_text(FAKE_TORCH_NPU)
    env = subprocess_env()
    env['PYTHONPATH'] = str(fake) + os.pathsep + env['PYTHONPATH']
    env['TORCH_DEVICE_BACKEND_AUTOLOAD'] = '0'
    argv = tiny_args(tmp_path, '--node_device', 'npu', '--max_iter', '1')
    proc = subprocess.run([sys.executable, '-c', NPU_DRIVER, json.dumps(dict(tiny._asdict())), *argv],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith('REPORT ')][-1]
    ascend, torchrun = json.loads(line[len('REPORT '):])
    assert ascend['device'] == 'npu:1' and ascend['backend'] == 'hccl'
    assert (ascend['rank'], ascend['world_size']) == (1, 2)
    assert ['set_device', ['1']] in ascend['npu_calls']
    assert torchrun['device'] == 'npu:1' and torchrun['backend'] == 'hccl'
    assert (torchrun['rank'], torchrun['world_size']) == (3, 4)
    assert ['set_device', ['1']] in torchrun['npu_calls']

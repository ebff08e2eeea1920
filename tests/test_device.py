import os
import subprocess
import sys

import pytest
import torch

from utils.device import DeviceError, distributed_backend, select_device


def test_cpu():
    assert select_device('cpu') == torch.device('cpu')
    assert distributed_backend(torch.device('cpu')) == 'gloo'


def test_unknown_device_type():
    with pytest.raises(DeviceError, match='choose one of cpu, cuda, npu'):
        select_device('tpu')


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-GPU message')
def test_cuda_without_gpu_is_one_clear_line():
    with pytest.raises(DeviceError) as err:
        select_device('cuda')
    assert 'no CUDA GPU' in str(err.value) and '\n' not in str(err.value)


def test_npu_without_torch_npu_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch_npu', None)  # makes `import torch_npu` fail
    with pytest.raises(DeviceError) as err:
        select_device('npu')
    assert 'torch_npu' in str(err.value) and '\n' not in str(err.value)


FAKE_NPU_CHECK = """
import sys, types, torch
calls = []
fake = types.ModuleType('torch_npu')
sys.modules['torch_npu'] = fake
# What importing the real torch_npu does: name torch's out-of-tree device 'npu', add torch.npu.
torch.utils.rename_privateuse1_backend('npu')
torch.npu = types.SimpleNamespace(set_device=calls.append)
from utils.device import select_device, distributed_backend
device = select_device('npu', local_rank=3)
print(device, calls, distributed_backend(device), distributed_backend(torch.device('cuda', 0)))
"""


def test_npu_with_fake_torch_npu_uses_local_rank():
    # In a subprocess: renaming torch's privateuse1 backend cannot be undone and upsets
    # torch.optim for the rest of the process.
    out = subprocess.run([sys.executable, '-c', FAKE_NPU_CHECK], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['npu:3', '[3]', 'hccl', 'nccl']


# ------------------------------------------------------------------------------------------------
# Precision and layout by CPU capability (the capability is patched: both answers on any machine)

CPU = torch.device('cpu')


@pytest.fixture(params=[True, False], ids=['native-bf16', 'no-native-bf16'])
def native_bf16(request, monkeypatch):
    import utils.device
    monkeypatch.setattr(utils.device, 'cpu_has_native_bf16', lambda: request.param)
    return request.param


def test_amp_auto_follows_native_bf16(native_bf16):
    from utils.device import autocast_dtype
    notes = []
    dtype = autocast_dtype(CPU, amp=True, notify=notes.append)
    if native_bf16:
        assert dtype == torch.bfloat16 and notes == []
    else:
        assert dtype is None  # float32
        assert len(notes) == 1 and 'no native bfloat16' in notes[0] and 'running float32' in notes[0]
        assert '\n' not in notes[0]


def test_explicit_amp_dtype_always_wins(native_bf16):
    from utils.device import autocast_dtype
    assert autocast_dtype(CPU, True, 'bf16', notify=None) == torch.bfloat16
    assert autocast_dtype(CPU, True, 'bfloat16', notify=None) == torch.bfloat16
    assert autocast_dtype(CPU, True, 'fp16', notify=None) == torch.float16
    assert autocast_dtype(CPU, False, 'bf16', notify=None) is None  # no --amp: float32
    assert autocast_dtype(torch.device('cuda', 0), True, notify=None) == torch.float16
    with pytest.raises(ValueError, match='--amp_dtype'):
        autocast_dtype(CPU, True, 'int8')


def test_channels_last_by_device_precision_and_mode(monkeypatch):
    import utils.device
    from utils.device import prefers_channels_last
    assert prefers_channels_last(CPU, amp=False, training=False) is True  # eval: fewer reorders
    monkeypatch.setattr(utils.device, 'cpu_capability', lambda: 'AVX2')
    assert prefers_channels_last(CPU, amp=False, training=True) is False  # AVX2: slower backward
    monkeypatch.setattr(utils.device, 'cpu_capability', lambda: 'AVX512')
    assert prefers_channels_last(CPU, amp=False, training=True) is True  # AVX512/AMX: faster step
    assert prefers_channels_last(CPU, amp=True, training=False) is True
    assert prefers_channels_last(torch.device('cuda', 0), amp=True) is True
    assert prefers_channels_last(torch.device('cuda', 0), amp=False) is False


def test_train_amp_on_cpu_without_native_bf16_prints_one_line_and_runs_float32(monkeypatch, capsys):
    import train
    import utils.device
    monkeypatch.setattr(utils.device, 'cpu_has_native_bf16', lambda: False)
    args = train.build_parser().parse_args(['--amp'])
    assert utils.device.autocast_dtype(CPU, args.amp, args.amp_dtype) is None
    lines = [l for l in capsys.readouterr().out.splitlines() if 'bfloat16' in l]
    assert len(lines) == 1 and 'running float32' in lines[0]
    forced = train.build_parser().parse_args(['--amp', '--amp_dtype', 'bf16'])
    assert utils.device.autocast_dtype(CPU, forced.amp, forced.amp_dtype) == torch.bfloat16


def test_net_runner_amp_follows_the_decision(native_bf16):
    from utils.inference import NetRunner
    net = torch.nn.Conv2d(3, 3, 1)
    predictor = NetRunner(net, amp=True)
    assert predictor.amp is native_bf16
    assert predictor.dtype == (torch.bfloat16 if native_bf16 else None)
    assert NetRunner(net, amp=True, amp_dtype_name='bf16').dtype == torch.bfloat16

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

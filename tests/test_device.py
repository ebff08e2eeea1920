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


def test_npu_with_fake_torch_npu_uses_local_rank(monkeypatch):
    calls = []

    class FakeNpu:
        @staticmethod
        def set_device(index):
            calls.append(index)

    monkeypatch.setitem(sys.modules, 'torch_npu', type(sys)('torch_npu'))
    # What importing the real torch_npu does first: name torch's out-of-tree device 'npu'.
    if torch._C._get_privateuse1_backend_name() != 'npu':
        torch.utils.rename_privateuse1_backend('npu')
    monkeypatch.setattr(torch, 'npu', FakeNpu, raising=False)
    device = select_device('npu', local_rank=3)
    assert str(device) == 'npu:3' and calls == [3]
    assert distributed_backend(device) == 'hccl'
    assert distributed_backend(torch.device('cuda', 0)) == 'nccl'

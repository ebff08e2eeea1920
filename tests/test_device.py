import json
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
# Precision and layout by CPU kind: /proc/cpuinfo and the probe's timing are patched, so every kind
# is checked on any machine (tests/conftest.py keeps the real probe out of the other tests).

from utils.device import probe_bf16_ratio  # noqa: E402  (the real one: conftest patches the module's)

CPU = torch.device('cpu')
FLAGS = {  # the bf16-relevant part of each kind's flags line
    'amx': 'fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile',
    'avx512-bf16': 'fpu sse2 avx2 avx512f avx512_vnni avx512_bf16',
    'avx512': 'fpu sse2 avx2 avx512f avx512_vnni',  # e.g. Cascade Lake
    'avx2': 'fpu sse2 avx2 fma',  # e.g. AMD EPYC Rome
}


def drop_isa_caps(monkeypatch):
    """A simulated CPU is not capped: ignore the ISA caps of the environment the suite runs in
    (e.g. the AVX2 emulation's ONEDNN_MAX_CPU_ISA=AVX2)."""
    import utils.device
    for name in utils.device.ISA_CAPS:
        monkeypatch.delenv(name, raising=False)


class FakeCpu:
    """A CPU kind for utils.device: its cpuinfo, PyTorch's capability and a probe that counts calls."""

    def __init__(self, monkeypatch, kind, ratio=0.5, model='Test CPU'):
        import utils.device
        self.ratio, self.calls = ratio, []
        self.model = model
        monkeypatch.setattr(utils.device, 'read_cpuinfo', lambda: {'model name': self.model, 'flags': FLAGS[kind]})
        monkeypatch.setattr(utils.device, 'cpu_capability', lambda: 'AVX2' if kind == 'avx2' else 'AVX512')
        monkeypatch.setattr(utils.device, 'probe_bf16_ratio', self.probe)
        drop_isa_caps(monkeypatch)

    def probe(self, shape):
        self.calls.append(shape)
        return self.ratio


@pytest.mark.parametrize('kind, ratio, want, probed', [
    ('amx', 0.5, torch.bfloat16, True),
    ('avx512-bf16', 0.7, torch.bfloat16, True),
    ('amx', 2.4, None, True),  # native, but slower at this shape (the demo's training step on AMX)
    ('amx', 0.95, None, True),  # no real gain (e.g. a small input): float32
    ('avx512', 0.5, None, False),  # _is_mkldnn_bf16_supported() is True here, bf16 emulated: no probe
    ('avx2', 0.5, None, False),
])
def test_amp_auto_by_cpu_kind(monkeypatch, kind, ratio, want, probed):
    from utils.device import autocast_dtype
    cpu = FakeCpu(monkeypatch, kind, ratio)
    notes = []
    assert autocast_dtype(CPU, amp=True, notify=notes.append) == want
    assert bool(cpu.calls) is probed
    assert len(notes) == 1 and '\n' not in notes[0]
    assert notes[0].startswith('--amp: bfloat16 (' if want else '--amp: float32 (')
    if probed:
        assert f'bf16 {ratio:.2f}x the float32 time' in notes[0]
    else:
        assert 'no native bf16' in notes[0] and '--amp_dtype bf16 forces' in notes[0]


def test_amp_line_names_flag_and_probe(monkeypatch):
    from utils.device import ProbeShape, autocast_dtype, speed_cache_file
    FakeCpu(monkeypatch, 'amx', 0.55)
    notes = []
    autocast_dtype(CPU, True, notify=notes.append, shape=ProbeShape(8, 160, training=True))
    assert notes == [f'--amp: bfloat16 (CPU has AMX-BF16; probe (8x160 px training): bf16 0.55x the '
                     f'float32 time, measured now, cached in {speed_cache_file()})']
    autocast_dtype(CPU, True, notify=notes.append, shape=ProbeShape(8, 160, training=True))
    assert len(notes) == 1  # once per process


def test_probe_verdict_is_cached_per_cpu_and_shape(monkeypatch, tmp_path):
    import utils.device
    from utils.device import ProbeShape, bf16_verdict
    cache = str(tmp_path / 'cpu_speed.json')
    cpu = FakeCpu(monkeypatch, 'amx', 0.5)
    shape = ProbeShape(8, 160, training=True)
    assert bf16_verdict(shape, cache_file=cache).native
    monkeypatch.setattr(utils.device, '_VERDICTS', {})  # a later run: only the file remains
    cpu.ratio = 3.0  # the probe would now say otherwise: the cached verdict is what counts
    verdict = bf16_verdict(shape, cache_file=cache)
    assert verdict.native and verdict.ratio == 0.5 and f'cached in {cache}' in verdict.reason
    assert len(cpu.calls) == 1
    assert not bf16_verdict(ProbeShape(1, 160), cache_file=cache).native  # another shape: probed again
    assert len(cpu.calls) == 2
    monkeypatch.setattr(utils.device, '_VERDICTS', {})
    cpu.model = 'Another CPU'  # a cache written on another CPU is not read
    assert not bf16_verdict(shape, cache_file=cache).native
    assert len(cpu.calls) == 3
    monkeypatch.setattr(utils.device, '_VERDICTS', {})
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX512_CORE_BF16')  # a capped oneDNN is another key
    bf16_verdict(shape, cache_file=cache)
    assert len(cpu.calls) == 4
    assert len(json.loads((tmp_path / 'cpu_speed.json').read_text())) == 4


@pytest.mark.parametrize('cap, native', [('AVX512_CORE_VNNI', False), ('avx2', False),
                                         ('AVX512_CORE_AMX', True), ('ALL', True)])
def test_onednn_cap_below_bf16_is_float32_without_a_probe(monkeypatch, cap, native):
    """The emulation of the AVX-512-without-bf16 kind on an AMX machine: the flags still say bf16."""
    from utils.device import autocast_dtype
    cpu = FakeCpu(monkeypatch, 'amx', 0.5)
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', cap)
    notes = []
    assert autocast_dtype(CPU, True, notify=notes.append) == (torch.bfloat16 if native else None)
    assert bool(cpu.calls) is native
    if not native:
        assert notes == [f'--amp: float32 (no native bf16: oneDNN is capped at {cap.upper()} '
                         f'(ONEDNN_MAX_CPU_ISA); --amp_dtype bf16 forces bfloat16)']


def test_cache_location_follows_env(monkeypatch, tmp_path):
    from utils.device import speed_cache_file
    monkeypatch.delenv('YOLACT_CACHE_DIR')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert speed_cache_file() == str(tmp_path / 'yolact' / 'cpu_speed.json')
    monkeypatch.setenv('YOLACT_CACHE_DIR', str(tmp_path / 'x'))
    assert speed_cache_file() == str(tmp_path / 'x' / 'cpu_speed.json')


def test_explicit_amp_dtype_always_wins(monkeypatch):
    from utils.device import autocast_dtype
    cpu = FakeCpu(monkeypatch, 'avx2')
    assert autocast_dtype(CPU, True, torch.bfloat16, notify=None) == torch.bfloat16
    assert autocast_dtype(CPU, True, torch.float16, notify=None) == torch.float16
    assert autocast_dtype(CPU, False, torch.bfloat16, notify=None) is None  # no --amp: float32
    assert autocast_dtype(torch.device('cuda', 0), True, notify=None) == torch.float16
    with pytest.raises(ValueError, match='--amp_dtype'):
        autocast_dtype(CPU, True, torch.int8)
    assert cpu.calls == []


def test_amp_dtype_flag_is_parsed_to_a_dtype_once():
    import argparse

    from utils.device import add_amp_dtype_flag
    parser = argparse.ArgumentParser()
    add_amp_dtype_flag(parser)
    assert parser.parse_args([]).amp_dtype is None
    assert parser.parse_args(['--amp_dtype', 'auto']).amp_dtype is None
    assert parser.parse_args(['--amp_dtype', 'bf16']).amp_dtype == torch.bfloat16
    assert parser.parse_args(['--amp_dtype', 'bfloat16']).amp_dtype == torch.bfloat16
    assert parser.parse_args(['--amp_dtype', 'fp16']).amp_dtype == torch.float16
    with pytest.raises(SystemExit):
        parser.parse_args(['--amp_dtype', 'int8'])


def test_read_cpuinfo_takes_the_first_processor(tmp_path):
    from utils.device import bf16_flag, read_cpuinfo
    path = tmp_path / 'cpuinfo'
    path.write_text('processor\t: 0\nmodel name\t: Xeon X\nflags\t\t: fpu avx512_bf16 amx_bf16\n\n'
                    'processor\t: 1\nmodel name\t: other\n')
    info = read_cpuinfo(str(path))
    assert info['model name'] == 'Xeon X' and bf16_flag(info['flags']) == 'AMX-BF16'
    assert bf16_flag('fpu avx512f avx512_bf16') == 'AVX512-BF16' and bf16_flag('avx512f') is None
    assert read_cpuinfo(str(tmp_path / 'missing')) == {}  # no /proc (macOS, Windows): not native


def test_probe_returns_a_ratio_at_a_tiny_shape():
    from utils.device import ProbeShape
    for training in (False, True):
        ratio = probe_bf16_ratio(ProbeShape(1, 32, training), budget_s=0.01)
        assert 0 < ratio < float('inf')


def test_cpu_kind_names_the_three_kinds(monkeypatch):
    import utils.device
    for kind, want in [('amx', 'AMX-BF16'), ('avx512', 'AVX-512 without bf16'), ('avx2', 'AVX2')]:
        FakeCpu(monkeypatch, kind)
        assert utils.device.cpu_kind() == want
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX512_CORE_VNNI')
    assert utils.device.cpu_kind() == 'AVX2 (oneDNN capped at AVX512_CORE_VNNI)'
    assert utils.device.describe_cpu().startswith('CPU AVX2 (oneDNN capped at AVX512_CORE_VNNI), Test CPU, ')


def test_channels_last_by_device_precision_and_mode(monkeypatch):
    import utils.device
    from utils.device import prefers_channels_last
    drop_isa_caps(monkeypatch)
    assert prefers_channels_last(CPU, amp=False, training=False) is True  # eval: fewer reorders
    monkeypatch.setattr(utils.device, 'cpu_capability', lambda: 'AVX2')
    notes = []
    assert prefers_channels_last(CPU, amp=False, training=True, notify=notes.append) is False  # slower backward
    assert notes == ['layout: NCHW (AVX2 convolutions train slower in NHWC)']
    monkeypatch.setattr(utils.device, 'cpu_capability', lambda: 'AVX512')
    assert prefers_channels_last(CPU, amp=False, training=True) is True  # AVX512/AMX: faster step
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')  # oneDNN capped: its convolutions are AVX2
    assert prefers_channels_last(CPU, amp=False, training=True) is False
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX512_CORE_VNNI')
    assert prefers_channels_last(CPU, amp=False, training=True) is True
    assert prefers_channels_last(CPU, amp=True, training=False) is True
    assert prefers_channels_last(torch.device('cuda', 0), amp=True) is True
    assert prefers_channels_last(torch.device('cuda', 0), amp=False) is False


def test_train_amp_on_cpu_without_native_bf16_prints_one_line_and_runs_float32(monkeypatch, capsys):
    import train
    import utils.device
    FakeCpu(monkeypatch, 'avx512')
    args = train.build_parser().parse_args(['--amp'])
    assert utils.device.autocast_dtype(CPU, args.amp, args.amp_dtype) is None
    lines = [l for l in capsys.readouterr().out.splitlines() if '--amp' in l]
    assert len(lines) == 1 and lines[0].startswith('--amp: float32 (no native bf16')
    forced = train.build_parser().parse_args(['--amp', '--amp_dtype', 'bf16'])
    assert utils.device.autocast_dtype(CPU, forced.amp, forced.amp_dtype) == torch.bfloat16


@pytest.mark.parametrize('kind', ['amx', 'avx512'])
def test_net_runner_amp_follows_the_decision(monkeypatch, kind):
    from deploy.inference import NetRunner
    cpu = FakeCpu(monkeypatch, kind, 0.5)
    net = torch.nn.Conv2d(3, 3, 1)
    from data.config import cfg
    predictor = NetRunner(net, amp=True, config=cfg)
    native = kind == 'amx'
    assert predictor.amp is native
    assert predictor.dtype == (torch.bfloat16 if native else None)
    if native:  # probed at the config's input size, batch 1, inference
        assert [tuple(s) for s in cpu.calls] == [(1, cfg.max_size, False)]
    assert NetRunner(net, amp=True, amp_dtype=torch.bfloat16, config=cfg).dtype == torch.bfloat16

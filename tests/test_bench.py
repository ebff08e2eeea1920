"""benchmarks/bench.py's figures: FLOPs, % of the matmul rate, pooled rounds and the comparison
table. (The timings themselves are not tested: they depend on the machine.)"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import bench  # noqa: E402
from test_device import drop_isa_caps  # noqa: E402


def record(row, impl, seconds, cpu=None, flops=None, amp=None, unit='s/step', scale=1.0):
    rec = {'row': row, 'impl': impl, 'unit': unit, 'amp': amp, 'threads': 2, 'seconds': seconds,
           'times': [t * scale for t in seconds], 'median': sorted(seconds)[len(seconds) // 2] * scale,
           'min': min(seconds) * scale, 'loadavg_before': [1.0], 'loadavg_after': [2.0],
           'peak_rss_process': 2 ** 30, 'peak_rss_run': 2 ** 29}
    if cpu is not None:
        rec['cpu_seconds'] = cpu
        rec['cpu_median'] = sorted(cpu)[len(cpu) // 2] * scale
    if flops is not None:
        rec['flops'] = flops
    return rec


def test_flops_of_a_convolution_forward_and_backward():
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 10, 10, requires_grad=True)
    forward = 2 * (2 * 10 * 10) * 8 * (4 * 3 * 3)  # multiply-adds per output value x outputs
    assert bench.count_flops(lambda: conv(x)) == forward
    # backward: gradient of the input and of the weight, each as much work as the forward
    assert bench.count_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_rate_is_flops_over_median_against_the_rate_of_the_rows_precision():
    fp32 = record('train_base_fp32', 'port', [2.0, 4.0, 3.0], flops=6e9)
    bf16 = record('train_base_amp', 'port', [1.0], flops=6e9, amp='bfloat16')
    rates = {'float32': 4.0, 'bfloat16': 12.0}
    bench.add_rates(fp32, rates)
    bench.add_rates(bf16, rates)
    assert fp32['gflops'] == pytest.approx(2.0) and fp32['pct_of_matmul'] == pytest.approx(50.0)
    assert bf16['pct_of_matmul'] == pytest.approx(50.0)


def test_rounds_pool_every_timed_call():
    a = record('detect', 'port', [0.010, 0.030], cpu=[0.02, 0.06], unit='ms', scale=1000.0)
    b = record('detect', 'port', [0.020], cpu=[0.04], unit='ms', scale=1000.0)
    b['loadavg_after'] = [3.0]
    merged = bench.merge_rounds([a, b])
    assert merged['times'] == pytest.approx([10.0, 30.0, 20.0])
    assert merged['median'] == pytest.approx(20.0) and merged['min'] == pytest.approx(10.0)
    assert merged['cpu_median'] == pytest.approx(40.0)
    assert merged['cpu_utilisation'] == pytest.approx(0.12 / (0.06 * 2))
    assert merged['loadavg_after'] == [3.0]


def test_comparison_sets_amp_rows_beside_the_originals_fp32_row():
    records = [record('eval_base_fp32', 'port', [0.8], cpu=[1.6], unit='ms/img', scale=1000.0),
               record('eval_base_amp', 'port', [0.2], cpu=[0.4], unit='ms/img', scale=1000.0),
               record('eval_base_fp32', 'original', [1.0], cpu=[2.0], unit='ms/img', scale=1000.0),
               record('train_demo_fp32', 'port', [0.5])]
    lines = bench.format_comparison(records).splitlines()[2:]
    ratios = {line.split()[0]: (float(line.split()[4]), float(line.split()[-1])) for line in lines}
    assert ratios == {'eval_base_fp32': (0.8, 0.8), 'eval_base_amp': (0.2, 0.2)}  # no demo: no original


def test_table_header_names_the_cpu_kind():
    table = bench.format_table([record('detect', 'port', [0.02], unit='ms', scale=1000.0)],
                               machine='CPU AVX2, Test CPU, 2 threads')
    assert table.splitlines()[0] == 'CPU AVX2, Test CPU, 2 threads'
    assert table.splitlines()[1].startswith('row ')


@pytest.mark.parametrize('ratio', [0.5, 3.0])
def test_amp_rows_run_what_amp_picks_at_their_shape(monkeypatch, ratio):
    import utils.device
    shapes = []
    monkeypatch.setattr(utils.device, 'read_cpuinfo', lambda: {'model name': 'x', 'flags': 'avx512f amx_bf16'})
    monkeypatch.setattr(utils.device, 'cpu_capability', lambda: 'AVX512')
    monkeypatch.setattr(utils.device, 'probe_bf16_ratio', lambda shape: shapes.append(tuple(shape)) or ratio)
    drop_isa_caps(monkeypatch)
    cpu = torch.device('cpu')
    want = torch.bfloat16 if ratio < 1 else None  # a probe finding bf16 slower: the row runs float32
    assert bench.amp_dtype(cpu, bench.ROWS['train_demo_amp'], 160) == want
    assert bench.amp_dtype(cpu, bench.ROWS['eval_base_amp'], 550) == want
    assert shapes == [(8, 160, True), (1, 550, False)]
    assert bench.amp_dtype(torch.device('cuda', 0), bench.ROWS['eval_base_amp'], 550) == torch.float16

"""Device selection for every entry point: `--node_device cpu|cuda|npu` (+ local rank) -> torch.device.

`torch_npu` is imported only when npu is asked for, so CPU and CUDA machines never need it.
"""
import argparse
import importlib
import json
import os
import platform
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Set

import torch
from torch import nn

from utils.functions import write_atomically

DEVICE_TYPES = ('cpu', 'cuda', 'npu')


class DeviceError(RuntimeError):
    """The requested device cannot be used on this machine."""


def import_torch_npu():
    """Import torch_npu (registers the 'npu' device with torch) or fail with one clear line."""
    try:
        return importlib.import_module('torch_npu')
    except ImportError as err:
        raise DeviceError(f"--node_device npu needs the torch_npu package matching torch "
                          f"{torch.__version__} (Ascend CANN install); import failed: {err}") from None


def select_device(node_device: str, local_rank: int = 0) -> torch.device:
    """The device this process computes on, made current for its backend.

    Args:
        node_device: 'cpu', 'cuda' or 'npu' (a trailing ':N' picks the card for single-card runs).
        local_rank: this process's index on the node (torchrun LOCAL_RANK); the card it uses.
    """
    kind, _, index = node_device.partition(':')
    if kind not in DEVICE_TYPES:
        raise DeviceError(f"unknown --node_device '{node_device}'; choose one of {', '.join(DEVICE_TYPES)}")
    if kind == 'cpu':
        return torch.device('cpu')
    card = int(index) if index else local_rank
    if kind == 'cuda':
        if not torch.cuda.is_available():
            raise DeviceError("--node_device cuda but no CUDA GPU is available "
                              "(torch.cuda.is_available() is False); use --node_device cpu")
        if card >= torch.cuda.device_count():
            raise DeviceError(f"cuda:{card} requested but only {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(card)
        return torch.device('cuda', card)
    import_torch_npu()
    torch.npu.set_device(card)
    return torch.device(f'npu:{card}')


def default_device_type() -> str:
    """npu when torch_npu imports, else cuda when a GPU is visible, else cpu."""
    try:
        importlib.import_module('torch_npu')
        return 'npu'
    except ImportError:
        pass
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def distributed_backend(device: torch.device) -> str:
    """The torch.distributed backend for a device type: nccl, hccl or gloo."""
    return {'cuda': 'nccl', 'npu': 'hccl'}.get(device.type, 'gloo')


def synchronize(device: Optional[torch.device]) -> None:
    """Wait for queued work on `device` (for timing); a no-op on CPU."""
    if device is None or device.type == 'cpu':
        return
    getattr(torch, device.type).synchronize(device)


# ------------------------------------------------------------------------------------------------
# Precision and memory layout: decided here, from what the hardware runs natively, for every
# entry point (train.py, eval.py, benchmarks/bench.py, run_demo.sh and test/*.sh through them).

AMP_DTYPES = {'fp16': torch.float16, 'float16': torch.float16,
              'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16}
AMP_CHOICES = ('auto',) + tuple(AMP_DTYPES)


def parse_amp_dtype(text: str) -> Optional[torch.dtype]:
    """--amp_dtype's value as a dtype: 'bf16'/'bfloat16', 'fp16'/'float16'; 'auto' -> None."""
    if text == 'auto':
        return None
    if text not in AMP_DTYPES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(AMP_CHOICES)}, got {text!r}")
    return AMP_DTYPES[text]


def add_amp_dtype_flag(parser: argparse.ArgumentParser) -> None:
    """--amp_dtype, parsed to Optional[torch.dtype] (None: `autocast_dtype` decides)."""
    parser.add_argument('--amp_dtype', default=None, type=parse_amp_dtype, metavar='{' + ','.join(AMP_CHOICES) + '}',
                        help='autocast dtype; auto (default): float16 on cuda/npu, bfloat16 on a CPU with native '
                             'bf16, float32 on other CPUs')


def cpu_capability() -> str:
    """The vector ISA PyTorch's CPU kernels use here: 'AVX2', 'AVX512', ... (ATEN_CPU_CAPABILITY caps it)."""
    return torch.backends.cpu.get_cpu_capability()


# /proc/cpuinfo flag -> the name printed for it. oneDNN runs bfloat16 convolutions in hardware only
# with one of these; torch.ops.mkldnn._is_mkldnn_bf16_supported() says True on any AVX-512 CPU,
# where bf16 is emulated (2x slower than float32 for training, 4.6x for eval: README, Environment).
NATIVE_BF16_FLAGS = {'amx_bf16': 'AMX-BF16', 'avx512_bf16': 'AVX512-BF16'}
# Environment variables that cap the instructions oneDNN, ATen or MKL use: part of the probe's key.
ISA_CAPS = ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA', 'ATEN_CPU_CAPABILITY', 'MKL_ENABLE_INSTRUCTIONS')
# ONEDNN_MAX_CPU_ISA values that stop oneDNN short of its bf16 instructions: bf16 is then emulated
# whatever the flags say (the flags describe the CPU, the cap what oneDNN may use of it).
ONEDNN_ISAS_WITHOUT_BF16 = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2', 'AVX512_CORE', 'AVX512_CORE_VNNI')
# bf16 is picked only where the probe runs it in at most this share of the float32 time: a ratio
# near 1 is within the probe's noise and buys nothing for the precision it costs.
BF16_MAX_RATIO = 0.9


def read_cpuinfo(path: str = '/proc/cpuinfo') -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ('model name', 'flags', ...); {} where there is
    no such file (macOS, Windows: no native bf16 is assumed there)."""
    info: Dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(':')
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def bf16_flag(flags: str) -> Optional[str]:
    """'AMX-BF16' or 'AVX512-BF16' when the CPU flags (space-separated) run bfloat16 in hardware, else None."""
    present = set(flags.split())
    return next((name for flag, name in NATIVE_BF16_FLAGS.items() if flag in present), None)


def cpu_kind() -> str:
    """One of the three CPU kinds the README's speed figures are given for, as this process runs:
    'AMX-BF16', 'AVX512-BF16', 'AVX-512 without bf16' or 'AVX2' (ATEN_CPU_CAPABILITY=avx2 counts as AVX2),
    with any oneDNN cap named."""
    capability = cpu_capability()
    if not capability.startswith('AVX512'):
        kind = capability or platform.machine()
    else:
        kind = bf16_flag(read_cpuinfo().get('flags', '')) or 'AVX-512 without bf16'
    cap = os.environ.get('ONEDNN_MAX_CPU_ISA') or os.environ.get('DNNL_MAX_CPU_ISA')
    return f'{kind} (oneDNN capped at {cap})' if cap else kind


def describe_cpu() -> str:
    """One line for logs and benchmark tables: the CPU kind, its model and the thread count."""
    model = read_cpuinfo().get('model name') or platform.processor() or platform.machine()
    return f'CPU {cpu_kind()}, {model}, {torch.get_num_threads()} threads'


class Bf16Verdict(NamedTuple):
    """Whether bfloat16 autocast is worth it here, and why (the text the `--amp` line prints)."""
    native: bool
    reason: str
    ratio: Optional[float] = None  # bf16 time / float32 time in the probe, where it ran


class ProbeShape(NamedTuple):
    """The input a run feeds its network: the probe times convolutions at this shape."""
    batch: int = 1
    size: int = 550
    training: bool = False


INFERENCE_550 = ProbeShape()  # eval at the original configs' input size: the default shape


def probe_bf16_ratio(shape: ProbeShape, budget_s: float = 0.3) -> float:
    """Time a ResNet stem (7x7/2 conv, pool, 3x3 convs at strides 4 and 8) in bfloat16 autocast
    and in float32 on `shape`'s input, forward (and backward when training), alternating, best of
    each, for about 2 x `budget_s` (at least 2 rounds) after one warm-up each; -> bf16 time /
    float32 time.

    The shape matters (small inputs gain least from bf16), so it is the run's own."""
    gen = torch.Generator().manual_seed(0)
    widths = (3, 32, 64, 128)
    layers: List[nn.Module] = [nn.Conv2d(3, 32, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    for cin, cout in zip(widths[1:], widths[2:]):
        layers += [nn.Conv2d(cin, cin, 3, 1, 1), nn.ReLU(), nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU()]
    # Channels-last, as YOLACT runs on the CPUs that get here (prefers_channels_last: AVX-512).
    net = nn.Sequential(*layers).train(shape.training).requires_grad_(shape.training)
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(shape.batch, 3, shape.size, shape.size, generator=gen).to(memory_format=torch.channels_last)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.set_grad_enabled(shape.training), torch.autocast('cpu', torch.bfloat16, enabled=bf16):
            out = net(x)
        if shape.training:
            out.float().sum().backward()
        return time.perf_counter() - start

    step(False)
    step(True)
    best = {False: float('inf'), True: float('inf')}
    spent, rounds = 0.0, 0
    while rounds < 2 or (spent < 2 * budget_s and rounds < 20):
        for bf16 in (False, True):
            took = step(bf16)
            best[bf16] = min(best[bf16], took)
            spent += took
        rounds += 1
        if best[True] > 3 * best[False]:
            break  # emulated: clear already, and each call is slow
    return best[True] / best[False]


def speed_cache_file() -> str:
    """Where probe verdicts are kept: $YOLACT_CACHE_DIR, else $XDG_CACHE_HOME/yolact, else
    ~/.cache/yolact; the file cpu_speed.json."""
    folder = os.environ.get('YOLACT_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'yolact')
    return os.path.join(folder, 'cpu_speed.json')


def probe_key(shape: ProbeShape) -> str:
    """The cache key of a probe: this CPU (model name, core count), torch, the ISA caps in the
    environment, and the input shape."""
    caps = ','.join(f'{k}={os.environ[k]}' for k in ISA_CAPS if os.environ.get(k))
    mode = 'train' if shape.training else 'eval'
    return (f"{read_cpuinfo().get('model name', platform.processor())}|{os.cpu_count()} cores|"
            f"torch {torch.__version__}|{caps or 'no caps'}|{mode} {shape.batch}x{shape.size}")


def _read_cache(path: str) -> Dict[str, dict]:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


_VERDICTS: Dict[str, Bf16Verdict] = {}  # per process: the probe and its line happen once


def bf16_verdict(shape: ProbeShape = INFERENCE_550, probe: Optional[Callable[[ProbeShape], float]] = None,
                 cache_file: Optional[str] = None) -> Bf16Verdict:
    """Whether `--amp` should run bfloat16 on this CPU for inputs of `shape`.

    Native only where the CPU flags have AVX512_BF16 or AMX-BF16, PyTorch runs its AVX-512 kernels
    and no ONEDNN_MAX_CPU_ISA cap stops oneDNN below its bf16 instructions; then a probe (`probe_bf16_ratio`, about a second) must find bf16 at most
    BF16_MAX_RATIO of the float32 time: it catches shapes too small to gain and slow paths the
    flags cannot show. Its verdict is
    kept in `speed_cache_file()` under `probe_key(shape)` and read by later runs.
    """
    probe = probe or probe_bf16_ratio
    flag = bf16_flag(read_cpuinfo().get('flags', ''))
    if flag is None:
        return Bf16Verdict(False, 'no native bf16: CPU flags lack avx512_bf16/amx_bf16')
    capability = cpu_capability()
    if not capability.startswith('AVX512'):
        return Bf16Verdict(False, f'no native bf16: PyTorch runs {capability} kernels here')
    cap = _onednn_cap()
    if cap in ONEDNN_ISAS_WITHOUT_BF16:
        return Bf16Verdict(False, f'no native bf16: oneDNN is capped at {cap} (ONEDNN_MAX_CPU_ISA)')
    cache_file = cache_file or speed_cache_file()
    key = probe_key(shape)
    memo = _VERDICTS.get(cache_file + key)
    if memo is not None:
        return memo
    entry = _read_cache(cache_file).get(key)
    if isinstance(entry, dict) and isinstance(entry.get('ratio'), (int, float)):
        ratio, where = float(entry['ratio']), f'cached in {cache_file}'
    else:
        ratio = probe(shape)
        where = f'measured now, cached in {cache_file}'
        cache = _read_cache(cache_file)
        cache[key] = {'ratio': round(ratio, 3), 'cpu_flag': flag}
        try:
            os.makedirs(os.path.dirname(cache_file) or '.', exist_ok=True)
            # A temporary file of its own: DDP ranks on one machine probe and write at the same time.
            write_atomically(cache_file, lambda f: f.write(json.dumps(cache, indent=1, sort_keys=True).encode()))
        except OSError as err:
            where = f'measured now, not cached: {err}'
    native = ratio <= BF16_MAX_RATIO
    probed = f'{shape.batch}x{shape.size} px {"training" if shape.training else "inference"}'
    reason = (f'CPU has {flag}; probe ({probed}): bf16 {ratio:.2f}x the float32 time'
              f'{"" if native else f", not below {BF16_MAX_RATIO}"}, {where}')
    verdict = Bf16Verdict(native, reason, ratio)
    _VERDICTS[cache_file + key] = verdict
    return verdict


def autocast_dtype(device: torch.device, amp: bool, dtype: Optional[torch.dtype] = None, notify=print,
                   shape: ProbeShape = INFERENCE_550) -> Optional[torch.dtype]:
    """The torch.autocast dtype for `--amp [--amp_dtype]`; None means float32.

    `dtype` None (--amp_dtype auto) is float16 on cuda/npu; on CPU it is bfloat16 where
    `bf16_verdict(shape)` finds it native and faster, else float32, the choice and its reason
    announced once per process through `notify`. A given dtype is always used.
    """
    if not amp:
        return None
    if dtype is not None:
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"the autocast dtype must be torch.float16 or torch.bfloat16 (--amp_dtype), got {dtype}")
        return dtype
    if device.type != 'cpu':
        return torch.float16
    verdict = bf16_verdict(shape)
    if notify is not None and verdict.reason not in _ANNOUNCED:
        _ANNOUNCED.add(verdict.reason)
        notify(f'--amp: bfloat16 ({verdict.reason})' if verdict.native else
               f'--amp: float32 ({verdict.reason}; --amp_dtype bf16 forces bfloat16)')
    return torch.bfloat16 if verdict.native else None


_ANNOUNCED: Set[str] = set()


def grad_scaler(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """A GradScaler for float16 training, else None (bfloat16 has float32's range and needs none)."""
    if amp_dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def _onednn_cap() -> str:
    """The ISA cap oneDNN was given in the environment ('' for none), upper case."""
    return (os.environ.get('ONEDNN_MAX_CPU_ISA') or os.environ.get('DNNL_MAX_CPU_ISA') or '').upper()


def conv_isa() -> str:
    """The widest vector ISA oneDNN's convolutions use here, 'AVX512' or what is below it: PyTorch's
    capability, lowered by a cap in ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA (e.g. AVX2)."""
    capability = cpu_capability()
    cap = _onednn_cap()
    if cap and cap != 'ALL' and not cap.startswith('AVX512'):
        return cap
    return capability


def prefers_channels_last(device: torch.device, amp: bool, training: bool = False, notify=None) -> bool:
    """Whether YOLACT runs faster with channels-last (NHWC) weights and activations here.

    On CPU, oneDNN convolutions skip a layout reorder per conv in NHWC, which pays off for
    inference everywhere; for training only where oneDNN runs AVX-512 kernels (`conv_isa`), since
    with AVX2 the backward convolutions are slower in NHWC. The float32 AVX-512 kernels are the same
    on CPUs with and without native bf16, so the ISA decides without a probe. On CUDA, NHWC is what
    tensor cores use under fp16/bf16 autocast. Results are unchanged either way; the measurements
    are in benchmarks/README.md ("Speed paths in the code"). `notify` gets one line naming the
    choice for training on CPU.
    """
    if device.type == 'cpu':
        if not training:
            return True
        isa = conv_isa()
        nhwc = isa.startswith('AVX512')
        if notify is not None:
            notify(f'layout: {"channels-last" if nhwc else "NCHW"} ({isa} convolutions '
                   f'{"train faster in" if nhwc else "train slower in"} NHWC)')
        return nhwc
    if device.type == 'cuda':
        return amp
    return False

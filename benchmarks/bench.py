"""Speed and memory benchmark of the YOLACT port (not a test: it prints figures, it asserts nothing).

    python benchmarks/bench.py [--node_device cpu] [--rows eval_base_fp32 detect ...] [--json out.json]
                               [--threads N] [--quick] [--channels_last auto|on|off] [--compile]

Rows (see benchmarks/README.md for what each one times):
  eval_base_fp32 / eval_base_amp       yolact_base, batch 1, 550x550: forward + Detect + postprocess
  eval_r50_fp32 / eval_r50_amp         the same for yolact_resnet50
  train_base_fp32 / train_base_amp     yolact_base, batch 2: forward + MultiBoxLoss + backward + SGD step
  detect                               Detect (decode, threshold, Fast NMS, top 100) on 19248 x 81 scores
`amp` is torch.autocast in bfloat16 on CPU (AMX where the CPU has it) and float16 on CUDA.

Every row uses the same deterministic weights (tests/parity_fill.py, filled from the key names) and
the same deterministic input, so fp32 figures can be set beside the original implementation's.
Each row runs in its own Python process, so its peak memory is its own.
"""
import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO, os.path.join(REPO, 'tests')):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

# (kind, config name, amp)
ROWS: Dict[str, tuple] = {
    'eval_base_fp32': ('eval', 'yolact_base_config', False),
    'eval_base_amp': ('eval', 'yolact_base_config', True),
    'eval_r50_fp32': ('eval', 'yolact_resnet50_config', False),
    'eval_r50_amp': ('eval', 'yolact_resnet50_config', True),
    'train_base_fp32': ('train', 'yolact_base_config', False),
    'train_base_amp': ('train', 'yolact_base_config', True),
    'detect': ('detect', None, False),
}

# Detect row: the prior count of yolact_base at 550 px and COCO's 80 classes + background.
DETECT_PRIORS = 19248
DETECT_CLASSES = 81
DETECT_MASK_DIM = 32


@dataclass
class Settings:
    """What one row is run with."""
    device: str = 'cpu'
    threads: Optional[int] = None
    size: int = 550
    warmup: int = 2
    repeats: int = 7
    train_warmup: int = 1
    train_repeats: int = 3
    channels_last: str = 'auto'
    compile: bool = False


# ============================================================================================
# Deterministic model, inputs and timing
# ============================================================================================

def fill_weights(net: torch.nn.Module) -> None:
    """Overwrite every tensor of the state_dict in place with its name-seeded value.

    Uses tests/parity_fill.py (the weights the parity data was recorded with) when it is there,
    else a generator seeded per key. In place and one key at a time, so no second copy of the
    weights is ever held (it would inflate the peak memory of every row).
    """
    try:
        from parity_fill import fill_tensor
    except ImportError:
        fill_tensor = _seeded_tensor
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            tensor.copy_(fill_tensor(name, list(tensor.shape), tensor.dtype))


def _seeded_tensor(name: str, shape: List[int], dtype: torch.dtype) -> torch.Tensor:
    """Fallback init: uniform He-style weights, small biases and BN statistics near (0, 1)."""
    import zlib
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if name.endswith('running_var') or (name.endswith('weight') and len(shape) == 1):
        return (0.8 + 0.4 * torch.rand(shape, generator=gen)).to(dtype)
    if name.endswith('weight') and len(shape) >= 2:
        bound = (6.0 / max(1, int(torch.tensor(shape[1:]).prod()))) ** 0.5
        gain = 0.2 if 'conf_layer' in name else 1.0
        return ((torch.rand(shape, generator=gen) * 2 - 1) * bound * gain).to(dtype)
    return ((torch.rand(shape, generator=gen) - 0.5) * 0.1).to(dtype)


def make_image(batch: int, size: int) -> torch.Tensor:
    """Deterministic normalised image batch, Tensor[batch, 3, size, size] (parity_fill's when present)."""
    try:
        from parity_fill import make_input
        return make_input(batch, size, size)
    except ImportError:
        gen = torch.Generator().manual_seed(1234)
        return torch.randn(batch, 3, size, size, generator=gen)


def detect_inputs(num_priors: int = DETECT_PRIORS, num_classes: int = DETECT_CLASSES,
                  mask_dim: int = DETECT_MASK_DIM, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random predictions for one image, as Yolact hands them to Detect.

    Returns 'loc' (Tensor[1, P, 4]), 'conf' (Tensor[1, P, C], softmax scores), 'mask'
    (Tensor[1, P, M]) and 'priors' (Tensor[P, 4], cx cy w h). The logits' spread (1.5) puts the
    best foreground score of nearly every prior above Detect's 0.05 threshold: the worst case,
    where every prior is a candidate.
    """
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(num_priors, 2, generator=gen)
    sizes = 0.02 + 0.4 * torch.rand(num_priors, 2, generator=gen)
    return {
        'loc': 0.5 * torch.randn(1, num_priors, 4, generator=gen),
        'conf': torch.softmax(1.5 * torch.randn(1, num_priors, num_classes, generator=gen), dim=-1),
        'mask': torch.tanh(torch.randn(1, num_priors, mask_dim, generator=gen)),
        'priors': torch.cat((centers, sizes), dim=1),
    }


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device,
               on_warm: Optional[Callable[[], None]] = None) -> Tuple[List[float], float]:
    """Seconds per call of fn after `warmup` untimed calls (waiting for the device around each
    call), and the seconds of the very first call (which includes any compilation).
    `on_warm` runs between the warm-up and the timed calls."""
    from utils.device import synchronize
    first = 0.0
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i == 0:
            first = time.perf_counter() - start
    if on_warm is not None:
        on_warm()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, first


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CPU: the kernel's VmHWM via /proc/self/clear_refs).

    On glibc, freed heap memory (e.g. the temporaries of filling the weights) is first handed back
    to the system with malloc_trim, so the window starts from what the process really holds.
    """
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass  # the window then starts at process start; peak_rss_process tells the same


def peak_memory(device: torch.device) -> Dict[str, Optional[int]]:
    """Peak bytes: 'peak_rss_process' (whole process, getrusage), 'peak_rss_run' (since the last
    reset_peak_memory, from /proc/self/status VmHWM), and on CUDA 'peak_cuda_allocated'."""
    out: Dict[str, Optional[int]] = {
        'peak_rss_process': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        'peak_rss_run': None,
    }
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    out['peak_rss_run'] = int(line.split()[1]) * 1024
    except OSError:
        pass
    if device.type == 'cuda':
        out['peak_cuda_allocated'] = torch.cuda.max_memory_allocated(device)
    return out


def amp_dtype(device: torch.device) -> Optional[torch.dtype]:
    """What `--amp` runs in here (utils.device.autocast_dtype): None on a CPU without native bf16,
    where the `_amp` rows then run float32, as train.py and eval.py would."""
    from utils.device import autocast_dtype
    return autocast_dtype(device, amp=True, notify=None)


def use_channels_last(setting: str, device: torch.device, amp: bool, training: bool = False) -> bool:
    """--channels_last auto: whatever `utils.device.prefers_channels_last` says for this device,
    precision and mode."""
    if setting == 'on':
        return True
    if setting == 'off':
        return False
    from utils.device import prefers_channels_last
    return prefers_channels_last(device, amp, training)


def build_net(config: str, size: int, device: torch.device, train: bool):
    """A Yolact of `config` with deterministic weights, on `device`, in train or eval mode.

    Eval nets use Fast NMS (per class), as eval.py does. Train nets freeze BatchNorm as train.py
    does for fewer than 6 images per process.
    """
    from data.config import cfg, set_cfg
    from yolact import Yolact
    set_cfg(config)
    cfg.max_size = size
    cfg.freeze_bn = train
    net = Yolact()
    fill_weights(net)
    net = net.to(device)
    net.train(train)
    net.detect.use_fast_nms = True
    net.detect.use_cross_class_nms = False
    return net


# ============================================================================================
# Rows
# ============================================================================================

def run_eval(config: str, amp: bool, s: Settings, device: torch.device) -> Dict:
    from layers.output_utils import postprocess
    net = build_net(config, s.size, device, train=False)
    channels_last = use_channels_last(s.channels_last, device, amp)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if s.compile:
        net.compile_network()
    image = make_image(1, s.size).to(device)
    autocast = torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp)
    counts = []

    def step():
        with torch.inference_mode(), autocast:
            dets = net(image)
            classes, scores, boxes, masks = postprocess(dets, s.size, s.size)
        counts.append(int(classes.shape[0]))

    # With --compile the window starts after the warm-up, so it holds inference, not the compiler.
    reset_peak_memory(device)
    times, first = time_calls(step, max(s.warmup, 1), s.repeats, device,
                              on_warm=(lambda: reset_peak_memory(device)) if s.compile else None)
    return {'seconds': times, 'unit': 'ms/img', 'scale': 1000.0, 'detections': counts[-1],
            'first_call_s': first, 'channels_last': channels_last, 'compile': s.compile,
            **peak_memory(device)}


def run_train(config: str, amp: bool, s: Settings, device: torch.device) -> Dict:
    from parity_fill import make_targets
    from train import NetLoss, build_criterion, train_step
    net = build_net(config, s.size, device, train=True)
    channels_last = use_channels_last(s.channels_last, device, amp, training=True)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    dtype = amp_dtype(device) if amp else None
    model = NetLoss(net, build_criterion(), amp_dtype=dtype)
    # Plain SGD with the original's defaults (lr 1e-3, momentum 0.9, decay 5e-4); a tiny lr keeps
    # the weights, and so the work per step, nearly fixed over the repeats.
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-7, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    images = make_image(2, s.size).to(device)
    targets, masks, num_crowds = make_targets(s.size, s.size)
    targets = [t.to(device) for t in targets]
    masks = [m.to(device) for m in masks]
    losses = []

    def step():
        # The loss may rewrite its target lists (crowds): hand it fresh lists each step.
        result = train_step(model, optimizer, (images, list(targets), list(masks), list(num_crowds)), scaler)
        losses.append(result.total)

    reset_peak_memory(device)
    times, first = time_calls(step, s.train_warmup, s.train_repeats, device)
    return {'seconds': times, 'unit': 's/step', 'scale': 1.0, 'loss': losses[-1],
            'channels_last': channels_last, **peak_memory(device)}


def run_detect(s: Settings, device: torch.device) -> Dict:
    from data.config import cfg, set_cfg
    from layers.functions.detection import Detect
    set_cfg('yolact_base_config')
    detect = Detect(DETECT_CLASSES, bkg_label=0, top_k=cfg.nms_top_k, conf_thresh=cfg.nms_conf_thresh,
                    nms_thresh=cfg.nms_thresh)
    detect.use_fast_nms = True
    preds = {k: v.to(device) for k, v in detect_inputs().items()}
    counts = []

    def step():
        with torch.inference_mode():
            out = detect(preds)
        counts.append(int(out[0]['detection']['score'].shape[0]))

    reset_peak_memory(device)
    times, first = time_calls(step, max(s.warmup, 3), max(s.repeats, 20), device)
    return {'seconds': times, 'unit': 'ms', 'scale': 1000.0, 'detections': counts[-1],
            **peak_memory(device)}


def run_row(name: str, s: Settings) -> Dict:
    """Run one row in this process and return its record."""
    from utils.device import select_device
    if s.threads:
        torch.set_num_threads(s.threads)
    device = select_device(s.device)
    kind, config, amp = ROWS[name]
    if amp and amp_dtype(device) is None:
        print(f'{name}: this CPU has no native bfloat16; --amp runs float32 here', file=sys.stderr)
        amp = False
    load_before = os.getloadavg()
    if kind == 'eval':
        rec = run_eval(config, amp, s, device)
    elif kind == 'train':
        rec = run_train(config, amp, s, device)
    else:
        rec = run_detect(s, device)
    times = rec.pop('seconds')
    scale = rec.pop('scale')
    rec.update(row=name, config=config, amp=(str(amp_dtype(device)).replace('torch.', '') if amp else None),
               median=statistics.median(times) * scale, min=min(times) * scale,
               times=[t * scale for t in times], threads=torch.get_num_threads(),
               device=str(device), size=s.size if kind != 'detect' else None,
               loadavg_before=list(load_before), loadavg_after=list(os.getloadavg()))
    return rec


# ============================================================================================
# Driver
# ============================================================================================

def _gib(n: Optional[int]) -> str:
    return '-' if n is None else f"{n / 2 ** 30:.2f}"


def format_table(records: List[Dict]) -> str:
    head = (f"{'row':<17} {'median':>9} {'min':>9} {'unit':<7} {'peak RSS GiB':>12} {'run GiB':>8} "
            f"{'cuda GiB':>8} {'thr':>3} {'CL':>3} {'cmp':>3} {'load1 (before/after)':>20}")
    lines = [head, '-' * len(head)]
    for r in records:
        if 'error' in r:
            lines.append(f"{r['row']:<17} ERROR: {r['error'].strip().splitlines()[-1][:90]}")
            continue
        cl = 'y' if r.get('channels_last') else ('n' if 'channels_last' in r else '-')
        compiled = 'y' if r.get('compile') else ('n' if 'compile' in r else '-')
        load = f"{r['loadavg_before'][0]:.2f}/{r['loadavg_after'][0]:.2f}"
        lines.append(f"{r['row']:<17} {r['median']:>9.1f} {r['min']:>9.1f} {r['unit']:<7} "
                     f"{_gib(r['peak_rss_process']):>12} {_gib(r['peak_rss_run']):>8} "
                     f"{_gib(r.get('peak_cuda_allocated')):>8} {r['threads']:>3} {cl:>3} {compiled:>3} {load:>20}")
    return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--node_device', default='cpu', help='cpu, cuda or npu (as train.py/eval.py)')
    p.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS), metavar='ROW',
                   help=f"rows to run (default: all): {', '.join(ROWS)}")
    p.add_argument('--json', default=None, help='write the records to this JSON file')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s)')
    p.add_argument('--quick', action='store_true',
                   help='smoke test: 256 px, 1 warm-up and 2 timed calls (train: 0 and 1)')
    p.add_argument('--size', type=int, default=550, help='input size of the eval and train rows')
    p.add_argument('--repeats', type=int, default=None, help='timed calls per eval row (default 7)')
    p.add_argument('--train_repeats', type=int, default=None, help='timed steps per train row (default 3)')
    p.add_argument('--channels_last', default='auto', choices=('auto', 'on', 'off'),
                   help='channels-last convolutions (auto: where measured to help, see yolact.py)')
    p.add_argument('--compile', action='store_true', help='torch.compile the network of the eval rows')
    p.add_argument('--in_process', action='store_true',
                   help='run the rows in this process (peak memory is then shared across rows)')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    p.add_argument('--child_settings', default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    if args.child_settings:
        return Settings(**json.loads(args.child_settings))
    s = Settings(device=args.node_device, threads=args.threads, size=args.size,
                 channels_last=args.channels_last, compile=args.compile)
    if args.quick:
        s.size, s.warmup, s.repeats, s.train_warmup, s.train_repeats = 256, 1, 2, 0, 1
    if args.repeats:
        s.repeats = args.repeats
    if args.train_repeats:
        s.train_repeats = args.train_repeats
    return s


def run_in_child(name: str, argv: List[str]) -> Dict:
    """Run one row in a fresh interpreter (own peak memory) and read its JSON record."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, '--child', name]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{'):
            return json.loads(line)
    return {'row': name, 'error': proc.stderr or proc.stdout or f'exit status {proc.returncode}'}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    s = settings_from(args)
    if args.child:
        print(json.dumps(run_row(args.child, s)))
        return 0

    child_argv = ['--child_settings', json.dumps(asdict(s))]

    records = []
    for name in args.rows:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rec = run_row(name, s) if args.in_process else run_in_child(name, child_argv)
        records.append(rec)
    print(format_table(records))
    meta = {'torch': torch.__version__, 'python': platform.python_version(), 'machine': platform.machine(),
            'cpu_count': os.cpu_count(), 'settings': asdict(s), 'quick': args.quick}
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'meta': meta, 'rows': records}, f, indent=1)
    return 1 if any('error' in r for r in records) else 0


if __name__ == '__main__':
    sys.exit(main())

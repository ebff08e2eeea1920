"""Speed and memory benchmark of the YOLACT port (not a test: it prints figures, it asserts nothing).

    python benchmarks/bench.py [--node_device cpu] [--rows eval_base_fp32 detect ...] [--json out.json]
                               [--threads N] [--quick] [--channels_last auto|on|off] [--compile]
                               [--compare-original DIR] [--rounds N]

Rows (see benchmarks/README.md for what each one times):
  eval_base_fp32 / eval_base_amp       yolact_base, batch 1, 550x550: forward + Detect + postprocess
  eval_r50_fp32 / eval_r50_amp         the same for yolact_resnet50
  train_base_fp32 / train_base_amp     yolact_base, batch 2: forward + MultiBoxLoss + backward + SGD step
  train_demo_fp32 / train_demo_amp     the demo config, batch 8 at 160 px (not in the default rows)
  detect                               Detect (decode, threshold, Fast NMS, top 100) on 19248 x 81 scores
  runtime_base_fp32 / runtime_base_int8   yolact_base exported by export.py (float32 / int8), run in
                                       onnxruntime on the CPU, + Detect + postprocess (not default)
  eval_demo_fp32, runtime_demo_fp32 / runtime_demo_int8   the same three for the demo config at 160 px
`amp` rows run what `--amp` picks for their shape (utils.device.autocast_dtype): float16 on CUDA;
on CPU bfloat16 where the CPU has it natively and its probe finds it faster, else float32.

Every row uses the same deterministic weights (benchmarks/parity_fill.py, filled from the key names) and
the same deterministic input, so fp32 figures can be set beside the original implementation's.
Each row runs in its own Python process, so its peak memory is its own.

The table starts with the CPU's kind (AMX-BF16, AVX-512 without bf16, AVX2: utils.device.cpu_kind) and its 4096 x 4096 matmul rate; each row gets its
FLOPs (flop counter) and the % of that rate it reaches. `--compare-original DIR` runs every row
also on the original YOLACT checked out in DIR (benchmarks/original.py), right after the port's.
"""
import argparse
import contextlib
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
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

# Imported before --compare-original takes the port's root off sys.path.
from benchmarks.parity_fill import fill_tensor, make_input, make_targets  # noqa: E402


class Row(NamedTuple):
    """What a row runs: its kind, config, autocast or not, (when not bench.py's --size and
    batch 1 / 2) its own input size and batch, and for `runtime` rows the exported precision."""
    kind: str
    config: Optional[str]
    amp: bool
    size: Optional[int] = None
    batch: Optional[int] = None
    precision: Optional[str] = None


ROWS: Dict[str, Row] = {
    'eval_base_fp32': Row('eval', 'yolact_base_config', False),
    'eval_base_amp': Row('eval', 'yolact_base_config', True),
    'eval_r50_fp32': Row('eval', 'yolact_resnet50_config', False),
    'eval_r50_amp': Row('eval', 'yolact_resnet50_config', True),
    'train_base_fp32': Row('train', 'yolact_base_config', False),
    'train_base_amp': Row('train', 'yolact_base_config', True),
    # The 15-minute demo's training step (run_demo.sh: batch 8, 160 px; float32 where bf16 is not native).
    'train_demo_fp32': Row('train', 'yolact_resnet18_synthetic_config', False, size=160, batch=8),
    'train_demo_amp': Row('train', 'yolact_resnet18_synthetic_config', True, size=160, batch=8),
    'detect': Row('detect', None, False),
    # The file export.py writes (float32, or --int8), run by onnxruntime as eval.py runs it
    # (utils/runtime_model.RuntimeYolact), then the same Detect and postprocess as the eval rows.
    'runtime_base_fp32': Row('runtime', 'yolact_base_config', False, precision='fp32'),
    'runtime_base_int8': Row('runtime', 'yolact_base_config', False, precision='int8'),
    'eval_demo_fp32': Row('eval', 'yolact_resnet18_synthetic_config', False, size=160),
    'runtime_demo_fp32': Row('runtime', 'yolact_resnet18_synthetic_config', False, size=160, precision='fp32'),
    'runtime_demo_int8': Row('runtime', 'yolact_resnet18_synthetic_config', False, size=160, precision='int8'),
}
# The rows that need export tools (requirements-export.txt) and minutes of export are asked for by name.
DEFAULT_ROWS = [name for name in ROWS
                if ROWS[name].kind != 'runtime' and 'demo' not in name]
RUNTIME_ROWS = ['eval_base_fp32', 'runtime_base_fp32', 'runtime_base_int8',
                'eval_demo_fp32', 'runtime_demo_fp32', 'runtime_demo_int8']

# The original's row each port row is set beside (`--compare-original`): the original has no
# autocast, so `amp` rows are compared with its float32 row; the demo config is the port's own.
ORIGINAL_ROWS = {'eval_base_fp32': 'eval_base_fp32', 'eval_base_amp': 'eval_base_fp32',
                 'runtime_base_fp32': 'eval_base_fp32', 'runtime_base_int8': 'eval_base_fp32',
                 'eval_r50_fp32': 'eval_r50_fp32', 'eval_r50_amp': 'eval_r50_fp32',
                 'train_base_fp32': 'train_base_fp32', 'train_base_amp': 'train_base_fp32',
                 'detect': 'detect'}

# Calibration inputs of the int8 rows (deterministic images like the timed one).
RUNTIME_CALIB_IMAGES = 4
RUNTIME_CACHE = os.path.join(os.path.expanduser('~'), '.cache', 'yolact_bench')

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

    The weights the parity data was recorded with (benchmarks/parity_fill.py). In place and one
    key at a time, so no second copy of the weights is ever held (it would inflate the peak
    memory of every row).
    """
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            tensor.copy_(fill_tensor(name, list(tensor.shape), tensor.dtype))


def make_image(batch: int, size: int) -> torch.Tensor:
    """Deterministic normalised image batch, Tensor[batch, 3, size, size] (parity_fill's)."""
    return make_input(batch, size, size)


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


# CPU seconds (all threads of this process) of each timed call, set by time_calls: a call whose
# CPU time is far below wall time x threads waited for the cores (another program was running).
TIMING_NOTES: Dict[str, List[float]] = {}


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device,
               on_warm: Optional[Callable[[], None]] = None) -> Tuple[List[float], float]:
    """Seconds per call of fn after `warmup` untimed calls (waiting for the device around each
    call), and the seconds of the very first call (which includes any compilation).
    `on_warm` runs between the warm-up and the timed calls."""
    first = 0.0
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        if i == 0:
            first = time.perf_counter() - start
    if on_warm is not None:
        on_warm()
    times = []
    cpu_times = []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    TIMING_NOTES['cpu_seconds'] = cpu_times
    return times, first


def _synchronize(device: torch.device) -> None:
    """utils.device.synchronize, imported only off the CPU: a process running the original (whose
    `utils` package shadows the port's) times CPU rows only."""
    if device.type != 'cpu':
        from utils.device import synchronize
        synchronize(device)


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of fn (torch.utils.flop_counter: convolutions,
    matmuls and their backward; elementwise work is not counted). A compiled network runs
    eagerly for the count, so compiled and eager rows count the same work."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch._dynamo.config.patch(disable=True), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    """The machine's dense matmul rate in GFLOP/s (best of `repeats` n x n products after one
    warm-up, at torch's current thread count): the yardstick for each row's % of the machine."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times, _ = time_calls(lambda: torch.mm(a, b), 1, repeats, device)
    return 2 * n ** 3 / min(times) / 1e9


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


def amp_dtype(device: torch.device, row: Row, size: int) -> Optional[torch.dtype]:
    """What `--amp` runs `row` in here (utils.device.autocast_dtype at the row's batch, size and
    mode, as train.py and eval.py decide): None where bf16 is not native or not faster on this CPU,
    where the `_amp` rows then run float32."""
    from utils.device import ProbeShape, autocast_dtype
    training = row.kind == 'train'
    shape = ProbeShape(row.batch or (2 if training else 1), size, training)
    return autocast_dtype(device, amp=True, notify=None, shape=shape)


def use_channels_last(setting: str, device: torch.device, amp: bool, training: bool = False) -> bool:
    """--channels_last auto: whatever `utils.device.prefers_channels_last` says for this device,
    precision and mode."""
    if setting == 'on':
        return True
    if setting == 'off':
        return False
    from utils.device import prefers_channels_last
    return prefers_channels_last(device, amp, training)


def build_net(config: str, size: int, device: torch.device, train: bool, freeze_bn: bool = True):
    """A Yolact of `config` with deterministic weights, on `device`, in train or eval mode.

    Eval nets use Fast NMS (per class), as eval.py does. Train nets freeze BatchNorm when
    `freeze_bn` (train.py does for fewer than 6 images per process).
    """
    from data.config import cfg, set_cfg
    from yolact import Yolact
    set_cfg(config)
    cfg.max_size = size
    cfg.freeze_bn = train and freeze_bn
    net = Yolact(cfg)
    fill_weights(net)
    net = net.to(device)
    net.train(train)
    net.detect.use_fast_nms = True
    net.detect.use_cross_class_nms = False
    return net


def train_batch(batch: int, size: int, num_classes: int):
    """Images, targets, masks and crowd counts of a training batch: parity_fill's two images and
    their objects, repeated to `batch`, class indices folded into the config's classes."""
    targets, masks, num_crowds = make_targets(size, size)
    reps = -(-batch // len(targets))
    targets = [t.clone() for t in targets * reps][:batch]
    for t in targets:
        t[:, 4] = t[:, 4] % (num_classes - 1)
    return make_image(batch, size), targets, (masks * reps)[:batch], (num_crowds * reps)[:batch]


# ============================================================================================
# Rows
# ============================================================================================

def run_eval(row: Row, size: int, s: Settings, device: torch.device) -> Dict:
    from layers.output_utils import postprocess
    net = build_net(row.config, size, device, train=False)
    channels_last = use_channels_last(s.channels_last, device, row.amp)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if s.compile:
        net.compile_network()
    image = make_image(1, size).to(device)
    autocast = torch.autocast(device.type, dtype=amp_dtype(device, row, size), enabled=row.amp)
    counts = []

    def step():
        with torch.inference_mode(), autocast:
            dets = net(image)
            classes, scores, boxes, masks = postprocess(dets, size, size)
        counts.append(int(classes.shape[0]))

    def forward():
        with torch.inference_mode(), autocast:
            net(image)

    # With --compile the window starts after the warm-up, so it holds inference, not the compiler.
    reset_peak_memory(device)
    times, first = time_calls(step, max(s.warmup, 1), s.repeats, device,
                              on_warm=(lambda: reset_peak_memory(device)) if s.compile else None)
    return {'seconds': times, 'unit': 'ms/img', 'scale': 1000.0, 'detections': counts[-1],
            'first_call_s': first, 'channels_last': channels_last, 'compile': s.compile,
            'flops': count_flops(forward), **peak_memory(device)}


def run_train(row: Row, size: int, s: Settings, device: torch.device) -> Dict:
    from data.config import cfg
    from training.schedule import MIN_BN_BATCH
    from training.step import NetLoss, build_criterion, train_step
    batch = row.batch or 2
    net = build_net(row.config, size, device, train=True, freeze_bn=batch < MIN_BN_BATCH)
    channels_last = use_channels_last(s.channels_last, device, row.amp, training=True)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if s.compile:
        net.compile_network(freeze=False)
    dtype = amp_dtype(device, row, size) if row.amp else None
    model = NetLoss(net, build_criterion(cfg), amp_dtype=dtype)
    # The config's optimizer with the original's defaults (momentum 0.9, decay 5e-4); a tiny lr
    # keeps the weights, and so the work per step, nearly fixed over the repeats.
    if cfg.optimizer == 'adamw':
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-7, weight_decay=5e-4)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-7, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    images, targets, masks, num_crowds = train_batch(batch, size, cfg.num_classes)
    images = images.to(device)
    targets = [t.to(device) for t in targets]
    masks = [m.to(device) for m in masks]
    losses = []

    def step():
        # The loss may rewrite its target lists (crowds): hand it fresh lists each step.
        result = train_step(model, optimizer, (images, list(targets), list(masks), list(num_crowds)), scaler)
        losses.append(result.total)

    reset_peak_memory(device)
    times, first = time_calls(step, s.train_warmup, s.train_repeats, device)
    return {'seconds': times, 'unit': 's/step', 'scale': 1.0, 'loss': losses[-1], 'batch': batch,
            'first_call_s': first if s.train_warmup else None, 'channels_last': channels_last,
            'compile': s.compile, 'flops': count_flops(step), **peak_memory(device)}


def run_detect(s: Settings, device: torch.device) -> Dict:
    from data.config import cfg, set_cfg
    from layers.functions.detection import Detect
    set_cfg('yolact_base_config')
    detect = Detect(DETECT_CLASSES, bkg_label=0, top_k=cfg.nms_top_k, conf_thresh=cfg.nms_conf_thresh,
                    nms_thresh=cfg.nms_thresh, max_num_detections=cfg.max_num_detections,
                    max_size=cfg.max_size)
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


def exported_file(row: Row, size: int, net) -> str:
    """The ONNX file of `net` (row's config, deterministic weights) that export.py writes, float32
    or int8 (calibrated on RUNTIME_CALIB_IMAGES deterministic inputs), made once and cached under
    RUNTIME_CACHE by config, size, precision and the hash of the code that shapes the graph."""
    import hashlib

    from deploy import exporting, quantize
    code = hashlib.sha256()
    for rel in ('deploy/exporting.py', 'deploy/quantize.py', 'yolact.py', 'backbone.py', 'data/config.py', 'layers/box_utils.py',
                'benchmarks/parity_fill.py'):
        path = os.path.join(REPO, rel)
        if os.path.isfile(path):
            with open(path, 'rb') as f:
                code.update(f.read())
    key = f"{row.config}_{size}_{row.precision}_{torch.__version__}_{code.hexdigest()[:12]}"
    path = os.path.join(RUNTIME_CACHE, key + '.onnx')
    if os.path.isfile(path):
        return path
    os.makedirs(RUNTIME_CACHE, exist_ok=True)
    model = exporting.ExportableYolact(net)
    partial = path + f'.{os.getpid()}.tmp.onnx'
    with contextlib.redirect_stdout(sys.stderr):
        if row.precision == 'int8':
            images = make_image(RUNTIME_CALIB_IMAGES, size)
            inputs = [images[i:i + 1].numpy() for i in range(RUNTIME_CALIB_IMAGES)]
            quantize.export_int8(model, partial, inputs, check=False)
        else:
            exporting.export_onnx(model, partial)
    os.replace(partial, path)
    return path


def run_runtime(row: Row, size: int, s: Settings, device: torch.device) -> Dict:
    """An exported file in onnxruntime (CPU) + the repository's Detect + postprocess, as eval.py
    runs a .onnx; the same deterministic weights and input as the eval rows. FLOPs are those of
    the PyTorch network the file was exported from."""
    from deploy.runtime_model import load_exported
    from layers.output_utils import postprocess
    net = build_net(row.config, size, torch.device('cpu'), train=False)
    path = exported_file(row, size, net)
    with contextlib.redirect_stdout(sys.stderr):
        runtime = load_exported(path)
    if s.threads:
        runtime.session = _session_with_threads(path, s.threads)
    runtime.detect.use_fast_nms = True
    image = make_image(1, size)
    counts = []

    def step():
        with torch.inference_mode():
            dets = runtime(image)
            classes, scores, boxes, masks = postprocess(dets, size, size)
        counts.append(int(classes.shape[0]))

    def forward():
        with torch.inference_mode():
            net(image)

    reset_peak_memory(device)
    times, first = time_calls(step, max(s.warmup, 1), s.repeats, torch.device('cpu'))
    rec = {'seconds': times, 'unit': 'ms/img', 'scale': 1000.0, 'detections': counts[-1],
           'first_call_s': first, 'precision': row.precision, 'file_mb': os.path.getsize(path) / 2 ** 20,
           **peak_memory(device)}
    rec['flops'] = count_flops(forward)
    return rec


def _session_with_threads(path: str, threads: int):
    """An onnxruntime session of `path` with `threads` intra-op threads (bench.py --threads)."""
    import onnxruntime as ort

    from deploy.runtime_model import _session_options
    options = _session_options(ort)
    options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def run_original(row: Row, size: int, s: Settings, checkout: str) -> Dict:
    """The same row, timed the same way, on the original implementation in `checkout` (float32,
    CPU; see benchmarks/original.py for how it runs on today's torch)."""
    import original
    original.import_original(checkout)
    device = torch.device('cpu')
    counts, losses = [], []
    if row.kind == 'eval':
        net = original.build_net(row.config, size, False, fill_weights)
        image = make_image(1, size)
        step = original.eval_step(net, image, size, counts)
        warmup, repeats, unit, scale = max(s.warmup, 1), s.repeats, 'ms/img', 1000.0

        def counted():
            with torch.inference_mode():
                net(image)
    elif row.kind == 'train':
        from data.config import cfg  # the original's
        net = original.build_net(row.config, size, True, fill_weights)
        images, targets, masks, num_crowds = train_batch(row.batch or 2, size, cfg.num_classes)
        step = original.train_step(net, images, targets, masks, num_crowds, losses)
        warmup, repeats, unit, scale = s.train_warmup, s.train_repeats, 's/step', 1.0
        counted = step
    else:
        step = original.detect_step(detect_inputs(), counts)
        warmup, repeats, unit, scale = max(s.warmup, 3), max(s.repeats, 20), 'ms', 1000.0
        counted = None
    reset_peak_memory(device)
    times, _ = time_calls(step, warmup, repeats, device)
    rec = {'seconds': times, 'unit': unit, 'scale': scale, **peak_memory(device)}
    if counts:
        rec['detections'] = counts[-1]
    if losses:
        rec['loss'] = losses[-1]
    if counted is not None:
        rec['flops'] = count_flops(counted)
    return rec


def run_row(name: str, s: Settings, original: Optional[str] = None) -> Dict:
    """Run one row in this process (of the port, or of the original in checkout `original`)
    and return its record."""
    if s.threads:
        torch.set_num_threads(s.threads)
    row = ROWS[name]
    size = row.size or s.size
    load_before = os.getloadavg()
    if original:
        device = torch.device('cpu')
        amp = False
        rec = run_original(row, size, s, original)
    else:
        from utils.device import select_device
        device = select_device(s.device)
        amp = row.amp
        if amp and amp_dtype(device, row, size) is None:
            from utils.device import ProbeShape, bf16_verdict
            reason = bf16_verdict(ProbeShape(row.batch or (2 if row.kind == 'train' else 1), size,
                                             row.kind == 'train')).reason
            print(f'{name}: --amp runs float32 here ({reason})', file=sys.stderr)
            amp = False
        row = row._replace(amp=amp)
        if row.kind == 'eval':
            rec = run_eval(row, size, s, device)
        elif row.kind == 'runtime':
            rec = run_runtime(row, size, s, device)
        elif row.kind == 'train':
            rec = run_train(row, size, s, device)
        else:
            rec = run_detect(s, device)
    times = rec.pop('seconds')
    scale = rec.pop('scale')
    cpu = TIMING_NOTES.get('cpu_seconds', [])
    if cpu and device.type == 'cpu':
        # Share of the available thread-time the timed calls got; well below 1: the cores were busy.
        # The CPU time per call (all threads) then is the steadier figure: waiting does not count.
        rec['cpu_utilisation'] = sum(cpu) / (sum(times) * torch.get_num_threads())
        rec['cpu_seconds'] = cpu
        rec['cpu_median'] = statistics.median(cpu) * scale
    rec.update(row=name, impl='original' if original else 'port', config=row.config,
               amp=(str(amp_dtype(device, row, size)).replace('torch.', '') if amp else None),
               median=statistics.median(times) * scale, min=min(times) * scale, seconds=times,
               times=[t * scale for t in times], threads=torch.get_num_threads(),
               device=str(device), size=size if row.kind != 'detect' else None,
               loadavg_before=list(load_before), loadavg_after=list(os.getloadavg()))
    return rec


# ============================================================================================
# Driver
# ============================================================================================

def machine_rates(device: torch.device, int8: bool = False) -> Dict[str, float]:
    """GFLOP/s of a 4096 x 4096 matmul here: 'float32', the autocast dtype where it is native, and
    with `int8` onnxruntime's uint8 x int8 matmul (GOP/s), the yardstick of the int8 rows."""
    from utils.device import bf16_flag, read_cpuinfo
    rates = {'float32': matmul_rate(device, torch.float32)}
    # The reduced precision the amp rows may run in: fp16 on GPUs, bf16 where the CPU has it in hardware.
    dtype = torch.float16 if device.type != 'cpu' else (
        torch.bfloat16 if bf16_flag(read_cpuinfo().get('flags', '')) else None)
    if dtype is not None:
        rates[str(dtype).replace('torch.', '')] = matmul_rate(device, dtype)
    if int8:
        rates['int8'] = int8_matmul_rate()
    return rates


def int8_matmul_rate(n: int = 4096, repeats: int = 3) -> float:
    """onnxruntime's CPU rate in GOP/s for an n x n uint8 x int8 -> int32 matmul (MatMulInteger, the
    kernel family its int8 convolutions use), best of `repeats` after one warm-up, at
    torch.get_num_threads() threads."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-64, 64, size=(n, n), dtype=np.int8), 'b')
    graph = helper.make_graph([helper.make_node('MatMulInteger', ['a', 'b'], ['y'])], 'mm',
                              [helper.make_tensor_value_info('a', TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info('y', TensorProto.INT32, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    a = rng.integers(0, 255, size=(n, n), dtype=np.uint8)
    times, _ = time_calls(lambda: session.run(None, {'a': a}), 1, repeats, torch.device('cpu'))
    del onnx
    return 2 * n ** 3 / min(times) / 1e9


def add_rates(rec: Dict, rates: Dict[str, float]) -> None:
    """A record's GFLOP/s (its FLOPs over its median time) and its % of the matmul rate of its
    precision."""
    if 'error' in rec or not rec.get('flops'):
        return
    rec['gflop'] = rec['flops'] / 1e9
    rec['gflops'] = rec['gflop'] / statistics.median(rec['seconds'])
    rate = rates.get(rec.get('amp') or ('int8' if rec.get('precision') == 'int8' else 'float32'))
    if rate:
        rec['pct_of_matmul'] = 100 * rec['gflops'] / rate


def merge_rounds(records: List[Dict]) -> Dict:
    """One record from the same row's runs in several rounds: all their timed calls together."""
    if len(records) == 1 or any('error' in r for r in records):
        return records[0] if len(records) == 1 else next(r for r in records if 'error' in r)
    merged = dict(records[0])
    merged['seconds'] = [t for r in records for t in r['seconds']]
    scale = records[0]['times'][0] / records[0]['seconds'][0]
    merged['times'] = [t * scale for t in merged['seconds']]
    merged['median'] = statistics.median(merged['times'])
    merged['min'] = min(merged['times'])
    merged['loadavg_after'] = records[-1]['loadavg_after']
    if all('cpu_seconds' in r for r in records):
        merged['cpu_seconds'] = [t for r in records for t in r['cpu_seconds']]
        merged['cpu_median'] = statistics.median(merged['cpu_seconds']) * scale
        merged['cpu_utilisation'] = sum(merged['cpu_seconds']) / (sum(merged['seconds']) * merged['threads'])
    for key in ('peak_rss_process', 'peak_rss_run'):
        values = [r[key] for r in records if r.get(key) is not None]
        merged[key] = max(values) if values else None
    return merged


def _gib(n: Optional[int]) -> str:
    return '-' if n is None else f"{n / 2 ** 30:.2f}"


def _opt(value: Optional[float], fmt: str) -> str:
    return '-' if value is None else format(value, fmt)


def format_table(records: List[Dict], machine: Optional[str] = None) -> str:
    """The rows' figures, under `machine` (describe_cpu(): the CPU kind, model and threads) when given."""
    head = (f"{'row':<17} {'impl':<8} {'median':>9} {'min':>9} {'CPU':>9} {'unit':<7} {'GFLOP':>7} {'%mm':>4} "
            f"{'peak RSS GiB':>12} {'run GiB':>8} {'cuda GiB':>8} {'thr':>3} {'CL':>3} {'cmp':>3} "
            f"{'cpu%':>5} {'load1 (before/after)':>20}")
    lines = ([machine] if machine else []) + [head, '-' * len(head)]
    for r in records:
        if 'error' in r:
            lines.append(f"{r['row']:<17} {r.get('impl', ''):<8} ERROR: {r['error'].strip().splitlines()[-1][:90]}")
            continue
        cl = 'y' if r.get('channels_last') else ('n' if 'channels_last' in r else '-')
        compiled = 'y' if r.get('compile') else ('n' if 'compile' in r else '-')
        load = f"{r['loadavg_before'][0]:.2f}/{r['loadavg_after'][0]:.2f}"
        util = f"{100 * r['cpu_utilisation']:.0f}" if 'cpu_utilisation' in r else '-'
        lines.append(f"{r['row']:<17} {r['impl']:<8} {r['median']:>9.1f} {r['min']:>9.1f} "
                     f"{_opt(r.get('cpu_median'), '.1f'):>9} {r['unit']:<7} "
                     f"{_opt(r.get('gflop'), '.0f'):>7} {_opt(r.get('pct_of_matmul'), '.0f'):>4} "
                     f"{_gib(r['peak_rss_process']):>12} {_gib(r['peak_rss_run']):>8} "
                     f"{_gib(r.get('peak_cuda_allocated')):>8} {r['threads']:>3} {cl:>3} {compiled:>3} "
                     f"{util:>5} {load:>20}")
    return '\n'.join(lines)


def _cpu_ratio(port: Dict, orig: Dict) -> str:
    if not port.get('cpu_median') or not orig.get('cpu_median'):
        return '-'
    return f"{port['cpu_median'] / orig['cpu_median']:.2f}"


def format_comparison(records: List[Dict]) -> str:
    """Port beside original, per port row that has an original row: medians, ratio, % of matmul."""
    found = {(r['row'], r['impl']): r for r in records if 'error' not in r}
    head = (f"{'row':<17} {'unit':<7} {'original':>9} {'port':>9} {'ratio':>6} "
            f"{'orig %mm':>8} {'port %mm':>8} {'CPU ratio':>9}")
    lines = [head, '-' * len(head)]
    for (name, impl), port in found.items():
        orig = found.get((ORIGINAL_ROWS.get(name), 'original'))
        if impl != 'port' or orig is None:
            continue
        lines.append(f"{name:<17} {port['unit']:<7} {orig['median']:>9.1f} {port['median']:>9.1f} "
                     f"{port['median'] / orig['median']:>6.2f} {_opt(orig.get('pct_of_matmul'), '.0f'):>8} "
                     f"{_opt(port.get('pct_of_matmul'), '.0f'):>8} {_cpu_ratio(port, orig):>9}")
    return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--node_device', default='cpu', help='cpu, cuda or npu (as train.py/eval.py)')
    p.add_argument('--rows', nargs='+', default=DEFAULT_ROWS, choices=list(ROWS), metavar='ROW',
                   help=f"rows to run (default: all but the demo and the runtime rows): "
                        f"{', '.join(ROWS)}")
    p.add_argument('--runtime', action='store_true',
                   help=f"the deployment rows: {' '.join(RUNTIME_ROWS)} (PyTorch, onnxruntime float32 "
                        f"and int8, end to end; needs requirements-export.txt; the first run exports "
                        f"and caches the files in {RUNTIME_CACHE})")
    p.add_argument('--json', default=None, help='write the records to this JSON file')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s)')
    p.add_argument('--quick', action='store_true',
                   help='smoke test: 256 px, 1 warm-up and 2 timed calls (train: 0 and 1)')
    p.add_argument('--size', type=int, default=550, help='input size of the eval and train rows')
    p.add_argument('--repeats', type=int, default=None, help='timed calls per eval row (default 7)')
    p.add_argument('--train_repeats', type=int, default=None, help='timed steps per train row (default 3)')
    p.add_argument('--channels_last', default='auto', choices=('auto', 'on', 'off'),
                   help='channels-last convolutions (auto: where measured to help, see yolact.py)')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile the network (eval rows: frozen weights; train rows: forward and backward)')
    p.add_argument('--compare-original', dest='compare_original', default=None, metavar='DIR',
                   help='also run each row on the original YOLACT checked out in DIR (dbolya/yolact), '
                        'interleaved with the port, on the CPU, and print the ratios')
    p.add_argument('--rounds', type=int, default=1,
                   help='run every row (and its original) this many times in turn; figures pool all timed calls')
    p.add_argument('--in_process', action='store_true',
                   help='run the rows in this process (peak memory is then shared across rows)')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    p.add_argument('--child_settings', default=None, help=argparse.SUPPRESS)
    p.add_argument('--child_original', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runtime:
        args.rows = RUNTIME_ROWS
    if args.compare_original and (args.node_device != 'cpu' or args.in_process):
        p.error('--compare-original runs on the CPU, one process per row (no --node_device, no --in_process)')
    return args


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
    impl = 'original' if '--child_original' in argv else 'port'
    return {'row': name, 'impl': impl, 'error': proc.stderr or proc.stdout or f'exit status {proc.returncode}'}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    s = settings_from(args)
    if args.child:
        print(json.dumps(run_row(args.child, s, original=args.child_original)))
        return 0

    from utils.device import describe_cpu, select_device
    if s.threads:
        torch.set_num_threads(s.threads)
    device = select_device(s.device)
    machine = describe_cpu() if device.type == 'cpu' else f'{device} ({torch.cuda.get_device_name(device)})'
    print(machine, flush=True)
    int8 = any(ROWS[name].precision == 'int8' for name in args.rows)
    rates_before = machine_rates(device, int8)
    child_argv = ['--child_settings', json.dumps(asdict(s))]
    runs: Dict[Tuple[str, str], List[Dict]] = {}
    original_argv = child_argv + ['--child_original', os.path.abspath(args.compare_original or '.')]
    for _ in range(args.rounds):
        originals_run = set()  # an original row serves its fp32 and amp port rows: once a round
        for name in args.rows:
            jobs = [('port', child_argv)]
            original_row = ORIGINAL_ROWS.get(name)
            if args.compare_original and original_row and original_row not in originals_run:
                originals_run.add(original_row)
                jobs.append(('original', original_argv))
            for impl, job_argv in jobs:
                row = name if impl == 'port' else original_row
                print(f"running {row} ({impl}) ...", file=sys.stderr, flush=True)
                rec = run_row(row, s) if args.in_process else run_in_child(row, job_argv)
                runs.setdefault((row, impl), []).append(rec)
    rates_after = machine_rates(device, int8)
    # The rate the rows could have reached under the same load: the mean of before and after.
    rates = {k: (rates_before[k] + rates_after[k]) / 2 for k in rates_before}
    records = [merge_rounds(recs) for recs in runs.values()]
    for rec in records:
        add_rates(rec, rates)
    print('matmul 4096x4096 GFLOP/s (before / after the rows): ' + ', '.join(
        f'{k} {rates_before[k]:.0f} / {rates_after[k]:.0f}' for k in rates))
    print(format_table(records, machine))
    if args.compare_original:
        print('\n' + format_comparison(records))
    meta = {'torch': torch.__version__, 'python': platform.python_version(), 'machine': platform.machine(),
            'cpu_count': os.cpu_count(), 'device': machine, 'matmul_gflops': rates,
            'matmul_gflops_before': rates_before, 'matmul_gflops_after': rates_after,
            'settings': asdict(s), 'quick': args.quick, 'rounds': args.rounds,
            'compare_original': args.compare_original}
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'meta': meta, 'rows': records}, f, indent=1)
    return 1 if any('error' in r for r in records) else 0


if __name__ == '__main__':
    sys.exit(main())

"""One prepared command that checks the port on a real GPU: correctness, training, speed, launch.

    python benchmarks/gpu_check.py                          # all sections on cuda:0, at most ~8 min
    python benchmarks/gpu_check.py --sections parity,infer --json out.json
    python benchmarks/gpu_check.py --dry_run                # every code path on the CPU, tiny sizes

It prints one summary table and writes the same as JSON (--json, default gpu_check.json). Every
check reports ok, FAIL or skip (a section past its time budget skips what is left and says so);
the exit status is 1 when any check fails. Speed figures are set beside the issue's targets for an
H200 (yolact_base end to end >= 150 FPS at fp16, batch 1; training >= 100 img/s with AMP at
batch 8); missing a target is reported as SHORT, not as a failure.

Sections:
  parity    the parity fixtures of tests/data/parity (outputs of the original YOLACT recorded on
            the same weights and inputs) recomputed on the device in float32 (TF32 off): raw
            outputs, Detect (Fast NMS, cross-class), postprocess and the loss, within 1e-3
            relative; and Detect on the device against Detect on the CPU on the same raw
            predictions (same kept detections, boxes and scores within 1e-4).
  train     yolact_base and yolact_plus_base (DCN) for 30 steps at batch 8 on 550-px synthetic
            images (data.synthetic through COCODetection and the training augmentation, prepared
            before the timing), fp32 and AMP (float16 autocast + GradScaler) through train.py's
            NetLoss / train_step; channels-last on and off, torch.compile for yolact_base AMP:
            losses finite and falling (mean of the first 5 steps against the last 5), img/s, peak
            GPU memory.
  infer     yolact_base at 550, batch 1, through eval.py's benchmark path (deploy.inference
            NetRunner and benchmark): fp32, fp16, fp16 + Yolact.compile_network; FPS end to end
            (network, Detect, full-size masks) and of the network alone.
  torchrun  `torchrun --nproc_per_node=1 ... train.py` for 3 iterations on a small synthetic set:
            exit status 0 and the 'Train summary' line; the backend training.distributed chooses for
            the device (nccl for cuda) must be the expected one and all_reduce in a one-rank group.

The parity weights, input and targets come from benchmarks/parity_fill.py (the test suite's too;
the input's recorded sums and the targets' mask sums are checked), and the recorded outputs are
read from tests/data/parity/ by path.
"""
import argparse
import contextlib
import gc
import io
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import train  # noqa: E402 - the project's modules, from the repository root
from backbone import BasicBlock, Bottleneck  # noqa: E402
from benchmarks.parity_fill import fill_state_dict, make_input, make_targets  # noqa: E402
from data.coco import COCODetection, detection_collate, prepare_batch  # noqa: E402
from data.config import cfg, set_cfg  # noqa: E402
from data.synthetic import generate  # noqa: E402
from deploy.inference import NetRunner, benchmark  # noqa: E402
from layers.functions.detection import Detect  # noqa: E402
from layers.modules import MultiBoxLoss  # noqa: E402
from layers.output_utils import postprocess  # noqa: E402
from training.distributed import DistInfo  # noqa: E402
from training.schedule import build_optimizer, configure  # noqa: E402
from training.state import seed_everything  # noqa: E402
from training.step import NetLoss, build_criterion, train_step  # noqa: E402
from utils.device import (  # noqa: E402
    describe_cpu,
    distributed_backend,
    grad_scaler,
    prefers_channels_last,
    select_device,
    synchronize,
)
from yolact import Yolact  # noqa: E402

PARITY_DATA = REPO / 'tests' / 'data' / 'parity'
SECTIONS = ('parity', 'train', 'infer', 'torchrun')
# Seconds per section; together with start-up they stay inside TIME_LIMIT_S.
DEFAULT_BUDGETS = {'parity': 45, 'train': 195, 'infer': 150, 'torchrun': 60}
TIME_LIMIT_S = 480
# The targets, for an H200.
TARGET_INFER_FPS = 150.0
TARGET_TRAIN_IMG_S = 100.0
PARITY_RTOL = 1e-3   # |device - recorded| <= PARITY_RTOL * (|recorded| + 1)
DETECT_TOL = 1e-4    # device Detect against CPU Detect: |a - b| <= DETECT_TOL * (|b| + 1)
# Binarised full-size masks: pixels whose soft value sits within float noise of 0.5 may flip.
MASK_PIXEL_SLACK = 1e-3
NO_CUDA = 'error: no CUDA device (use --dry_run to check the script on the CPU)'


@dataclass(frozen=True)
class Sizes:
    """How much work each section does: the GPU run, or the CPU dry run."""
    parity_fixtures: Tuple[str, ...]
    image_size: int        # synthetic images (and the tiny configs' max_size in the dry run)
    train_images: int
    train_steps: int
    train_batch: int
    train_batches: int     # distinct prepared batches, cycled through the steps
    train_warmup: int      # steps not timed (cuDNN autotuning, allocator, compiling)
    infer_passes: int
    infer_warmup: int
    torchrun_batch: int
    torchrun_timeout_s: int
    compile: bool
    tiny: bool             # shrink the configs (ResNet-18-ish backbone, narrow heads)


FULL = Sizes(parity_fixtures=('yolact_base_config', 'yolact_resnet50_config', 'yolact_darknet53_config',
                              'yolact_plus_base_config'),
             image_size=550, train_images=32, train_steps=30, train_batch=8, train_batches=4, train_warmup=5,
             infer_passes=200, infer_warmup=10, torchrun_batch=8, torchrun_timeout_s=150, compile=True, tiny=False)
DRY = Sizes(parity_fixtures=('yolact_resnet50_config',), image_size=96, train_images=8, train_steps=4,
            train_batch=2, train_batches=1, train_warmup=1, infer_passes=3, infer_warmup=1, torchrun_batch=2,
            torchrun_timeout_s=90, compile=False, tiny=True)
# A compile starts only with this much of the section's budget left (seconds, GPU run).
COMPILE_NEEDS_S = {'train': 100.0, 'infer': 60.0}


def say(text: str) -> None:
    """Progress on stderr; the summary table alone goes to stdout."""
    print(f'[gpu_check] {text}', file=sys.stderr, flush=True)


def one_line(err: BaseException) -> str:
    return ' '.join(f'{type(err).__name__}: {err}'.split())


# ----------------------------------------------------------------------------- checks and sections

class Mismatch(Exception):
    """A computed value disagrees with the one it is checked against."""


@dataclass
class Check:
    """One row of the summary: status 'ok', 'FAIL' or 'skip'."""
    name: str
    status: str
    figure: str = ''
    target: str = ''
    data: Dict = field(default_factory=dict)

    def record(self) -> Dict:
        return {'name': self.name, 'status': self.status, 'figure': self.figure, 'target': self.target,
                **self.data}


class Section:
    """The checks of one section, run under its time budget (and the whole run's deadline)."""

    def __init__(self, name: str, budget_s: float, deadline: float):
        self.name, self.budget_s, self.deadline = name, budget_s, deadline
        self.start = time.perf_counter()
        self.checks: List[Check] = []
        self.notes: List[str] = []

    def time_left(self) -> float:
        now = time.perf_counter()
        return min(self.budget_s - (now - self.start), self.deadline - now)

    def run(self, name: str, fn: Callable[[], Sequence[Check]], needs_s: float = 0.0) -> None:
        """Run `fn` (which returns its checks) unless the budget is spent; an exception is a FAIL."""
        left = self.time_left()
        if left <= needs_s:
            why = f'time budget spent ({self.budget_s:.0f} s)' if needs_s <= 0 else \
                f'{left:.0f} s of the time budget left, needs about {needs_s:.0f} s'
            self.checks.append(Check(name, 'skip', why))
            say(f'{self.name}: skip {name}: {why}')
            return
        say(f'{self.name}: {name}')
        try:
            self.checks.extend(fn())
        except Exception as err:  # noqa: BLE001 - any failure of the device path is a finding
            traceback.print_exc(file=sys.stderr)
            self.checks.append(Check(name, 'FAIL', one_line(err)[:300]))

    def fail(self, name: str, message: str) -> None:
        self.checks.append(Check(name, 'FAIL', message))

    @property
    def status(self) -> str:
        return 'FAIL' if any(c.status == 'FAIL' for c in self.checks) or not self.checks else 'ok'

    def record(self) -> Dict:
        return {'status': self.status, 'seconds': round(time.perf_counter() - self.start, 1),
                'budget_s': self.budget_s, 'notes': self.notes,
                'skipped': [c.name for c in self.checks if c.status == 'skip'],
                'checks': [c.record() for c in self.checks]}


def worst_relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / (|expected| + 1), elementwise, in float64 on the CPU."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.shape != e.shape:
        raise Mismatch(f"shape {tuple(a.shape)}, expected {tuple(e.shape)}")
    if a.numel() == 0:
        return 0.0
    return float(((a - e).abs() / (e.abs() + 1)).max())


class Tally:
    """The largest relative error seen, and where; raises Mismatch past the tolerance."""

    def __init__(self, tol: float):
        self.tol, self.worst, self.where, self.compared = tol, 0.0, '', 0

    def close(self, actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        try:
            err = worst_relative(actual, expected)
        except Mismatch as mm:
            raise Mismatch(f"{what}: {mm}") from None
        self.compared += 1
        if not err <= self.tol:  # also catches NaN
            raise Mismatch(f"{what}: relative error {err:.3g} > {self.tol:g}")
        if err >= self.worst:
            self.worst, self.where = err, what

    def equal(self, actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        a, e = actual.detach().cpu(), expected.detach().cpu()
        if a.shape != e.shape or not torch.equal(a.long(), e.long()):
            raise Mismatch(f"{what}: {a.reshape(-1)[:8].tolist()} ..., expected {e.reshape(-1)[:8].tolist()} ...")
        self.compared += 1


# ----------------------------------------------------------------------------- parity fixtures
# The weights, input and targets the references were recorded with: benchmarks/parity_fill.py.


def fill_weights(net: torch.nn.Module) -> None:
    """Load the parity weights into `net` (any config: they follow the key names)."""
    net.load_state_dict(fill_state_dict({k: (list(v.shape), v.dtype) for k, v in net.state_dict().items()}))


def load_reference(name: str) -> Dict:
    path = PARITY_DATA / f'{name}.pt'
    if not path.is_file():
        raise FileNotFoundError(f"parity reference not found: {path}")
    return torch.load(path, weights_only=True)


def configure_for(ref: Dict) -> None:
    """The global cfg as the original ran when the reference was recorded."""
    set_cfg(ref['meta/config'])
    cfg.max_size = ref['meta/max_size']
    cfg.freeze_bn = True
    cfg.mask_proto_debug = False


def unpack_masks(ref: Dict, prefix: str) -> torch.Tensor:
    shape = ref[f'{prefix}/masks_shape']
    bits = np.unpackbits(ref[f'{prefix}/masks_packed'].numpy())[:int(np.prod(shape))]
    return torch.from_numpy(bits.reshape(shape).astype(np.float32))


def compare_recorded_detections(out: List[Dict], ref: Dict, prefix: str, tally: Tally) -> None:
    """Detect's output (one {'detection', 'net'} per image) against the recorded one."""
    images = sum(1 for k in ref if k.startswith(f'{prefix}/') and k.endswith('/count'))
    if len(out) != images:
        raise Mismatch(f"{prefix}: {len(out)} images, recorded {images}")
    for b in range(images):
        det, count = out[b]['detection'], int(ref[f'{prefix}/{b}/count'])
        found = 0 if det is None else det['score'].numel()
        if found != count:
            raise Mismatch(f"{prefix}/{b}: {found} detections, recorded {count}")
        if count == 0:
            continue
        tally.equal(det['class'], ref[f'{prefix}/{b}/class'], f'{prefix}/{b}/class')
        for key in ('score', 'box', 'mask'):
            tally.close(det[key], ref[f'{prefix}/{b}/{key}'], f'{prefix}/{b}/{key}')


def compare_recorded_postprocess(dets: List[Dict], ref: Dict, prefix: str, tally: Tally) -> int:
    """postprocess of the detections against the recorded classes, scores, pixel boxes and masks.
    Returns the number of mask pixels that differ."""
    w, h, b = ref[f'{prefix}/w'], ref[f'{prefix}/h'], ref[f'{prefix}/batch_idx']
    classes, scores, boxes, masks = postprocess(dets, w, h, batch_idx=b, crop_masks=True, score_threshold=0,
                                                config=cfg)
    tally.equal(classes, ref[f'{prefix}/classes'], f'{prefix}/classes')
    if f'{prefix}/scores_maskiou' in ref:
        tally.close(scores[0], ref[f'{prefix}/scores'], f'{prefix}/scores')
        tally.close(scores[1], ref[f'{prefix}/scores_maskiou'], f'{prefix}/scores_maskiou')
    else:
        tally.close(scores, ref[f'{prefix}/scores'], f'{prefix}/scores')
    tally.equal(boxes, ref[f'{prefix}/boxes'], f'{prefix}/boxes')
    expected = unpack_masks(ref, prefix)
    if tuple(masks.shape) != tuple(expected.shape):
        raise Mismatch(f"{prefix}: masks {tuple(masks.shape)}, recorded {tuple(expected.shape)}")
    flipped = int((masks.float().cpu() != expected).sum())
    if flipped > max(10, MASK_PIXEL_SLACK * expected.numel()):
        raise Mismatch(f"{prefix}: {flipped} of {expected.numel()} mask pixels differ")
    return flipped


def compare_detect_outputs(device_out: List[Dict], cpu_out: List[Dict], what: str) -> Tuple[int, float]:
    """Detect on the device against Detect on the CPU: the same detections in the same order
    (classes equal), boxes / scores / coefficients within DETECT_TOL. Returns (detections, worst)."""
    if len(device_out) != len(cpu_out):
        raise Mismatch(f"{what}: {len(device_out)} images on the device, {len(cpu_out)} on the CPU")
    tally, kept = Tally(DETECT_TOL), 0
    for b, (d_entry, c_entry) in enumerate(zip(device_out, cpu_out)):
        d, c = d_entry['detection'], c_entry['detection']
        if (d is None) != (c is None):
            raise Mismatch(f"{what}/{b}: {'no detection' if d is None else 'detections'} on the device, "
                           f"{'none' if c is None else 'detections'} on the CPU")
        if d is None:
            continue
        if d['score'].numel() != c['score'].numel():
            raise Mismatch(f"{what}/{b}: {d['score'].numel()} detections on the device, "
                           f"{c['score'].numel()} on the CPU")
        tally.equal(d['class'], c['class'], f'{what}/{b}/class')
        for key in ('score', 'box', 'mask'):
            tally.close(d[key], c[key], f'{what}/{b}/{key}')
        kept += c['score'].numel()
    return kept, tally.worst


def run_detect(inputs: Dict[str, torch.Tensor], device: torch.device, fast: bool, cross_class: bool,
               net=None, **detect_args) -> List[Dict]:
    """A fresh Detect (cfg's settings unless given) on `inputs` moved to `device`."""
    detect = Detect(cfg.num_classes, bkg_label=0, top_k=detect_args.get('top_k', cfg.nms_top_k),
                    conf_thresh=detect_args.get('conf_thresh', cfg.nms_conf_thresh),
                    nms_thresh=detect_args.get('nms_thresh', cfg.nms_thresh),
                    max_num_detections=cfg.max_num_detections, max_size=cfg.max_size)
    detect.use_fast_nms, detect.use_cross_class_nms = fast, cross_class
    return detect({k: v.to(device) for k, v in inputs.items()}, net)


@contextlib.contextmanager
def fp32_exact():
    """Full float32 on CUDA (no TF32 in convolutions or matmuls) while comparing to the records."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def parity_fixture(name: str, device: torch.device) -> List[Check]:
    """One network fixture on `device`: raw outputs, detections, postprocess, losses against the
    record; Detect on the device against the CPU on the same raw outputs."""
    ref = load_reference(name)
    configure_for(ref)
    short = name.replace('_config', '')
    batch, size = ref['meta/batch'], ref['meta/max_size']
    x = make_input(batch, size, size)
    if 'meta/input_sum' in ref and abs(x.double().sum().item() - float(ref['meta/input_sum'])) > 1e-6:
        raise Mismatch(f"{short}: the rebuilt input differs from the recorded one (sum)")
    net = Yolact(cfg)
    fill_weights(net)
    net.to(device)
    tally, flipped = Tally(PARITY_RTOL), 0
    with torch.no_grad():
        net.train()
        raw = net(x.to(device))
        n, stride = ref['meta/stored_images'], ref.get('meta/prior_stride', 1)
        for key in sorted(k.split('/', 1)[1] for k in ref if k.startswith('train/')):
            if key not in raw:
                raise Mismatch(f"{short}: train-mode output lacks '{key}'")
            out = raw[key] if key == 'priors' else raw[key][:n]
            if stride > 1:  # the record keeps a strided subset of the big tensors
                out = {'conf': lambda t: t[:, ::stride], 'mask': lambda t: t[:, ::stride],
                       'proto': lambda t: t[:, ::2, ::2], 'segm': lambda t: t[:, ::8]}.get(key, lambda t: t)(out)
            tally.close(out, ref[f'train/{key}'], f'train/{key}')
        raw_error = tally.worst

        net.eval()
        net.detect.use_fast_nms, net.detect.use_cross_class_nms = True, False
        dets = {'detect_fast': net(x.to(device))}
        scored = dict(raw, conf=torch.softmax(raw['conf'], dim=-1))
        dets['detect_cc'] = run_detect(scored, device, True, True, net)
        for mode, out in dets.items():
            compare_recorded_detections(out, ref, mode, tally)
        posts = sorted({k.split('/')[0] for k in ref if k.startswith('post_')})
        for prefix in posts:
            mode = 'detect_cc' if prefix.startswith('post_cc') else 'detect_fast'
            flipped += compare_recorded_postprocess(dets[mode], ref, prefix, tally)

        losses = sorted(k.split('/', 1)[1] for k in ref if k.startswith('loss/'))
        if losses:
            targets, masks, crowds = make_targets(size, size)
            if not torch.equal(torch.cat([m.sum((1, 2)) for m in masks]), ref['meta/target_mask_sums']):
                raise Mismatch(f"{short}: the rebuilt target masks differ from the recorded ones")
            criterion = MultiBoxLoss(num_classes=cfg.num_classes, pos_threshold=cfg.positive_iou_threshold,
                                     neg_threshold=cfg.negative_iou_threshold, negpos_ratio=cfg.ohem_negpos_ratio, config=cfg)
            got = criterion(net, dict(raw), [t.to(device) for t in targets], [m.to(device) for m in masks], crowds)
            if sorted(got) != losses:
                raise Mismatch(f"{short}: loss terms {sorted(got)}, recorded {losses}")
            for k in losses:
                tally.close(got[k].reshape(()), ref[f'loss/{k}'], f'loss/{k}')

        # Detect on the device against the CPU, on the same (softmaxed) raw predictions.
        cpu_scored = {k: v.cpu() for k, v in scored.items()}
        kept, worst = 0, 0.0
        for fast, cc, mode in ((True, False, 'fast'), (True, True, 'cross-class')):
            k, w = compare_detect_outputs(run_detect(cpu_scored, device, fast, cc),
                                          run_detect(cpu_scored, torch.device('cpu'), fast, cc), f'{short}/{mode}')
            kept, worst = kept + k, max(worst, w)

    counts = [int(ref[f'detect_fast/{b}/count']) for b in range(batch)]
    return [
        Check(f'{short} vs recorded', 'ok',
              f'raw max err {raw_error:.1e}, all {tally.worst:.1e} ({tally.compared} tensors; dets {counts}'
              + (f'; {len(losses)} loss terms' if losses else '') + f'; {flipped} mask px)',
              f'<= {PARITY_RTOL:g} rel',
              {'max_rel_error': tally.worst, 'raw_max_rel_error': raw_error, 'worst_at': tally.where,
               'tensors': tally.compared, 'mask_pixels_flipped': flipped, 'detections': counts,
               'loss_terms': losses}),
        Check(f'{short} Detect {device.type} vs cpu', 'ok', f'{kept} kept, same classes; max err {worst:.1e}',
              f'<= {DETECT_TOL:g} rel', {'kept': kept, 'max_rel_error': worst}),
    ]


def parity_standalone(device: torch.device) -> List[Check]:
    """The stored-predictions Detect case (>100 candidates, one confident prior, an empty image):
    all three NMS kinds on the device against the record, and against the CPU."""
    ref = load_reference('detect_standalone')
    set_cfg(ref['meta/config'])
    cfg.max_size = ref.get('meta/max_size', cfg.max_size)
    inputs = {k.split('/', 1)[1]: v for k, v in ref.items() if k.startswith('input/')}
    args = {'top_k': ref['meta/top_k'], 'conf_thresh': ref['meta/conf_thresh'], 'nms_thresh': ref['meta/nms_thresh']}
    tally, kept, worst = Tally(PARITY_RTOL), 0, 0.0
    for mode, fast, cc in (('detect_fast', True, False), ('detect_cc', True, True),
                           ('detect_traditional', False, False)):
        out = run_detect(inputs, device, fast, cc, **args)
        compare_recorded_detections(out, ref, mode, tally)
        k, w = compare_detect_outputs(out, run_detect(inputs, torch.device('cpu'), fast, cc, **args),
                                      f'standalone/{mode}')
        kept, worst = kept + k, max(worst, w)
        if mode == 'detect_fast':
            for prefix in ('post_fast_0', 'post_fast_1'):
                compare_recorded_postprocess(out, ref, prefix, tally)
    return [Check('Detect standalone vs recorded', 'ok', f'3 NMS kinds, max err {tally.worst:.1e}',
                  f'<= {PARITY_RTOL:g} rel', {'max_rel_error': tally.worst, 'worst_at': tally.where}),
            Check(f'Detect standalone {device.type} vs cpu', 'ok', f'{kept} kept, same classes; max err {worst:.1e}',
                  f'<= {DETECT_TOL:g} rel', {'kept': kept, 'max_rel_error': worst})]


def section_parity(sec: Section, device: torch.device, sizes: Sizes) -> None:
    saved = cfg.copy()
    if device.type == 'cuda':
        sec.notes.append('TF32 off (torch.backends.cudnn/cuda.matmul.allow_tf32 = False) while comparing')
    if sizes.tiny:
        sec.notes.append(f'dry run: fixtures {", ".join(sizes.parity_fixtures)} and the standalone Detect only')
    try:
        with fp32_exact():
            sec.run('Detect standalone', lambda: parity_standalone(device))
            for name in sizes.parity_fixtures:
                sec.run(name.replace('_config', ''), lambda name=name: parity_fixture(name, device))
    finally:
        cfg.replace(saved)


# ----------------------------------------------------------------------------- shared helpers

def memory_reset(device: torch.device) -> None:
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> Optional[int]:
    return torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else None


def gib(n: Optional[int]) -> str:
    return 'n/a' if n is None else f'{n / 2 ** 30:.1f} GiB'


def shrink_config(dcn: bool, size: int) -> None:
    """The dry run's tiny version of the active config: a one-block-per-stage, 32-wide ResNet-18
    (for YOLACT++ a 16-wide Bottleneck one with deformable convs in stages 2-4), 32-wide FPN and
    heads, `size`-px input; the anchors are rescaled with the input."""
    scale = size / cfg.max_size
    cfg.max_size = size
    # Deformable convs exist only in Bottleneck blocks: a 16-wide one (32-256 channels out).
    args = ([1, 1, 1, 1], [0, 1, 1, 1], 1, [], Bottleneck, 16) if dcn else \
        ([1, 1, 1, 1], [0, 0, 0, 0], 1, [], BasicBlock, 32)
    cfg.backbone = cfg.backbone.copy({
        'name': 'ResNet-tiny' + ('-DCN' if dcn else ''),
        'path': None,
        'args': args,
        'pred_scales': [[s * scale for s in level] for level in cfg.backbone.pred_scales],
    })
    cfg.fpn = cfg.fpn.copy({'num_features': 32})
    cfg.mask_proto_net = [(32, 3, {'padding': 1}), (None, -2, {}), (32, 3, {'padding': 1}), (8, 1, {})]
    cfg.extra_head_net = [(32, 3, {'padding': 1})]
    if cfg.use_maskiou:  # five unpadded stride-2 convs need masks of 63 px at least; these are size / 4
        cfg.maskiou_net = cfg.maskiou_net[:3]


def make_dataset(root: Path, sizes: Sizes) -> Path:
    """The synthetic shapes dataset (data.synthetic) at `root`: train images and 4 val images."""
    generate(str(root), sizes.train_images, 4, seed=0, size=sizes.image_size,
             workers=min(os.cpu_count() or 1, 8), progress=False)
    return root


# ----------------------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainVariant:
    model: str            # a config name without _config
    amp: bool
    channels_last: bool
    compile: bool = False

    @property
    def label(self) -> str:
        parts = [self.model, 'amp' if self.amp else 'fp32']
        parts += ['CL'] if self.channels_last else []
        parts += ['compile'] if self.compile else []
        return ' '.join(parts)


# Eager rows first; the compiled one last, so that running out of time costs the least.
TRAIN_VARIANTS = (TrainVariant('yolact_base', False, False), TrainVariant('yolact_base', True, False),
                  TrainVariant('yolact_base', True, True), TrainVariant('yolact_plus_base', False, False),
                  TrainVariant('yolact_plus_base', True, True), TrainVariant('yolact_base', True, True, True))


class TrainData:
    """training.schedule.configure for a model on the synthetic set, and the batches of the steps, prepared
    once (COCODetection + SSDAugmentation, then on the device) so the timing is the step alone."""

    def __init__(self, root: Path, device: torch.device, sizes: Sizes):
        self.root, self.device, self.sizes = root, device, sizes
        self.model: Optional[str] = None
        self.sched = None     # train.Schedule of the model
        self.config = None    # the cfg configure (and the dry run's shrinking) left
        self.batches: List = []

    def use(self, model: str) -> None:
        if model == self.model:
            return
        s = self.sizes
        argv = ['--config', f'{model}_config', '--data', str(self.root), '--batch_size', str(s.train_batch),
                '--validation_epoch', '-1', '--no_autoscale', '--num_workers', '0', '--seed', '0']
        with contextlib.redirect_stdout(io.StringIO()):
            config, self.sched, annotations = configure(train.build_parser().parse_args(argv), DistInfo())
        cfg.replace(config)
        if s.tiny:
            shrink_config(dcn=model == 'yolact_plus_base', size=s.image_size)
        seed_everything(0)
        train_set, _ = train.build_datasets(cfg, seed=0, need_val=False, annotations=annotations)
        self.batches = []
        for i in range(s.train_batches):
            samples = [train_set[(i * s.train_batch + j) % len(train_set)] for j in range(s.train_batch)]
            self.batches.append(prepare_batch(detection_collate(samples), self.device, cfg.preserve_aspect_ratio))
        self.model = model
        self.config = cfg.copy()


def target_text(value: float, goal: float, unit: str, dry_run: bool) -> str:
    """'H200 >= 100 img/s: met', or ': SHORT (0.80x)' with the share of the target reached."""
    if dry_run:
        return f'H200 >= {goal:g} {unit} (n/a on the CPU)'
    return f'H200 >= {goal:g} {unit}: ' + ('met' if value >= goal else f'SHORT ({value / goal:.2f}x)')


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def train_variant(v: TrainVariant, data: TrainData, device: torch.device, sizes: Sizes) -> List[Check]:
    """`steps` training steps of one variant from fresh weights: losses, img/s, peak memory."""
    data.use(v.model)
    cfg.replace(data.config.copy())
    torch.manual_seed(0)
    net = Yolact(cfg)
    net.init_weights(backbone_path=None)  # from scratch: the device machine has no backbone files
    net.train()
    net.to(device)
    # The config's lr from the first step (train.py warms up over 500 steps; this run is 30 long).
    optimizer = build_optimizer(net, data.sched)
    amp_dtype = torch.float16 if v.amp else None
    if v.channels_last:
        net.to(memory_format=torch.channels_last)
    scaler = grad_scaler(device, amp_dtype)
    if v.compile:
        torch.compiler.reset()
        net.compile_network(freeze=False)
    model = NetLoss(net, build_criterion(cfg), amp_dtype)
    memory_reset(device)

    totals, times, skipped = [], [], 0
    for step in range(sizes.train_steps):
        synchronize(device)
        start = time.perf_counter()
        result = train_step(model, optimizer, data.batches[step % len(data.batches)], scaler)
        synchronize(device)
        times.append(time.perf_counter() - start)
        totals.append(result.total)
        skipped += not result.finite
    peak = peak_memory(device)
    del model, net, optimizer
    if v.compile:
        torch.compiler.reset()
    memory_reset(device)

    warm = min(sizes.train_warmup, sizes.train_steps - 1)
    timed = times[warm:]
    img_s = sizes.train_batch * len(timed) / sum(timed)
    k = max(1, min(5, sizes.train_steps // 2))
    first, last = mean(totals[:k]), mean(totals[-k:])
    finite = all(math.isfinite(t) for t in totals)
    falling = finite and last < first
    problems = ([] if finite else [f'{sum(not math.isfinite(t) for t in totals)} non-finite losses']) + \
        ([] if falling or not finite else ['loss not falling'])
    figure = (f'{img_s:.1f} img/s, {gib(peak)}, loss {first:.2f} -> {last:.2f}'
              + (f', first step {times[0]:.0f} s (compile)' if v.compile else ''))
    target = ''
    if v.model == 'yolact_base' and v.amp:
        target = target_text(img_s, TARGET_TRAIN_IMG_S, 'img/s', sizes.tiny)
    return [Check(f'{v.label} b{sizes.train_batch}', 'FAIL' if problems else 'ok',
                  '; '.join(problems + [figure]), target,
                  {'model': v.model, 'amp': v.amp, 'channels_last': v.channels_last, 'compile': v.compile,
                   'batch': sizes.train_batch, 'steps': sizes.train_steps, 'losses': totals,
                   'loss_first': first, 'loss_last': last, 'finite': finite, 'falling': falling,
                   'nonfinite_steps': skipped, 'img_per_s': img_s, 'timed_steps': len(timed),
                   'first_step_s': times[0], 'peak_memory_bytes': peak, 'lr': data.sched.lr}),
            ]


def section_train(sec: Section, device: torch.device, sizes: Sizes, workdir: Path) -> None:
    saved_cfg, saved_bench = cfg.copy(), torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == 'cuda'  # as train.py
    size = sizes.image_size
    sec.notes.append(f'{sizes.train_steps} steps from scratch at the config lr, batch {sizes.train_batch}, '
                     f'{size}-px synthetic images through COCODetection + SSDAugmentation, '
                     f'{sizes.train_batches} prepared batch(es) cycled; img/s over steps after the first '
                     f'{sizes.train_warmup}; classes from the synthetic set (6 + background)')
    if sizes.tiny:
        sec.notes.append(f'dry run: tiny configs at {size} px (1-block 32-wide ResNet-18; for yolact_plus_base a '
                         f'16-wide Bottleneck one with DCN); AMP = float16 autocast + GradScaler on the CPU; '
                         f'compile skipped')
    try:
        data = TrainData(make_dataset(workdir / 'synthetic', sizes), device, sizes)
        for v in TRAIN_VARIANTS:
            if v.compile and not sizes.compile:
                sec.checks.append(Check(f'{v.label} b{sizes.train_batch}', 'skip', 'compile: not in --dry_run'))
                continue
            sec.run(f'{v.label} b{sizes.train_batch}', lambda v=v: train_variant(v, data, device, sizes),
                    needs_s=COMPILE_NEEDS_S['train'] if v.compile else 0.0)
    finally:
        cfg.replace(saved_cfg)
        torch.backends.cudnn.benchmark = saved_bench


# ----------------------------------------------------------------------------- inference

@contextlib.contextmanager
def detect_bypassed(net):
    """The network alone: Detect replaced by a pass-through (forward still casts to float32 and
    turns class logits into scores, which is all that runs between the network and Detect)."""
    saved = net.detect
    net.detect = lambda preds, _net=None: preds
    try:
        yield
    finally:
        net.detect = saved


def infer_variant(net, label: str, amp: bool, compile_net: bool, images: List[np.ndarray],
                  device: torch.device, sizes: Sizes) -> List[Check]:
    """eval.py --benchmark's path for one precision: FPS end to end and of the network alone."""
    if prefers_channels_last(device, amp):  # as eval.py
        net.to(memory_format=torch.channels_last)
    compile_s = None
    if compile_net:
        net.compile_network()
    predictor = NetRunner(net, device, amp=amp, amp_dtype=torch.float16)
    memory_reset(device)
    if compile_net:  # the first call compiles; time it on its own
        start = time.perf_counter()
        predictor([images[0]])
        synchronize(device)
        compile_s = time.perf_counter() - start
    with contextlib.redirect_stdout(io.StringIO()):
        fps = benchmark(predictor, lambda i: images[i % len(images)], range(sizes.infer_passes), top_k=5,
                        warmup=sizes.infer_warmup, no_bar=True)
    batch = predictor.transform(predictor.to_device([images[0]]))
    with detect_bypassed(net), torch.no_grad():
        for _ in range(sizes.infer_warmup):
            with predictor.autocast():
                net(batch)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(sizes.infer_passes):
            with predictor.autocast():
                net(batch)
            synchronize(device)
        net_fps = sizes.infer_passes / (time.perf_counter() - start)
    peak = peak_memory(device)
    figure = f'{fps:.1f} FPS end to end, network {net_fps:.1f} FPS, {gib(peak)}' + \
        (f', compile {compile_s:.0f} s' if compile_s is not None else '')
    target = target_text(fps, TARGET_INFER_FPS, 'FPS', sizes.tiny) if amp else ''
    ok = math.isfinite(fps) and fps > 0 and net_fps > 0
    return [Check(label, 'ok' if ok else 'FAIL', figure, target,
                  {'fps_end_to_end': fps, 'fps_network': net_fps, 'amp': amp, 'compile': compile_net,
                   'channels_last': prefers_channels_last(device, amp), 'passes': sizes.infer_passes,
                   'compile_s': compile_s, 'peak_memory_bytes': peak})]


def section_infer(sec: Section, device: torch.device, sizes: Sizes, workdir: Path) -> None:
    saved = cfg.copy()
    size = sizes.image_size
    sec.notes.append(f'yolact_base (81 classes) with the parity weights, batch 1, {size}-px synthetic images, '
                     f'Fast NMS; {sizes.infer_passes} timed passes after {sizes.infer_warmup} warm-up; '
                     f'end to end = NetRunner + postprocess to full-size masks + top 5 to the host')
    if sizes.tiny:
        sec.notes.append(f'dry run: tiny yolact_base at {size} px; fp16 autocast on the CPU; compile skipped')
    net = None
    try:
        root = make_dataset(workdir / 'synthetic', sizes)
        val = COCODetection(str(root / 'val'), str(root / 'instances_val.json'), config=cfg)
        images = [val.pull_image(i) for i in range(len(val))]
        set_cfg('yolact_base_config')
        if sizes.tiny:
            shrink_config(dcn=False, size=size)
        net = Yolact(cfg)
        fill_weights(net)  # weights that detect something, so Detect and the masks have work
        net.eval()
        net.to(device)
        net.detect.use_fast_nms, net.detect.use_cross_class_nms = True, False
        for label, amp, compiled in (('yolact_base fp32', False, False), ('yolact_base fp16', True, False),
                                     ('yolact_base fp16 compile', True, True)):
            if compiled and not sizes.compile:
                sec.checks.append(Check(label, 'skip', 'compile: not in --dry_run'))
                continue
            sec.run(label, lambda label=label, amp=amp, compiled=compiled:
                    infer_variant(net, label, amp, compiled, images, device, sizes),
                    needs_s=COMPILE_NEEDS_S['infer'] if compiled else 0.0)
    finally:
        net = None  # noqa: F841 - frees the weights before memory_reset
        torch.compiler.reset()
        memory_reset(device)
        cfg.replace(saved)


# ----------------------------------------------------------------------------- torchrun

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch_train(device: torch.device, sizes: Sizes, root: Path, out: Path, timeout_s: float) -> List[Check]:
    """torchrun (python -m torch.distributed.run) with one process: train.py for 3 iterations."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}', 'train.py', '--config', 'yolact_resnet18_synthetic_config',
           '--data', str(root), '--node_device', device.type, '--max_iter', '3', '--validation_epoch', '-1',
           '--batch_size', str(sizes.torchrun_batch), '--no_autoscale', '--num_workers', '0', '--seed', '0',
           '--log_interval', '1', '--save_folder', str(out / 'weights'), '--log_folder', str(out / 'logs')]
    env = {k: v for k, v in os.environ.items()
           if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'RANK_SIZE', 'RANK_ID', 'MASTER_ADDR', 'MASTER_PORT')}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return [Check('torchrun train.py', 'FAIL', f'no exit after {timeout_s:.0f} s')]
    seconds = time.perf_counter() - start
    summary = re.search(r'Train summary: iterations=(\d+) images_per_sec=(\S+)', proc.stdout)
    ok = proc.returncode == 0 and summary is not None and summary.group(1) == '3'
    tail = ' | '.join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[-300:]
    figure = (f'exit 0, Train summary: 3 iterations, {float(summary.group(2)):.1f} img/s, {seconds:.0f} s in all'
              if ok else f'exit {proc.returncode}, ' + ('no Train summary line; ' if summary is None else '') + tail)
    if not ok:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep='\n', file=sys.stderr)
    return [Check('torchrun train.py (1 process)', 'ok' if ok else 'FAIL', figure, '',
                  {'returncode': proc.returncode, 'summary': summary.group(0) if summary else None,
                   'seconds': seconds, 'command': ' '.join(cmd[3:])})]


def process_group_check(device: torch.device) -> List[Check]:
    """The backend training.distributed joins with on this device, in a one-rank group: all_reduce."""
    backend = distributed_backend(device)
    expected = 'nccl' if device.type == 'cuda' else 'gloo'
    if backend != expected:
        return [Check('process group backend', 'FAIL', f'{backend} for {device.type}, expected {expected}')]
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                            device_id=device if device.type == 'cuda' else None)
    try:
        t = torch.full((4,), 2.0, device=device)
        dist.all_reduce(t)
        good = bool((t.cpu() == 2.0).all())
    finally:
        dist.destroy_process_group()
    return [Check('process group backend', 'ok' if good else 'FAIL',
                  f'{backend} (utils.device.distributed_backend), all_reduce in a 1-rank group '
                  + ('correct' if good else 'WRONG'), f'{expected}', {'backend': backend})]


def section_torchrun(sec: Section, device: torch.device, sizes: Sizes, workdir: Path) -> None:
    sec.notes.append('with one process train.py forms no process group (training.distributed.init_distributed '
                     'is a no-op at world size 1), so the backend is checked in a 1-rank group of its own')
    root = make_dataset(workdir / 'synthetic', sizes)
    sec.run('torchrun train.py (1 process)',
            lambda: launch_train(device, sizes, root, workdir / 'torchrun',
                                 max(10.0, min(sizes.torchrun_timeout_s, sec.time_left()))))
    sec.run('process group backend', lambda: process_group_check(device))


# ----------------------------------------------------------------------------- report

def format_table(sections: Dict[str, Section]) -> str:
    rows = [('section', 'check', 'status', 'figures', 'target')]
    for name, sec in sections.items():
        for c in sec.checks:
            rows.append((name, c.name, c.status, c.figure, c.target))
        if not sec.checks:
            rows.append((name, '(nothing ran)', 'FAIL', '', ''))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ['  '.join(r[i].ljust(widths[i]) for i in range(4)) + '  ' + r[4] for r in rows]
    lines.insert(1, '-' * min(160, max(len(line) for line in lines)))
    return '\n'.join(line.rstrip() for line in lines)


def describe_device(device: torch.device) -> str:
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        return f'{p.name}, {p.total_memory / 2 ** 30:.0f} GiB, CUDA {torch.version.cuda}'
    return f'{describe_cpu()} ({platform.processor() or platform.machine()})'


def parse_budgets(text: Optional[str]) -> Dict[str, float]:
    budgets = dict(DEFAULT_BUDGETS)
    for item in filter(None, (text or '').split(',')):
        name, _, value = item.partition('=')
        if name not in SECTIONS or not value:
            raise argparse.ArgumentTypeError(f"--budgets: expected SECTION=SECONDS with SECTION in "
                                             f"{','.join(SECTIONS)}, got {item!r}")
        budgets[name] = float(value)
    return budgets


def parse_sections(text: str) -> List[str]:
    names = [s.strip() for s in text.split(',') if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--sections: choose from {','.join(SECTIONS)}, got {text!r}")
    return [s for s in SECTIONS if s in names]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='Check the port on a CUDA GPU: parity, training, inference speed, '
                                            'torchrun. One table; JSON beside it.')
    p.add_argument('--json', default='gpu_check.json', help='where to write the results (default gpu_check.json)')
    p.add_argument('--dry_run', action='store_true',
                   help='run every section on the CPU with tiny sizes (checks the script itself, ~40 s)')
    p.add_argument('--sections', type=parse_sections, default=list(SECTIONS),
                   help=f'comma-separated subset of {",".join(SECTIONS)} (default: all)')
    p.add_argument('--budgets', type=parse_budgets, default=dict(DEFAULT_BUDGETS),
                   help='seconds per section, e.g. train=300,infer=120 (default '
                        + ','.join(f'{k}={v}' for k, v in DEFAULT_BUDGETS.items()) + ')')
    p.add_argument('--time_limit', type=float, default=TIME_LIMIT_S,
                   help=f'seconds for the whole run; no new work starts after it (default {TIME_LIMIT_S})')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    deadline = t0 + args.time_limit
    device = torch.device('cpu') if args.dry_run else select_device('cuda')
    sizes = DRY if args.dry_run else FULL
    runners = {'parity': lambda sec, wd: section_parity(sec, device, sizes),
               'train': lambda sec, wd: section_train(sec, device, sizes, wd),
               'infer': lambda sec, wd: section_infer(sec, device, sizes, wd),
               'torchrun': lambda sec, wd: section_torchrun(sec, device, sizes, wd)}
    say(f'{"dry run on the CPU" if args.dry_run else "GPU check"}: {describe_device(device)}; '
        f'sections {",".join(args.sections)}')
    sections: Dict[str, Section] = {}
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as tmp:
        for name in args.sections:
            sec = sections[name] = Section(name, args.budgets[name], deadline)
            try:
                runners[name](sec, Path(tmp))
            except Exception as err:  # noqa: BLE001 - set-up of a section failed: report, go on
                traceback.print_exc(file=sys.stderr)
                sec.fail('section set-up', one_line(err)[:300])
            say(f'{name}: {sec.status} in {time.perf_counter() - sec.start:.0f} s')

    ok = all(sec.status == 'ok' for sec in sections.values())
    total = time.perf_counter() - t0
    checks = [c for sec in sections.values() for c in sec.checks]
    counts = ', '.join(f'{sum(c.status == s for c in checks)} {s}' for s in ('ok', 'FAIL', 'skip'))
    targets = '' if args.dry_run else \
        f'; H200 targets: {sum(c.target.endswith("met") for c in checks)} met, ' \
        f'{sum("SHORT" in c.target for c in checks)} SHORT'
    header = (f'gpu_check {"--dry_run (CPU, tiny sizes)" if args.dry_run else ""} on {describe_device(device)}, '
              f'torch {torch.__version__}: {"all ok" if ok else "FAILED"} in {total:.0f} s ({counts}{targets})')
    print(' '.join(header.split()))
    print(format_table(sections))
    for name, sec in sections.items():
        for note in sec.notes:
            print(f'  {name}: {note}')
    result = {'ok': ok, 'dry_run': args.dry_run, 'device': describe_device(device), 'torch': torch.__version__,
              'cuda': torch.version.cuda, 'seconds': round(total, 1),
              'targets_h200': {'infer_fps_fp16_batch1': TARGET_INFER_FPS,
                               'train_img_per_s_amp_batch8': TARGET_TRAIN_IMG_S},
              'sections': {name: sec.record() for name, sec in sections.items()}}
    with open(args.json, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'JSON: {args.json}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())

"""Run the original YOLACT (dbolya/yolact@57b8f2d) on CPU for benchmarks/bench.py's `--compare-original`.

The original's files stay untouched: what it needs to run on today's PyTorch without a GPU is
patched in at run time, in the bench child process that imports it (never in the port's own
processes, since the original's top-level packages `data`, `layers`, `utils` share the port's
names). What has to be patched, and why:
- yolact.py calls `torch.cuda.current_device()` at import, and eval/train code calls `.cuda()` and
  `torch.cuda.synchronize()`: the first returns 0, `.cuda()` returns the tensor/module itself,
  synchronize does nothing, and `set_default_tensor_type('torch.cuda.FloatTensor')` selects CPU float.
- numpy 2 removed `np.float`, `np.int`, `np.bool`, which old call sites use: re-added as builtins.
- utils/cython_nms.pyx (traditional NMS) needs Cython and a compiler: a stand-in module that fails
  loudly if called. The benchmark runs Fast NMS per class (as eval.py), which never calls it.
- The pretrained backbone is not loaded (`init_weights` is not called); every weight is filled
  from its key name by benchmarks/parity_fill.py, exactly as the port's rows, so both run identical weights.
The TorchScript parts of the original (FPN, box utilities) still run on torch 2.x, with warnings.
"""
import os
import sys
import types
import warnings
from typing import Dict, List

import torch


def _unavailable(*_args, **_kwargs):
    raise RuntimeError('the original\'s Cython NMS is not available here; the benchmark uses Fast NMS')


def install_shims() -> None:
    """Patch torch and numpy so the original imports and runs on CPU (see the module docstring)."""
    import numpy as np
    torch.cuda.current_device = lambda: 0
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    set_default = torch.set_default_tensor_type
    torch.set_default_tensor_type = lambda kind: set_default(
        'torch.FloatTensor' if 'cuda' in str(kind) else kind)
    for name, builtin in (('float', float), ('int', int), ('bool', bool)):
        if name not in np.__dict__:
            setattr(np, name, builtin)
    pyximport = types.ModuleType('pyximport')
    pyximport.install = lambda *args, **kwargs: None
    cython_nms = types.ModuleType('utils.cython_nms')
    cython_nms.nms = _unavailable
    sys.modules.setdefault('pyximport', pyximport)
    sys.modules.setdefault('utils.cython_nms', cython_nms)
    warnings.filterwarnings('ignore')


def import_original(checkout: str) -> None:
    """Put the original's checkout first on sys.path (and the port's root off it), then install
    the shims. Must run before anything imports a module named data, layers, utils or yolact."""
    checkout = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(checkout, 'yolact.py')) or \
            not os.path.isfile(os.path.join(checkout, 'layers', 'modules', 'multibox_loss.py')):
        raise SystemExit(f'--compare-original {checkout}: expected a checkout of dbolya/yolact '
                         f'(yolact.py, layers/modules/multibox_loss.py)')
    clashing = [m for m in ('data', 'layers', 'utils', 'yolact', 'backbone') if m in sys.modules]
    if clashing:
        raise RuntimeError(f'the port\'s {clashing} are already imported in this process')
    port_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [checkout] + [p for p in sys.path if os.path.abspath(p or '.') != port_root]
    install_shims()


def build_net(config: str, size: int, train: bool, fill_weights):
    """The original's Yolact with name-filled weights, configured as its train.py / eval.py do."""
    from data.config import cfg, set_cfg
    from yolact import Yolact
    set_cfg(config)
    cfg.max_size = size
    cfg.freeze_bn = train  # train.py: fewer than 6 images per GPU
    cfg.mask_proto_debug = False  # eval.py sets it from its flag
    net = Yolact()
    fill_weights(net)
    net.train(train)
    net.detect.use_fast_nms = True
    net.detect.use_cross_class_nms = False
    return net


def eval_step(net, image: torch.Tensor, size: int, counts: List[int]):
    """What bench.py's eval rows time: forward (with Detect) and postprocess."""
    from layers.output_utils import postprocess

    def step():
        with torch.inference_mode():
            dets = net(image)
            classes, scores, boxes, masks = postprocess(dets, size, size)
        counts.append(int(classes.shape[0]))
    return step


def train_step(net, images: torch.Tensor, targets, masks, num_crowds, losses: List[float]):
    """The original train.py's iteration: zero_grad, NetLoss (forward + MultiBoxLoss), backward,
    SGD step when the loss is finite. Copies of the target lists are passed each call (the original
    rewrites the masks list when there are crowds)."""
    from data.config import cfg
    from layers.modules import MultiBoxLoss
    criterion = MultiBoxLoss(num_classes=cfg.num_classes, pos_threshold=cfg.positive_iou_threshold,
                             neg_threshold=cfg.negative_iou_threshold, negpos_ratio=cfg.ohem_negpos_ratio)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-7, momentum=0.9, weight_decay=5e-4)

    def step():
        optimizer.zero_grad()
        preds = net(images)
        out = criterion(net, preds, list(targets), list(masks), list(num_crowds))
        loss = sum(v.mean() for v in out.values())
        loss.backward()
        if torch.isfinite(loss).item():
            optimizer.step()
        losses.append(loss.item())
    return step


def detect_step(preds: Dict[str, torch.Tensor], counts: List[int]):
    """The original's Detect alone (Fast NMS per class), on bench.py's random predictions."""
    from data.config import cfg, set_cfg
    from layers import Detect
    set_cfg('yolact_base_config')
    detect = Detect(preds['conf'].shape[-1], bkg_label=0, top_k=cfg.nms_top_k,
                    conf_thresh=cfg.nms_conf_thresh, nms_thresh=cfg.nms_thresh)
    detect.use_fast_nms = True
    detect.use_cross_class_nms = False
    net = types.SimpleNamespace()  # the original's Detect only passes `net` through to its output

    def step():
        with torch.inference_mode():
            out = detect(dict(preds), net)
        det = out[0]['detection']
        counts.append(0 if det is None else int(det['score'].shape[0]))
    return step

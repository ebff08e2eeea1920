"""Run a file written by export.py (ONNX float32 or int8, or TorchScript) where eval.py runs a Yolact.

`RuntimeYolact` is an nn.Module whose forward runs the file in onnxruntime and hands its outputs
to the repository's own `Detect` (Fast NMS or the others, as eval.py's flags set them), so
`Predictor`, `evaluate`, `benchmark` and the image/video functions of eval.py use it unchanged,
masks and COCOeval included: the mAP of a deployed file is measured by the same code as a
checkpoint's. The config, class names, input size and NMS settings come from the file's metadata
(deploy/exporting.py's `export_metadata`), not from flags.

    session, meta = open_exported('yolact_base.int8.onnx')
    config = exported_config(meta)              # a Config of the file's own
    net = RuntimeYolact(session, meta, config)  # net(images) -> Detect's output, as Yolact in eval mode

A TorchScript file (export.py --format torchscript) runs through the same class: `open_exported`
wraps it in `TorchScriptSession`, which answers the two calls RuntimeYolact makes of a session.
"""
import json
import os
import warnings
import zipfile
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from data.config import Config, activation_func, config_for, own_config
from deploy.onnx_postprocess import METADATA_KEY, TORCHSCRIPT_METADATA_FILE
from layers.functions.detection import Detect

EXPORTED_SUFFIX = '.onnx'
REQUIREMENTS_FILE = 'requirements-export.txt'
# What eval.py reads from the metadata; a file without these was not written by export.py.
REQUIRED_KEYS = ('config', 'class_names', 'num_classes', 'input_size', 'input_name', 'output_names',
                 'conf_thresh', 'nms_thresh', 'top_k', 'max_num_detections', 'mask_activation')


class RuntimeModelError(RuntimeError):
    """An exported file that cannot be run: unreadable, not from export.py, runtime missing."""


def is_torchscript(path: str) -> bool:
    """True for a TorchScript file written by export.py: a zip archive holding its metadata as the
    extra file 'yolact.json' (a .pth checkpoint is a zip archive too, without it)."""
    if not (os.path.isfile(path) and zipfile.is_zipfile(path)):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split('/', 1)[-1] == f'extra/{TORCHSCRIPT_METADATA_FILE}' for name in archive.namelist())


def is_exported(path: str) -> bool:
    """True for a file run as exported (ONNX in onnxruntime, or export.py's TorchScript) instead
    of loaded as a checkpoint."""
    return path.lower().endswith(EXPORTED_SUFFIX) or is_torchscript(path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _session_options(ort: Any) -> Any:
    options = ort.SessionOptions()
    # PyTorch takes over the cores right after each run (Detect, mask assembly): onnxruntime's
    # threads spinning on, waiting for more work, would compete with it.
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return options


def open_session(path: str) -> Any:
    """An onnxruntime CPU session of the ONNX file at `path`; RuntimeModelError (one line) when
    onnxruntime is missing or cannot load the file."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeModelError(f"running {os.path.basename(path)} needs onnxruntime: "
                                f"pip install -r {REQUIREMENTS_FILE}") from None
    if not os.path.isfile(path):
        raise RuntimeModelError(f"exported model not found: {path}")
    try:
        return ort.InferenceSession(path, _session_options(ort), providers=['CPUExecutionProvider'])
    except Exception as err:  # onnxruntime raises its own exception types for each failure
        raise RuntimeModelError(f"{path}: onnxruntime cannot load it as an ONNX model "
                                f"({_first_line(err)})") from None


def read_metadata(session: Any, path: str) -> Dict[str, Any]:
    """export.py's metadata of a loaded file, checked for what eval.py needs."""
    custom = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in custom:
        raise RuntimeModelError(f"{path} has no '{METADATA_KEY}' metadata (config, class names, input "
                                f"size): only files written by export.py can be evaluated")
    return parse_metadata(custom[METADATA_KEY], path)


def parse_metadata(text: Any, path: str) -> Dict[str, Any]:
    """export.py's metadata (JSON text or bytes) of the file at `path`, checked for what eval.py needs."""
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise RuntimeModelError(f"{path}: its '{METADATA_KEY}' metadata is not JSON ({_first_line(err)})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise RuntimeModelError(f"{path}: its '{METADATA_KEY}' metadata lacks {', '.join(missing)}; "
                                f"export the checkpoint again with export.py")
    if len(meta['class_names']) + 1 != meta['num_classes']:
        raise RuntimeModelError(f"{path}: its metadata lists {len(meta['class_names'])} class names "
                                f"for {meta['num_classes'] - 1} classes")
    return meta


class TorchScriptSession:
    """A TorchScript module behind the part of onnxruntime's InferenceSession that RuntimeYolact
    and the mask-IoU head use (`get_inputs()[0]`, `run`), run on the CPU."""

    def __init__(self, module: Any):
        self.module = module

    def get_inputs(self) -> List[Any]:
        # A traced export takes any batch size.
        return [SimpleNamespace(name='images', shape=['batch'])]

    def run(self, output_names: Any, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        (array,) = feeds.values()
        with torch.no_grad():
            out = self.module(torch.from_numpy(array))
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def _jit_load(path: str, extra: Optional[Dict[str, Any]] = None) -> Any:
    try:
        with warnings.catch_warnings():
            # torch flags TorchScript as deprecated; the file was exported in it on request.
            warnings.simplefilter('ignore', FutureWarning)
            return torch.jit.load(path, map_location='cpu', _extra_files=extra or {}).eval()
    except Exception as err:  # torch.jit raises several types for a bad archive
        raise RuntimeModelError(f"{path}: torch.jit cannot load it ({_first_line(err)})") from None


def open_torchscript(path: str) -> Tuple[TorchScriptSession, Dict[str, Any]]:
    """(session-like wrapper, metadata) of a TorchScript file written by export.py."""
    extra = {TORCHSCRIPT_METADATA_FILE: ''}
    module = _jit_load(path, extra)
    if not extra[TORCHSCRIPT_METADATA_FILE]:
        raise RuntimeModelError(f"{path} has no '{TORCHSCRIPT_METADATA_FILE}' (config, class names, input "
                                f"size): only files written by export.py can be run")
    return TorchScriptSession(module), parse_metadata(extra[TORCHSCRIPT_METADATA_FILE], path)


def open_exported(path: str) -> Tuple[Any, Dict[str, Any]]:
    """(onnxruntime session or TorchScriptSession, metadata) of an exported file, or RuntimeModelError."""
    if is_torchscript(path):
        return open_torchscript(path)
    session = open_session(path)
    return session, read_metadata(session, path)


def describe(meta: Dict[str, Any]) -> str:
    """'yolact_base, int8, 550 px' for messages."""
    return f"{meta['config']}, {meta.get('precision', 'fp32')}, {meta['input_size']} px"


def exported_config(meta: Dict[str, Any]) -> Config:
    """A config of its own for an exported file: the one its metadata names (data/config.py, for
    what the metadata does not hold: the backbone's input transform and the post-processing
    switches) with what the file was exported with: its classes (and category ids), input size,
    NMS settings and mask activation."""
    config = config_for(meta['config'])
    ids = meta.get('category_ids')
    label_map = None if ids is None else {int(cat_id): label for label, cat_id in enumerate(ids, start=1)}
    config.dataset = config.dataset.copy({'class_names': tuple(meta['class_names']), 'label_map': label_map})
    config.num_classes = int(meta['num_classes'])
    config.max_size = int(meta['input_size'])
    config.nms_conf_thresh = meta['conf_thresh']
    config.nms_thresh = meta['nms_thresh']
    config.nms_top_k = meta['top_k']
    config.max_num_detections = meta['max_num_detections']
    config.mask_proto_mask_activation = getattr(activation_func, meta['mask_activation'])
    return config


class _MaskIoUSession(nn.Module):
    """YOLACT++'s exported mask-IoU head as the `maskiou_net` postprocess calls:
    Tensor[N, 1, h, w] soft masks -> Tensor[N, C-1] predicted IoUs."""

    def __init__(self, session: Any):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(masks.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).to(masks.device)


class RuntimeYolact(nn.Module):
    """An exported file standing in for a Yolact in eval mode.

    forward(images (Tensor[B, 3, S, S]) normalised as FastBaseTransform / BaseTransform make them,
    S the file's input size) -> Detect's output: one ``{'detection': {'box', 'mask', 'class',
    'score', 'proto'} or None, 'net': self}`` per image. The file computes everything before NMS
    (boxes already decoded); `self.detect` (layers.functions.detection.Detect, built from the
    file's NMS settings) does the rest on the CPU. It has no parameters, so NetRunner runs it on
    the CPU whatever device eval.py was given.

    config: what postprocess and the input transform read (`exported_config(meta)`, changed as the
    caller needs, e.g. another dataset's files).
    """

    def __init__(self, session: Any, meta: Dict[str, Any], config: Config, maskiou_session: Any = None):
        super().__init__()
        self.session = session
        self.meta = meta
        self.input_name = meta['input_name']
        self.output_names = list(meta['output_names'])
        self.input_size = int(meta['input_size'])
        fixed = session.get_inputs()[0].shape[0]
        self.fixed_batch = fixed if isinstance(fixed, int) else None
        # postprocess reads its switches from here; a copy, so a later set_cfg cannot change them.
        self.config = own_config(config)
        self.detect = Detect(int(meta['num_classes']), bkg_label=0, top_k=meta['top_k'],
                             conf_thresh=meta['conf_thresh'], nms_thresh=meta['nms_thresh'],
                             max_num_detections=meta['max_num_detections'], max_size=self.input_size)
        if maskiou_session is not None:
            self.maskiou_net = _MaskIoUSession(maskiou_session)
        self.eval()

    def raw_outputs(self, images: torch.Tensor) -> List[torch.Tensor]:
        """The file's outputs for `images`: boxes [B, P, 4] relative (x1, y1, x2, y2), scores
        [B, P, C], coeffs [B, P, M], proto [B, h, w, M] (float32 CPU tensors)."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.input_size, self.input_size):
            raise ValueError(f"the exported model takes images of shape [B, 3, {self.input_size}, "
                             f"{self.input_size}], got {tuple(images.shape)}")
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        # A file exported without --dynamic_batch takes its fixed batch: larger batches in pieces.
        step = self.fixed_batch or len(array)
        pieces = [self.session.run(self.output_names, {self.input_name: array[i:i + step]})
                  for i in range(0, len(array), step)]
        return [torch.from_numpy(np.concatenate(parts) if len(pieces) > 1 else parts[0])
                for parts in zip(*pieces)]

    def forward(self, images: torch.Tensor) -> List[Dict]:
        if self.training:
            raise RuntimeError("an exported model only runs inference; call .eval()")
        boxes, scores, coeffs, proto = self.raw_outputs(images)
        # What Detect does after decoding, per image (the boxes come decoded from the file).
        fg_scores = scores[:, :, 1:].transpose(1, 2)
        out = []
        for b in range(boxes.shape[0]):
            det = self.detect.detect_image(fg_scores[b], boxes[b], coeffs[b])
            if det is not None:
                det['proto'] = proto[b]
            out.append({'detection': det, 'net': self})
        return out


def load_exported(path: str, session: Any = None, meta: Optional[Dict[str, Any]] = None,
                  config: Optional[Config] = None, verbose: bool = True) -> RuntimeYolact:
    """A RuntimeYolact of the exported file at `path` (YOLACT++: its mask-IoU head beside it too).
    `session` and `meta` from an earlier `open_exported(path)` are reused when given; `config`
    defaults to `exported_config(meta)`. verbose: print a line about the file."""
    if session is None or meta is None:
        session, meta = open_exported(path)
    torchscript = isinstance(session, TorchScriptSession)
    if verbose:
        print(f'Loaded exported model {os.path.basename(path)} ({describe(meta)}), running in '
              f'{"TorchScript" if torchscript else "onnxruntime"}.')
    maskiou = None
    if meta.get('maskiou_model'):
        maskiou_file = os.path.join(os.path.dirname(os.path.abspath(path)), meta['maskiou_model'])
        maskiou = open_torchscript_module(maskiou_file) if torchscript else open_session(maskiou_file)
    return RuntimeYolact(session, meta, exported_config(meta) if config is None else config, maskiou)


def open_torchscript_module(path: str) -> TorchScriptSession:
    """A TorchScript file without metadata (YOLACT++'s mask-IoU head) as a session."""
    if not os.path.isfile(path):
        raise RuntimeModelError(f"exported model not found: {path}")
    return TorchScriptSession(_jit_load(path))

"""Run a file written by export.py (ONNX, float32 or int8) where eval.py runs a Yolact.

`RuntimeYolact` is an nn.Module whose forward runs the file in onnxruntime and hands its outputs
to the repository's own `Detect` (Fast NMS or the others, as eval.py's flags set them), so
`Predictor`, `evaluate`, `benchmark` and the image/video functions of eval.py use it unchanged,
masks and COCOeval included: the mAP of a deployed file is measured by the same code as a
checkpoint's. The config, class names, input size and NMS settings come from the file's metadata
(export.py's `export_metadata`), not from flags.

    session, meta = open_exported('yolact_base.int8.onnx')
    use_exported_config(meta)           # the active cfg becomes the file's
    net = RuntimeYolact(session, meta)  # net(images) -> Detect's output, as Yolact in eval mode
"""
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from data.config import activation_func, cfg, own_config, set_cfg
from layers.functions.detection import Detect
from utils.onnx_postprocess import METADATA_KEY

EXPORTED_SUFFIX = '.onnx'
REQUIREMENTS_FILE = 'requirements-export.txt'
# What eval.py reads from the metadata; a file without these was not written by export.py.
REQUIRED_KEYS = ('config', 'class_names', 'num_classes', 'input_size', 'input_name', 'output_names',
                 'conf_thresh', 'nms_thresh', 'top_k', 'max_num_detections', 'mask_activation')


class RuntimeModelError(RuntimeError):
    """An exported file that cannot be run: unreadable, not from export.py, runtime missing."""


def is_exported(path: str) -> bool:
    """True for a file eval.py runs through onnxruntime instead of loading as a checkpoint."""
    return path.lower().endswith(EXPORTED_SUFFIX)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _session_options(ort: Any) -> Any:
    options = ort.SessionOptions()
    if os.environ.get('OMP_WAIT_POLICY', '').upper() == 'PASSIVE':
        # The same request as PyTorch's OpenMP threads get: do not spin on shared cores.
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
    try:
        meta = json.loads(custom[METADATA_KEY])
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


def open_exported(path: str) -> Tuple[Any, Dict[str, Any]]:
    """(onnxruntime session, metadata) of an exported file, or RuntimeModelError."""
    session = open_session(path)
    return session, read_metadata(session, path)


def describe(meta: Dict[str, Any]) -> str:
    """'yolact_base, int8, 550 px' for messages."""
    return f"{meta['config']}, {meta.get('precision', 'fp32')}, {meta['input_size']} px"


def use_exported_config(meta: Dict[str, Any]) -> None:
    """Make the file's config active with what the file was exported with: its classes (and
    category ids), input size, NMS settings and mask activation.

    The config is looked up by name (data/config.py), for what the metadata does not hold: the
    backbone's input transform and the post-processing switches.
    """
    set_cfg(meta['config'])
    names = tuple(meta['class_names'])
    ids = meta.get('category_ids')
    label_map = None if ids is None else {int(cat_id): label for label, cat_id in enumerate(ids, start=1)}
    cfg.dataset = cfg.dataset.copy({'class_names': names, 'label_map': label_map})
    cfg.num_classes = int(meta['num_classes'])
    cfg.max_size = int(meta['input_size'])
    cfg.nms_conf_thresh = meta['conf_thresh']
    cfg.nms_thresh = meta['nms_thresh']
    cfg.nms_top_k = meta['top_k']
    cfg.max_num_detections = meta['max_num_detections']
    cfg.mask_proto_mask_activation = getattr(activation_func, meta['mask_activation'])


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
    file's NMS settings) does the rest on the CPU. It has no parameters, so Predictor runs it on
    the CPU whatever device eval.py was given.
    """

    def __init__(self, session: Any, meta: Dict[str, Any], maskiou_session: Any = None):
        super().__init__()
        self.session = session
        self.meta = meta
        self.input_name = meta['input_name']
        self.output_names = list(meta['output_names'])
        self.input_size = int(meta['input_size'])
        fixed = session.get_inputs()[0].shape[0]
        self.fixed_batch = fixed if isinstance(fixed, int) else None
        # A copy of what use_exported_config made active: postprocess reads its switches from here.
        self.config = own_config()
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


def load_exported(path: str, session: Any = None, meta: Optional[Dict[str, Any]] = None) -> RuntimeYolact:
    """A RuntimeYolact of the exported file at `path` (YOLACT++: its mask-IoU head beside it too).
    `session` and `meta` from an earlier `open_exported(path)` are reused when given."""
    if session is None or meta is None:
        session, meta = open_exported(path)
    print(f'Loaded exported model {os.path.basename(path)} ({describe(meta)}), running in onnxruntime.')
    maskiou = None
    if meta.get('maskiou_model'):
        maskiou = open_session(os.path.join(os.path.dirname(os.path.abspath(path)), meta['maskiou_model']))
    return RuntimeYolact(session, meta, maskiou)

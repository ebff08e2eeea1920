"""Export a trained YOLACT for deployment runtimes: the network up to NMS as ONNX or TorchScript,
with the metadata the runtimes need (export.py is the command; deploy/quantize.py makes int8 files).

The exported graph stops before non-maximum suppression, where a graph can no longer have fixed
shapes. For a batch of images (float32[B, 3, S, S], made by deploy/onnx_postprocess.preprocess or
the repository's FastBaseTransform) it returns, per prior:
    boxes  (float32[B, P, 4]) in relative (x1, y1, x2, y2), already decoded from the priors,
    scores (float32[B, P, C]) class scores (background in column 0),
    coeffs (float32[B, P, M]) mask coefficients,
    proto  (float32[B, h, w, M]) prototype masks.
The settings the post-processing needs (input size, normalisation, class names, NMS thresholds)
are stored in the file (`export_metadata`: ONNX metadata key 'yolact', TorchScript extra file
'yolact.json'), written from the config the network was built with (net.config).

    model = build_exportable('weights/yolact_base_54_800000.pth')
    export_onnx(model, 'yolact_base.onnx')        # or export_torchscript(model, 'yolact_base.pt')
"""
import contextlib
import importlib
import json
import os
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from backbone import DCN
from data.config import MEANS, STD, Config, activation_func
from deploy.loading import open_model
from deploy.onnx_postprocess import METADATA_KEY, TORCHSCRIPT_METADATA_FILE
from deploy.runtime_model import REQUIREMENTS_FILE
from layers.box_utils import decode
from yolact import load_model

INPUT_NAME = 'images'
OUTPUT_NAMES = ('boxes', 'scores', 'coeffs', 'proto')
MASKIOU_INPUT_NAME = 'masks'
MASKIOU_OUTPUT_NAME = 'maskiou'

# torch's current (torch.export-based) ONNX exporter writes opset 18 or newer; older opsets go
# through its deprecated TorchScript-based exporter, which knows no DeformConv.
DYNAMO_MIN_OPSET = 18
LEGACY_MIN_OPSET = 11      # bilinear Resize as F.interpolate(align_corners=False) computes it
DEFORM_CONV_MIN_OPSET = 19  # ONNX DeformConv first appears in opset 19
DEFAULT_OPSET = 18


class ExportError(RuntimeError):
    """The model cannot be exported as asked (missing package, unsupported opset, config)."""


def require(module_name: str, purpose: str):
    """Import an optional export dependency or fail with the install command."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise ExportError(f"{purpose} needs the '{module_name}' package, which is not installed: "
                          f"pip install -r {REQUIREMENTS_FILE}") from None


# ----------------------------------------------------------------------------- the exported module

def _passthrough(predictions: Dict[str, torch.Tensor], net: Any = None) -> Dict[str, torch.Tensor]:
    return predictions


class ExportableYolact(nn.Module):
    """A Yolact in eval mode whose forward stops before NMS and returns decoded, fixed-shape outputs.

    It runs the wrapped network's own forward with its `detect` step swapped for a passthrough, so
    everything up to NMS (class_scores included) is Yolact's code; only the box decoding is added.
    The input size is the network's config's max_size (the size its priors use).

    forward(images (Tensor[B, 3, S, S])) -> (boxes [B, P, 4] relative (x1, y1, x2, y2),
    scores [B, P, C], coeffs [B, P, M], proto [B, h, w, M]).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        if not net.eval_mask_branch:
            raise ExportError("export needs the mask branch: the config's eval_mask_branch is False")
        self.net = net
        self.image_size = int(net.config.max_size)
        self.eval()

    @property
    def uses_deformable_convs(self) -> bool:
        return any(isinstance(m, DCN) for m in self.net.modules())

    @property
    def maskiou_net(self) -> Optional[nn.Module]:
        return getattr(self.net, 'maskiou_net', None)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.net.training:
            raise ExportError("ExportableYolact runs the network in eval mode; call .eval() first")
        detect = self.net.detect
        self.net.detect = _passthrough
        try:
            preds = self.net(images)
        finally:
            self.net.detect = detect
        return decode(preds['loc'], preds['priors']), preds['conf'], preds['mask'], preds['proto']

    def example_input(self, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
        """A reproducible normalised-image-like input (Tensor[batch_size, 3, S, S])."""
        gen = torch.Generator().manual_seed(seed)
        param = next(self.net.parameters())
        images = torch.randn(batch_size, 3, self.image_size, self.image_size, generator=gen)
        return images.to(device=param.device, dtype=param.dtype)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence what tracing a fixed-size model reports by design.

    The traced graph keeps the priors (computed from Python ints of the feature-map sizes) as
    constants, which is intended: the input size is fixed at export. torch 2.14 also flags the
    TorchScript format as deprecated; the user asked for it explicitly.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', FutureWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        yield


# ----------------------------------------------------------------------------- metadata

def _activation_name(fn: Any) -> str:
    for name in ('sigmoid', 'tanh', 'softmax', 'relu', 'none'):
        if getattr(activation_func, name) is fn:
            return name
    raise ExportError("the config's mask_proto_mask_activation is not one of data.config.activation_func, so the "
                      "post-processing cannot reproduce it")


def export_metadata(config: Config, maskiou_file: Optional[str] = None, dynamic_batch: bool = False,
                    precision: str = 'fp32') -> Dict[str, Any]:
    """What deploy/onnx_postprocess needs to pre- and post-process a model of `config` (the one the
    network was built with, net.config) exported for config.max_size square input (stored in the
    exported file), and what eval.py needs to evaluate the file: config name, class names and their
    COCO category ids, precision ('fp32' or 'int8')."""
    transform = config.backbone.transform
    label_map = config.dataset.label_map
    return {
        'format_version': 1,
        'config': config.name,
        'precision': precision,
        'input_name': INPUT_NAME,
        'output_names': list(OUTPUT_NAMES),
        'input_size': int(config.max_size),
        'dynamic_batch': dynamic_batch,
        # Preprocessing of a BGR 0..255 image, as FastBaseTransform does it.
        'mean': list(MEANS), 'std': list(STD),
        'channel_order': transform.channel_order,
        'normalize': bool(transform.normalize),
        'subtract_means': bool(transform.subtract_means),
        'to_float': bool(transform.to_float),
        'num_classes': config.num_classes,
        'class_names': list(config.dataset.class_names),
        # category_ids[i] is the annotation id of class_names[i] (None: ids 1..N in order).
        'category_ids': (None if label_map is None else
                         [cat_id for cat_id, _ in sorted(label_map.items(), key=lambda item: item[1])]),
        'conf_thresh': config.nms_conf_thresh,
        'nms_thresh': config.nms_thresh,
        'top_k': config.nms_top_k,
        'max_num_detections': config.max_num_detections,
        'mask_activation': _activation_name(config.mask_proto_mask_activation),
        'maskiou_model': maskiou_file,
        'rescore_mask': bool(config.use_maskiou and config.rescore_mask),
        'rescore_bbox': bool(config.use_maskiou and config.rescore_bbox),
    }


def maskiou_path(output: str) -> str:
    """Where the YOLACT++ mask-IoU head goes: 'a/b.onnx' -> 'a/b.maskiou.onnx'."""
    stem, ext = os.path.splitext(output)
    return f'{stem}.maskiou{ext}'


def _maskiou_example(model: ExportableYolact, proto: torch.Tensor) -> torch.Tensor:
    """Example input of YOLACT++'s mask-IoU head: two soft masks at prototype resolution."""
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 1, *proto.shape[1:3], generator=gen).to(proto)
    try:
        with torch.no_grad():
            model.maskiou_net(masks)
    except RuntimeError as err:
        # Its unpadded stride-2 convs need prototypes of at least 63 x 63 (input >= 252 pixels).
        raise ExportError(f"the mask-IoU head of '{model.net.config.name}' cannot run on "
                          f"{proto.shape[1]}x{proto.shape[2]} prototypes (input size "
                          f"{model.image_size}): use a larger --image_size ({err})") from None
    return masks


# ----------------------------------------------------------------------------- ONNX

def resolve_opset(model: ExportableYolact, opset: Optional[int]) -> int:
    """The opset to write: the given one after checks, else the lowest that holds the model."""
    deformable = model.uses_deformable_convs
    if opset is None:
        return DEFORM_CONV_MIN_OPSET if deformable else DEFAULT_OPSET
    if deformable and opset < DEFORM_CONV_MIN_OPSET:
        raise ExportError(f"config '{model.net.config.name}' uses deformable convolutions (YOLACT++, "
                          f"torchvision deform_conv2d); ONNX has DeformConv only from opset "
                          f"{DEFORM_CONV_MIN_OPSET} on, so it cannot be exported at opset {opset}: "
                          f"use --opset {DEFORM_CONV_MIN_OPSET} or newer (or --format torchscript)")
    if opset < LEGACY_MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: YOLACT needs opset {LEGACY_MIN_OPSET} or newer")
    return opset


def set_onnx_metadata(path: str, metadata: Dict[str, Any]) -> None:
    """Store `metadata` under METADATA_KEY in the ONNX file at `path` (replacing any there)."""
    import onnx
    model = onnx.load(path)
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, path)


def _onnx_export(module: nn.Module, example: torch.Tensor, path: str, opset: int,
                 input_name: str, output_names: Sequence[str], dynamic_dim: Optional[str],
                 metadata: Dict[str, Any]) -> None:
    """torch.onnx.export one module with its first input dimension free when `dynamic_dim` is
    given, and the metadata stored under METADATA_KEY."""
    require('onnx', 'ONNX export')
    if opset >= DYNAMO_MIN_OPSET:
        require('onnxscript', 'ONNX export')
        dynamic_shapes = None
        if dynamic_dim is not None:
            dynamic_shapes = ({0: torch.export.Dim(dynamic_dim, min=1, max=1024)},)
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                    input_names=[input_name], output_names=list(output_names),
                                    dynamic_shapes=dynamic_shapes, verbose=False)
        program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
        # One self-contained file: the weights stay far below protobuf's 2 GB limit.
        program.save(path, external_data=False)
        return

    dynamic_axes = None
    if dynamic_dim is not None:
        dynamic_axes = {name: {0: dynamic_dim} for name in [input_name, *output_names]}
    with _quiet_jit():
        # The older exporter traces too, and is chosen on purpose for opsets below 18.
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=list(output_names),
                          dynamic_axes=dynamic_axes)
    set_onnx_metadata(path, metadata)


# Writes one module (the network, or with metadata None YOLACT++'s mask-IoU head) to a file.
SaveModule = Callable[[nn.Module, torch.Tensor, str, Optional[Dict[str, Any]]], None]


def _export(model: ExportableYolact, path: str, example: torch.Tensor, dynamic_batch: bool,
            save: SaveModule) -> List[str]:
    """The outline every format shares: a warm-up run, YOLACT++'s mask-IoU head beside `path`,
    then the network with its metadata. Returns the files written."""
    with torch.no_grad():
        # Fills the network's prior caches outside the traced call, so export sees constants.
        _, _, _, proto = model(example)
    written = [path]
    maskiou_file = None
    if model.maskiou_net is not None:
        maskiou_file = maskiou_path(path)
        save(model.maskiou_net, _maskiou_example(model, proto), maskiou_file, None)
        written.append(maskiou_file)
    metadata = export_metadata(model.net.config, maskiou_file and os.path.basename(maskiou_file), dynamic_batch)
    save(model, example, path, metadata)
    return written


def export_onnx(model: ExportableYolact, path: str, opset: Optional[int] = None,
                dynamic_batch: bool = False) -> List[str]:
    """Write `model` as ONNX to `path` (and YOLACT++'s mask-IoU head beside it).

    Returns the files written. The batch dimension is free with `dynamic_batch`, else 1.
    """
    opset = resolve_opset(model, opset)

    def save(module: nn.Module, example: torch.Tensor, target: str, metadata: Optional[Dict[str, Any]]) -> None:
        if metadata is None:
            _onnx_export(module, example, target, opset, MASKIOU_INPUT_NAME, [MASKIOU_OUTPUT_NAME], 'detections',
                         {'role': 'maskiou'})
        else:
            _onnx_export(module, example, target, opset, INPUT_NAME, OUTPUT_NAMES,
                         'batch' if dynamic_batch else None, metadata)

    return _export(model, path, model.example_input(2 if dynamic_batch else 1), dynamic_batch, save)


def check_onnx(model: ExportableYolact, path: str, batch_sizes: Sequence[int] = (1,)) -> float:
    """Run the exported file with onnxruntime (CPU) and PyTorch on the same random input.

    Returns the largest absolute difference over all outputs and batch sizes.
    """
    ort = require('onnxruntime', 'Checking the exported model')
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    worst = 0.0
    for batch_size in batch_sizes:
        images = model.example_input(batch_size, seed=1)
        with torch.no_grad():
            expected = model(images)
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.cpu().numpy()})
        for ref, out in zip(expected, got):
            worst = max(worst, float((ref.cpu() - torch.from_numpy(out)).abs().max()))
    return worst



# ----------------------------------------------------------------------------- TorchScript

def _trace(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad(), _quiet_jit():
        return torch.jit.trace(module, example)


def export_torchscript(model: ExportableYolact, path: str) -> List[str]:
    """Write `model` as a torch.jit.trace'd module that torch.jit.load opens without this repository
    (YOLACT++ also needs `import torchvision` first, for deform_conv2d). Returns the files written."""
    def save(module: nn.Module, example: torch.Tensor, target: str, metadata: Optional[Dict[str, Any]]) -> None:
        extra = {} if metadata is None else {TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)}
        with _quiet_jit():
            torch.jit.save(_trace(module, example), target, _extra_files=extra)

    # A traced module takes any batch size.
    return _export(model, path, model.example_input(1), True, save)


# ----------------------------------------------------------------------------- from a checkpoint

def build_exportable(trained_model: str, config_name: Optional[str] = None,
                     image_size: Optional[int] = None) -> ExportableYolact:
    """The checkpoint at `trained_model` as an ExportableYolact on the CPU, with the config
    `config_name` names (default: the checkpoint's file name says it) and its classes.

    image_size replaces the config's max_size: the side of the square input and the image size
    the priors' pixel scales refer to.
    """
    if image_size is not None and image_size < 32:
        raise ExportError(f"--image_size must be at least 32 pixels, got {image_size}")
    opened = open_model(trained_model, config_name, say=print)
    if opened.exported:
        raise ExportError(f"{trained_model} is an exported file already; export.py takes a .pth checkpoint")
    config = opened.config
    if image_size is not None:
        config.max_size = image_size
    if config.preserve_aspect_ratio:
        raise ExportError("configs with preserve_aspect_ratio have no single input size to export")
    return ExportableYolact(load_model(trained_model, torch.device('cpu'), config))

"""Export a trained YOLACT to ONNX or TorchScript for deployment runtimes.

    python export.py --trained_model weights/yolact_base_54_800000.pth --output yolact_base.onnx
    python export.py --trained_model weights/yolact_base_54_800000.pth --format torchscript
    python export.py --trained_model weights/yolact_base_54_800000.pth --int8 --calib_data data/coco

The exported graph stops before non-maximum suppression, where a graph can no longer have fixed
shapes. For a batch of images images (float32[B, 3, S, S], made by utils/onnx_postprocess.preprocess
or the repository's FastBaseTransform) it returns, per prior:
    boxes  (float32[B, P, 4]) in relative (x1, y1, x2, y2), already decoded from the priors,
    scores (float32[B, P, C]) class scores (background in column 0),
    coeffs (float32[B, P, M]) mask coefficients,
    proto  (float32[B, h, w, M]) prototype masks.
deploy/onnx_postprocess.py (numpy only) turns them into final detections: Fast NMS, mask assembly,
crop and resize. The settings it needs (input size, normalisation, class names, NMS thresholds) are
stored in the model: ONNX metadata key 'yolact', TorchScript extra file 'yolact.json'.

The input size is fixed at export (the priors are constants of the graph); with --dynamic_batch the
batch dimension is free. YOLACT++ (deformable convolutions) needs ONNX opset 19 or newer, where
DeformConv exists; its mask-IoU head is exported beside the model as '<name>.maskiou.onnx' (or .pt).

With --int8 the ONNX file is quantized for CPUs (onnxruntime static quantization, QDQ format,
int8 weights per output channel, activation ranges calibrated on images of a COCO-format dataset);
the layers that produce the boxes, mask coefficients and prototypes stay in float32 (see
FLOAT_OUTPUTS). eval.py --trained_model FILE.onnx measures the mAP through the file.
"""
import argparse
import contextlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from backbone import DCN
from data.coco import COCODetection, DatasetFileNotFoundError, DatasetFormatError, coco_dataset_paths
from data.config import MEANS, STD, Config, ConfigError, activation_func, own_config, set_cfg
from deploy.onnx_postprocess import METADATA_KEY, TORCHSCRIPT_METADATA_FILE
from layers.box_utils import decode
from utils.augmentations import BaseTransform
from utils.checkpoint import CheckpointError, config_name_from_checkpoint
from yolact import load_model, use_checkpoint_classes

INPUT_NAME = 'images'
OUTPUT_NAMES = ('boxes', 'scores', 'coeffs', 'proto')
MASKIOU_INPUT_NAME = 'masks'
MASKIOU_OUTPUT_NAME = 'maskiou'
REQUIREMENTS_FILE = 'requirements-export.txt'

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
            raise ExportError("export needs the mask branch: cfg.eval_mask_branch is False")
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
    raise ExportError("cfg.mask_proto_mask_activation is not one of data.config.activation_func, so the "
                      "post-processing cannot reproduce it")


def export_metadata(image_size: int, maskiou_file: Optional[str] = None,
                    dynamic_batch: bool = False, precision: str = 'fp32',
                    config: Optional[Config] = None) -> Dict[str, Any]:
    """What utils/onnx_postprocess needs to pre- and post-process a model of `config` (the
    network's, net.config; default: the active cfg) exported for image_size x image_size input
    (stored in the exported file), and what eval.py needs to evaluate the file: config name, class
    names and their COCO category ids, precision ('fp32' or 'int8')."""
    cfg = own_config(config)
    transform = cfg.backbone.transform
    label_map = cfg.dataset.label_map
    return {
        'format_version': 1,
        'config': cfg.name,
        'precision': precision,
        'input_name': INPUT_NAME,
        'output_names': list(OUTPUT_NAMES),
        'input_size': int(image_size),
        'dynamic_batch': dynamic_batch,
        # Preprocessing of a BGR 0..255 image, as FastBaseTransform does it.
        'mean': list(MEANS), 'std': list(STD),
        'channel_order': transform.channel_order,
        'normalize': bool(transform.normalize),
        'subtract_means': bool(transform.subtract_means),
        'to_float': bool(transform.to_float),
        'num_classes': cfg.num_classes,
        'class_names': list(cfg.dataset.class_names),
        # category_ids[i] is the annotation id of class_names[i] (None: ids 1..N in order).
        'category_ids': (None if label_map is None else
                         [cat_id for cat_id, _ in sorted(label_map.items(), key=lambda item: item[1])]),
        'conf_thresh': cfg.nms_conf_thresh,
        'nms_thresh': cfg.nms_thresh,
        'top_k': cfg.nms_top_k,
        'max_num_detections': cfg.max_num_detections,
        'mask_activation': _activation_name(cfg.mask_proto_mask_activation),
        'maskiou_model': maskiou_file,
        'rescore_mask': bool(cfg.use_maskiou and cfg.rescore_mask),
        'rescore_bbox': bool(cfg.use_maskiou and cfg.rescore_bbox),
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

    import onnx
    dynamic_axes = None
    if dynamic_dim is not None:
        dynamic_axes = {name: {0: dynamic_dim} for name in [input_name, *output_names]}
    with _quiet_jit():
        # The older exporter traces too, and is chosen on purpose for opsets below 18.
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=list(output_names),
                          dynamic_axes=dynamic_axes)
    model_proto = onnx.load(path)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model_proto, path)


def export_onnx(model: ExportableYolact, path: str, opset: Optional[int] = None,
                dynamic_batch: bool = False) -> List[str]:
    """Write `model` as ONNX to `path` (and YOLACT++'s mask-IoU head beside it).

    Returns the files written. The batch dimension is free with `dynamic_batch`, else 1.
    """
    opset = resolve_opset(model, opset)
    example = model.example_input(2 if dynamic_batch else 1)
    with torch.no_grad():
        # Fills the network's prior caches outside the traced call, so export sees constants.
        _, _, _, proto = model(example)

    written = [path]
    maskiou_file = None
    if model.maskiou_net is not None:
        maskiou_file = maskiou_path(path)
        _onnx_export(model.maskiou_net, _maskiou_example(model, proto), maskiou_file, opset,
                     MASKIOU_INPUT_NAME, [MASKIOU_OUTPUT_NAME], 'detections', {'role': 'maskiou'})
        written.append(maskiou_file)

    metadata = export_metadata(model.image_size, maskiou_file and os.path.basename(maskiou_file),
                               dynamic_batch, config=model.net.config)
    _onnx_export(model, example, path, opset, INPUT_NAME, OUTPUT_NAMES,
                 'batch' if dynamic_batch else None, metadata)
    return written


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


# ----------------------------------------------------------------------------- int8 (ONNX)

DEFAULT_CALIB_IMAGES = 100
# The outputs whose layers stay in float32 in an int8 export: everything from the last convolution
# before each of them to the output. Chosen by mAP through the file on the demo model
# (benchmarks/README.md, "int8 deployment"): int8 box regressions cost box mAP; the mask
# coefficients and prototypes, nearly free in int8 on the demo, stay float32 as a margin for models
# with more classes than the demo's six; int8 class scores cost nothing measurable.
FLOAT_OUTPUTS = ('boxes', 'coeffs', 'proto')


def calibration_inputs(root: str, config: Config, count: int = DEFAULT_CALIB_IMAGES) -> List[np.ndarray]:
    """`count` images of the COCO-format dataset at `root` (its val split, else its train split),
    evenly spread over the dataset, as network inputs float32[1, 3, S, S] made by the evaluation
    transform (BaseTransform at config.max_size, what eval.py feeds the network).

    Only the pixels are read: calibration measures the range of each activation, no labels.
    """
    if count < 1:
        raise ExportError(f"--calib_images must be at least 1, got {count}")
    try:
        paths = coco_dataset_paths(root, ('val',))
        images, info = paths.valid_images, paths.valid_info
        if not os.path.isfile(info):
            images, info = paths.train_images, paths.train_info
    except DatasetFileNotFoundError:
        paths = coco_dataset_paths(root, ('train',))
        images, info = paths.train_images, paths.train_info
    dataset = COCODetection(images, info, has_gt=False, config=config)
    total = len(dataset.ids)
    if total == 0:
        raise ExportError(f"--calib_data: {info} lists no images")
    picked = sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))
    transform = BaseTransform(config)
    inputs = []
    for index in picked:
        img = transform(dataset.pull_image(index))[0]
        inputs.append(np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32))
    print(f'Calibrating on {len(inputs)} image(s) of {images}')
    return inputs


def float_nodes(model: Any, outputs: Sequence[str]) -> List[str]:
    """Names of the nodes of an ONNX graph between each of `outputs` and the convolutions that
    produce it, those convolutions included (walking back through every input that is not a weight
    and stopping at each Conv): the prediction layers of the heads and the last protonet layer."""
    producers = {out: node for node in model.graph.node for out in node.output}
    weights = {init.name for init in model.graph.initializer}
    found: Dict[str, None] = {}
    pending = list(outputs)
    seen = set()
    while pending:
        tensor = pending.pop()
        node = producers.get(tensor)
        if tensor in seen or node is None:
            continue
        seen.add(tensor)
        found[node.name] = None
        if node.op_type != 'Conv':
            pending.extend(name for name in node.input if name and name not in weights)
    return list(found)


def _named_nodes(model: Any) -> None:
    """Give every unnamed node a unique name (quantization excludes nodes by name)."""
    taken = {node.name for node in model.graph.node if node.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f'{node.op_type}_{i}'
            while name in taken:
                name += '_'
            node.name = name
            taken.add(name)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence the quantizer's logging warnings, which are about its choices, not the user's: e.g.
    that the GroupNorm scale vectors of the demo config cannot be quantized per channel (they stay
    float, as intended)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over a list of input arrays."""

    def __init__(self, inputs: Sequence[np.ndarray], input_name: str = INPUT_NAME):
        self.inputs, self.input_name, self.position = list(inputs), input_name, 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.position >= len(self.inputs):
            return None
        self.position += 1
        return {self.input_name: self.inputs[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


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


def quantize_onnx(fp32_path: str, output: str, inputs: Sequence[np.ndarray],
                  float_outputs: Sequence[str] = FLOAT_OUTPUTS,
                  op_types: Optional[Sequence[str]] = None) -> List[str]:
    """Quantize the fp32 ONNX file at `fp32_path` to int8 at `output`.

    onnxruntime static quantization: QDQ format, int8 weights per output channel with 7-bit range
    (reduce_range: no overflow in the u8 x s8 multiply-adds of CPUs without VNNI, such as AVX2),
    uint8 activations whose ranges (min / max) are measured on `inputs` (float32[1, 3, S, S] each).
    The layers of `float_outputs` stay in float32 (`float_nodes`); `op_types` limits which operator
    types are quantized (default: every type onnxruntime can). The metadata stored in the fp32 file
    is copied with 'precision': 'int8' and the calibration image count. Returns the nodes kept in
    float32.
    """
    require('onnx', 'int8 quantization')
    quantization = require('onnxruntime.quantization', 'int8 quantization')
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory(prefix='yolact-int8-') as tmp:
        # Folds the constant subgraphs (BatchNorm scales multiplied into the conv weights), so
        # every conv weight is an initializer that can be quantized per channel.
        prepared = os.path.join(tmp, 'prepared.onnx')
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        model = onnx.load(prepared)
        _named_nodes(model)
        onnx.save(model, prepared)
        keep_float = float_nodes(model, float_outputs)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), _quiet_logging():
            warnings.simplefilter('ignore')
            quantization.quantize_static(
                prepared, output, _CalibrationReader(inputs),
                quant_format=quantization.QuantFormat.QDQ,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                per_channel=True, reduce_range=True,
                op_types_to_quantize=list(op_types) if op_types else None,
                nodes_to_exclude=keep_float,
                # MinMax keeps only each tensor's min and max per image (ReduceMin/ReduceMax
                # outputs), so 100 images of yolact_base need little memory. (Its
                # CalibMaxIntermediateOutputs option drops data in onnxruntime 1.32: not used.)
                calibrate_method=quantization.CalibrationMethod.MinMax)
    import onnxruntime
    meta = json.loads(onnxruntime.InferenceSession(fp32_path, providers=['CPUExecutionProvider'])
                      .get_modelmeta().custom_metadata_map[METADATA_KEY])
    meta.update(precision='int8', calibration_images=len(inputs), float_outputs=list(float_outputs))
    set_onnx_metadata(output, meta)
    return keep_float


def export_int8(model: ExportableYolact, path: str, inputs: Sequence[np.ndarray],
                opset: Optional[int] = None, dynamic_batch: bool = False, check: bool = True
                ) -> List[str]:
    """Export `model` to ONNX in float32 (in a temporary folder; checked against PyTorch when
    `check`), then quantize it to int8 at `path`, calibrated on `inputs`. Returns the files written
    (YOLACT++'s mask-IoU head stays float32, beside `path`, named as export_onnx names it)."""
    with tempfile.TemporaryDirectory(prefix='yolact-fp32-') as tmp:
        fp32_path = os.path.join(tmp, os.path.basename(path))
        written = export_onnx(model, fp32_path, opset, dynamic_batch)
        if check:
            diff = check_onnx(model, fp32_path, (1, 3) if dynamic_batch else (1,))
            print(f'onnxruntime (float32) vs PyTorch: max abs difference {diff:.2e}')
        quantize_onnx(fp32_path, path, inputs)
        if check:
            print(int8_difference(fp32_path, path, inputs[0]))
        moved = [os.path.join(os.path.dirname(path), os.path.basename(extra)) for extra in written[1:]]
        for extra, target in zip(written[1:], moved):
            shutil.move(extra, target)
    return [path] + moved


def int8_difference(fp32_path: str, int8_path: str, image: np.ndarray) -> str:
    """One line: how far the int8 file's outputs are from the float32 file's on one input."""
    import onnxruntime
    outs = [onnxruntime.InferenceSession(p, providers=['CPUExecutionProvider']).run(None, {INPUT_NAME: image})
            for p in (fp32_path, int8_path)]
    parts = [f'{name} {float(np.abs(a - b).max()):.2e}' for name, a, b in zip(OUTPUT_NAMES, *outs)]
    return ('int8 vs float32 on a calibration image, max abs difference: ' + ', '.join(parts)
            + ' (the mAP through the file: eval.py --trained_model FILE.onnx)')


# ----------------------------------------------------------------------------- TorchScript

def _trace(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad(), _quiet_jit():
        return torch.jit.trace(module, example)


def export_torchscript(model: ExportableYolact, path: str) -> List[str]:
    """Write `model` as a torch.jit.trace'd module that torch.jit.load opens without this repository
    (YOLACT++ also needs `import torchvision` first, for deform_conv2d). Returns the files written."""
    example = model.example_input(1)
    with torch.no_grad():
        _, _, _, proto = model(example)

    written = [path]
    maskiou_file = None
    if model.maskiou_net is not None:
        maskiou_file = maskiou_path(path)
        with _quiet_jit():
            torch.jit.save(_trace(model.maskiou_net, _maskiou_example(model, proto)), maskiou_file)
        written.append(maskiou_file)

    metadata = export_metadata(model.image_size, maskiou_file and os.path.basename(maskiou_file),
                               dynamic_batch=True, config=model.net.config)
    with _quiet_jit():
        torch.jit.save(_trace(model, example), path,
                       _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
    return written


# ----------------------------------------------------------------------------- command line

def build_exportable(trained_model: str, config: Optional[str] = None,
                     image_size: Optional[int] = None) -> ExportableYolact:
    """Activate the config (given or inferred from the checkpoint name), set the input size, and
    load the checkpoint into an ExportableYolact on the CPU.

    image_size replaces the config's max_size (in the network's copy of it, net.config; the global
    cfg keeps its own): the side of the square input and the image size the priors' pixel scales
    refer to.
    """
    if config is None:
        config = config_name_from_checkpoint(trained_model)
        print(f'Config not specified. Parsed {config} from the file name.')
    active = set_cfg(config)
    use_checkpoint_classes(trained_model, active)
    if image_size is not None:
        if image_size < 32:
            raise ExportError(f"--image_size must be at least 32 pixels, got {image_size}")
        active = active.copy({'max_size': image_size})
    if active.preserve_aspect_ratio:
        raise ExportError("configs with preserve_aspect_ratio have no single input size to export")
    net = load_model(trained_model, torch.device('cpu'), active)
    return ExportableYolact(net)


def default_output(trained_model: str, fmt: str, int8: bool = False) -> str:
    stem = os.path.splitext(trained_model)[0]
    return stem + ('.int8.onnx' if int8 else '.onnx' if fmt == 'onnx' else '.pt')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Export a trained YOLACT to ONNX or TorchScript (outputs before NMS; see '
                    'deploy/onnx_postprocess.py for the numpy post-processing).')
    parser.add_argument('--trained_model', required=True, help='checkpoint (.pth) to export')
    parser.add_argument('--config', default=None,
                        help='config name; inferred from the checkpoint name if omitted '
                             '(yolact_base_54_800000.pth -> yolact_base_config)')
    parser.add_argument('--output', default=None,
                        help='output file (default: the checkpoint path with .onnx, .int8.onnx or .pt)')
    parser.add_argument('--format', choices=('onnx', 'torchscript'), default='onnx')
    parser.add_argument('--opset', type=int, default=None,
                        help=f'ONNX opset (default {DEFAULT_OPSET}, '
                             f'{DEFORM_CONV_MIN_OPSET} for YOLACT++; '
                             f'below {DYNAMO_MIN_OPSET} uses torch\'s older exporter)')
    parser.add_argument('--dynamic_batch', action='store_true',
                        help='ONNX: leave the batch dimension free (TorchScript always is)')
    parser.add_argument('--image_size', type=int, default=None,
                        help='side of the square input in pixels (default: the config\'s max_size)')
    parser.add_argument('--no_check', dest='check', action='store_false',
                        help='ONNX: skip running the exported file with onnxruntime against PyTorch')
    parser.add_argument('--int8', action='store_true',
                        help='ONNX: quantize to int8 for CPUs (onnxruntime static quantization, QDQ, '
                             'per-channel weights; box, coefficient and prototype layers stay float32), '
                             'calibrated on --calib_data')
    parser.add_argument('--calib_data', default=None, metavar='ROOT',
                        help='--int8: a COCO-format dataset root (val2017/ + annotations/, or the '
                             'layout of data.synthetic: val/ + instances_val.json); its val images '
                             '(else its train images) calibrate the activation ranges')
    parser.add_argument('--calib_images', type=int, default=None,
                        help=f'--int8: calibration images, spread over the split (default {DEFAULT_CALIB_IMAGES})')
    return parser


def check_int8_flags(args: argparse.Namespace) -> None:
    """--int8 needs --calib_data (an existing folder) and the quantization tools; the calibration
    flags need --int8."""
    if not args.int8:
        if args.calib_data is not None or args.calib_images is not None:
            raise ExportError("--calib_data and --calib_images apply to --int8 only")
        return
    if args.calib_data is None:
        raise ExportError("--int8 needs --calib_data ROOT: images of a COCO-format dataset to calibrate "
                          "the activation ranges on (e.g. the model's validation set)")
    if not os.path.isdir(args.calib_data):
        raise ExportError(f"--calib_data: folder not found: {args.calib_data}")
    if args.calib_images is not None and args.calib_images < 1:
        raise ExportError(f"--calib_images must be at least 1, got {args.calib_images}")
    if args.opset is not None and args.opset < 13:
        raise ExportError(f"--int8 needs --opset 13 or newer (per-channel QuantizeLinear), got {args.opset}")
    require('onnxruntime', 'int8 quantization')


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.format == 'onnx':
            # Fail before loading the weights when the exporter cannot run.
            require('onnx', 'ONNX export')
            if args.opset is None or args.opset >= DYNAMO_MIN_OPSET:
                require('onnxscript', 'ONNX export')
            if args.check:
                require('onnxruntime', 'Checking the exported model (skip with --no_check)')
        elif args.opset is not None or args.dynamic_batch or args.int8:
            raise ExportError("--opset, --dynamic_batch and --int8 apply to --format onnx only")
        check_int8_flags(args)
        if not os.path.isfile(args.trained_model):
            raise CheckpointError(f"checkpoint not found: {args.trained_model}")

        model = build_exportable(args.trained_model, args.config, args.image_size)
        output = args.output or default_output(args.trained_model, args.format, args.int8)
        folder = os.path.dirname(os.path.abspath(output))
        os.makedirs(folder, exist_ok=True)

        if args.int8:
            inputs = calibration_inputs(args.calib_data, model.net.config, args.calib_images or DEFAULT_CALIB_IMAGES)
            written = export_int8(model, output, inputs, args.opset, args.dynamic_batch, args.check)
        elif args.format == 'onnx':
            written = export_onnx(model, output, args.opset, args.dynamic_batch)
            if args.check:
                diff = check_onnx(model, output, (1, 3) if args.dynamic_batch else (1,))
                print(f'onnxruntime vs PyTorch: max abs difference {diff:.2e}')
        else:
            written = export_torchscript(model, output)
    except (ExportError, ConfigError, CheckpointError, DatasetFileNotFoundError, DatasetFormatError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    for path in written:
        print(f'Wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

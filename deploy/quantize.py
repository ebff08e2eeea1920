"""int8 ONNX files for CPUs: onnxruntime static quantization of a float32 export (deploy/exporting.py),
calibrated on images of a COCO-format dataset.

QDQ format, int8 weights per output channel, uint8 activations whose ranges are measured on the
calibration images; the layers that produce the boxes, mask coefficients and prototypes stay in
float32 (FLOAT_OUTPUTS). eval.py --trained_model FILE.onnx measures the mAP through the file.
"""
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from data.coco import COCODetection, DatasetFileNotFoundError, coco_dataset_paths
from data.config import Config
from deploy.exporting import (
    INPUT_NAME,
    OUTPUT_NAMES,
    ExportableYolact,
    ExportError,
    check_onnx,
    export_onnx,
    require,
    set_onnx_metadata,
)
from deploy.onnx_postprocess import METADATA_KEY
from utils.augmentations import BaseTransform

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

"""Export a trained YOLACT to ONNX or TorchScript for deployment runtimes.

    python export.py --trained_model weights/yolact_base_54_800000.pth --output yolact_base.onnx
    python export.py --trained_model weights/yolact_base_54_800000.pth --format torchscript
    python export.py --trained_model weights/yolact_base_54_800000.pth --int8 --calib_data data/coco

The exported graph stops before non-maximum suppression (deploy/exporting.py: its outputs and the
metadata stored with them); deploy/onnx_postprocess.py (numpy only) turns its outputs into final
detections. The input size is fixed at export (the priors are constants of the graph); with
--dynamic_batch the batch dimension is free. YOLACT++ (deformable convolutions) needs ONNX opset 19
or newer, where DeformConv exists; its mask-IoU head is exported beside the model as
'<name>.maskiou.onnx' (or .pt).

With --int8 the ONNX file is quantized for CPUs (deploy/quantize.py: onnxruntime static
quantization, activation ranges calibrated on images of a COCO-format dataset; the box, coefficient
and prototype layers stay float32). eval.py --trained_model FILE.onnx measures the mAP through the file.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from data.coco import DatasetFileNotFoundError, DatasetFormatError
from data.config import ConfigError
from deploy.exporting import (
    DEFAULT_OPSET,
    DEFORM_CONV_MIN_OPSET,
    DYNAMO_MIN_OPSET,
    ExportError,
    build_exportable,
    check_onnx,
    export_onnx,
    export_torchscript,
    require,
)
from deploy.quantize import DEFAULT_CALIB_IMAGES, calibration_inputs, export_int8
from deploy.runtime_model import RuntimeModelError
from utils.checkpoint import CheckpointError


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
    except (ExportError, ConfigError, CheckpointError, DatasetFileNotFoundError, DatasetFormatError,
            RuntimeModelError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    for path in written:
        print(f'Wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

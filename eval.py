"""Evaluate a trained YOLACT: COCO box/mask mAP, FPS, or detections drawn on images and videos.

    python eval.py --trained_model weights/yolact_base_54_800000.pth               # COCO mAP
    python eval.py --trained_model weights/yolact_base_54_800000.pth --benchmark --max_images 1000
    python eval.py --trained_model weights/yolact_base_54_800000.pth --image in.jpg:out.png
    python eval.py --trained_model weights/yolact_base_54_800000.pth --images in_dir:out_dir
    python eval.py --trained_model weights/yolact_base_54_800000.pth --video in.mp4:out.mp4
    python eval.py --trained_model yolact_base.int8.onnx --val_data data/coco   # an exported file
    python eval.py --trained_model weights/my_model_9_1000.pth --images in_dir:out_dir --save_labelme

The flags are the original eval.py's. The config defaults to the one named by the checkpoint's
file name (<config>_<epoch>_<iteration>.pth). A file written by export.py (.onnx, float32 or int8,
or TorchScript) runs in onnxruntime (TorchScript: in PyTorch) (deploy/runtime_model.py) with the same
Detect, masks and COCOeval; its config and class names come from its metadata. The config is a value
held here and passed down; the file is opened and its network built by deploy/loading.py (as
predictor.Predictor loads it). The work is done in evaluation/evaluator.py (the dataset
evaluation, which train.py's validation also runs; `eval.evaluate(net, dataset, train_mode=True)`
still works), evaluation/coco_results.py (COCO conversion and COCOeval), deploy/inference.py (images,
videos, benchmark) on predictor.Predictor (what a Python program uses: the pictures and files
written here are its Results') and deploy/visualize.py (drawing).
"""
import argparse
import os
import random
import sys
from dataclasses import dataclass, fields, replace
from typing import Dict, Optional, Sequence, Tuple

import torch

from data.coco import (
    COCODetection,
    DatasetFileNotFoundError,
    DatasetFormatError,
    ImageLoadError,
    dataset_from_annotations,
    read_annotations,
    user_dataset_paths,
)
from data.config import Config, ConfigError, describe_classes, with_dataset
from deploy.inference import (
    InferenceError,
    InferenceOptions,
    configure_detect,
    evalimage,
    evalimages,
    evalvideo,
    open_video,
)
from deploy.loading import ModelFile, build_network, open_model
from deploy.runtime_model import RuntimeModelError, is_exported
from deploy.visualize import DrawOptions, covers
from evaluation.coco_results import COCO_EVAL_BACKENDS, CocoEvalBackendError, check_coco_eval_backend
from evaluation.evaluator import (  # noqa: F401 - re-exported: the original's eval.evaluate(net, dataset, ...)
    EvalOptions,
    _id_hash,
    _options,
    eval_order,
    evaluate,
    evaluate_dataset,
    print_results,
    validation_map,
)
from predictor import Predictor
from utils.augmentations import BaseTransform
from utils.checkpoint import CheckpointError
from utils.device import DeviceError, add_amp_dtype_flag, default_device_type, select_device
from utils.functions import SavePath, check_writable_folder


class EvalError(RuntimeError):
    """A command-line input eval.py cannot use."""


@dataclass
class EvalArgs(EvalOptions, DrawOptions):
    """eval.py's options: the dataset evaluation's (EvalOptions), the drawing's (DrawOptions: the
    --display_* flags, --font) and those of the script (model, config, data, device, media).
    `parse_args` fills them from the flags, whose defaults these are; `main` passes them down."""
    trained_model: str = 'weights/yolact_base_54_800000.pth'
    config: Optional[str] = None
    dataset: Optional[str] = None
    val_data: Optional[str] = None
    valid_images: Optional[str] = None
    valid_info: Optional[str] = None
    node_device: Optional[str] = None
    cuda: Optional[bool] = None
    compile: bool = False
    detect: bool = False
    display_lincomb: bool = False
    display_fps: bool = False
    image: Optional[str] = None
    images: Optional[str] = None
    video: Optional[str] = None
    video_multiframe: int = 1
    save_json: bool = False
    save_masks: bool = False
    save_labelme: bool = False

    def draw_options(self) -> DrawOptions:
        """The DrawOptions part of these options."""
        return DrawOptions(**{f.name: getattr(self, f.name) for f in fields(DrawOptions)})


# ----------------------------------------------------------------------------- flags

def str2bool(value: str) -> bool:
    """'true'/'false' style strings, as the original's `--fast_nms False` flags take."""
    lowered = str(value).lower()
    if lowered in ('yes', 'true', 't', 'y', '1'):
        return True
    if lowered in ('no', 'false', 'f', 'n', '0'):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


def add_bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str,
                  negative: Optional[str] = None, dest: Optional[str] = None) -> None:
    """`--name` turns the option on, `--name false` (the original's style) or `--negative` off.

    negative: the off switch, `--no_<name>` unless given; '' for none.
    """
    dest = dest or name
    parser.add_argument(f'--{name}', dest=dest, nargs='?', const=True, type=str2bool, default=default,
                        metavar='BOOL', help=f'{help} (default: {default})')
    negative = f'no_{name}' if negative is None else negative
    if negative:
        parser.add_argument(f'--{negative}', dest=dest, action='store_false', help=f'turn off --{name}')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='YOLACT evaluation: COCO mAP, FPS benchmark, or drawn detections.')
    p.add_argument('--trained_model', default='weights/yolact_base_54_800000.pth',
                   help="checkpoint (.pth) to evaluate, or a file written by export.py (.onnx, fp32 or "
                        "int8, run in onnxruntime; or TorchScript; config and classes from its metadata); 'interrupt' / "
                        "'latest': the newest interrupt save / checkpoint of --config in weights/")
    p.add_argument('--config', default=None,
                   help='config name; default: parsed from the checkpoint file name '
                        '(yolact_base_54_800000.pth -> yolact_base_config)')
    p.add_argument('--dataset', default=None,
                   help="dataset of data/config.py to use instead of the config's (e.g. coco2017_dataset)")
    p.add_argument('--val_data', '--data', dest='val_data', default=None,
                   help='evaluate on this folder: a COCO root (val2017/, annotations/instances_val2017.json) '
                        'or the layout of data.synthetic / data.labelme2coco (val/, instances_val.json)')
    p.add_argument('--valid_images', default=None, help='folder of the evaluation images (with --valid_info)')
    p.add_argument('--valid_info', default=None, help='COCO annotation file of the evaluation images')
    p.add_argument('--node_device', '--eval_device', dest='node_device', default=None,
                   help='cpu, cuda or npu (optionally :N); default: npu, else cuda, else cpu')
    p.add_argument('--cuda', type=str2bool, default=None, metavar='BOOL',
                   help='the original\'s switch: true = --node_device cuda, false = cpu')
    add_bool_flag(p, 'amp', False, 'run the network under autocast')
    add_bool_flag(p, 'compile', False, 'torch.compile the network with frozen weights (Yolact.compile_network); '
                  'the first image compiles (about a minute on 2 CPU cores), the rest run faster')
    add_amp_dtype_flag(p)

    p.add_argument('--top_k', default=5, type=int, help='detections drawn per image (and kept by --benchmark)')
    add_bool_flag(p, 'fast_nms', True, "Fast NMS (the paper's); false: greedy NMS")
    add_bool_flag(p, 'cross_class_nms', False, 'NMS across classes instead of per class')
    p.add_argument('--score_threshold', default=0, type=float,
                   help='ignore detections scoring below this')
    p.add_argument('--max_images', default=-1, type=int, help='evaluate at most this many images (-1: all)')
    add_bool_flag(p, 'shuffle', False, 'random image order (with --seed)', negative='')
    add_bool_flag(p, 'no_sort', False, 'keep the dataset order instead of the hashed image-id order',
                  negative='')
    p.add_argument('--seed', default=None, type=int, help='seed for --shuffle')
    add_bool_flag(p, 'output_coco_json', False, 'also write the detections as COCO result json files',
                  negative='')
    p.add_argument('--bbox_det_file', default='results/bbox_detections.json', help='box results json')
    p.add_argument('--mask_det_file', default='results/mask_detections.json', help='mask results json')
    p.add_argument('--results_dir', default=None,
                   help='dataset evaluation: write metrics.json (the COCO numbers, per-class table, confusion '
                        'counts), pr_curve.png and confusion_matrix.png here; default: beside the checkpoint, '
                        'CHECKPOINT_STEM_metrics/ (weights/x_1_100.pth -> weights/x_1_100_metrics/)')
    p.add_argument('--coco_eval', default='pycocotools', choices=COCO_EVAL_BACKENDS,
                   help='COCOeval implementation that computes the mAP: pycocotools, or faster '
                        '(faster-coco-eval: same numbers, less time; pip install faster-coco-eval)')
    add_bool_flag(p, 'benchmark', False, 'time the network over the dataset images, draw nothing', negative='')
    add_bool_flag(p, 'no_bar', False, 'no progress bar', negative='')
    add_bool_flag(p, 'detect', False, 'boxes only: do not run the mask branch', negative='')

    add_bool_flag(p, 'display_masks', True, 'draw masks')
    add_bool_flag(p, 'display_bboxes', True, 'draw boxes')
    add_bool_flag(p, 'display_text', True, 'draw class names')
    add_bool_flag(p, 'display_scores', True, 'draw scores after class names')
    add_bool_flag(p, 'display_lincomb', False, 'also output the mask prototypes of the image')
    add_bool_flag(p, 'display_fps', False, 'draw the processing FPS on video frames', negative='')
    add_bool_flag(p, 'crop', True, 'crop masks with their predicted box', negative='no_crop')
    p.add_argument('--font', default=None, metavar='PATH',
                   help='TrueType/OpenType font for class names that are not ASCII (e.g. Chinese); '
                        'default: the first installed font that has their glyphs')
    p.add_argument('--image', default=None, help='image to process: in[:out]')
    p.add_argument('--images', default=None, help='folder of images to process: in_dir:out_dir')
    p.add_argument('--video', default=None,
                   help='video file or webcam index to process: path_or_index[:out.mp4]')
    p.add_argument('--video_multiframe', default=1, type=int, help='video frames per network batch')
    add_bool_flag(p, 'save_json', False,
                  '--image/--images: also write the drawn detections (same --top_k and --score_threshold) '
                  'beside each picture, OUT.png -> OUT.json: image, height, width and a best-first list of '
                  '{class_name, class_id, score, box [x1, y1, x2, y2], mask {rle (COCO), polygons, area}} '
                  '(no mask with --detect); a picture only shown in a window: beside the input as '
                  'IN_yolact.json', negative='')
    add_bool_flag(p, 'save_masks', False,
                  '--image/--images: also write OUT.png -> OUT_instances.png, a 16-bit single-channel PNG '
                  'of the input\'s size: 0 background, the i-th detection of the JSON list (1-based) painted '
                  'i, the better score winning overlaps; a picture only shown in a window: beside the input '
                  'as IN_yolact_instances.png', negative='')
    add_bool_flag(p, 'save_labelme', False,
                  '--images IN:OUT: also write OUT/labelme/NAME.json (labelme polygons, one per outer contour, '
                  'labelled with the class names) beside a copy of each input image, to correct in labelme '
                  'and convert with python -m data.labelme2coco', negative='')
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> EvalArgs:
    """eval.py's flags as EvalArgs."""
    opts = EvalArgs(**vars(build_parser().parse_args(argv)))
    if opts.seed is not None:
        random.seed(opts.seed)
    return opts


# ----------------------------------------------------------------------------- setup

def resolve_checkpoint(opts: EvalArgs, folder: str = 'weights/') -> str:
    """--trained_model, where the original's 'interrupt' and 'latest' name the newest interrupt
    save / the newest checkpoint of the config (--config, default yolact_base) in `folder`."""
    if opts.trained_model == 'interrupt':
        found = SavePath.get_interrupt(folder)
        what = f'interrupt checkpoint in {folder}'
    elif opts.trained_model == 'latest':
        config = (opts.config or 'yolact_base_config').split('_config')[0]
        found = SavePath.get_latest(folder, config)
        what = f'checkpoint of {config} in {folder}'
    else:
        found, what = opts.trained_model, opts.trained_model
    if found is None or not os.path.isfile(found):
        raise CheckpointError(f"checkpoint not found: {what}")
    return found


def check_exported_flags(opts: EvalArgs) -> None:
    """--amp and --compile against an exported file, which runs as exported (a --config that is not
    the file's own is refused by deploy.loading.open_model)."""
    if opts.compile or opts.amp:
        raise EvalError(f"--{'compile' if opts.compile else 'amp'} applies to a .pth checkpoint; "
                        f"{os.path.basename(opts.trained_model)} runs as exported (onnxruntime or TorchScript)")


def setup_config(opts: EvalArgs, model: ModelFile, evaluating: bool = False) -> Tuple[Config, Dict[str, dict]]:
    """The config to run `model` with: its own (deploy.loading.open_model: --config or the file
    name, --dataset, the checkpoint's or the exported file's classes) with --val_data's dataset and
    --detect. `evaluating` (mAP on a dataset given by paths): the dataset's classes are checked
    against the model's, and its category ids are used; with --benchmark only its pictures are
    timed, so a dataset of other classes serves too. Also returns the annotation file it parsed
    (info file -> content, for build_dataset; empty without --val_data / --valid_info)."""
    config = model.config.copy()
    annotations: Dict[str, dict] = {}
    paths = user_dataset_paths(opts.val_data, {'valid_images': opts.valid_images, 'valid_info': opts.valid_info},
                               splits=('val',)) if evaluating else None
    if paths is not None:
        annotations = read_annotations(paths, splits=('val',))
        dataset = dataset_from_annotations(paths, splits=('val',), annotations=annotations)
        names, wanted = tuple(dataset.class_names), tuple(config.dataset.class_names)
        if opts.benchmark and names != wanted:
            # Timing reads the pictures only: the model keeps its classes, the dataset gives its files.
            config.dataset = config.dataset.copy({'valid_images': dataset.valid_images,
                                                  'valid_info': dataset.valid_info, 'label_map': None})
            print(f'--benchmark: timing on the images of {paths.valid_info} ({describe_classes(names)}, not the '
                  f'model\'s {len(wanted)} classes: no mAP is computed)')
        # A checkpoint without a class list is trusted with the dataset's names if the count fits.
        elif names != wanted and (model.classes_from_file or len(names) != len(wanted)):
            raise EvalError(f"{paths.valid_info} lists {describe_classes(names)} but the model predicts "
                            f"{describe_classes(wanted)}; evaluate on a dataset of the classes it was trained on")
        else:
            config = with_dataset(config, dataset, source=paths.valid_info, say=None if names == wanted else print)
    if opts.detect:
        config.eval_mask_branch = False
    return config, annotations


def default_results_dir(checkpoint: str) -> str:
    """Where a dataset evaluation of `checkpoint` writes metrics.json and its plots by default."""
    return os.path.splitext(checkpoint)[0] + '_metrics'


def device_from_flags(opts: EvalArgs) -> torch.device:
    name = opts.node_device
    if name is None and opts.cuda is not None:
        name = 'cuda' if opts.cuda else 'cpu'
    return select_device(name or default_device_type())


def build_dataset(opts: EvalArgs, config: Config, annotations: Optional[Dict[str, dict]] = None) -> COCODetection:
    """The evaluation dataset: `config`'s (setup_config puts --val_data / --valid_* there), from its
    annotation file already parsed when `annotations` has it."""
    images, info = config.dataset.valid_images, config.dataset.valid_info
    for path, what in ((images, 'image folder'), (info, 'annotation file')):
        if not os.path.exists(path):
            raise DatasetFileNotFoundError(
                f"validation {what} not found: {path} (dataset '{config.dataset.name}'; "
                f"use --val_data ROOT or --dataset NAME)")
    return COCODetection(images, info, transform=BaseTransform(config), has_gt=config.dataset.has_gt, config=config,
                         annotations=(annotations or {}).get(info))


# ----------------------------------------------------------------------------- images / videos

def split_in_out(spec: str) -> Tuple[str, Optional[str]]:
    """'in:out' -> (in, out); 'in' -> (in, None). A path that exists as given is never split,
    and a drive letter (C:\\...) is not taken for the separator."""
    if os.path.exists(spec) or ':' not in spec:
        return spec, None
    start = 2 if len(spec) > 2 and spec[1] == ':' and spec[0].isalpha() else 0
    cut = spec.find(':', start)
    if cut < 0:
        return spec, None
    return spec[:cut], spec[cut + 1:] or None


def inference_options(opts: EvalArgs) -> InferenceOptions:
    return InferenceOptions(draw=opts.draw_options(), crop_masks=opts.crop, display_lincomb=opts.display_lincomb,
                            display_fps=opts.display_fps, video_multiframe=opts.video_multiframe,
                            no_bar=opts.no_bar, save_json=opts.save_json, save_masks=opts.save_masks,
                            save_labelme=opts.save_labelme)


def check_media_inputs(opts: EvalArgs) -> None:
    """Fail before the model is loaded when an --image/--images/--video input is unusable."""
    if sum(x is not None for x in (opts.image, opts.images, opts.video)) > 1:
        raise EvalError("give only one of --image, --images, --video")
    saving = [f'--{name}' for name in ('save_json', 'save_masks') if getattr(opts, name)]
    if saving and opts.image is None and opts.images is None:
        raise EvalError(f"{' and '.join(saving)} need{'' if len(saving) > 1 else 's'} --image or --images"
                        + (" (they write one file per picture, not per video frame)"
                           if opts.video is not None else ""))
    if opts.font is not None:
        if not os.path.isfile(opts.font):
            raise EvalError(f"--font: file not found: {opts.font}")
        try:
            covers(opts.font, '')
        except ValueError as err:
            raise EvalError(f"--font: {err}") from None
    if opts.save_masks and opts.detect:
        raise EvalError("--save_masks needs masks; --detect turns the mask branch off")
    if opts.save_labelme and opts.images is None:
        raise EvalError("--save_labelme needs --images IN:OUT (it writes OUT/labelme/, beside copies of the inputs)")
    if opts.save_labelme and opts.detect:
        raise EvalError("--save_labelme writes mask polygons; --detect turns the mask branch off")
    if opts.image is not None:
        path, _ = split_in_out(opts.image)
        if not os.path.isfile(path):
            raise EvalError(f"--image: file not found: {path}")
    if opts.images is not None:
        src, dst = split_in_out(opts.images)
        if dst is None:
            raise EvalError(f"--images expects in_dir:out_dir, got {opts.images!r}")
        if not os.path.isdir(src):
            raise EvalError(f"--images: input folder not found: {src}")
    if opts.video is not None:
        src, _ = split_in_out(opts.video)
        if not src.isdigit() and not os.path.isfile(src):
            raise EvalError(f"--video: file not found: {src}")
        if not src.isdigit():
            open_video(src)[0].release()  # a file that is no video fails here, naming it
    if opts.video_multiframe < 1:
        raise EvalError(f"--video_multiframe must be >= 1, got {opts.video_multiframe}")


def media_predictor(net: torch.nn.Module, opts: EvalArgs) -> Predictor:
    """The Predictor of --image / --images / --video: the flags' NMS, --top_k, --score_threshold,
    --crop and autocast, the class names of the network's config."""
    configure_detect(net, opts.fast_nms, opts.cross_class_nms)
    return Predictor.from_network(net, score_threshold=opts.score_threshold, top_k=opts.top_k, amp=opts.amp,
                                  amp_dtype=opts.amp_dtype, crop_masks=opts.crop)


def run_media(net: torch.nn.Module, opts: EvalArgs) -> None:
    """--image / --images / --video."""
    predictor = media_predictor(net, opts)
    inf = inference_options(opts)
    if opts.image is not None:
        src, dst = split_in_out(opts.image)
        written = evalimage(predictor, src, dst, inf)
        if written:
            print(f'{src} -> {written}')
    elif opts.images is not None:
        src, dst = split_in_out(opts.images)
        evalimages(predictor, src, dst, inf)
    else:
        src, dst = split_in_out(opts.video)
        evalvideo(predictor, src, dst, inf)


# ----------------------------------------------------------------------------- main

def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = parse_args(argv)
    try:
        opts.trained_model = resolve_checkpoint(opts)
        media = any(x is not None for x in (opts.image, opts.images, opts.video))
        if is_exported(opts.trained_model):
            check_exported_flags(opts)
        model = open_model(opts.trained_model, opts.config, opts.dataset, say=print)
        config, annotations = setup_config(opts, model, evaluating=not media)
        device = device_from_flags(opts)
        check_media_inputs(opts)  # also rejects the media-only flags without media
        if media:
            dataset = None
        else:
            if not opts.benchmark:
                check_coco_eval_backend(opts.coco_eval)
            dataset = build_dataset(opts, config, annotations)
            if not opts.benchmark:
                opts.checkpoint = opts.trained_model
                opts.results_dir = opts.results_dir or default_results_dir(opts.trained_model)
                try:  # before the model is loaded and run
                    check_writable_folder(opts.results_dir, '--results_dir')
                except ValueError as err:
                    raise EvalError(str(err)) from None
        net = build_network(replace(model, config=config), device, opts.amp, opts.amp_dtype, verbose=True)
        if opts.compile:
            net.compile_network()
        if media:
            run_media(net, opts)
        else:
            evaluate(net, dataset, opts=opts)
    except (CheckpointError, ConfigError, DeviceError, DatasetFileNotFoundError, DatasetFormatError,
            ImageLoadError, InferenceError, EvalError, CocoEvalBackendError, RuntimeModelError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

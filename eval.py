"""Evaluate a trained YOLACT: COCO box/mask mAP, FPS, or detections drawn on images and videos.

    python eval.py --trained_model weights/yolact_base_54_800000.pth               # COCO mAP
    python eval.py --trained_model weights/yolact_base_54_800000.pth --benchmark --max_images 1000
    python eval.py --trained_model weights/yolact_base_54_800000.pth --image in.jpg:out.png
    python eval.py --trained_model weights/yolact_base_54_800000.pth --images in_dir:out_dir
    python eval.py --trained_model weights/yolact_base_54_800000.pth --video in.mp4:out.mp4
    python eval.py --trained_model yolact_base.int8.onnx --val_data data/coco   # an exported file

The flags are the original eval.py's. The config defaults to the one named by the checkpoint's
file name (<config>_<epoch>_<iteration>.pth). A file written by export.py (.onnx, float32 or int8)
runs in onnxruntime (utils/runtime_model.py) with the same Detect, masks and COCOeval; its config
and class names come from its metadata. train.py validates with `evaluate(net, dataset,
train_mode=True)`. The work is done in utils/coco_results.py (COCO conversion and COCOeval),
utils/inference.py (images, videos, benchmark) and utils/visualize.py (drawing).
"""
import argparse
import os
import random
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from data.coco import (
    COCODetection,
    DatasetFileNotFoundError,
    DatasetFormatError,
    ImageLoadError,
    dataset_from_annotations,
    get_label_map,
    user_dataset_paths,
)
from data.config import ConfigError, cfg, describe_classes, set_cfg, set_dataset, use_dataset
from layers.output_utils import postprocess
from utils.augmentations import BaseTransform
from utils.checkpoint import CheckpointError, config_name_from_checkpoint
from utils.coco_results import (
    COCO_EVAL_BACKENDS,
    CocoEvalBackendError,
    CocoResults,
    check_coco_eval_backend,
    evaluate_results,
    format_map_table,
)
from utils.device import (
    AMP_CHOICES,
    DeviceError,
    autocast_dtype,
    default_device_type,
    prefers_channels_last,
    select_device,
)
from utils.functions import SavePath
from utils.inference import (
    InferenceError,
    InferenceOptions,
    Predictor,
    benchmark,
    evalimage,
    evalimages,
    evalvideo,
    open_video,
)
from utils.runtime_model import RuntimeModelError, is_exported, load_exported, open_exported, use_exported_config
from utils.visualize import DrawOptions
from yolact import load_model, use_checkpoint_classes

# Set by parse_args, read by evaluate() when no options are passed (the original's train.py calls
# eval.parse_args([...]) and then eval.evaluate(net, dataset, train_mode=True)).
args: Optional[argparse.Namespace] = None


class EvalError(RuntimeError):
    """A command-line input eval.py cannot use."""


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
                        "int8; run in onnxruntime, config and classes from its metadata); 'interrupt' / "
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
    p.add_argument('--amp_dtype', default='auto', choices=AMP_CHOICES,
                   help='autocast dtype; auto: fp16 on cuda/npu, bf16 on a CPU with native bf16, '
                        'float32 on other CPUs')

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
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse eval.py's flags (also remembered for `evaluate` calls that pass none)."""
    global args
    args = build_parser().parse_args(argv)
    if args.seed is not None:
        random.seed(args.seed)
    return args


def default_options() -> argparse.Namespace:
    return build_parser().parse_args([])


# ----------------------------------------------------------------------------- setup

def resolve_checkpoint(opts: argparse.Namespace, folder: str = 'weights/') -> str:
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


def setup_config(opts: argparse.Namespace, evaluating: bool = False,
                 exported: Optional[Dict[str, Any]] = None) -> None:
    """Activate the config (given or inferred), the dataset override, the checkpoint's classes and
    --detect. `evaluating` (mAP on a dataset given by paths): the dataset's classes are checked
    against the checkpoint's, and its category ids are used. `exported`: the metadata of an
    exported file, which gives the config and classes instead."""
    if exported is not None:
        from_file = use_exported_file_config(opts, exported)
    else:
        if opts.config is None:
            opts.config = config_name_from_checkpoint(opts.trained_model)
            print(f'Config not specified. Parsed {opts.config} from the file name.')
        set_cfg(opts.config)
        if opts.dataset is not None:
            set_dataset(opts.dataset)
        from_file = use_checkpoint_classes(opts.trained_model)
    paths = user_dataset_paths(opts.val_data, {'valid_images': opts.valid_images, 'valid_info': opts.valid_info},
                               splits=('val',)) if evaluating else None
    if paths is not None:
        dataset = dataset_from_annotations(paths, splits=('val',))
        names, wanted = tuple(dataset.class_names), tuple(cfg.dataset.class_names)
        # A checkpoint without a class list is trusted with the dataset's names if the count fits.
        if names != wanted and (from_file or len(names) != len(wanted)):
            raise EvalError(f"{paths.valid_info} lists {describe_classes(names)} but the model predicts "
                            f"{describe_classes(wanted)}; evaluate on a dataset of the classes it was trained on")
        use_dataset(dataset, source=paths.valid_info, say=None if names == wanted else print)
    if opts.detect:
        cfg.eval_mask_branch = False


def use_exported_file_config(opts: argparse.Namespace, meta: Dict[str, Any]) -> bool:
    """The config of an exported file: the one its metadata names, with its classes, input size
    and NMS settings (--dataset still picks the dataset's paths). Returns True (the classes are
    the file's own)."""
    if opts.compile or opts.amp:
        raise EvalError(f"--{'compile' if opts.compile else 'amp'} applies to a .pth checkpoint; "
                        f"{os.path.basename(opts.trained_model)} runs as exported, in onnxruntime")
    wanted = meta['config']
    if opts.config is not None and opts.config.split('_config')[0] != wanted.split('_config')[0]:
        raise EvalError(f"--config {opts.config}: {opts.trained_model} was exported from {wanted}, "
                        f"which its metadata names; drop --config")
    dataset = None
    if opts.dataset is not None:
        set_dataset(opts.dataset)
        dataset = cfg.dataset
    use_exported_config(meta)
    if dataset is not None:
        cfg.dataset = dataset.copy({'class_names': cfg.dataset.class_names, 'label_map': cfg.dataset.label_map})
    print(f"Config {cfg.name} and {describe_classes(cfg.dataset.class_names)} from the metadata of "
          f"{os.path.basename(opts.trained_model)}.")
    return True


def device_from_flags(opts: argparse.Namespace) -> torch.device:
    name = opts.node_device
    if name is None and opts.cuda is not None:
        name = 'cuda' if opts.cuda else 'cpu'
    return select_device(name or default_device_type())


def build_dataset(opts: argparse.Namespace) -> COCODetection:
    """The evaluation dataset: the active config's (setup_config puts --val_data / --valid_* there)."""
    images, info = cfg.dataset.valid_images, cfg.dataset.valid_info
    for path, what in ((images, 'image folder'), (info, 'annotation file')):
        if not os.path.exists(path):
            raise DatasetFileNotFoundError(
                f"validation {what} not found: {path} (dataset '{cfg.dataset.name}'; "
                f"use --val_data ROOT or --dataset NAME)")
    return COCODetection(images, info, transform=BaseTransform(), has_gt=cfg.dataset.has_gt)


def configure_detect(net: torch.nn.Module, opts: argparse.Namespace) -> None:
    detect = getattr(net, 'module', net).detect  # unwrap DataParallel / DDP
    detect.use_fast_nms = opts.fast_nms
    detect.use_cross_class_nms = opts.cross_class_nms


# ----------------------------------------------------------------------------- dataset evaluation

def _id_hash(x: int) -> int:
    """A fixed 32-bit integer mix of an image id (the original's order for partial evaluations,
    so --max_images N picks the same images on every Python and pycocotools version)."""
    mask = 0xFFFFFFFF
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x045D9F3B) & mask
    return ((x >> 16) ^ x) & mask


def eval_order(ids: Sequence[int], shuffle: bool = False, no_sort: bool = False,
               seed: Optional[int] = None) -> List[int]:
    """Dataset indices in evaluation order: shuffled (--shuffle), as stored (--no_sort), or by
    the hash of the image id (default)."""
    order = list(range(len(ids)))
    if shuffle:
        (random.Random(seed) if seed is not None else random).shuffle(order)
    elif not no_sort:
        order.sort(key=lambda i: _id_hash(int(ids[i])))
    return order


def _options(opts: Optional[argparse.Namespace], overrides: Dict[str, Any]) -> argparse.Namespace:
    base = vars(opts if opts is not None else (args if args is not None else default_options()))
    merged = dict(base)
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise TypeError(f"evaluate() got unknown options {unknown}; valid: {sorted(base)}")
    merged.update(overrides)
    return argparse.Namespace(**merged)


def _network_input(dataset, index: int, predictor: Predictor) -> Tuple[torch.Tensor, int, int]:
    """(Tensor[1, 3, h, w] backbone input, image height, width) of one dataset image."""
    if dataset.transform is not None:
        img, _, _, height, width, _ = dataset.pull_item(index)
        return img.unsqueeze(0), height, width
    img = dataset.pull_image(index)
    with torch.no_grad():
        batch = predictor.transform(predictor.to_device([img]))
    return batch, img.shape[0], img.shape[1]


def evaluate(net: torch.nn.Module, dataset, train_mode: bool = False,
             opts: Optional[argparse.Namespace] = None, verbose: Optional[bool] = None,
             **overrides) -> Optional[Dict[str, Any]]:
    """COCO box and mask AP of `net` on `dataset` (or, with --benchmark, its FPS).

    Args:
        net: Yolact (or a DataParallel/DDP wrapper of one); put in eval mode for the call.
        dataset: a COCODetection (``ids``, ``coco`` ground truth, ``pull_item``/``pull_image``).
        train_mode: called from training: quiet unless `verbose`.
        opts: eval.py's options; default: the last `parse_args`, else the flag defaults.
        verbose: print progress bar and tables (default: not train_mode).
        overrides: option values by flag name, e.g. ``max_images=50, fast_nms=False``.
    Returns:
        {'box': {'all': mAP, 50: AP50, 55: ..., 95: AP95}, 'mask': {...} (percent),
         'box_stats': [12 COCOeval stats], 'mask_stats': [...]}; 'mask*' is absent with
        --detect. None when the dataset has no ground truth (the json files are written) or with
        --benchmark (the FPS is printed).
    """
    opts = _options(opts, overrides)
    verbose = (not train_mode) if verbose is None else verbose
    configure_detect(net, opts)
    was_training = net.training
    net.eval()
    try:
        predictor = Predictor(net, amp=opts.amp, amp_dtype_name=opts.amp_dtype)
        order = eval_order(dataset.ids, opts.shuffle, opts.no_sort, opts.seed)
        if opts.max_images >= 0:
            order = order[:opts.max_images]
        if opts.benchmark:
            benchmark(predictor, dataset.pull_image, order, opts.top_k, opts.crop, opts.score_threshold,
                      no_bar=opts.no_bar or not verbose)
            return None
        return evaluate_dataset(predictor, dataset, order, opts, verbose)
    finally:
        net.train(was_training)


def validation_map(net: torch.nn.Module, dataset, max_images: int, amp_dtype: Optional[torch.dtype] = None,
                   coco_eval: str = 'pycocotools') -> Optional[Dict[str, Any]]:
    """Training's validation: box and mask mAP of `net` on (at most) `max_images` images with the
    flag defaults, quietly: {'box': {'all': mAP, 50: AP50, ...}, 'mask': {...}}. The net is left
    in train mode."""
    overrides: Dict[str, Any] = {'max_images': max_images, 'no_bar': True, 'coco_eval': coco_eval}
    if amp_dtype is not None:
        overrides.update(amp=True, amp_dtype='bf16' if amp_dtype == torch.bfloat16 else 'fp16')
    try:
        with torch.no_grad():
            return evaluate(net, dataset, train_mode=True, opts=default_options(), **overrides)
    finally:
        net.train()


def evaluate_dataset(predictor: Predictor, dataset, order: Sequence[int], opts: argparse.Namespace,
                     verbose: bool) -> Optional[Dict[str, Any]]:
    """Run the network over `order`'s images, collect COCO results and score them."""
    with_masks = bool(cfg.eval_mask_branch)
    results = CocoResults(getattr(dataset, 'label_map', None) or get_label_map())
    for index in tqdm(order, unit='img', disable=opts.no_bar or not verbose):
        batch, height, width = _network_input(dataset, index, predictor)
        det_output = predictor.run_batch(batch)
        classes, scores, boxes, masks = postprocess(det_output, width, height, crop_masks=opts.crop,
                                                    score_threshold=opts.score_threshold)
        results.add(dataset.ids[index], classes, scores, boxes, masks if with_masks else None)

    if opts.output_coco_json:
        for path in (opts.bbox_det_file, opts.mask_det_file if with_masks else None):
            if path and os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
        results.dump(opts.bbox_det_file, opts.mask_det_file if with_masks else None)
        if verbose:
            print(f'Detections written to {opts.bbox_det_file}'
                  + (f' and {opts.mask_det_file}' if with_masks else ''))
    if not getattr(dataset, 'has_gt', True):
        if verbose:
            print('This dataset has no ground truth: mAP not computed.')
        return None

    tasks = ('box', 'mask') if with_masks else ('box',)
    scores = evaluate_results(dataset.coco, results, tasks, backend=opts.coco_eval)
    summary = {}
    for task in tasks:
        summary[task] = scores[task].ap
        summary[f'{task}_stats'] = scores[task].stats
    if verbose:
        print_results(scores, len(order))
    return summary


def print_results(scores, num_images: int) -> None:
    """The original's mAP table, then COCOeval's 12-number summary for each task."""
    print(f'\nmAP over {num_images} images (COCOeval):\n')
    print(format_map_table({task: s.ap for task, s in scores.items()}))
    for task, s in scores.items():
        print(f'\n{task} (COCOeval summary):')
        print(s.summary.rstrip())
    print()


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


def inference_options(opts: argparse.Namespace) -> InferenceOptions:
    draw = DrawOptions(top_k=opts.top_k, score_threshold=opts.score_threshold,
                       display_masks=opts.display_masks, display_bboxes=opts.display_bboxes,
                       display_text=opts.display_text, display_scores=opts.display_scores)
    return InferenceOptions(draw=draw, crop_masks=opts.crop, display_lincomb=opts.display_lincomb,
                            display_fps=opts.display_fps, video_multiframe=opts.video_multiframe,
                            no_bar=opts.no_bar, save_json=opts.save_json, save_masks=opts.save_masks)


def check_media_inputs(opts: argparse.Namespace) -> None:
    """Fail before the model is loaded when an --image/--images/--video input is unusable."""
    if sum(x is not None for x in (opts.image, opts.images, opts.video)) > 1:
        raise EvalError("give only one of --image, --images, --video")
    saving = [f'--{name}' for name in ('save_json', 'save_masks') if getattr(opts, name)]
    if saving and opts.image is None and opts.images is None:
        raise EvalError(f"{' and '.join(saving)} need{'' if len(saving) > 1 else 's'} --image or --images"
                        + (" (they write one file per picture, not per video frame)"
                           if opts.video is not None else ""))
    if opts.save_masks and opts.detect:
        raise EvalError("--save_masks needs masks; --detect turns the mask branch off")
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


def run_media(net: torch.nn.Module, opts: argparse.Namespace) -> None:
    """--image / --images / --video."""
    configure_detect(net, opts)
    predictor = Predictor(net, amp=opts.amp, amp_dtype_name=opts.amp_dtype)
    names = cfg.dataset.class_names
    inf = inference_options(opts)
    if opts.image is not None:
        src, dst = split_in_out(opts.image)
        written = evalimage(predictor, src, dst, names, inf)
        if written:
            print(f'{src} -> {written}')
    elif opts.images is not None:
        src, dst = split_in_out(opts.images)
        evalimages(predictor, src, dst, names, inf)
    else:
        src, dst = split_in_out(opts.video)
        evalvideo(predictor, src, dst, names, inf)


# ----------------------------------------------------------------------------- main

def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = parse_args(argv)
    try:
        opts.trained_model = resolve_checkpoint(opts)
        media = any(x is not None for x in (opts.image, opts.images, opts.video))
        session, meta = open_exported(opts.trained_model) if is_exported(opts.trained_model) else (None, None)
        setup_config(opts, evaluating=not media, exported=meta)
        device = device_from_flags(opts)
        check_media_inputs(opts)  # also rejects the media-only flags without media
        if media:
            dataset = None
        else:
            if not opts.benchmark:
                check_coco_eval_backend(opts.coco_eval)
            dataset = build_dataset(opts)
        if session is not None:
            net = load_exported(opts.trained_model, session, meta)
        else:
            net = load_model(opts.trained_model, device)
        if prefers_channels_last(device, autocast_dtype(device, opts.amp, opts.amp_dtype, notify=None) is not None):
            net = net.to(memory_format=torch.channels_last)  # same results, faster convs here
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

"""Running a trained YOLACT on pictures: single images, folders, videos or a webcam, and timing it.

`NetRunner` owns the device side (moving frames, the backbone transform, optional autocast);
`shown_detections` turns its output into one image's detections. The public `predictor.Predictor`
builds its `Result`s from these two, and the functions below (eval.py's --image, --images, --video)
take such a Predictor and write what its Results draw (deploy/visualize.py) and save
(deploy/result_files.py: --save_json, --save_masks, --save_labelme). `benchmark` times a NetRunner.
"""
import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from data.config import Config
from data.images import ImageReadError
from data.images import read_image as read_image_file
from deploy.result_files import LABELME_FOLDER, result_file_paths
from deploy.visualize import DrawOptions, draw_detections, prototype_mosaic, select_for_display
from layers.output_utils import postprocess
from utils.augmentations import FastBaseTransform
from utils.device import ProbeShape, autocast_dtype, synchronize
from utils.functions import MovingAverage

# Stand for predictor.Predictor and predictor.Result, which sit a floor above and build on this module.
PredictorT = Any
ResultT = Any

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def configure_detect(net: nn.Module, fast_nms: bool = True, cross_class_nms: bool = False) -> None:
    """The NMS of the network's Detect: the paper's Fast NMS per class by default, as eval.py."""
    detect = getattr(net, 'module', net).detect  # unwrap DataParallel / DDP
    detect.use_fast_nms = fast_nms
    detect.use_cross_class_nms = cross_class_nms


class InferenceError(RuntimeError):
    """An input (image, folder, video) or output cannot be used."""


def _detections_to_float32(det_output: List[Dict]) -> List[Dict]:
    """Under autocast the detections come out in half precision; postprocess and the COCO
    conversion expect float32 (integer tensors are left alone)."""
    for entry in det_output:
        det = entry.get('detection')
        if det is not None:
            for key, val in det.items():
                if isinstance(val, torch.Tensor) and val.is_floating_point():
                    det[key] = val.float()
    return det_output


def _device_of(net: nn.Module) -> torch.device:
    try:
        return next(net.parameters()).device
    except StopIteration:
        return torch.device('cpu')


def config_of(net: nn.Module) -> Config:
    """The config `net` was built with (Yolact.config, RuntimeYolact.config). DataParallel/DDP: the
    wrapped net's."""
    config = getattr(getattr(net, 'module', net), 'config', None)
    if config is None:
        raise TypeError(f"{type(net).__name__} has no .config: give it the Config it was built with")
    return config


class NetRunner:
    """Runs the network in eval mode on BGR frames (the low-level half of predictor.Predictor).

    Args:
        net: a Yolact in eval mode (its forward returns Detect's output).
        device: where to compute; default: where the net's parameters are.
        amp: run the network under torch.autocast (in float32 where utils.device.autocast_dtype
            finds no fast reduced precision, e.g. bf16 on a CPU without native support).
        amp_dtype: torch.float16 or torch.bfloat16; None: decided by `utils.device.autocast_dtype`.
        config: the input transform's and postprocess's settings; default `config_of(net)`.
    """

    def __init__(self, net: nn.Module, device: Optional[torch.device] = None, amp: bool = False,
                 amp_dtype: Optional[torch.dtype] = None, config: Optional[Config] = None):
        self.net = net
        self.config = config if config is not None else config_of(net)
        self.device = device if device is not None else _device_of(net)
        self.dtype = autocast_dtype(self.device, amp, amp_dtype, shape=ProbeShape(size=self.config.max_size))
        self.amp = self.dtype is not None
        self.transform = FastBaseTransform(self.config)

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def to_device(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """Frames (ndarray[H, W, 3] uint8 BGR, same size) -> Tensor[N, H, W, 3] float32 on the device."""
        batch = torch.from_numpy(np.stack(frames)).to(self.device)
        return batch.float()

    def run_batch(self, batch: torch.Tensor) -> List[Dict]:
        """batch (Tensor[N, 3, h, w]) already transformed for the backbone -> Detect's output."""
        with torch.no_grad(), self.autocast():
            out = self.net(batch.to(self.device))
        return _detections_to_float32(out) if self.amp else out

    def __call__(self, frames: Sequence[np.ndarray]) -> Tuple[torch.Tensor, List[Dict]]:
        """Frames (BGR uint8, same size) -> (the frames on the device as Tensor[N, H, W, 3] float,
        Detect's output for them)."""
        on_device = self.to_device(frames)
        with torch.no_grad():
            batch = self.transform(on_device)
        return on_device, self.run_batch(batch)


@dataclass
class InferenceOptions:
    """The flags that shape how results are made and drawn."""
    draw: DrawOptions = field(default_factory=DrawOptions)
    crop_masks: bool = True
    display_lincomb: bool = False
    display_fps: bool = False
    video_multiframe: int = 1
    no_bar: bool = False
    save_json: bool = False   # images: the drawn detections as <picture stem>.json
    save_masks: bool = False  # images: their masks as <picture stem>_instances.png (16-bit ids)
    save_labelme: bool = False  # --images: labelme/<input stem>.json and a copy of the input


def best_detections(det_output: List[Dict], index: int, k: int) -> List[Dict]:
    """Detect's output reduced to image `index` and its `k` best-scoring detections, so that only
    the masks to be drawn are assembled at full image size."""
    entry = det_output[index]
    det = entry['detection']
    if det is None:
        return [entry]
    order = det['score'].argsort(descending=True)[:max(k, 0)]
    trimmed = {key: (val if key == 'proto' else val[order]) for key, val in det.items()}
    return [{**entry, 'detection': trimmed}]


Detections = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


def shown_detections(det_output: List[Dict], index: int, height: int, width: int,
                     opts: InferenceOptions) -> Detections:
    """The detections of image `index` that are drawn (and saved): its --top_k best scoring at or
    above --score_threshold, best first, at the image size.

    Returns classes (Tensor[K] int64, 0-based), scores (Tensor[K]), boxes (Tensor[K, 4] int64, pixel
    x1y1x2y2), masks (Tensor[K, height, width] 0/1, or None when the mask branch did not run).
    """
    classes, scores, boxes, masks = postprocess(best_detections(det_output, index, opts.draw.top_k), width,
                                                height, crop_masks=opts.crop_masks,
                                                score_threshold=opts.draw.score_threshold,
                                                config=config_of(det_output[index].get('net')))
    if isinstance(scores, list):
        # YOLACT++ re-scoring: rank and label by the mask score, as the original's display did.
        scores = scores[1]
    if masks.dim() != 3:
        masks = None  # --detect: the mask branch did not run, these are raw coefficients
    keep = select_for_display(classes, scores, opts.draw.top_k, opts.draw.score_threshold)
    return (classes[keep], scores[keep], boxes[keep],
            masks[keep.to(masks.device)] if masks is not None else None)


def render(frame: torch.Tensor, det_output: List[Dict], index: int, class_names: Sequence[str],
           opts: InferenceOptions, fps_text: str = '') -> np.ndarray:
    """One frame's detections drawn on it.

    Args:
        frame (Tensor[H, W, 3]) BGR 0..255 on the device.
        det_output: Detect's output for the batch holding the frame, `index` its position.
    Returns:
        ndarray[H, W, 3] uint8 BGR.
    """
    h, w = frame.shape[:2]
    return draw_detections(frame, *shown_detections(det_output, index, h, w, opts), class_names, opts.draw,
                           fps_text)


def save_result_files(picture_path: str, result: ResultT, opts: InferenceOptions) -> List[str]:
    """Write --save_json / --save_masks files of `result` beside `picture_path` (see
    deploy.result_files.result_file_paths). Returns the paths written."""
    json_path, png_path = result_file_paths(picture_path)
    written = []
    if opts.save_json:
        result.save_json(json_path)
        written.append(json_path)
    if opts.save_masks:
        result.save_masks(png_path)
        written.append(png_path)
    return written


def save_labelme(result: ResultT, image_path: str, output_folder: str) -> str:
    """--save_labelme: `result` as <output_folder>/labelme/<stem>.json beside a copy of the image,
    the folder labelme opens and `python -m data.labelme2coco` converts. Returns the json's path."""
    folder = os.path.join(output_folder, LABELME_FOLDER)
    os.makedirs(folder, exist_ok=True)
    copy = os.path.join(folder, os.path.basename(image_path))
    if not (os.path.exists(copy) and os.path.samefile(copy, image_path)):
        shutil.copyfile(image_path, copy)
    json_path = os.path.join(folder, Path(image_path).stem + '.json')
    result.save_labelme(json_path, copy)
    return json_path


def display_available() -> bool:
    """Whether cv2.imshow can open a window here (a display server and a GUI-enabled OpenCV)."""
    if sys.platform.startswith('linux') and not (os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')):
        return False
    try:
        cv2.namedWindow('yolact-probe', cv2.WINDOW_NORMAL)
        cv2.destroyWindow('yolact-probe')
        return True
    except cv2.error:
        return False


def default_output_path(input_path: str, suffix: str) -> str:
    """Where a result is saved when no output path was given: beside the input, <name>_yolact<suffix>."""
    p = Path(input_path)
    return str(p.with_name(p.stem + '_yolact' + suffix))


def read_image(path: str) -> np.ndarray:
    """ndarray[H, W, 3] uint8 BGR, or InferenceError naming the file."""
    try:
        return read_image_file(path)
    except ImageReadError as err:
        raise InferenceError(str(err)) from None


def write_image(path: str, img: np.ndarray) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if not cv2.imwrite(path, img):
        raise InferenceError(f"could not write {path} (unknown image extension or unwritable folder)")


def draw(result: ResultT, opts: InferenceOptions, fps_text: str = '') -> np.ndarray:
    """`result` drawn as the --display_* flags in `opts` ask."""
    d = opts.draw
    return result.plot(masks=d.display_masks, boxes=d.display_bboxes, labels=d.display_text,
                       scores=d.display_scores, fps_text=fps_text)


def evalimage(predictor: PredictorT, path: str, save_path: Optional[str], opts: InferenceOptions,
              img: Optional[np.ndarray] = None, report: bool = True,
              labelme_folder: Optional[str] = None) -> Optional[str]:
    """Detect objects in one image and draw them.

    Without `save_path` the result is shown in a window when a display exists, otherwise it is
    written beside the input as <name>_yolact.png. Returns the path written, if any.
    With opts.save_json / save_masks the drawn detections are also written beside the picture
    (<stem>.json, <stem>_instances.png); when the picture is only shown, beside the input as
    <name>_yolact.json / <name>_yolact_instances.png, where the picture would have been saved.
    img: the image already read from `path` (ndarray[H, W, 3] uint8 BGR); read here when None.
    report: print the result files written.
    labelme_folder: also write the detections for labelme there (`save_labelme`).
    """
    img = read_image(path) if img is None else img
    result = predictor.predict_frames([img], [path])[0]
    if opts.save_masks and result.masks is None:
        raise InferenceError("--save_masks needs masks, but the mask branch did not run (--detect)")
    if labelme_folder is not None:
        save_labelme(result, path, labelme_folder)
    drawn = draw(result, opts)

    if save_path is None and display_available():
        if opts.save_json or opts.save_masks:
            for written in save_result_files(default_output_path(path, '.png'), result, opts):
                if report:
                    print(f'Detections -> {written}')
        cv2.imshow(path, drawn)
        if opts.display_lincomb:
            show_lincomb(result, path)
        cv2.waitKey(0)
        cv2.destroyAllWindows()
        return None
    if save_path is None:
        save_path = default_output_path(path, '.png')
        print(f'No display available; saving the result to {save_path}')
    write_image(save_path, drawn)
    for written in save_result_files(save_path, result, opts):
        if report:
            print(f'Detections -> {written}')
    if opts.display_lincomb:
        stem = Path(save_path)
        save_lincomb(result, str(stem.with_name(stem.stem + '_lincomb.png')))
    return save_path


def show_lincomb(result: ResultT, title: str) -> None:
    if result.prototypes is not None:
        cv2.imshow(title + ' (prototypes)', prototype_mosaic(result.prototypes))


def save_lincomb(result: ResultT, path: str) -> None:
    """Write the mask prototypes of the image as a mosaic (--display_lincomb)."""
    proto = result.prototypes
    if proto is not None:
        write_image(path, prototype_mosaic(proto))
        print(f'Prototypes -> {path}')


def list_images(folder: str) -> Tuple[List[Path], List[Path]]:
    """(files of `folder` with an image extension, other files), sorted; hidden files are left out."""
    if not os.path.isdir(folder):
        raise InferenceError(f"input folder not found: {folder}")
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith('.'))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]


def evalimages(predictor: PredictorT, input_folder: str, output_folder: str, opts: InferenceOptions) -> List[str]:
    """Draw detections on every image of a folder; results are <output_folder>/<name>.png (and,
    with opts.save_json / save_masks, <name>.json / <name>_instances.png; with opts.save_labelme,
    <output_folder>/labelme/<name>.json beside a copy of the image: see `save_labelme`).

    A file that is not an image (by extension) is left alone, and one with an image extension that
    cannot be read is skipped; both are counted and named, and the rest of the folder is processed.
    """
    images, others = list_images(input_folder)
    if others:
        shown = ', '.join(p.name for p in others[:5]) + (', ...' if len(others) > 5 else '')
        print(f'Ignoring {len(others)} file(s) without an image extension in {input_folder}: {shown}')
    if not images:
        raise InferenceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {input_folder}")
    os.makedirs(output_folder, exist_ok=True)
    written, unreadable = [], []
    for path in images:
        try:
            img = read_image(str(path))
        except InferenceError as err:
            print(f'Skipping {path}: {err}')
            unreadable.append(path)
            continue
        out_path = os.path.join(output_folder, path.stem + '.png')
        evalimage(predictor, str(path), out_path, opts, img=img, report=False,
                  labelme_folder=output_folder if opts.save_labelme else None)
        print(f'{path} -> {out_path}')
        written.append(out_path)
    if not written:
        raise InferenceError(f"none of the {len(images)} image file(s) in {input_folder} could be read")
    skipped = f'; skipped {len(unreadable)} unreadable file(s)' if unreadable else ''
    print(f'Done: {len(written)} image(s) written to {output_folder}{skipped}.')
    saved = [what for flag, what in ((opts.save_json, '<name>.json'), (opts.save_masks, '<name>_instances.png'))
             if flag]
    if saved:
        print(f"Detections saved beside each picture as {' and '.join(saved)}.")
    if opts.save_labelme:
        print(f'labelme files (open the folder in labelme; python -m data.labelme2coco converts it): '
              f'{os.path.join(output_folder, LABELME_FOLDER)}')
    return written


def open_video(source: str) -> Tuple[cv2.VideoCapture, bool]:
    """A capture for a file or, for a number, that webcam. Returns (capture, is_webcam).

    A file is only accepted as a video if it has a frame size and its first frame can be read
    (OpenCV also "opens" a single image as a one-frame video); the capture is rewound after the
    check, so nothing is written for an input that is not a video.
    """
    is_webcam = source.isdigit()
    if is_webcam:
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise InferenceError(f"could not open video camera {source}")
        return capture, True
    if not os.path.isfile(source):
        raise InferenceError(f"video not found: {source}")
    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        raise InferenceError(f"{source} is an image, not a video (use --image {source}:out.png)")
    capture = cv2.VideoCapture(source)
    if not (capture.isOpened() and capture.get(cv2.CAP_PROP_FRAME_WIDTH) > 0 and capture.read()[0]):
        capture.release()
        raise InferenceError(f"could not read a video from {source} (not a video file, or a codec this "
                             f"OpenCV build cannot decode)")
    if not capture.set(cv2.CAP_PROP_POS_FRAMES, 0):  # a backend that cannot seek: open it again
        capture.release()
        capture = cv2.VideoCapture(source)
    return capture, False


# A video whose reads keep failing this many times in a row is taken to end there (truncated).
MAX_BAD_FRAMES_IN_A_ROW = 100


@dataclass
class FrameReader:
    """Reads batches of consecutive frames; a frame that cannot be decoded before the file's
    frame count is reached is skipped and remembered (1-based numbers in `unreadable`).

    `total`: the frame count of the file; None when unknown or for a webcam (then a failed read
    is the end).
    """
    capture: cv2.VideoCapture
    total: Optional[int]
    unreadable: List[int] = field(default_factory=list)
    position: int = 0
    last_read: int = 0

    @classmethod
    def of(cls, capture: cv2.VideoCapture, is_webcam: bool) -> 'FrameReader':
        """A reader of `open_video`'s capture, with the file's frame count when it tells one."""
        count = 0 if is_webcam else round(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        return cls(capture, count if count > 0 else None)  # some containers do not tell

    def _next(self) -> Optional[np.ndarray]:
        in_a_row = 0
        while self.total is None or self.position < self.total:
            ok, frame = self.capture.read()
            self.position += 1
            if ok:
                self.last_read = self.position
                return frame
            if self.total is None:
                return None
            self.unreadable.append(self.position)
            in_a_row += 1
            if in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
                return None
        return None

    def batches(self, batch_size: int) -> Iterator[List[np.ndarray]]:
        """Batches of up to `batch_size` frames until the video ends."""
        while True:
            frames = []
            for _ in range(batch_size):
                frame = self._next()
                if frame is None:
                    break
                frames.append(frame)
            if not frames:
                return
            yield frames

    def report(self, source: str) -> Optional[str]:
        """One line about the frames that could not be read, or None."""
        skipped = [n for n in self.unreadable if n < self.last_read]
        if skipped:
            return (f"warning: {source}: {len(skipped)} frame(s) could not be decoded and were skipped "
                    f"(first: frame {skipped[0]} of {self.total}); the video is damaged")
        if self.unreadable:
            return (f"warning: {source}: no frame could be decoded after frame {self.last_read} of the "
                    f"{self.total} the file announces; the video is truncated or damaged")
        return None


def evalvideo(predictor: PredictorT, source: str, out_path: Optional[str], opts: InferenceOptions) -> int:
    """Draw detections on every frame of a video file or webcam (`source` is a number).

    Frames are processed `opts.video_multiframe` at a time as one batch. The result goes to
    `out_path` (mp4); without one it is shown in a window when a display exists (Escape stops),
    otherwise written beside the input as <name>_yolact.mp4. Returns the number of frames processed.
    """
    capture, is_webcam = open_video(source)
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    width = round(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = round(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    reader = FrameReader.of(capture, is_webcam)

    show = out_path is None and display_available()
    if out_path is None and not show:
        out_path = (f'webcam{source}_yolact.mp4' if is_webcam
                    else default_output_path(source, '.mp4'))
        print(f'No display available; saving the result to {out_path}')
    writer = None
    if out_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
        if not writer.isOpened():
            capture.release()
            raise InferenceError(f"could not open {out_path} for writing (mp4v codec)")

    frame_times = MovingAverage(100)
    processed = 0
    bar = tqdm(total=reader.total, unit='frame', disable=opts.no_bar or show)
    try:
        for frames in reader.batches(max(1, opts.video_multiframe)):
            start = time.perf_counter()
            results = predictor.predict_frames(frames)
            fps_text = f'Processing FPS: {1 / frame_times.get_avg():.2f}' if frame_times.get_avg() > 0 else ''
            drawn = [draw(result, opts, fps_text if opts.display_fps else '') for result in results]
            frame_times.add((time.perf_counter() - start) / len(frames))
            for img in drawn:
                if writer is not None:
                    writer.write(img)
                else:
                    cv2.imshow(source, img)
            processed += len(frames)
            bar.update(len(frames))
            if show and cv2.waitKey(1) == 27:  # Escape
                break
    except KeyboardInterrupt:
        print('\nStopping...')
    finally:
        bar.close()
        capture.release()
        if writer is not None:
            writer.release()
            print(f'{processed} frames -> {out_path}')
        if show:
            cv2.destroyAllWindows()
        damage = reader.report(source)
        if damage:
            print(damage, file=sys.stderr)
    return processed


def benchmark(predictor: NetRunner, load_image: Callable[[int], np.ndarray], indices: Sequence[int],
              top_k: int, crop_masks: bool = True, score_threshold: float = 0, warmup: int = 2,
              no_bar: bool = False) -> float:
    """Average frames per second of network + postprocess over the images `indices`.

    Image loading is not timed. `warmup` extra passes on the first image run first and are not
    counted (allocator, cuDNN autotuning, lazy initialisation). Each timed pass ends by copying
    the top_k results to the CPU and synchronising the device, so queued work is counted.
    Returns the FPS (also printed with the mean time per image).
    """
    if len(indices) == 0:
        raise InferenceError("--benchmark needs at least one image")
    device = predictor.device

    def one_pass(img: np.ndarray) -> None:
        h, w = img.shape[:2]
        _, det_output = predictor([img])
        classes, scores, boxes, masks = postprocess(det_output, w, h, crop_masks=crop_masks,
                                                    score_threshold=score_threshold, config=predictor.config)
        if isinstance(scores, list):
            scores = scores[0]
        for t in (classes, scores, boxes, masks):
            t[:top_k].cpu()
        synchronize(device)

    first = load_image(indices[0])
    for _ in range(warmup):
        one_pass(first)

    elapsed = 0.0
    for idx in tqdm(indices, unit='img', disable=no_bar):
        img = load_image(idx)
        synchronize(device)
        start = time.perf_counter()
        one_pass(img)
        elapsed += time.perf_counter() - start
    mean = elapsed / len(indices)
    fps = 1 / mean if mean > 0 else float('inf')
    print(f'Average: {fps:5.2f} fps, {1000 * mean:5.2f} ms ({len(indices)} images, '
          f'{warmup} warm-up passes not counted, device {device})')
    return fps

"""YOLACT in your own program: one object from a trained file to masks, pictures and files.

    from predictor import Predictor
    predictor = Predictor('weights/yolact_base_54_800000.pth', device='cuda')
    result = predictor('photo.jpg')            # or a BGR uint8 ndarray, or a list of either
    for name, score, box, mask in zip(result.names, result.scores, result.boxes, result.masks):
        print(name, score, box, mask.sum())
    result.save('photo_yolact.png')            # the detections drawn

The file may be a checkpoint (.pth; config from its file name, class names from the
<checkpoint>.classes.json train.py writes beside it), an exported ONNX file (float32 or int8, run in
onnxruntime) or an exported TorchScript file (export.py writes both; config and class names come
from their metadata, and they run on the CPU). Each Predictor holds a config of its own: several
may live side by side, and none reads or changes the global ``data.config.cfg``.

eval.py's --image, --images and --video are built on this class (deploy/inference.py), so a picture,
a --save_json file or a labelme file from the command line is what `Result` gives here.
"""
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from data.config import Config, describe_classes
from deploy.inference import (
    FrameReader,
    InferenceError,
    InferenceOptions,
    NetRunner,
    config_of,
    configure_detect,
    list_images,
    open_video,
    read_image,
    shown_detections,
    write_image,
)
from deploy.loading import load_network
from deploy.result_files import (
    detections_to_records,
    labelme_document,
    mask_polygons,
    result_document,
    write_instance_png,
    write_json,
)
from deploy.runtime_model import is_exported
from deploy.visualize import DrawOptions, draw_detections
from utils.device import select_device

ImageInput = Union[str, Path, np.ndarray]

# A list of images runs through the network this many at a time (same-size images only).
MAX_BATCH = 8


class Result:
    """The detections of one image, best score first, at the image's size.

    Attributes (N detections):
        labels (ndarray[N] int64): 0-based indices into `class_names`.
        names (List[str]): the class name of each detection.
        scores (ndarray[N] float32).
        boxes (ndarray[N, 4] int64): (x1, y1, x2, y2) in pixels of the image.
        masks (ndarray[N, H, W] bool), or None when the mask branch did not run (--detect).
        image (ndarray[H, W, 3] uint8 BGR): the input. image_size: (H, W).
        path: the file the image was read from, or None.
        class_names: all the model's class names. prototypes (Tensor[h, w, M]): the mask
        prototypes of the image (eval.py --display_lincomb), or None.
    """

    def __init__(self, image: np.ndarray, frame: torch.Tensor, detections: Tuple, class_names: Sequence[str],
                 path: Optional[str] = None, prototypes: Optional[torch.Tensor] = None):
        # The tensors stay where they were computed: drawing a video frame on the GPU never
        # copies the masks to the host.
        self._frame = frame
        self._classes, self._scores, self._boxes, self._masks = detections
        self._masks_np: Optional[np.ndarray] = None
        self.image = image
        self.class_names = tuple(class_names)
        self.path = path
        self.prototypes = prototypes

    def __len__(self) -> int:
        return int(self._scores.shape[0])

    def __repr__(self) -> str:
        return f'Result({len(self)} detections: {", ".join(self.names[:5])}{", ..." if len(self) > 5 else ""})'

    @property
    def image_size(self) -> Tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def labels(self) -> np.ndarray:
        return self._classes.cpu().numpy().astype(np.int64)

    @property
    def names(self) -> List[str]:
        return [self.class_names[c] if 0 <= c < len(self.class_names) else str(c) for c in self.labels.tolist()]

    @property
    def scores(self) -> np.ndarray:
        return self._scores.float().cpu().numpy()

    @property
    def boxes(self) -> np.ndarray:
        return self._boxes.cpu().numpy().astype(np.int64)

    @property
    def masks(self) -> Optional[np.ndarray]:
        if self._masks is None:
            return None
        if self._masks_np is None:
            self._masks_np = (self._masks > 0.5).cpu().numpy()
        return self._masks_np

    def polygons(self) -> List[List[np.ndarray]]:
        """Per detection its mask's outer contours, each an ndarray[K, 2] of (x, y) pixels
        (deploy.result_files.mask_polygons); empty lists without masks."""
        if self.masks is None:
            return [[] for _ in range(len(self))]
        return [[np.asarray(flat).reshape(-1, 2) for flat in mask_polygons(mask.astype(np.uint8))]
                for mask in self.masks]

    def to_json(self) -> Dict[str, Any]:
        """The dict eval.py --save_json writes (deploy/result_files.py): {"image": the input's file
        name (None for an array), "height", "width", "detections": [{class_name, class_id, score,
        box, mask: {rle, polygons, area}}, ...]}."""
        records = detections_to_records(self._classes, self._scores, self._boxes, self._masks, self.class_names)
        return result_document(None if self.path is None else os.path.basename(self.path), *self.image_size,
                                records)

    def to_labelme(self, image_path: str, json_path: Optional[str] = None) -> Dict[str, Any]:
        """A labelme annotation of the detections (polygons labelled with class names), for
        `image_path`; its imagePath is relative to `json_path`'s folder when given, else the
        image's file name (a json beside the image)."""
        rel = (os.path.relpath(image_path, os.path.dirname(os.path.abspath(json_path))) if json_path
               else os.path.basename(image_path))
        return labelme_document(Path(rel).as_posix(), *self.image_size, self.names, self.scores.tolist(),
                                self.polygons())

    def plot(self, masks: bool = True, boxes: bool = True, labels: bool = True, scores: bool = True,
             fps_text: str = '') -> np.ndarray:
        """The detections drawn on the image (deploy.visualize.draw_detections): ndarray[H, W, 3]
        uint8 BGR. labels / scores: write the class names / the scores after them."""
        opts = DrawOptions(top_k=len(self), score_threshold=float('-inf'), display_masks=masks,
                           display_bboxes=boxes, display_text=labels, display_scores=scores)
        return draw_detections(self._frame, self._classes, self._scores, self._boxes, self._masks,
                               self.class_names, opts, fps_text)

    def save(self, path: str) -> str:
        """Write `plot()` to `path` (the extension picks the format). Returns `path`."""
        write_image(path, self.plot())
        return path

    def save_json(self, path: str) -> str:
        """Write `to_json()` to `path`. Returns `path`."""
        write_json(path, self.to_json())
        return path

    def save_masks(self, path: str) -> str:
        """Write the masks as a 16-bit instance PNG (0 background, detection i painted i + 1;
        deploy.result_files.instance_image). Returns `path`."""
        if self._masks is None:
            raise InferenceError("no masks to save: the mask branch did not run (--detect)")
        write_instance_png(path, self._masks, *self.image_size)
        return path

    def save_labelme(self, json_path: str, image_path: str) -> str:
        """Write `to_labelme(image_path, json_path)` to `json_path`. Returns `json_path`."""
        write_json(json_path, self.to_labelme(image_path, json_path))
        return json_path


class Predictor:
    """A trained YOLACT ready to run on pictures: `Predictor(path)(image) -> Result`.

    Args:
        path: a checkpoint (.pth), or an .onnx (fp32 or int8) or TorchScript file from export.py.
        device: 'cpu', 'cuda' or 'npu' (optionally ':N'); exported files run on the CPU.
        score_threshold: detections scoring below it are dropped.
        top_k: at most this many detections per image, the best scoring.
        amp: run a checkpoint's network under autocast (utils.device.autocast_dtype).
        config: the config's name, for a checkpoint whose file name does not say it
            (<config>_<epoch>_<iteration>.pth).
        classes: class names replacing the file's (as many as the model predicts).
        crop_masks: cut each mask to its box, as the paper does.
    """

    def __init__(self, path: Union[str, Path], device: str = 'cpu', score_threshold: float = 0.3,
                 top_k: int = 100, amp: bool = False, config: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None, crop_masks: bool = True):
        target = select_device(device)
        net, net_config = load_network(str(path), target, config, classes, amp)
        configure_detect(net)  # eval.py's default NMS: the paper's Fast NMS
        self._setup(net, net_config, net_config.dataset.class_names, target if not is_exported(str(path)) else None,
                    score_threshold, top_k, amp, None, crop_masks)

    @classmethod
    def from_network(cls, net: nn.Module, class_names: Optional[Sequence[str]] = None, score_threshold: float = 0.3,
                     top_k: int = 100, amp: bool = False, amp_dtype: Optional[torch.dtype] = None, crop_masks: bool = True,
                     device: Optional[torch.device] = None) -> 'Predictor':
        """A Predictor of a network already built (a Yolact in eval mode, a RuntimeYolact, ...), as
        eval.py makes it; its config is `net.config` and class names default to that config's.
        amp_dtype: the autocast dtype under `amp`; None: utils.device.autocast_dtype decides."""
        predictor = cls.__new__(cls)
        config = config_of(net)
        predictor._setup(net, config, class_names if class_names is not None else config.dataset.class_names,
                         device, score_threshold, top_k, amp, amp_dtype, crop_masks)
        return predictor

    def _setup(self, net: nn.Module, config: Config, class_names: Sequence[str], device: Optional[torch.device],
               score_threshold: float, top_k: int, amp: bool, amp_dtype: Optional[torch.dtype],
               crop_masks: bool) -> None:
        self.net = net
        self.config = config
        self.runner = NetRunner(net, device, amp=amp, amp_dtype=amp_dtype, config=config)
        self.class_names = tuple(class_names)
        self.options = InferenceOptions(draw=DrawOptions(top_k=top_k, score_threshold=score_threshold),
                                        crop_masks=crop_masks)

    @property
    def config_name(self) -> str:
        return self.config.name

    @property
    def device(self) -> torch.device:
        """Where the network computes (the CPU for an exported file)."""
        return self.runner.device

    def __repr__(self) -> str:
        return f'Predictor({self.config_name}, {describe_classes(self.class_names)}, device {self.device})'

    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Union[Result, List[Result]]:
        """One image (a file path, or an ndarray[H, W, 3] uint8 BGR as cv2.imread gives) -> its
        Result; a list of them -> a list of Results (same-size images run as one batch)."""
        if isinstance(images, (list, tuple)):
            return self._predict_many(list(images))
        return self._predict_many([images])[0]

    def _predict_many(self, images: List[ImageInput]) -> List[Result]:
        loaded = [_as_image(image) for image in images]
        results: List[Optional[Result]] = [None] * len(loaded)
        by_size: Dict[Tuple[int, ...], List[int]] = {}
        for i, (frame, _) in enumerate(loaded):
            by_size.setdefault(frame.shape, []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), MAX_BATCH):
                chunk = indices[start:start + MAX_BATCH]
                for i, result in zip(chunk, self.predict_frames([loaded[i][0] for i in chunk],
                                                                [loaded[i][1] for i in chunk])):
                    results[i] = result
        return results

    def predict_frames(self, frames: Sequence[np.ndarray], paths: Optional[Sequence[Optional[str]]] = None
                       ) -> List[Result]:
        """Frames (ndarray[H, W, 3] uint8 BGR, all one size) as one batch -> one Result each.
        paths: the file each frame came from (Result.path, the "image" of to_json)."""
        if len(frames) == 0:
            return []
        on_device, det_output = self.runner(frames)
        height, width = frames[0].shape[:2]
        results = []
        for i, frame in enumerate(frames):
            det = det_output[i]['detection']
            results.append(Result(frame, on_device[i], shown_detections(det_output, i, height, width, self.options),
                                  self.class_names, None if paths is None else paths[i],
                                  None if det is None else det.get('proto')))
        return results

    def stream(self, source: Union[str, int, Path], batch_size: int = 1) -> Iterator[Tuple[np.ndarray, Result]]:
        """(frame, Result) for each frame of a video file or webcam (an index: 0, '0') or each image
        of a folder (sorted by name). batch_size: video frames per network batch."""
        source = str(source)
        if os.path.isdir(source):
            images, _ = list_images(source)
            for path in images:
                frame = read_image(str(path))
                yield frame, self.predict_frames([frame], [str(path)])[0]
            return
        if batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
        capture, is_webcam = open_video(source)
        try:
            for frames in FrameReader.of(capture, is_webcam).batches(batch_size):
                yield from zip(frames, self.predict_frames(frames))
        finally:
            capture.release()


def _as_image(image: ImageInput) -> Tuple[np.ndarray, Optional[str]]:
    """(ndarray[H, W, 3] uint8 BGR, the file it was read from or None)."""
    if isinstance(image, (str, Path)):
        return read_image(str(image)), str(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InferenceError(f"expected a BGR image as ndarray[H, W, 3] uint8, got ndarray{list(image.shape)} "
                                 f"{image.dtype}")
        return image, None
    raise InferenceError(f"expected an image path or a BGR uint8 ndarray, got {type(image).__name__}")

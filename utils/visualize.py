"""Drawing detections on images: translucent class-coloured masks, boxes, class names and scores.

Masks are blended with tensor operations on whatever device the image and masks live on (so a GPU
or NPU does the per-pixel work); boxes and text are drawn with OpenCV on the CPU copy. Images are
BGR, as OpenCV reads and writes them.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from data.config import COLORS

FONT = cv2.FONT_HERSHEY_DUPLEX
FONT_SCALE = 0.6
FONT_THICKNESS = 1
TEXT_COLOR = (255, 255, 255)


@dataclass
class DrawOptions:
    """What `draw_detections` draws (eval.py's --display_* / --top_k / --score_threshold flags).

    class_color: colour by class (True) or by rank of the detection in the image (False).
    mask_alpha: opacity of the mask colour.
    """
    top_k: int = 5
    score_threshold: float = 0.0
    display_masks: bool = True
    display_bboxes: bool = True
    display_text: bool = True
    display_scores: bool = True
    class_color: bool = True
    mask_alpha: float = 0.45


def detection_color(class_idx: int, rank: int, class_color: bool) -> Tuple[int, int, int]:
    """BGR colour of a detection. COLORS is RGB; stepping by 5 keeps neighbours distinct."""
    r, g, b = COLORS[((class_idx if class_color else rank) * 5) % len(COLORS)]
    return b, g, r


def select_for_display(classes: Tensor, scores: Tensor, top_k: int, score_threshold: float) -> Tensor:
    """Indices of the detections to draw: the `top_k` best scoring above `score_threshold`,
    best first. scores (Tensor[D]) -> Tensor[K] int64."""
    order = scores.argsort(descending=True)[:max(top_k, 0)]
    return order[scores[order] >= score_threshold]


def blend_masks(image: Tensor, masks: Tensor, colors: Tensor, alpha: float) -> Tensor:
    """Paint translucent masks on an image, the first mask ending up on top.

    Args:
        image (Tensor[H, W, 3]) float, 0..255.
        masks (Tensor[K, H, W]) 0/1.
        colors (Tensor[K, 3]) float, 0..255, same channel order as the image.
        alpha: opacity of each mask.
    Returns:
        Tensor[H, W, 3] float, 0..255.
    """
    out = image
    # Back to front: the highest-scoring detection is composited last, so it stays visible.
    for k in range(masks.shape[0] - 1, -1, -1):
        weight = masks[k, :, :, None].to(out.dtype) * alpha
        out = out * (1 - weight) + colors[k].to(out.dtype) * weight
    return out


def draw_fps_box(image: Tensor, text: str) -> Tensor:
    """Darken the top-left corner where `draw_fps_text` writes. image (Tensor[H, W, 3]) float."""
    (text_w, text_h), _ = cv2.getTextSize(text, FONT, FONT_SCALE, FONT_THICKNESS)
    image = image.clone()
    image[:text_h + 8, :text_w + 8] *= 0.6
    return image


def draw_fps_text(image: np.ndarray, text: str) -> None:
    """Write `text` in the top-left corner of a uint8 BGR image, in place."""
    (_, text_h), _ = cv2.getTextSize(text, FONT, FONT_SCALE, FONT_THICKNESS)
    cv2.putText(image, text, (4, text_h + 2), FONT, FONT_SCALE, TEXT_COLOR, FONT_THICKNESS, cv2.LINE_AA)


def draw_label(image: np.ndarray, text: str, x1: int, y1: int, color: Tuple[int, int, int]) -> None:
    """A filled label with white text sitting on the top edge of a box, in place."""
    (text_w, text_h), _ = cv2.getTextSize(text, FONT, FONT_SCALE, FONT_THICKNESS)
    cv2.rectangle(image, (x1, y1), (x1 + text_w, y1 - text_h - 4), color, -1)
    cv2.putText(image, text, (x1, y1 - 3), FONT, FONT_SCALE, TEXT_COLOR, FONT_THICKNESS, cv2.LINE_AA)


def draw_detections(image: Union[Tensor, np.ndarray], classes: Tensor, scores: Tensor, boxes: Tensor,
                    masks: Optional[Tensor], class_names: Sequence[str], opts: DrawOptions,
                    fps_text: str = '') -> np.ndarray:
    """Draw the detections of one image.

    Args:
        image (Tensor or ndarray[H, W, 3]) BGR, 0..255 (uint8 or float), on any device.
        classes (Tensor[D]) int, 0-based class indices.
        scores (Tensor[D]).
        boxes (Tensor[D, 4]) in pixel (x1, y1, x2, y2).
        masks (Tensor[D, H, W]) 0/1 full-image masks, or None (box-only models, --detect).
        class_names: name of each class index.
        fps_text: drawn in the top-left corner when not empty.
    Returns:
        ndarray[H, W, 3] uint8 BGR.
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    device = masks.device if masks is not None else image.device
    canvas = image.to(device=device, dtype=torch.float32)

    keep = select_for_display(classes, scores, opts.top_k, opts.score_threshold)
    classes_np = classes[keep].cpu().numpy().astype(int)
    scores_np = scores[keep].float().cpu().numpy()
    boxes_np = boxes[keep].cpu().numpy().astype(int)
    colors = [detection_color(int(c), rank, opts.class_color) for rank, c in enumerate(classes_np)]

    if opts.display_masks and masks is not None and keep.numel() > 0:
        color_t = torch.tensor(colors, dtype=torch.float32, device=device)
        canvas = blend_masks(canvas, masks[keep.to(masks.device)], color_t, opts.mask_alpha)
    if fps_text:
        canvas = draw_fps_box(canvas, fps_text)

    out = canvas.round().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    if fps_text:
        draw_fps_text(out, fps_text)

    # Lowest score first, so the best detection's box and label are drawn on top.
    for j in reversed(range(len(classes_np))):
        x1, y1, x2, y2 = (int(v) for v in boxes_np[j])
        if opts.display_bboxes:
            cv2.rectangle(out, (x1, y1), (x2, y2), colors[j], 1)
        if opts.display_text:
            name = class_names[classes_np[j]] if classes_np[j] < len(class_names) else str(classes_np[j])
            text = f'{name}: {scores_np[j]:.2f}' if opts.display_scores else name
            draw_label(out, text, x1, y1, colors[j])
    return out


def prototype_mosaic(proto: Tensor, columns: int = 8) -> np.ndarray:
    """The mask prototypes side by side, each scaled to 0..255 on its own (for --display_lincomb).

    Args:
        proto (Tensor[H, W, M]).
    Returns:
        ndarray[rows * H, columns * W] uint8, rows = ceil(M / columns).
    """
    h, w, m = proto.shape
    columns = max(1, min(columns, m))
    rows = -(-m // columns)
    p = proto.detach().float().permute(2, 0, 1)  # [M, H, W]
    low = p.flatten(1).min(dim=1).values[:, None, None]
    high = p.flatten(1).max(dim=1).values[:, None, None]
    p = (p - low) / (high - low).clamp(min=1e-6)
    grid = torch.zeros(rows * columns, h, w, dtype=p.dtype, device=p.device)
    grid[:m] = p
    grid = grid.view(rows, columns, h, w).permute(0, 2, 1, 3).reshape(rows * h, columns * w)
    return (grid * 255).round().to(torch.uint8).cpu().numpy()


def image_grid(images: Sequence[np.ndarray], columns: int = 4, size: int = 256, gap: int = 4) -> np.ndarray:
    """Tile images (each resized to size x size) into one BGR picture with `gap` px of white."""
    if not images:
        raise ValueError('image_grid needs at least one image')
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    step = size + gap
    grid = np.full((rows * step - gap, columns * step - gap, 3), 255, dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        grid[r * step:r * step + size, c * step:c * step + size] = cv2.resize(img, (size, size))
    return grid


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m utils.visualize grid IN_DIR OUT.png [--columns 4] [--limit 16]`."""
    import argparse
    import os
    parser = argparse.ArgumentParser(description='Tile the images of a folder into one picture.')
    sub = parser.add_subparsers(dest='command', required=True)
    grid = sub.add_parser('grid', help='make a grid of the images in a folder')
    grid.add_argument('folder')
    grid.add_argument('out')
    grid.add_argument('--columns', type=int, default=4)
    grid.add_argument('--limit', type=int, default=16, help='use at most this many images (sorted by name)')
    grid.add_argument('--size', type=int, default=256, help='side of each tile in pixels')
    args = parser.parse_args(argv)
    exts = ('.png', '.jpg', '.jpeg', '.bmp')
    names = sorted(n for n in os.listdir(args.folder) if n.lower().endswith(exts))[:args.limit] \
        if os.path.isdir(args.folder) else []
    images = [img for img in (cv2.imread(os.path.join(args.folder, n)) for n in names) if img is not None]
    if not images:
        print(f'error: no images in {args.folder}')
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    cv2.imwrite(args.out, image_grid(images, args.columns, args.size))
    print(f'wrote {args.out} ({len(images)} images)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

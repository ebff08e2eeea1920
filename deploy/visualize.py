"""Drawing detections on images: translucent class-coloured masks, boxes, class names and scores.

Masks are blended with tensor operations on whatever device the image and masks live on (so a GPU
or NPU does the per-pixel work); boxes and text are drawn with OpenCV on the CPU copy. Images are
BGR, as OpenCV reads and writes them.

OpenCV's Hershey fonts only have ASCII glyphs (a name like '行人' comes out as '???'), so a label
that is not ASCII is written with PIL in a TrueType font that has its glyphs: the one given
(DrawOptions.font, eval.py --font), else the first of matplotlib's DejaVu Sans and the system fonts
that covers the text. Without one, the class index is drawn instead, and one line says so.
"""
import functools
from dataclasses import dataclass
from typing import FrozenSet, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from data.config import COLORS
from layers.output_utils import prototype_mosaic  # noqa: F401 (re-exported: it used to live here)

FONT = cv2.FONT_HERSHEY_DUPLEX
TEXT_COLOR = (255, 255, 255)
# Text and lines grow with the image: FONT_SCALE and FONT_THICKNESS are their values on an image
# whose shorter side is REFERENCE_SIDE px, and `draw_style` scales them with the shorter side.
REFERENCE_SIDE = 640
FONT_SCALE = 0.6
FONT_THICKNESS = 1
# Below 0.3 the Hershey glyphs stop being readable (about 8 px high); the upper bound only keeps
# absurd sizes (a 20,000-px scan) from getting label text a thousand pixels high.
MIN_FONT_SCALE = 0.3
MAX_FONT_SCALE = 4.0


@dataclass(frozen=True)
class DrawStyle:
    """Sizes in pixels (and OpenCV's font scale) used to draw on one image; see `draw_style`."""
    font_scale: float
    text_thickness: int
    line_thickness: int
    padding: int


def draw_style(height: int, width: int) -> DrawStyle:
    """Text and line sizes for an image of `height` x `width` pixels.

    The font scale is proportional to the shorter side s: 0.6 * s / 640 (REFERENCE_SIDE), clamped
    to [MIN_FONT_SCALE, MAX_FONT_SCALE]; the rest follows the font scale: text stroke
    round(1.6 * scale) px, box outline round(2.5 * scale) px, label padding round(5 * scale) px,
    each at least 1 px. So a label covers about the same fraction of the image at 640 px as at
    4000 px (a 'triangle: 0.87' label: 19-20% of the width), and on small images the minimum scale
    keeps it readable (38% of a 160-px image).
    """
    factor = max(min(height, width), 1) / REFERENCE_SIDE
    scale = min(max(FONT_SCALE * factor, MIN_FONT_SCALE), MAX_FONT_SCALE)
    return DrawStyle(font_scale=scale,
                     text_thickness=max(FONT_THICKNESS, round(1.6 * scale)),
                     line_thickness=max(1, round(2.5 * scale)),
                     padding=max(1, round(5 * scale)))


def _truetype(path: str, style: DrawStyle) -> ImageFont.FreeTypeFont:
    # A pixel size that matches the Hershey text's height at the same font scale.
    return _load_truetype(path, max(8, round(30 * style.font_scale)))


@functools.lru_cache(maxsize=32)
def _load_truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        raise ValueError(f"cannot read the font file {path}") from None


def _text_extent(text: str, style: DrawStyle, font: Optional[str]) -> Tuple[int, int, int]:
    """(width, height above the baseline, depth below it) of `text` in pixels: OpenCV's Hershey
    font, or the TrueType file `font`."""
    if font is None:
        (text_w, text_h), baseline = cv2.getTextSize(text, FONT, style.font_scale, style.text_thickness)
        return text_w, text_h, baseline
    face = _truetype(font, style)
    ascent, descent = face.getmetrics()
    return int(np.ceil(face.getlength(text))), ascent, descent


def label_size(text: str, style: DrawStyle, font: Optional[str] = None) -> Tuple[int, int]:
    """(width, height) in pixels of the filled label `draw_label` draws for `text`, padding and
    the descenders below the baseline included."""
    text_w, text_h, depth = _text_extent(text, style, font)
    return text_w + 2 * style.padding, text_h + depth + 2 * style.padding


@functools.lru_cache(maxsize=None)
def _font_paths() -> Tuple[str, ...]:
    """The fonts to search, matplotlib's DejaVu Sans first, then the system's by path."""
    from matplotlib import font_manager

    bundled = font_manager.findfont('DejaVu Sans', fallback_to_default=True)
    return (bundled,) + tuple(sorted(p for p in font_manager.findSystemFonts() if p != bundled))


@functools.lru_cache(maxsize=None)
def _charset(font: str) -> FrozenSet[int]:
    """The characters (code points) the font file `font` has glyphs for (its first face)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(font, fontNumber=0, lazy=True) as face:
            return frozenset(face.getBestCmap() or ())
    except Exception:  # fontTools raises many kinds for a file that is no font it can read
        raise ValueError(f"cannot read the font file {font}") from None


def covers(font: str, text: str) -> bool:
    """Whether the TrueType/OpenType file `font` has a glyph for every character of `text`."""
    return {ord(ch) for ch in text} <= _charset(font)


def _searched_font(text: str) -> Optional[str]:
    for path in _font_paths():
        try:
            if covers(path, text):
                return path
        except ValueError:  # a broken system font is simply no candidate
            continue
    return None


_warned_no_font = set()
# What a label adds to the class name (the score); the chosen font must have these glyphs too.
SCORE_CHARACTERS = ': 0123456789.'


@functools.lru_cache(maxsize=1024)
def label_font(text: str, font: Optional[str] = None) -> Optional[str]:
    """The font file to write the non-ASCII `text` with: `font` if given and it has the glyphs, else
    (no `font`) the first of `_font_paths` that has them; None, after one printed line per font
    setting, when there is none. Fonts are read only until one has the glyphs, each once."""
    needed = text + SCORE_CHARACTERS
    found = (font if covers(font, needed) else None) if font is not None else _searched_font(needed)
    if found is not None:
        return found
    if font not in _warned_no_font:
        _warned_no_font.add(font)
        what = f'the font {font} lacks' if font is not None else 'no installed font has'
        print(f"Labels: {what} the glyphs of {text!r}; drawing class indices instead "
              f"(install a font that has them, e.g. fonts-noto-cjk, or pass --font PATH).")
    return None


@dataclass
class DrawOptions:
    """What `draw_detections` draws (eval.py's --display_* / --top_k / --score_threshold flags).

    class_color: colour by class (True) or by rank of the detection in the image (False).
    mask_alpha: opacity of the mask colour.
    font: TrueType/OpenType file for class names that are not ASCII (eval.py --font); None: search
        matplotlib's and the system's fonts (see the module docstring).
    """
    top_k: int = 5
    score_threshold: float = 0.0
    display_masks: bool = True
    display_bboxes: bool = True
    display_text: bool = True
    display_scores: bool = True
    class_color: bool = True
    mask_alpha: float = 0.45
    font: Optional[str] = None


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
    label_w, label_h = label_size(text, draw_style(image.shape[0], image.shape[1]))
    image = image.clone()
    image[:label_h, :label_w] *= 0.6
    return image


def draw_fps_text(image: np.ndarray, text: str) -> None:
    """Write `text` in the top-left corner of a uint8 BGR image, in place."""
    style = draw_style(image.shape[0], image.shape[1])
    (_, text_h), _ = cv2.getTextSize(text, FONT, style.font_scale, style.text_thickness)
    cv2.putText(image, text, (style.padding, style.padding + text_h), FONT, style.font_scale, TEXT_COLOR,
                style.text_thickness, cv2.LINE_AA)


def draw_label(image: np.ndarray, text: str, x1: int, y1: int, color: Tuple[int, int, int],
               style: Optional[DrawStyle] = None, font: Optional[str] = None) -> None:
    """A filled label with white text sitting on the top edge of a box, in place.

    Where there is no room above the box (an object at the top of the image) the label hangs
    below the edge instead, and it is moved left to stay inside the image.
    style: default `draw_style` of the image.
    font: a TrueType file to write the text with (PIL); None: OpenCV's Hershey font (ASCII only).
    """
    style = style or draw_style(image.shape[0], image.shape[1])
    label_w, label_h = label_size(text, style, font)
    left = max(min(x1, image.shape[1] - label_w), 0)
    top = y1 - label_h if y1 - label_h >= 0 else y1
    cv2.rectangle(image, (left, top), (left + label_w - 1, top + label_h - 1), color, -1)
    if font is None:
        text_h = _text_extent(text, style, None)[1]
        cv2.putText(image, text, (left + style.padding, top + style.padding + text_h), FONT, style.font_scale,
                    TEXT_COLOR, style.text_thickness, cv2.LINE_AA)
        return
    # Only the label's own pixels go through PIL.
    bottom, right = min(top + label_h, image.shape[0]), min(left + label_w, image.shape[1])
    region = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]))
    ImageDraw.Draw(region).text((style.padding, style.padding), text, font=_truetype(font, style),
                                fill=TEXT_COLOR, anchor='la')
    image[top:bottom, left:right] = np.asarray(region)


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
    style = draw_style(out.shape[0], out.shape[1])
    for j in reversed(range(len(classes_np))):
        x1, y1, x2, y2 = (int(v) for v in boxes_np[j])
        if opts.display_bboxes:
            cv2.rectangle(out, (x1, y1), (x2, y2), colors[j], style.line_thickness)
        if opts.display_text:
            name = class_names[classes_np[j]] if classes_np[j] < len(class_names) else str(classes_np[j])
            font = None if name.isascii() else label_font(name, opts.font)
            if font is None and not name.isascii():
                name = str(classes_np[j])
            text = f'{name}: {scores_np[j]:.2f}' if opts.display_scores else name
            draw_label(out, text, x1, y1, colors[j], style, font)
    return out


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
    """`python -m deploy.visualize grid IN_DIR OUT.png [--columns 4] [--limit 16]`."""
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

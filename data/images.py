"""Reading one image file as the network takes it: the datasets and inference share this reader."""
import os.path as osp

import cv2
import numpy as np

__all__ = ['ImageReadError', 'read_image']


class ImageReadError(OSError):
    """An image file is missing, unreadable or not an image OpenCV can decode."""


def read_image(path: str) -> np.ndarray:
    """ndarray[H, W, 3] uint8 BGR (cv2.imread's layout), or ImageReadError naming the file."""
    if not osp.isfile(path):
        raise ImageReadError(f"image not found: {path}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageReadError(f"image could not be decoded (unreadable, unsupported or corrupt file): {path}")
    return img

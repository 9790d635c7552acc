"""Wan2.2's letterbox (``padding_resize``, WAN_PREPROCESS.md 1.5), shared by the preprocessing
(wan-animate-pose) and the consumer of its folder (wan-animate's ``zoo run --conditions``), which
letterboxes the reference to the pose frames' size exactly as Wan's own ``animate.py`` does."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from zoo.errors import InputError


def padding_resize(
    image: npt.NDArray[np.uint8], height: int, width: int, interpolation: int = cv2.INTER_LINEAR
) -> npt.NDArray[np.uint8]:
    """Letterbox ``image`` (h x w) onto a black ``height`` x ``width`` canvas, centred (1.5): if
    ``h / w > H / W`` the resized width is ``trunc(H / h * w)`` at column ``trunc((W - nw) / 2)``, else
    the resized height is ``trunc(W / w * h)`` at row ``trunc((H - nh) / 2)``. The original's float64
    canvas holds the uint8 resize exactly, so a uint8 canvas gives the same bytes."""
    if height <= 0 or width <= 0:
        raise ValueError(f"padding_resize: canvas {width}x{height} (WxH); expected positive sides")
    h, w = image.shape[:2]
    channels = image.shape[2:]
    canvas = np.zeros((height, width, *channels), dtype=np.uint8)
    if h / w > height / width:
        new_w = int(height / h * w)
        if new_w <= 0:
            raise InputError(f"an image of {w}x{h} (WxH) is too tall to letterbox onto {width}x{height}")
        resized = cv2.resize(image, (new_w, height), interpolation=interpolation)
        pad = int((width - new_w) / 2)
        canvas[:, pad : pad + new_w] = resized.reshape(height, new_w, *channels)
    else:
        new_h = int(width / w * h)
        if new_h <= 0:
            raise InputError(f"an image of {w}x{h} (WxH) is too wide to letterbox onto {width}x{height}")
        resized = cv2.resize(image, (width, new_h), interpolation=interpolation)
        pad = int((height - new_h) / 2)
        canvas[pad : pad + new_h] = resized.reshape(new_h, width, *channels)
    return canvas

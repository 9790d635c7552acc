"""The face crops of ``src_face.mp4`` (``get_face_bboxes(..., scale=1.3)`` then ``cv2.resize`` to
512x512): ``../shared/design/WAN_PREPROCESS.md`` section 5, bit for bit.

The box comes from the 68 face landmarks (no score check, quirk Q15), grows by ``sqrt(1.3)`` with
three times more margin above than below, and is clamped to the frame. Where the original crashes
(Q9: a zero-width or zero-height landmark box gives ``int(NaN)``; an empty crop makes
``cv2.resize`` raise) the previous frame's box is used, else a box around the nose, with a warning.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from zoo.families.wan_animate_pose.meta import U8, Meta

SCALE = 1.3  # area growth (5 item 3)
CROP_SIZE = 512  # (5 item 5)

Box = tuple[int, int, int, int]  # (X0, Y0, X1, Y1): the crop is frame[Y0:Y1, X0:X1]


def _empty(start: int, stop: int, size: int) -> bool:
    """Whether Python/NumPy slicing ``[start:stop]`` of an axis of ``size`` is empty (a negative stop
    counts from the end, as in the original's slice)."""
    return len(range(*slice(start, stop).indices(size))) == 0


def _nose_box(meta: Meta, w: int, h: int) -> Box:
    """A nonempty square inside the frame around the nose (side ``min(w, h) / 4``, at least 1 px):
    the fallback when there is no previous box."""
    side = max(min(w, h) // 4, 1)
    nx, ny = float(meta.body[0, 0]) * w, float(meta.body[0, 1]) * h
    if not (math.isfinite(nx) and math.isfinite(ny)):
        nx, ny = w / 2, h / 2
    sx, sy = min(side, w), min(side, h)
    x0 = min(max(int(nx) - sx // 2, 0), w - sx)
    y0 = min(max(int(ny) - sy // 2, 0), h - sy)
    return x0, y0, x0 + sx, y0 + sy


def face_box(meta: Meta, frame_hw: tuple[int, int], previous: Box | None) -> tuple[Box, str | None]:
    """The face box ``(X0, Y0, X1, Y1)`` of a frame (5 items 1-4); ``frame_hw`` = ``(h, w)`` of frame 0.

    Returns ``(box, None)``, or ``(fallback box, warning)`` where the original crashes (Q9): the
    previous frame's box when given, else a box around the nose.
    """
    h, w = frame_hw
    # 68 landmarks (face rows 1..68) to float64 pixels: float32 x int64 promotes to float64 (5 item 1)
    pts = meta.face[1:, :2].astype(np.float64) * np.array([w, h], dtype=np.float64)
    x0, y0 = (float(v) for v in pts.min(axis=0))
    x1, y1 = (float(v) for v in pts.max(axis=0))
    iw, ih = x1 - x0, y1 - y0  # (5 item 2)
    problem = None
    if not (iw != 0 and ih != 0 and math.isfinite(iw) and math.isfinite(ih)):
        problem = f"the face landmarks span a degenerate box ({iw:g} x {ih:g} px)"
    else:
        area = iw * ih * SCALE  # (5 item 3); math.sqrt is IEEE-exact like np.sqrt
        nw = math.sqrt(area * (iw / ih))
        nh = math.sqrt(area * (ih / iw))
        dw = (nw - iw) / 2
        dh = (nh - ih) / 4
        box = (  # Python max/min with the integer bounds, then trunc (5 item 4)
            int(max(x0 - dw, 0)),
            int(max(y0 - 3 * dh, 0)),
            int(min(x1 + dw, w)),
            int(min(y1 + dh, h)),
        )
        if not (_empty(box[0], box[2], w) or _empty(box[1], box[3], h)):
            return box, None
        problem = f"the face box {box} crops nothing from a {w}x{h} frame"
    if previous is not None:
        return previous, f"{problem}: used the previous frame's face box {previous}"
    box = _nose_box(meta, w, h)
    return box, f"{problem}: used a box around the nose {box}"


def face_crop(frame_rgb: U8, box: Box) -> U8:
    """``frame[Y0:Y1, X0:X1]`` stretched to 512x512 RGB with ``cv2.resize`` (``INTER_LINEAR``) (5 item 5)."""
    x0, y0, x1, y1 = box
    crop = frame_rgb[y0:y1, x0:x1]
    if crop.size == 0:
        raise ValueError(f"face box {box} crops nothing from a {frame_rgb.shape[1]}x{frame_rgb.shape[0]} frame")
    return np.asarray(cv2.resize(crop, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)

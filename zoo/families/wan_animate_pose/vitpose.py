"""Wan2.2-Animate's pose estimation, bit for bit: ``../shared/design/WAN_PREPROCESS.md`` sections 2
(person detector: stretched input, the YOLOv10 6-column decoding, OpenCV's NMS, the largest-person
rule and the whole-image fallback), 3 (ViTPose whole-body: the crop window, the float32 crop
resize, the BGR-with-RGB-statistics normalisation, the argmax + DARK heatmap decode) and 4 (the
pose meta, with previous-body reuse).

The models are callables, so any backend can run them: ``detect(x: float32[1,3,640,640] RGB) ->
output 0 (float32[1,300,6])`` and ``pose(x: float32[B,3,256,192] BGR-normalised) -> output 0
(float32[B,133,64,48])``.

NumPy: the original runs under NumPy 1 (Wan2.2 pins ``numpy<2``). Its value-based casting picks
float32 or float64 in the box scaling (2.4), the Taylor step (3.4) and the mapping back to the
image (3.4); every one of those operations is written here with explicit ``np.float32`` /
float64 operands, so the results are the [np1] ones whichever NumPy is installed.

Deviations, none of which changes a value the original produces:
* the NMS of 2.5 is computed in NumPy (the semantics of ``cv2.dnn.NMSBoxes``, which the tests
  compare against OpenCV itself), so no OpenCV ``dnn`` module is needed;
* quirk Q8 (4 item 3) is fixed: the original crashes when the first image of a call has every body
  point left of or above the image; here that body is kept as it is and a warning says so;
* a crop window that misses the image is recognised geometrically (``CropParams.outside``) and left
  black, which is what the original's slicing gives in every such case (nothing selected on the
  canvas, or a broadcast error it prints and ignores); the two agree on windows off every side;
* a singular Hessian that passes the determinant test (possible only with NaN/inf heatmaps) would
  make the original raise in ``numpy.linalg.inv``; here the cell is kept (no Taylor step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from zoo.families.wan_animate_pose.meta import (
    BODY_FROM_WHOLEBODY,
    F32,
    F64,
    FACE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LEFT_HAND,
    RIGHT_HAND,
    U8,
    DrawPose,
    Meta,
)

DETECTOR_SIZE = 640  # hard-coded in the original (2.2), not read from the graph
POSE_INPUT_HW = (256, 192)  # ViTPose's crop (3.1), hard-coded
HEATMAP_HW = (64, 48)  # the shipped ViTPose's heatmaps (3.4); decode_heatmaps reads the array's own

SCORE_THRESHOLD = np.float32(0.05)  # detector rows and NMS candidates, float32 compares (2.4, 2.5)
NMS_THRESHOLD = np.float32(0.5)  # overlap <= 0.5f is kept (2.5)
PERSON_SCORE = 0.05  # person rows: score > 0.05 in float64 (2.6)
SHAPE_RATIO = 0.4  # a person's longest side against the running reference (2.6, Q7)
MIN_BOX_SIDE = 10  # a narrower or lower box means the whole image (3.1)
BOX_PADDING = 1.25  # (3.1)
PIXEL_STD = 200.0  # the original's scale unit (3.1)
POSE_MEAN = np.array(IMAGENET_MEAN, dtype=np.float64)  # per channel index of the BGR crop (3.3, Q1)
POSE_STD = np.array(IMAGENET_STD, dtype=np.float64)
DARK_KERNEL = 11  # Gaussian modulation kernel (3.4); sigma = 2
LOG_FLOOR = np.float32(1e-10)  # the float32 value NumPy 1 compares with

Detect = Callable[[F32], np.ndarray]
"""``float32[1,3,640,640]`` (RGB, 0..1, stretched) -> the detector's output 0 (``float32[1,300,6]``)."""
Pose = Callable[[F32], np.ndarray]
"""``float32[B,3,256,192]`` -> ViTPose's output 0 (``float32[B,133,64,48]``)."""


# --- section 2: the person detector ---------------------------------------------------------------


def detector_input(image_rgb: U8) -> F32:
    """(2.1, 2.2) The RGB image stretched to 640x640 (INTER_LINEAR, no letterbox, quirk Q4),
    ``f32(u8 / 255.0)`` with the division in float64, as ``float32 [1,3,640,640]`` in R, G, B order."""
    resized = cv2.resize(np.ascontiguousarray(image_rgb), (DETECTOR_SIZE, DETECTOR_SIZE))
    scaled = (resized.astype(np.float64) / 255.0).astype(np.float32)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))[None]


def _rows_of(output0: np.ndarray) -> F32:
    """(2.3) The 6-column rows ``x1,y1,x2,y2,score,class`` of the first (only) batch row of the
    detector's output 0; any other layout is refused (quirk Q5: the original's other branch is
    broken for 80-class models, and the export refuses such graphs)."""
    out = np.asarray(output0)
    rows = np.squeeze(out[0]) if out.ndim >= 2 and out.shape[0] == 1 else None
    if rows is not None and rows.ndim == 1 and rows.shape[0] == 6:
        rows = rows[None]
    if rows is None or rows.ndim != 2 or rows.shape[1] != 6:
        raise ValueError(
            f"detector output 0 of shape {tuple(out.shape)}: expected the YOLOv10 layout [1,N,6] "
            "(x1, y1, x2, y2, score, class per row)"
        )
    return rows.astype(np.float32)


def decode_boxes(rows: F32, image_hw: tuple[int, int]) -> tuple[npt.NDArray[np.int32], F32, F32]:
    """(2.4) Rows with ``score >= f32(0.05)`` to integer boxes ``[X, Y, Wb, Hb]`` (int32, original
    image pixels), their float32 scores and float32 classes. [np1] the coordinates are scaled by
    ``f32(w/640)``, ``f32(h/640)`` in float32; widths and heights are float32 differences; all
    four are truncated toward zero."""
    h, w = image_hw
    fx, fy = np.float32(w / DETECTOR_SIZE), np.float32(h / DETECTOR_SIZE)
    keep = rows[:, 4] >= SCORE_THRESHOLD
    kept = rows[keep]
    x1, x2 = kept[:, 0] * fx, kept[:, 2] * fx
    y1, y2 = kept[:, 1] * fy, kept[:, 3] * fy
    with np.errstate(invalid="ignore"):  # NaN/inf coordinates: what astype gives, as in the original
        boxes = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).astype(np.int32)
    return boxes, kept[:, 4].copy(), kept[:, 5].copy()


def nms(
    boxes: npt.NDArray[np.integer],
    scores: F32,
    score_threshold: np.float32 = SCORE_THRESHOLD,
    nms_threshold: np.float32 = NMS_THRESHOLD,
) -> list[int]:
    """(2.5) ``cv2.dnn.NMSBoxes(boxes, scores, 0.05, 0.5)`` on integer ``[X, Y, W, H]`` boxes,
    class-agnostic (quirk Q6): candidates ``score > threshold`` (float32) in a stable descending
    sort; a candidate is kept if its overlap ``f32(1 - f32(1 - J))`` with every kept box is
    ``<= nms_threshold``, ``J`` the float64 IoU of the rectangles (no +1); ``J = 1`` when the two
    areas sum to ``<= 0``. Returns the kept indices in kept order."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # cv2's Python binding takes Rect2d
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    x, y, bw, bh = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = bw * bh
    candidates = np.flatnonzero(s > score_threshold)
    order = candidates[np.argsort(-s[candidates], kind="stable")]
    kept: list[int] = []
    for i in order.tolist():
        if kept:
            k = np.asarray(kept)
            iw = np.minimum(x[i] + bw[i], x[k] + bw[k]) - np.maximum(x[i], x[k])
            ih = np.minimum(y[i] + bh[i], y[k] + bh[k]) - np.maximum(y[i], y[k])
            empty = (iw <= 0) | (ih <= 0) | (bw[i] <= 0) | (bh[i] <= 0) | (bw[k] <= 0) | (bh[k] <= 0)
            inter = np.where(empty, 0.0, iw * ih)
            total = area[i] + area[k]
            with np.errstate(divide="ignore", invalid="ignore"):
                distance = np.where(total <= 0, 0.0, 1.0 - inter / (total - inter)).astype(np.float32)
            overlap = np.float32(1) - distance
            if not bool(np.all(overlap <= nms_threshold)):
                continue
        kept.append(i)
    return kept


def select_person(rows: F64, image_hw: tuple[int, int]) -> F64:
    """(2.6) ``select_type='max'``, ``strict=True``, ``cat_id=[1]``: among the rows
    ``[x1,y1,x2,y2,score,class]`` (NMS order, float64) whose ``class + 1 == 1`` and ``score > 0.05``,
    the largest-area box whose longest side is at least 0.4x the running reference (the longest
    person side, then the selected box's side; quirk Q7). Returns ``[x1,y1,x2,y2,score]`` or the
    fallback ``[0,0,w,h,-1]``."""
    h, w = image_hw
    persons = [
        r for r in np.asarray(rows, dtype=np.float64).reshape(-1, 6) if r[5] + 1.0 == 1.0 and r[4] > PERSON_SCORE
    ]
    ref = -1.0
    for r in persons:
        ref = max(ref, max(r[2] - r[0], r[3] - r[1]))
    best = float(h * w * -10)
    chosen = None
    for r in persons:
        area = (r[2] - r[0]) * (r[3] - r[1])
        side = max(r[2] - r[0], r[3] - r[1])
        if area > best:
            if side < ref * SHAPE_RATIO:
                continue
            best, ref, chosen = area, side, r
    if chosen is None:
        return np.array([0.0, 0.0, float(w), float(h), -1.0], dtype=np.float64)
    return np.array(chosen[:5], dtype=np.float64)


def detect_person(output0: np.ndarray, image_hw: tuple[int, int]) -> F64:
    """(2.3-2.6) The detector's output 0 for one image of size ``image_hw = (h, w)`` to the person
    box ``[x1,y1,x2,y2,score]`` (float64, integer corners): decode, NMS, selection; the whole image
    ``[0,0,w,h,-1]`` when nothing is kept or no person is selected (quirk Q22). Only the 6-column
    layout is accepted (``ValueError`` naming the shape otherwise)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    boxes, scores, classes = decode_boxes(_rows_of(output0), (h, w))
    kept = nms(boxes, scores)
    if not kept:
        return np.array([0.0, 0.0, float(w), float(h), -1.0], dtype=np.float64)
    b = boxes[kept].astype(np.int64)
    rows = np.empty((len(kept), 6), dtype=np.float64)
    rows[:, 0], rows[:, 1] = b[:, 0], b[:, 1]
    rows[:, 2], rows[:, 3] = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    rows[:, 4], rows[:, 5] = scores[kept], classes[kept]
    return select_person(rows, (h, w))


# --- section 3: ViTPose ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CropParams:
    """Where a ViTPose crop came from (3.1): the window's centre ``(cx, cy)`` and the decode scale
    ``SW x SH`` (pixels, float64), the crop corners ``ul = (left, top)``, ``br = (right, bottom)``
    (integers, end-exclusive) and whether the window missed the image so that the crop stayed
    black (``outside``, 3.2)."""

    cx: float
    cy: float
    sw: float  # SW = sw * 200
    sh: float  # SH = sh * 200
    left: int
    top: int
    right: int
    bottom: int
    outside: bool = False


def crop_params(box: F64, image_hw: tuple[int, int]) -> CropParams:
    """(3.1) The crop window of ``box = [x1,y1,x2,y2,score]`` on an ``h x w`` image: the whole
    image if the score is ``<= 0`` or a side is under 10 px; padding 1.25 around a 3:4 window; the
    corners by the emulation of the original's inverse-matrix route (every step float64, each
    rounded half to even separately)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    x1, y1, x2, y2, score = (float(v) for v in np.asarray(box, dtype=np.float64)[:5])
    if score <= 0 or x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
        x1, y1, x2, y2 = 0.0, 0.0, float(w), float(h)
    rows, cols = POSE_INPUT_HW
    ratio = rows / cols
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    size = max((x2 - x1) * ratio, y2 - y1)
    sw = ((size / ratio) / PIXEL_STD) * BOX_PADDING
    sh = (size / PIXEL_STD) * BOX_PADDING
    s = max(sw, sh)
    # the crop matrix [[a,0,b],[0,c,d],[0,0,1]] and its inverse as OpenBLAS's LAPACK computes it
    hh = PIXEL_STD * s
    ww = hh / ratio
    a, b = cols / ww, cols * (-cx / ww + 0.5)
    c, d = rows / hh, rows * (-cy / hh + 0.5)
    ia, ic = 1.0 / a, 1.0 / c
    u, v = (-b) * ia, (-d) * ic
    return CropParams(
        cx=cx,
        cy=cy,
        sw=sw * PIXEL_STD,
        sh=sh * PIXEL_STD,
        left=round(u),
        top=round(v),
        right=round(ia * cols + u),
        bottom=round(ic * rows + v),
    )


def pose_input(image_rgb: U8, box: F64) -> tuple[F32, CropParams]:
    """(3.1-3.3) ViTPose's input for one RGB image and its person box: the BGR image (2.1) cut to
    the crop window on a float32 zero canvas, ``cv2.resize`` to 192x256 on float32 (INTER_LINEAR),
    ``f32((f64(f32(v / 255)) - mean_c) / std_c)`` with the RGB ImageNet statistics per channel
    index (quirk Q1); ``float32 [1,3,256,192]`` and the window."""
    bgr = np.asarray(image_rgb)[..., ::-1]
    h, w = bgr.shape[:2]
    p = crop_params(box, (h, w))
    canvas = np.zeros((p.bottom - p.top, p.right - p.left, 3), dtype=np.float32)
    if p.right <= 0 or p.left >= w or p.bottom <= 0 or p.top >= h:
        # The window misses the image. The original's slices then either select nothing on the
        # canvas side or do not broadcast (it prints the error): the crop stays black either way.
        p = dataclasses.replace(p, outside=True)
    else:
        canvas[max(0, -p.top) : min(p.bottom, h) - p.top, max(0, -p.left) : min(p.right, w) - p.left] = bgr[
            max(0, p.top) : min(h, p.bottom), max(0, p.left) : min(w, p.right)
        ]
    rows, cols = POSE_INPUT_HW
    resized = cv2.resize(canvas, (cols, rows)).reshape(rows, cols, 3)
    unit = (resized / np.float32(255.0)).astype(np.float64)
    x = ((unit - POSE_MEAN) / POSE_STD).astype(np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None], p


def _modulated_log(heatmap: F32) -> F32:
    """(3.4 step 2) The heatmap blurred (11x11, sigma 2) inside a 5-pixel zero border, rescaled in
    float32 to its original maximum, then ``log(max(., 1e-10))`` in float32."""
    border = (DARK_KERNEL - 1) // 2
    hh, ww = heatmap.shape
    padded = np.zeros((hh + 2 * border, ww + 2 * border), dtype=np.float32)
    padded[border:-border, border:-border] = heatmap
    blurred = np.array(
        cv2.GaussianBlur(padded, (DARK_KERNEL, DARK_KERNEL), 0)[border:-border, border:-border], np.float32
    )
    blurred *= np.float32(heatmap.max()) / np.float32(blurred.max())
    out: F32 = np.log(np.maximum(blurred, LOG_FLOOR))
    return out


def _taylor(log_map: F32, px: np.float32, py: np.float32) -> tuple[np.float32, np.float32]:
    """(3.4 step 3) One Newton step on the log-heatmap at the cell ``(trunc(px), trunc(py))`` when
    it lies 2 cells or more inside the border. [np1]: differences of two float32 values (and the
    3-term ``dxy`` sum) are float32, ``2*L`` and everything after it float64, the inverse
    ``numpy.linalg.inv`` in float64, the sum rounded once to float32."""
    hh, ww = log_map.shape
    x, y = int(px), int(py)
    if not (1 < x < ww - 2 and 1 < y < hh - 2):
        return px, py
    lm = log_map
    dx = 0.5 * float(lm[y, x + 1] - lm[y, x - 1])
    dy = 0.5 * float(lm[y + 1, x] - lm[y - 1, x])
    dxx = 0.25 * (float(lm[y, x + 2]) - 2.0 * float(lm[y, x]) + float(lm[y, x - 2]))
    dxy = 0.25 * float(lm[y + 1, x + 1] - lm[y - 1, x + 1] - lm[y + 1, x - 1] + lm[y - 1, x - 1])
    dyy = 0.25 * (float(lm[y + 2, x]) - 2.0 * float(lm[y, x]) + float(lm[y - 2, x]))
    if dxx * dyy - dxy * dxy == 0:
        return px, py
    hessian = np.array([[dxx, dxy], [dxy, dyy]], dtype=np.float64)
    derivative = np.array([[dx], [dy]], dtype=np.float64)
    try:
        offset = -np.linalg.inv(hessian) @ derivative
    except np.linalg.LinAlgError:  # only with NaN/inf heatmaps; the original raises here
        return px, py
    return np.float32(float(px) + offset[0, 0]), np.float32(float(py) + offset[1, 0])


def decode_heatmaps(heatmaps: F32, params: CropParams) -> F32:
    """(3.4) ViTPose's heatmaps ``[K,Hh,Wh]`` of one crop to ``float32 [K,3]`` rows ``(X, Y, p)``
    in image pixels: the first argmax cell (``-1, -1`` when the maximum is ``<= 0``), the DARK
    step, and ``cell -> c - S/2 + cell * S/Wh`` ([np1]: float32 chain with float32-rounded
    constants). ``p`` is the float32 maximum."""
    hm = np.asarray(heatmaps, dtype=np.float32)
    if hm.ndim != 3:
        raise ValueError(f"heatmaps of shape {hm.shape}: expected [K, H, W]")
    k, hh, ww = hm.shape
    flat = hm.reshape(k, -1)
    idx = np.argmax(flat, axis=1)
    peak = np.max(flat, axis=1)
    positive = peak > 0.0
    px = np.where(positive, (idx % ww).astype(np.float32), np.float32(-1))
    py = np.where(positive, (idx // ww).astype(np.float32), np.float32(-1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for j in range(k):
            x, y = int(px[j]), int(py[j])
            if 1 < x < ww - 2 and 1 < y < hh - 2:  # the blur only matters where the step is taken
                px[j], py[j] = _taylor(_modulated_log(hm[j]), px[j], py[j])
        out = np.empty((k, 3), dtype=np.float32)
        out[:, 0] = px * np.float32(params.sw / ww) + np.float32(params.cx) - np.float32(params.sw * 0.5)
        out[:, 1] = py * np.float32(params.sh / hh) + np.float32(params.cy) - np.float32(params.sh * 0.5)
    out[:, 2] = peak
    return out


def keypoints_of_images(
    images_rgb: Sequence[U8],
    detect: Detect,
    pose: Pose,
    batch: int = 1,
) -> list[F32]:
    """(2-3) One ``float32 [133,3]`` ``(X, Y, score)`` row set per RGB image: the detector on each
    image alone, ViTPose on the crops of up to ``batch`` consecutive images stacked. Everything
    outside the models is per image, so the result depends on ``batch`` only through the models."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    results: list[F32] = []
    pending: list[tuple[F32, CropParams]] = []

    def flush() -> None:
        stacked = np.concatenate([x for x, _ in pending], axis=0)
        heatmaps = np.asarray(pose(stacked))
        if heatmaps.ndim != 4 or heatmaps.shape[0] != len(pending):
            raise ValueError(
                f"pose output 0 of shape {tuple(heatmaps.shape)} for {len(pending)} crops: expected [{len(pending)},K,H,W]"
            )
        results.extend(decode_heatmaps(heatmaps[i], p) for i, (_, p) in enumerate(pending))
        pending.clear()

    for image in images_rgb:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image of shape {img.shape} and dtype {img.dtype}: expected uint8 [H,W,3]")
        hw = (int(img.shape[0]), int(img.shape[1]))
        box = detect_person(detect(detector_input(img)), hw)
        pending.append(pose_input(img, box))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return results


# --- section 4: metas -------------------------------------------------------------------------------

_BODY_A = np.array([a for a, _ in BODY_FROM_WHOLEBODY])
_BODY_B = np.array([b for _, b in BODY_FROM_WHOLEBODY])


def metas_from_keypoints(keypoints: Sequence[F32], width: int, height: int) -> tuple[list[Meta], list[str]]:
    """(4) ``[133,3]`` pixel keypoints to metas normalised by ``width x height`` (the first image's
    size; float32 divisions), the 20-point body as float32 means of two rows, hands and face sliced.
    A body with every point left of or above the image is replaced by the previous image's body
    (``reused``); on the first image the original crashes (Q8): that body is kept and a warning
    returned."""
    metas: list[Meta] = []
    warnings: list[str] = []
    fw, fh = np.float32(width), np.float32(height)
    last: F32 | None = None
    for i, points in enumerate(keypoints):
        kp = np.array(points, dtype=np.float32, copy=True)
        kp[:, 0] /= fw
        kp[:, 1] /= fh
        body = (kp[_BODY_A] + kp[_BODY_B]) / np.float32(2)
        reused = False
        if body[:, :2].min(axis=1).max() < 0:
            if last is None:
                warnings.append(
                    f"image {i}: every body point lies left of or above the image and there is no previous "
                    "image to take the body from (the original crashes here); its own body was kept"
                )
            else:
                body, reused = last.copy(), True
        last = body
        metas.append(
            Meta(
                width=int(width),
                height=int(height),
                body=body,
                left_hand=kp[LEFT_HAND].copy(),
                right_hand=kp[RIGHT_HAND].copy(),
                face=kp[FACE].copy(),
                reused=reused,
            )
        )
    return metas, warnings


def to_pixels(meta: Meta) -> DrawPose:
    """(4 end, ``AAPoseMeta.from_humanapi_meta``) The meta in pixels for drawing (6): body and hand
    ``(x, y)`` times ``(W, H)`` in float64, scores as float64 copies of the float32 scores; hands in
    drawing order (the meta's left hand, then its right hand)."""
    wh = np.array([meta.width, meta.height], dtype=np.float64)

    def split(rows: F32) -> tuple[F64, F64]:
        return rows[:, :2].astype(np.float64) * wh, rows[:, 2].astype(np.float64)

    body, body_scores = split(meta.body)
    return DrawPose(
        width=meta.width,
        height=meta.height,
        body=body,
        body_scores=body_scores,
        hands=(split(meta.left_hand), split(meta.right_hand)),
    )

"""DWPose as UniAnimate-DiT's ``run_align_pose.py`` runs it, bit for bit: ``../shared/design/POSE.md``
sections 1 (YOLOX person detector: letterbox, decoding, NMS, the whole-image fallback), 2 (top-down
whole-body pose: box to center/scale, the affine crop, normalisation, SimCC decoding, mapping back,
neck insertion and OpenPose order) and 3 (person 0 to the drawing dict).

The models are callables, so any backend can run them: ``detect(x: float32[1,3,640,640]) ->
float32[1,8400,85]`` and ``estimate(x: float32[N,3,H_in,W_in]) -> (simcc_x float32[N,133,2*W_in],
simcc_y float32[N,133,2*H_in])``; the pose model's input size is the caller's (read from its graph).

Deviations, none of which changes a value:
* the detector's NMS runs on class 0 only (POSE.md 1.4: the shortcut is bit-identical, tie order
  included, since only class-0 rows are kept);
* :func:`pose_of_image` estimates person 0 only: the original estimates every box, one model call
  each, then discards all but the first (section 3.1), so the discarded calls cannot change it;
* the pose model gets the float64-normalised crop as ``astype(float32)``, which is what
  onnxruntime does with the original's list input (POSE.md 2.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

Detect = Callable[[F32], F32]
"""``float32[1,3,640,640]`` (BGR, 0..255, letterboxed) -> ``float32[1,8400,85]``."""
Estimate = Callable[[F32], Sequence[npt.NDArray[np.float32]]]
"""``float32[N,3,H_in,W_in]`` -> ``(simcc_x float32[N,133,2*W_in], simcc_y float32[N,133,2*H_in])``."""

DETECTOR_SIZE = 640  # hard-coded in the original (POSE.md 1.1), not read from the model
DETECTOR_STRIDES = (8, 16, 32)
DETECTOR_ANCHORS = sum((DETECTOR_SIZE // s) ** 2 for s in DETECTOR_STRIDES)  # 8400
LETTERBOX_VALUE = 114
SCORE_THRESHOLD = np.float32(0.1)  # compared on float32 scores (POSE.md 1.4)
NMS_THRESHOLD = np.float32(0.45)  # compared on float32 IoUs
PERSON_THRESHOLD = 0.3  # compared on the float64 detections
BOX_PADDING = 1.25
POSE_MEAN = np.array([123.675, 116.28, 103.53])  # per channel index of the BGR crop (POSE.md 2.4)
POSE_STD = np.array([58.395, 57.12, 57.375])
SIMCC_SPLIT_RATIO = 2.0
WHOLEBODY_POINTS = 133
DWPOSE_INPUT_HW = (384, 288)  # dw-ll_ucoco_384.onnx's (H_in, W_in); callers pass the graph's own
VISIBLE = 0.3

# OpenPose order of the first 18 rows after the neck is inserted at row 17 (POSE.md 2.7)
OPENPOSE_ROWS = (0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# the 20-point body (18 OpenPose points, left toe, right toe), as warnings name them
OPENPOSE_NAMES = (
    "nose",
    "neck",
    "R shoulder",
    "R elbow",
    "R wrist",
    "L shoulder",
    "L elbow",
    "L wrist",
    "R hip",
    "R knee",
    "R ankle",
    "L hip",
    "L knee",
    "L ankle",
    "R eye",
    "L eye",
    "R ear",
    "L ear",
    "L toe",
    "R toe",
)


@dataclass
class Pose:
    """The original's drawing dict for one image (POSE.md 3.8): coordinates normalised by the
    image's width and height, ``-1`` where invisible, all float64."""

    candidate: F64  # [20,2] body: OpenPose 0..17, 18 left toe, 19 right toe
    subset: F64  # [20]: j where point j is visible, else -1 (the original's [1,20], flattened)
    hands: F64  # [2,21,2]: left hand, then right hand
    faces: F64  # [1,68,2]

    def copy(self) -> Pose:
        return Pose(self.candidate.copy(), self.subset.copy(), self.hands.copy(), self.faces.copy())

    def to_dict(self) -> dict[str, object]:
        """The original's nested dict (``subset`` as ``[1,20]``), as plain lists."""
        return {
            "bodies": {"candidate": self.candidate.tolist(), "subset": [self.subset.tolist()]},
            "hands": self.hands.tolist(),
            "faces": self.faces.tolist(),
        }


@dataclass
class PoseResult:
    """One image through sections 1-3: the detector's person boxes, person 0's whole-body
    keypoints in image pixels and their scores, and the drawing dict."""

    boxes: F64  # [K,4] x1,y1,x2,y2 of every person the detector kept (K may be 0)
    box: F64  # [4] the box person 0 was estimated in (boxes[0], or [0,0,w,h] when K == 0)
    keypoints: F64  # [133,2] COCO-WholeBody order, image pixels
    scores: F32  # [133]
    pose: Pose


# --- section 1: the person detector ---------------------------------------------------------------


def letterbox(image: U8, size: int = DETECTOR_SIZE) -> tuple[F32, float]:
    """POSE.md 1.2: the BGR image resized by ``r = min(size/h, size/w)`` (INTER_LINEAR both ways)
    into the top-left corner of a ``size x size`` canvas of 114, as float32 ``[1,3,size,size]``
    (BGR, 0..255); returns it and ``r``."""
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(w * r), int(h * r)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    canvas = np.full((size, size, 3), LETTERBOX_VALUE, dtype=np.uint8)
    canvas[:nh, :nw] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32)[None], r


def _grids(size: int = DETECTOR_SIZE) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Anchor cells ``(gx, gy)`` [A,2] and strides [A,1], stride-major then row-major (POSE.md 1.3)."""
    grids, strides = [], []
    for s in DETECTOR_STRIDES:
        n = size // s
        xv, yv = np.meshgrid(np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s, dtype=np.int64))
    return np.concatenate(grids), np.concatenate(strides)


def nms(boxes: F32, scores: F32, threshold: np.float32 = NMS_THRESHOLD) -> list[int]:
    """POSE.md 1.4: greedy NMS in float32 with the legacy +1 convention; indices kept, best first
    (``argsort`` reversed: exact ties in that unstable sort's order)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + np.float32(1)) * (y2 - y1 + np.float32(1))
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(x1[i], x1[rest])
        yy1 = np.maximum(y1[i], y1[rest])
        xx2 = np.minimum(x2[i], x2[rest])
        yy2 = np.minimum(y2[i], y2[rest])
        iw = np.maximum(np.float32(0), xx2 - xx1 + np.float32(1))
        ih = np.maximum(np.float32(0), yy2 - yy1 + np.float32(1))
        inter = iw * ih
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[np.where(iou <= threshold)[0]]
    return keep


def decode_candidates(output: F32, r: float) -> tuple[F32, F32]:
    """POSE.md 1.3: the detector's ``[1,A,85]`` output to every anchor's corner box (float32
    ``[A,4]``, original-image pixels for a letterbox ratio ``r``, not clipped) and person score
    ``objectness * class-0 probability`` (float32 ``[A]``)."""
    out = np.array(output[0], dtype=np.float32)  # [A,85], a copy (the original edits it in place)
    grids, strides = _grids()
    if out.ndim != 2 or out.shape[0] != grids.shape[0] or out.shape[1] < 6:
        raise ValueError(f"detector output of shape {tuple(output.shape)}, expected [1,{grids.shape[0]},85]")
    # float32 + int64 -> float64 arithmetic, rounded to float32 once when stored
    out[:, :2] = (out[:, :2] + grids) * strides
    out[:, 2:4] = np.exp(out[:, 2:4]) * strides  # exp in float32, the product in float64 (exact)
    score = out[:, 4] * out[:, 5]
    half = np.float32(2)
    boxes = np.empty((out.shape[0], 4), dtype=np.float32)
    boxes[:, 0] = out[:, 0] - out[:, 2] / half
    boxes[:, 1] = out[:, 1] - out[:, 3] / half
    boxes[:, 2] = out[:, 0] + out[:, 2] / half
    boxes[:, 3] = out[:, 1] + out[:, 3] / half
    boxes /= np.float32(r)
    return boxes, score


def person_rows(boxes: F32, scores: F32) -> F64:
    """POSE.md 1.4 for class 0, before the final filter: anchors with score > f32(0.1), greedy NMS
    at IoU f32(0.45), rows ``[x1,y1,x2,y2,score]`` as float64 in keep order (``[0,5]`` if none)."""
    mask = scores > SCORE_THRESHOLD
    if not mask.any():
        return np.zeros((0, 5), dtype=np.float64)
    cand_boxes, cand_scores = boxes[mask], scores[mask]
    keep = nms(cand_boxes, cand_scores)
    return np.concatenate([cand_boxes[keep], cand_scores[keep, None]], 1).astype(np.float64)


def decode_detections(output: F32, r: float) -> F64:
    """POSE.md 1.3-1.4: the detector's ``[1,A,85]`` output to person boxes ``float64 [K,4]``
    (x1,y1,x2,y2 in original-image pixels, best first, not clipped; ``K`` may be 0), for a
    letterbox ratio ``r``: rows whose score is > 0.3 in float64. Class 0 only (the bit-identical
    shortcut of 1.4)."""
    rows = person_rows(*decode_candidates(output, r))
    return np.ascontiguousarray(rows[rows[:, 4] > PERSON_THRESHOLD, :4])


def detect_people(image: U8, detect: Detect) -> F64:
    """POSE.md section 1: person boxes ``float64 [K,4]`` of a BGR image, best first (K may be 0)."""
    x, r = letterbox(image)
    return decode_detections(np.asarray(detect(x), dtype=np.float32), r)


# --- section 2: the whole-body pose model ---------------------------------------------------------


def box_center_scale(box: npt.ArrayLike, input_hw: tuple[int, int]) -> tuple[F64, F64]:
    """POSE.md 2.2: a box's center and its padded (x1.25) scale fixed to the model's aspect ``W_in/H_in``."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    center = np.array([x1 + x2, y1 + y2]) * 0.5
    sw, sh = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = input_hw[1] / input_hw[0]
    scale = np.array([sw, sw / aspect]) if sw > sh * aspect else np.array([sh * aspect, sh])
    return center, scale


def _third_point(a: F32, b: F32) -> F32:
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)


def crop_matrix(center: F64, scale: F64, input_hw: tuple[int, int]) -> F64:
    """POSE.md 2.3: ``cv2.getAffineTransform`` on the float32 points (not the closed form)."""
    w_in = float(input_hw[1])
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, scale[0] * -0.5])
    src[2] = _third_point(src[0], src[1])
    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0] = [w_in * 0.5, input_hw[0] * 0.5]
    dst[1] = np.array([w_in * 0.5, input_hw[0] * 0.5]) + np.array([0.0, w_in * -0.5])
    dst[2] = _third_point(dst[0], dst[1])
    return np.asarray(cv2.getAffineTransform(src, dst), dtype=np.float64)


def crop_person(image: U8, center: F64, scale: F64, input_hw: tuple[int, int]) -> F32:
    """POSE.md 2.3-2.4: the affine crop (INTER_LINEAR, black border), normalised in float64 with
    the mean/std per BGR channel index, as float32 ``[3,H_in,W_in]``."""
    m = crop_matrix(center, scale, input_hw)
    crop = cv2.warpAffine(image, m, (int(input_hw[1]), int(input_hw[0])), flags=cv2.INTER_LINEAR)
    x = (crop - POSE_MEAN) / POSE_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32)


def decode_simcc(simcc_x: F32, simcc_y: F32) -> tuple[F32, F32]:
    """POSE.md 2.5: SimCC maxima to crop locations ``float32 [N,K,2]`` (bins / 2, ``-0.5`` where the
    score is <= 0) and scores ``float32 [N,K]`` (the smaller of the two maxima); first index on ties."""
    n, k = simcc_x.shape[:2]
    sx, sy = simcc_x.reshape(n * k, -1), simcc_y.reshape(n * k, -1)
    locs = np.stack((np.argmax(sx, axis=1), np.argmax(sy, axis=1)), axis=-1).astype(np.float32)
    vx, vy = np.amax(sx, axis=1), np.amax(sy, axis=1)
    vals = np.where(vx > vy, vy, vx)
    locs[vals <= 0.0] = -1
    locs = locs.reshape(n, k, 2) / np.float32(SIMCC_SPLIT_RATIO)
    return locs, vals.reshape(n, k)


def to_image(locs: F32, center: F64, scale: F64, input_hw: tuple[int, int]) -> F64:
    """POSE.md 2.5: crop locations back to image pixels, float64, in the original's operation order."""
    size = np.array([input_hw[1], input_hw[0]], dtype=np.int64)
    return np.asarray(locs / size * scale + center - scale / 2, dtype=np.float64)


def estimate_people(
    image: U8, boxes: F64, estimate: Estimate, input_hw: tuple[int, int], *, batch: bool = False
) -> tuple[F64, F32]:
    """POSE.md section 2 up to 2.5: every box's whole-body keypoints ``float64 [P,133,2]`` (image
    pixels) and scores ``float32 [P,133]``. One model call per box as the original does it, or all
    boxes in one call with ``batch`` (only where the backend has shown the keypoints stay identical)."""
    centers, scales, crops = [], [], []
    for box in boxes:
        c, s = box_center_scale(box, input_hw)
        centers.append(c)
        scales.append(s)
        crops.append(crop_person(image, c, s, input_hw))
    if batch:
        outs = [_run_pose(estimate, np.stack(crops), input_hw)]
    else:
        outs = [_run_pose(estimate, crop[None], input_hw) for crop in crops]
    simcc_x = np.concatenate([o[0] for o in outs])
    simcc_y = np.concatenate([o[1] for o in outs])
    locs, scores = decode_simcc(simcc_x, simcc_y)
    keypoints = np.stack([to_image(locs[i], centers[i], scales[i], input_hw) for i in range(len(crops))])
    return keypoints, scores


def _run_pose(estimate: Estimate, x: F32, input_hw: tuple[int, int]) -> tuple[F32, F32]:
    outputs = estimate(x)
    simcc_x, simcc_y = (np.asarray(o, dtype=np.float32) for o in outputs[:2])
    n = x.shape[0]
    want_x, want_y = (n, WHOLEBODY_POINTS, 2 * input_hw[1]), (n, WHOLEBODY_POINTS, 2 * input_hw[0])
    if simcc_x.shape != want_x or simcc_y.shape != want_y:
        raise ValueError(
            f"pose model outputs of shapes {simcc_x.shape} and {simcc_y.shape}, expected {want_x} and {want_y}"
        )
    return simcc_x, simcc_y


def openpose_order(keypoints: F64, scores: npt.NDArray[np.floating]) -> tuple[F64, F64]:
    """POSE.md 2.7: the neck (mean of the shoulders, score 1 if both shoulders > 0.3 else 0)
    inserted at row 17 and the first 18 rows put in OpenPose order: ``[P,134,2]``, ``[P,134]``."""
    info = np.concatenate((keypoints, scores[..., None]), axis=-1).astype(np.float64)
    neck = np.mean(info[:, [5, 6]], axis=1)
    neck[:, 2] = np.logical_and(info[:, 5, 2] > VISIBLE, info[:, 6, 2] > VISIBLE).astype(int)
    info = np.insert(info, 17, neck, axis=1)
    info[:, :18] = info[:, list(OPENPOSE_ROWS)]
    return np.ascontiguousarray(info[..., :2]), np.ascontiguousarray(info[..., 2])


# --- section 3: the drawing dict --------------------------------------------------------------------


def _has_minus_one(row: F64) -> bool:
    return bool((row == -1).any())


def pose_dict(keypoints: F64, scores: F64, image_hw: tuple[int, int]) -> Pose:
    """POSE.md section 3: person 0 of the OpenPose-ordered ``[P,134,2]`` keypoints and ``[P,134]``
    scores of an ``H x W`` image, as the drawing dict."""
    h, w = image_hw
    c = np.array(keypoints[0], dtype=np.float64)
    s = np.asarray(scores[0], dtype=np.float64)
    c[:, 0] /= float(w)
    c[:, 1] /= float(h)
    subset = np.array([j if s[j] > VISIBLE else -1 for j in range(18)], dtype=np.float64)
    left_toe = 18.0 if s[18] > VISIBLE and s[19] > VISIBLE else -1.0
    right_toe = 19.0 if s[21] > VISIBLE and s[22] > VISIBLE else -1.0
    subset = np.concatenate([subset, [left_toe, right_toe]])
    c[s < VISIBLE] = -1
    candidate = np.empty((20, 2), dtype=np.float64)
    candidate[:18] = c[:18]
    for row, (a, b) in ((18, (18, 19)), (19, (21, 22))):
        if not _has_minus_one(c[a]) and not _has_minus_one(c[b]):
            candidate[row] = (c[a] + c[b]) / 2
        else:
            candidate[row] = (-1.0, -1.0)
    hands = np.stack([c[92:113], c[113:134]])
    faces = c[24:92][None].copy()
    return Pose(candidate, subset, hands, faces)


def pose_of_image(
    image: U8,
    detect: Detect,
    estimate: Estimate,
    *,
    input_hw: tuple[int, int] = DWPOSE_INPUT_HW,
) -> PoseResult:
    """POSE.md sections 1-3 on one BGR image: detection, person 0's whole-body keypoints (in the
    first box, or the whole image ``[0,0,w,h]`` when there is none), the drawing dict.
    ``input_hw`` is the pose model's input ``(H_in, W_in)``, read from its graph by the caller."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 image [H,W,3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    boxes = detect_people(image, detect)
    box = boxes[0] if len(boxes) else np.array([0.0, 0.0, float(w), float(h)])
    keypoints, scores = estimate_people(image, box[None], estimate, input_hw)
    op_keypoints, op_scores = openpose_order(keypoints, scores)
    return PoseResult(boxes, box, keypoints[0], scores[0], pose_dict(op_keypoints, op_scores, (h, w)))

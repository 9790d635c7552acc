"""The numerical core of UniAnimate-DiT's pose step (``../shared/design/POSE.md`` sections 1-5) on
hand-made arrays: the detector's letterbox and decoding at its thresholds, the affine crop, SimCC
decoding, the OpenPose dict, the alignment (and its deliberate deviation), the drawing and the
JPEG file. No ONNX model: the models are plain callables here."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from zoo.families.unianimate_pose import align, draw, dwpose
from zoo.families.unianimate_pose.dwpose import Pose

F32 = np.float32


def _next_up(x: float) -> np.float32:
    return np.nextafter(F32(x), F32(1))


def _next_down(x: float) -> np.float32:
    return np.nextafter(F32(x), F32(0))


# --- section 1: letterbox ----------------------------------------------------------------------------


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_letterbox_downscales_into_the_top_left_corner_with_114():
    img = _image(1000, 1600)
    x, r = dwpose.letterbox(img)
    assert r == 0.4 and x.dtype == np.float32 and x.shape == (1, 3, 640, 640)
    expected = cv2.resize(img, (640, 400), interpolation=cv2.INTER_LINEAR)
    # channel order stays BGR, values 0..255 (no mean/std)
    np.testing.assert_array_equal(x[0, :, :400, :], expected.transpose(2, 0, 1).astype(np.float32))
    assert (x[0, :, 400:, :] == 114).all()
    # INTER_LINEAR, not INTER_AREA, for downscaling
    area = cv2.resize(img, (640, 400), interpolation=cv2.INTER_AREA)
    assert not np.array_equal(x[0, :, :400, :], area.transpose(2, 0, 1).astype(np.float32))


def test_letterbox_upscales_and_truncates_the_new_size():
    img = _image(101, 303)
    x, r = dwpose.letterbox(img)
    assert r == 640 / 303
    # 303 * r = 639.9999999999999: int() gives 639 columns, the 640th is padding
    nw, nh = 639, 213
    expected = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(x[0, :, :nh, :nw], expected.transpose(2, 0, 1).astype(np.float32))
    assert (x[0, :, :, nw:] == 114).all()
    assert (x[0, :, nh:, :] == 114).all()


# --- section 1: decoding and NMS ----------------------------------------------------------------------


def _anchor(stride: int, gx: int, gy: int) -> int:
    """The anchor index of grid cell (gx, gy) at a stride (stride-major, then row-major)."""
    base = {8: 0, 16: 6400, 32: 8000}[stride]
    return base + gy * (640 // stride) + gx


def _detector_output(rows: list[tuple[int, float, float, float, float, float]]) -> np.ndarray:
    """rows of (anchor, o0, o1, o2, o3, score): objectness 1, person probability = score."""
    out = np.zeros((1, 8400, 85), dtype=np.float32)
    for a, o0, o1, o2, o3, score in rows:
        out[0, a, :4] = (o0, o1, o2, o3)
        out[0, a, 4] = 1.0
        out[0, a, 5] = score
        out[0, a, 6] = 0.99  # another class: never a person
    return out


def test_decoding_grid_stride_and_letterbox_ratio():
    a = _anchor(16, 3, 5)
    out = _detector_output([(a, 0.25, -0.5, 0.0, 0.0, 0.9)])
    boxes, scores = dwpose.decode_candidates(out, 1.0)
    # cx = (0.25 + 3) * 16 = 52, cy = (-0.5 + 5) * 16 = 72, w = h = exp(0) * 16
    np.testing.assert_array_equal(boxes[a], [44, 64, 60, 80])
    assert scores[a] == F32(0.9) and boxes.dtype == np.float32
    # letterbox ratio 0.5: boxes back in original pixels (x2), no padding offset
    np.testing.assert_array_equal(dwpose.decode_detections(out, 0.5), [[88, 128, 120, 160]])
    # exp in float32 times the stride
    out = _detector_output([(a, 0.0, 0.0, 1.0, -1.0, 0.9)])
    boxes, _ = dwpose.decode_candidates(out, 1.0)
    bw, bh = np.exp(F32(1.0)) * F32(16), np.exp(F32(-1.0)) * F32(16)
    assert boxes[a, 2] - boxes[a, 0] == pytest.approx(float(bw), abs=1e-5)
    assert boxes[a, 3] - boxes[a, 1] == pytest.approx(float(bh), abs=1e-5)


def test_score_thresholds_use_float32_for_01_and_float64_for_03():
    rows = [
        (_anchor(32, 1, 1), 0, 0, 0, 0, F32(0.1)),  # f32(0.1) > 0.1 in double, not in float32: dropped
        (_anchor(32, 4, 1), 0, 0, 0, 0, _next_up(0.1)),  # kept by the 0.1 filter
        (_anchor(32, 7, 1), 0, 0, 0, 0, F32(0.3)),  # f32(0.3) > 0.3 in double: a person
        (_anchor(32, 10, 1), 0, 0, 0, 0, _next_down(0.3)),  # just below: not a person
    ]
    boxes, scores = dwpose.decode_candidates(_detector_output(rows), 1.0)
    kept = dwpose.person_rows(boxes, scores)
    assert sorted(kept[:, 4].tolist()) == sorted([float(_next_up(0.1)), float(F32(0.3)), float(_next_down(0.3))])
    people = dwpose.decode_detections(_detector_output(rows), 1.0)
    np.testing.assert_array_equal(people, [[7 * 32 - 16, 16, 7 * 32 + 16, 48]])  # cell (7,1): center (224,32)
    assert people.dtype == np.float64


def test_nms_iou_boundary_is_inclusive_and_uses_the_plus_one_convention():
    a = np.array([0, 0, 9, 9], dtype=np.float32)  # area (9+1)*(9+1) = 100
    scores = np.array([0.9, 0.8], dtype=np.float32)
    # iou = (3.5+1)*10 / 100 = 4.5/10 = f32(0.45) exactly: kept (<=)
    at = np.stack([a, np.array([0, 0, 9, 3.5], dtype=np.float32)])
    assert dwpose.nms(at, scores) == [0, 1]
    # the next float32 above (y2 + 1 = the float32 after 4.5): suppressed
    above = np.stack([a, np.array([0, 0, 9, np.nextafter(F32(4.5), F32(5)) - F32(1)], dtype=np.float32)])
    assert dwpose.nms(above, scores) == [0]
    # +1 convention: iou 0.46 with it (suppressed), 0.4 without it
    plus = np.stack([a, np.array([0, 0, 9, 3.6], dtype=np.float32)])
    assert dwpose.nms(plus, scores) == [0]
    # order is by descending score, whatever the input order
    assert dwpose.nms(np.stack([a, a + 100]), np.array([0.5, 0.7], dtype=np.float32)) == [1, 0]


def test_nms_tie_order_follows_numpys_argsort_reversed():
    # two boxes with exactly equal scores come out in the order of numpy's argsort, reversed (with
    # numpy's small-array sort here: index order, so the later anchor first; a SIMD sort on another
    # CPU may order ties otherwise, and the decoder must then follow it)
    a, b = _anchor(32, 2, 2), _anchor(32, 3, 2)
    order = np.argsort(np.array([0.8, 0.8], dtype=np.float32))[::-1]
    later_first = int(order[0]) == 1
    out = _detector_output([(a, 0.5, 0, 0, 0, 0.8), (b, 0.0, 0, 0, 0, 0.8)])  # x1 64 and 80: iou 0.35
    people = dwpose.decode_detections(out, 1.0)
    np.testing.assert_array_equal(people[:, 0], [80.0, 64.0] if later_first else [64.0, 80.0])
    out = _detector_output([(a, 0.75, 0, 0, 0, 0.8), (b, 0.0, 0, 0, 0, 0.8)])  # x1 72 and 80: iou 0.61
    people = dwpose.decode_detections(out, 1.0)
    np.testing.assert_array_equal(people[:, 0], [80.0] if later_first else [72.0])  # the first suppresses the other


def test_no_detection_gives_an_empty_array():
    out = _detector_output([(_anchor(8, 1, 1), 0, 0, 0, 0, 0.05)])
    people = dwpose.decode_detections(out, 1.0)
    assert people.shape == (0, 4)


# --- section 2: the crop ---------------------------------------------------------------------------------

HW = (384, 288)


def test_box_center_scale_fixes_the_aspect_both_ways():
    c, s = dwpose.box_center_scale([10.0, 20.0, 110.0, 60.0], HW)  # wide: 125 x 50
    np.testing.assert_array_equal(c, [60.0, 40.0])
    np.testing.assert_array_equal(s, [125.0, 125.0 / 0.75])
    c, s = dwpose.box_center_scale([0.0, 0.0, 40.0, 200.0], HW)  # tall: 50 x 250
    np.testing.assert_array_equal(s, [250.0 * 0.75, 250.0])
    # the pose model's own input size, not a hard-coded one
    _, s = dwpose.box_center_scale([0.0, 0.0, 40.0, 200.0], (256, 192))
    np.testing.assert_array_equal(s, [250.0 * 0.75, 250.0])
    _, s = dwpose.box_center_scale([0.0, 0.0, 100.0, 100.0], (100, 200))  # aspect 2
    np.testing.assert_array_equal(s, [250.0, 125.0])


def test_crop_matrix_is_getaffinetransform_on_float32_points_not_the_closed_form():
    center, scale = np.array([123.456, 234.567]), np.array([181.3, 181.3 / 0.75])
    m = dwpose.crop_matrix(center, scale, HW)
    # independent transcription of 2.3
    p0 = center.astype(np.float32)
    p1 = (center + np.array([0.0, -0.5 * scale[0]])).astype(np.float32)
    d = p0 - p1
    p2 = p1 + np.array([-d[1], d[0]], dtype=np.float32)
    q = np.array([[144, 192], [144, 48], [0, 48]], dtype=np.float32)
    np.testing.assert_array_equal(m, cv2.getAffineTransform(np.stack([p0, p1, p2]), q))
    k = 288 / scale[0]
    closed = np.array([[k, 0, 144 - k * center[0]], [0, k, 192 - k * center[1]]])
    assert not np.array_equal(m, closed)
    np.testing.assert_allclose(m, closed, atol=0.03)


def test_crop_is_an_identity_warp_with_black_border_and_bgr_normalisation():
    img = _image(300, 200, seed=1)
    # center (144,192), scale (288,384): the matrix is the identity
    x = dwpose.crop_person(img, np.array([144.0, 192.0]), np.array([288.0, 384.0]), HW)
    assert x.shape == (3, 384, 288) and x.dtype == np.float32
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    expected = ((img - mean) / std).astype(np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(x[:, :300, :200], expected)
    black = ((0 - mean) / std).astype(np.float32)
    for ch in range(3):  # channel index 0 (B) gets mean 123.675: RGB statistics on BGR, as the original
        assert (x[ch, 300:, :] == black[ch]).all() and (x[ch, :, 200:] == black[ch]).all()


def test_crop_of_a_scaled_box_matches_warpaffine():
    img = _image(480, 640, seed=2)
    c, s = dwpose.box_center_scale([100.3, 50.7, 300.1, 420.9], HW)
    x = dwpose.crop_person(img, c, s, HW)
    m = dwpose.crop_matrix(c, s, HW)
    crop = cv2.warpAffine(img, m, (288, 384), flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(
        x, ((crop - dwpose.POSE_MEAN) / dwpose.POSE_STD).astype(np.float32).transpose(2, 0, 1)
    )
    # the closed-form matrix is not getAffineTransform's on the float32 points, and over a few boxes
    # it crops differently (POSE.md 2.3; how often depends on the OpenCV build: 4.11 crops 26 of
    # 200 such boxes differently, the spec measured 275 of 300 with 5.0)
    rng = np.random.default_rng(3)
    differs = 0
    for _ in range(200):
        x1, y1 = rng.uniform(0, 300), rng.uniform(0, 200)
        c, s = dwpose.box_center_scale([x1, y1, x1 + rng.uniform(40, 300), y1 + rng.uniform(40, 260)], HW)
        m = dwpose.crop_matrix(c, s, HW)
        k = 288 / s[0]
        closed = np.array([[k, 0, 144 - k * c[0]], [0, k, 192 - k * c[1]]])
        assert not np.array_equal(m, closed)
        crop = cv2.warpAffine(img, m, (288, 384), flags=cv2.INTER_LINEAR)
        differs += not np.array_equal(crop, cv2.warpAffine(img, closed, (288, 384), flags=cv2.INTER_LINEAR))
    assert differs > 0


# --- section 2: SimCC ------------------------------------------------------------------------------------


def test_simcc_first_argmax_min_score_and_nonpositive_maxima():
    sx = np.zeros((1, 4, 576), dtype=np.float32)
    sy = np.zeros((1, 4, 768), dtype=np.float32)
    sx[0, 0, [5, 9]] = 0.8  # tie: first index
    sy[0, 0, 100] = 0.6
    sx[0, 1, :] = -1.0  # negative maxima everywhere
    sx[0, 1, 7] = -0.5
    sy[0, 1, 3] = 0.9
    # keypoint 2: all zeros -> score 0 -> invisible bin
    sx[0, 3, 11] = 0.2
    sy[0, 3, 12] = 0.7
    locs, scores = dwpose.decode_simcc(sx, sy)
    np.testing.assert_array_equal(locs[0, 0], [2.5, 50.0])
    assert scores[0, 0] == F32(0.6)
    np.testing.assert_array_equal(locs[0, 1], [-0.5, -0.5])
    assert scores[0, 1] == F32(-0.5)
    np.testing.assert_array_equal(locs[0, 2], [-0.5, -0.5])
    assert scores[0, 2] == 0
    np.testing.assert_array_equal(locs[0, 3], [5.5, 6.0])
    assert scores[0, 3] == F32(0.2) and scores.dtype == np.float32


def test_simcc_locations_map_back_to_the_image():
    locs = np.array([[72.0, 96.0], [-0.5, -0.5]], dtype=np.float32)
    kp = dwpose.to_image(locs, np.array([100.0, 50.0]), np.array([576.0, 768.0]), HW)
    # 72/288*576 + 100 - 288 = -44;  96/384*768 + 50 - 384 = -142
    np.testing.assert_array_equal(kp[0], [-44.0, -142.0])
    np.testing.assert_allclose(kp[1], [-0.5 / 288 * 576 + 100 - 288, -0.5 / 384 * 768 + 50 - 384])
    assert kp.dtype == np.float64


# --- sections 2.7 and 3 -----------------------------------------------------------------------------


def _wholebody(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    kp = rng.uniform(0, 400, (1, 133, 2))
    sc = rng.uniform(0.5, 1.0, (1, 133)).astype(np.float32)
    return kp, sc


def test_neck_is_the_shoulders_mean_and_needs_both_above_03():
    kp, sc = _wholebody()
    sc[0, 5], sc[0, 6] = F32(0.3), F32(0.9)  # f32(0.3) > 0.3 in double: visible
    op_kp, op_sc = dwpose.openpose_order(kp, sc)
    assert op_kp.shape == (1, 134, 2) and op_sc.shape == (1, 134)
    np.testing.assert_array_equal(op_kp[0, 1], (kp[0, 5] + kp[0, 6]) / 2)
    assert op_sc[0, 1] == 1.0
    sc[0, 6] = _next_down(0.3)
    op_kp, op_sc = dwpose.openpose_order(kp, sc)
    assert op_sc[0, 1] == 0.0
    np.testing.assert_array_equal(op_kp[0, 1], (kp[0, 5] + kp[0, 6]) / 2)  # position kept regardless
    # OpenPose order: op j <- wb row
    for op, wb in {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 8: 12, 11: 11, 13: 15, 14: 2, 15: 1, 16: 4, 17: 3}.items():
        np.testing.assert_array_equal(op_kp[0, op], kp[0, wb])
        assert op_sc[0, op] == float(sc[0, wb])
    # feet, face and hands follow the neck row
    np.testing.assert_array_equal(op_kp[0, 18:], kp[0, 17:])


def test_pose_dict_person_0_normalisation_visibility_and_toes():
    kp, sc = _wholebody()
    other = kp + 1000
    sc[0, 16] = 0.2  # R ankle (wb 16 -> op 10) invisible
    sc[0, 18] = 0.1  # L small toe invisible: no left toe; L heel (wb 19) invisible is ignored
    sc[0, 19] = 0.0
    sc[0, 22] = 0.0  # R heel: unused
    op_kp, op_sc = dwpose.openpose_order(np.concatenate([kp, other]), np.concatenate([sc, sc]))
    pose = dwpose.pose_dict(op_kp, op_sc, (480, 640))
    c = op_kp[0].copy()
    c[:, 0] /= 640.0
    c[:, 1] /= 480.0
    np.testing.assert_array_equal(pose.candidate[:18][pose.subset[:18] != -1], c[:18][pose.subset[:18] != -1])
    assert pose.subset[10] == -1 and (pose.candidate[10] == -1).all()
    assert pose.subset[18] == -1 and (pose.candidate[18] == -1).all()
    assert pose.subset[19] == 19
    np.testing.assert_array_equal(pose.candidate[19], (c[21] + c[22]) / 2)  # big + small toe, not the heel
    np.testing.assert_array_equal(pose.subset[:18], [j if j != 10 else -1 for j in range(18)])
    np.testing.assert_array_equal(pose.hands[0], c[92:113])  # left hand first
    np.testing.assert_array_equal(pose.hands[1], c[113:134])
    assert pose.faces.shape == (1, 68, 2)
    assert (pose.candidate < 1.01).all()  # person 1 (+1000 px) is not used


class _Recorder:
    """A pose model whose SimCC peaks sit at the crop's center (bins W_in, H_in), score 0.9."""

    def __init__(self, hw: tuple[int, int] = HW) -> None:
        self.hw = hw
        self.inputs: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.inputs.append(x)
        h, w = self.hw
        sx = np.zeros((x.shape[0], 133, 2 * w), dtype=np.float32)
        sy = np.zeros((x.shape[0], 133, 2 * h), dtype=np.float32)
        sx[:, :, w] = 0.9
        sy[:, :, h] = 0.9
        return sx, sy


def test_pose_of_image_uses_person_0_and_maps_the_crop_center_to_the_box_center():
    img = _image(640, 640, seed=4)
    # person 0.9 (small box at stride 16) and 0.8 (a larger box elsewhere)
    out = _detector_output([(_anchor(16, 3, 5), 0.25, -0.5, 0, 0, 0.9), (_anchor(32, 15, 15), 0, 0, 0, 0, 0.8)])
    est = _Recorder()
    res = dwpose.pose_of_image(img, lambda x: out, est)
    assert res.boxes.shape == (2, 4)
    np.testing.assert_array_equal(res.box, [44, 64, 60, 80])
    assert len(est.inputs) == 1 and est.inputs[0].shape == (1, 3, 384, 288)
    c, s = dwpose.box_center_scale(res.box, HW)
    np.testing.assert_array_equal(est.inputs[0][0], dwpose.crop_person(img, c, s, HW))
    np.testing.assert_allclose(res.keypoints[0], [52.0, 72.0])  # the box center
    np.testing.assert_allclose(res.pose.candidate[0], [52 / 640, 72 / 640])


def test_pose_of_image_falls_back_to_the_whole_image_and_reads_the_input_size():
    img = _image(300, 200, seed=5)
    out = _detector_output([])
    est = _Recorder((256, 192))
    res = dwpose.pose_of_image(img, lambda x: out, est, input_hw=(256, 192))
    assert res.boxes.shape == (0, 4)
    np.testing.assert_array_equal(res.box, [0, 0, 200, 300])  # w, h; not w-1, h-1
    assert est.inputs[0].shape == (1, 3, 256, 192)
    np.testing.assert_allclose(res.keypoints[0], [100.0, 150.0])


def test_estimate_people_one_call_per_box_or_one_batch():
    img = _image(200, 300, seed=6)
    boxes = np.array([[10.0, 10.0, 100.0, 150.0], [120.0, 20.0, 280.0, 190.0]])
    one, many = _Recorder(), _Recorder()
    kp1, sc1 = dwpose.estimate_people(img, boxes, one, HW)
    kp2, sc2 = dwpose.estimate_people(img, boxes, many, HW, batch=True)
    assert [x.shape[0] for x in one.inputs] == [1, 1] and [x.shape[0] for x in many.inputs] == [2]
    np.testing.assert_array_equal(kp1, kp2)
    np.testing.assert_array_equal(sc1, sc2)
    assert kp1.shape == (2, 133, 2) and sc1.shape == (2, 133)


# --- section 4: alignment --------------------------------------------------------------------------------

# a 20-point skeleton on a 1/64 grid (exact in binary), normalised coordinates
SKELETON = (
    np.array(
        [
            [32, 8],  # 0 nose
            [32, 16],  # 1 neck (mid shoulders)
            [24, 16],  # 2 R shoulder
            [20, 24],  # 3 R elbow
            [18, 32],  # 4 R wrist
            [40, 16],  # 5 L shoulder
            [44, 24],  # 6 L elbow
            [46, 32],  # 7 L wrist
            [26, 36],  # 8 R hip
            [26, 46],  # 9 R knee
            [26, 56],  # 10 R ankle
            [38, 36],  # 11 L hip
            [38, 46],  # 12 L knee
            [38, 56],  # 13 L ankle
            [30, 6],  # 14 R eye
            [34, 6],  # 15 L eye
            [28, 7],  # 16 R ear
            [36, 7],  # 17 L ear
            [40, 58],  # 18 L toe
            [24, 58],  # 19 R toe
        ],
        dtype=np.float64,
    )
    / 64
)


def _pose(candidate: np.ndarray, missing: tuple[int, ...] = ()) -> Pose:
    cand = candidate.copy()
    subset = np.arange(20, dtype=np.float64)
    for j in missing:
        cand[j] = -1
        subset[j] = -1
    hands = np.stack([np.tile(cand[7], (21, 1)), np.tile(cand[4], (21, 1))]) + np.linspace(0, 0.02, 21)[None, :, None]
    faces = np.tile(cand[0], (1, 68, 1))
    return Pose(cand, subset, hands, faces)


def _transcribe(ref: Pose, frames: list[Pose], forced: dict[int, float] | None = None) -> list[Pose]:
    """POSE.md 4.1-4.4 written out plainly (python floats, (child - parent) * (r - 1) everywhere);
    ``forced``: bone index -> ratio used instead of the measured one."""
    bones = [
        (1, 0, [0, 14, 15, 16, 17], None),
        (1, 2, [2, 3, 4], 1),
        (1, 5, [5, 6, 7], 0),
        (2, 3, [3, 4], 1),
        (3, 4, [4], 1),
        (5, 6, [6, 7], 0),
        (6, 7, [7], 0),
        (0, 14, [14, 16], None),
        (0, 15, [15, 17], None),
        (14, 16, [16], None),
        (15, 17, [17], None),
        (8, 9, [9, 10, 19], None),
        (9, 10, [10, 19], None),
        (11, 12, [12, 13, 18], None),
        (12, 13, [13, 18], None),
    ]
    R = [[float(v) for v in row] for row in ref.candidate]
    F = [[float(v) for v in row] for row in frames[0].candidate]
    xr = (R[5][0] - R[2][0]) / (F[5][0] - F[2][0])
    yr = (0.5 * (R[8][1] + R[11][1]) - 0.5 * (R[2][1] + R[5][1])) / (
        0.5 * (F[8][1] + F[11][1]) - 0.5 * (F[2][1] + F[5][1])
    )

    def length(P: list[list[float]], a: int, b: int) -> float:
        return ((P[b][0] - P[a][0]) ** 2 + (P[b][1] - P[a][1]) ** 2) ** 0.5

    ratios: list[float] = []
    offset = (0.0, 0.0)
    out = []
    for i, frame in enumerate(frames):
        body = [[float(v) for v in row] for row in frame.candidate]
        hands = [[[float(v) for v in p] for p in hand] for hand in frame.hands]
        faces = [[float(v) for v in p] for p in frame.faces[0]]
        for pts in [body, hands[0], hands[1], faces]:
            for p in pts:
                p[0] *= xr
                p[1] *= yr
        for k, (parent, child, moved, hand) in enumerate(bones):
            if i == 0:
                if forced and k in forced:
                    ratios.append(forced[k])
                else:
                    ratios.append(length(R, parent, child) / length(body, parent, child))
            dx = (body[child][0] - body[parent][0]) * (ratios[k] - 1)
            dy = (body[child][1] - body[parent][1]) * (ratios[k] - 1)
            for j in moved:
                body[j][0] += dx
                body[j][1] += dy
            if hand is not None:
                for p in hands[hand]:
                    p[0] += dx
                    p[1] += dy
        if i == 0:
            offset = (R[1][0] - body[1][0], R[1][1] - body[1][1])
        for pts in [body, hands[0], hands[1], faces]:
            for p in pts:
                p[0] += offset[0]
                p[1] += offset[1]
        out.append(Pose(np.array(body), frame.subset.copy(), np.array(hands), np.array([faces])))
    return out


def _assert_same(got: list[Pose], want: list[Pose]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.candidate, w.candidate)
        np.testing.assert_array_equal(g.hands, w.hands)
        np.testing.assert_array_equal(g.faces, w.faces)
        np.testing.assert_array_equal(g.subset, w.subset)


def test_alignment_of_a_half_size_frame_is_the_reference():
    ref = _pose(SKELETON)
    half = _pose(SKELETON * 0.5)
    shifted = _pose(SKELETON * 0.5 + [1 / 16, 0])
    (a0, a1), warnings = align.align_poses(ref, [half, shifted])
    assert warnings == []
    # x/y ratios 2, every bone ratio exactly 1, offset 0: frame 0 becomes the reference
    np.testing.assert_array_equal(a0.candidate, ref.candidate)
    np.testing.assert_array_equal(a1.candidate, ref.candidate + [1 / 8, 0])
    np.testing.assert_array_equal(a0.hands, half.hands * 2)  # scaled, not moved
    factors, _ = align.alignment_factors(ref, half)
    assert (factors.x_ratio, factors.y_ratio) == (2.0, 2.0) and factors.ratios == [1.0] * 15
    np.testing.assert_array_equal(half.candidate, SKELETON * 0.5)  # inputs unchanged


def test_alignment_retargets_a_longer_forearm_and_moves_the_hand():
    ref_c = SKELETON.copy()
    ref_c[4] = ref_c[3] + 2 * (SKELETON[4] - SKELETON[3])  # reference forearm twice as long
    ref = _pose(ref_c)
    frame = _pose(SKELETON)
    (a0,), warnings = align.align_poses(ref, [frame])
    assert warnings == []
    np.testing.assert_array_equal(a0.candidate, ref_c)
    np.testing.assert_array_equal(a0.hands[1], frame.hands[1] + (ref_c[4] - SKELETON[4]))  # right hand follows
    np.testing.assert_array_equal(a0.hands[0], frame.hands[0])  # left hand stays


def test_alignment_matches_a_plain_transcription_bit_for_bit():
    rng = np.random.default_rng(7)
    ref = _pose(SKELETON * [1.1, 0.9] + rng.normal(0, 0.02, (20, 2)))
    frames = [_pose(SKELETON * [0.8, 1.2] + [0.1, -0.05] + rng.normal(0, 0.02, (20, 2))) for _ in range(4)]
    frames[2] = _pose(frames[2].candidate, missing=(16, 9))  # later frames: missing points move, undrawn
    got, warnings = align.align_poses(ref, frames)
    assert warnings == []
    _assert_same(got, _transcribe(ref, frames))
    # bone ratios measured on frame 0 after the global scale, not before
    factors, _ = align.alignment_factors(ref, frames[0])
    f = frames[0].candidate
    unscaled = np.hypot(*(ref.candidate[0] - ref.candidate[1])) / np.hypot(*(f[0] - f[1]))
    assert factors.ratios[0] != pytest.approx(unscaled, rel=1e-3)


def test_mirrored_reference_keeps_its_signed_x_ratio():
    ref_c = SKELETON.copy()
    ref_c[:, 0] = 1 - ref_c[:, 0]  # facing the other way: R shoulder right of L shoulder
    ref = _pose(ref_c)
    frame = _pose(SKELETON)
    (a0,), warnings = align.align_poses(ref, [frame])
    factors, _ = align.alignment_factors(ref, frame)
    assert factors.x_ratio == -1.0 and warnings == []
    np.testing.assert_array_equal(a0.candidate, ref_c)  # every frame mirrored
    _assert_same([a0], _transcribe(ref, [frame]))


def test_missing_ear_in_frame_0_keeps_that_bone_and_warns():
    rng = np.random.default_rng(8)
    ref = _pose(SKELETON + rng.normal(0, 0.01, (20, 2)))
    frame0 = _pose(SKELETON * 0.9 + rng.normal(0, 0.01, (20, 2)), missing=(16,))
    frame1 = _pose(SKELETON * 0.9 + rng.normal(0, 0.01, (20, 2)))
    got, warnings = align.align_poses(ref, [frame0, frame1])
    assert len(warnings) == 1
    w = warnings[0]
    assert w.step == "head16" and w.missing == (("frame 0", "R ear (op 16)"),)
    assert str(w) == "R ear (op 16) is missing in frame 0: bone head16 kept at its length (ratio 1)"
    factors, _ = align.alignment_factors(ref, frame0)
    assert factors.ratios[9] == 1.0
    for pose in got:
        assert np.isfinite(pose.candidate).all() and np.isfinite(pose.hands).all()
    # every other bone is the original's arithmetic: the transcription with head16's ratio forced to 1
    want = _transcribe(ref, [frame0, frame1], forced={9: 1.0})
    _assert_same(got, want)
    # and the reference's own missing ear is named as such
    ref_missing = _pose(ref.candidate, missing=(17,))
    _, warnings = align.align_poses(ref_missing, [frame1])
    assert [str(w) for w in warnings] == [
        "L ear (op 17) is missing in the reference: bone head17 kept at its length (ratio 1)"
    ]


def test_zero_shoulder_extent_and_zero_length_bone_give_ratio_1_not_nan():
    ref = _pose(SKELETON)
    c = SKELETON.copy()
    c[2, 0] = c[5, 0] = 32 / 64  # shoulders one above the other: zero x-extent
    c[5, 1] = 18 / 64
    c[1] = (c[2] + c[5]) / 2
    c[4] = c[3]  # R wrist on the R elbow: zero-length forearm
    (a0,), warnings = align.align_poses(ref, [_pose(c)])
    assert np.isfinite(a0.candidate).all() and np.isfinite(a0.hands).all() and np.isfinite(a0.faces).all()
    texts = [str(w) for w in warnings]
    assert texts[0] == (
        "R shoulder (op 2) and L shoulder (op 5) have the same x in frame 0 (zero shoulder x-extent): x scale 1 (ratio 1)"
    )
    assert any(w.step == "arm4" and "zero length in frame 0" in str(w) and "ratio 1" in str(w) for w in warnings)
    factors, _ = align.alignment_factors(ref, _pose(c))
    assert factors.x_ratio == 1.0 and factors.ratios[4] == 1.0
    canvas = draw.draw_pose(a0)  # the original crashes here on int(nan)
    assert canvas.any()


def test_zero_torso_height_and_missing_shoulder_give_scale_1_and_no_translation():
    ref = _pose(SKELETON)
    c = SKELETON.copy()
    c[8, 1] = c[11, 1] = c[2, 1]  # hips at shoulder height
    (a0,), warnings = align.align_poses(ref, [_pose(c)])
    assert [w.step for w in warnings] == ["y scale"] and "zero torso height" in str(warnings[0])
    assert np.isfinite(a0.candidate).all()
    (a0,), warnings = align.align_poses(ref, [_pose(SKELETON, missing=(5, 1))])
    steps = {w.step: str(w) for w in warnings}
    assert steps["x scale"] == "L shoulder (op 5) is missing in frame 0: x scale 1 (ratio 1)"
    assert steps["offset"] == "neck (op 1) is missing in frame 0: no translation (offset 0)"
    assert "shoulder5" in steps and "neck" in steps
    assert np.isfinite(a0.candidate).all()


# --- section 5: drawing -----------------------------------------------------------------------------------


def _empty_pose() -> Pose:
    return Pose(np.full((20, 2), -1.0), np.full(20, -1.0), np.full((2, 21, 2), -1.0), np.full((1, 68, 2), -1.0))


def _original_body(candidate: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """The original's draw_body_and_foot: full colours, then the canvas-wide x0.6, then joints."""
    canvas = np.zeros((768, 512, 3), dtype=np.uint8)
    for i, (a, b) in enumerate(draw.LIMBS):
        index = subset[np.array([a, b]) - 1]
        if -1 in index:
            continue
        Y = candidate[index.astype(int), 0] * 512.0
        X = candidate[index.astype(int), 1] * 768.0
        length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
        poly = cv2.ellipse2Poly((int(np.mean(Y)), int(np.mean(X))), (int(length / 2), 4), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, draw.COLOURS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for j in range(20):
        if subset[j] == -1:
            continue
        x, y = candidate[j]
        cv2.circle(canvas, (int(x * 512), int(y * 768)), 4, draw.COLOURS[j], thickness=-1)
    return canvas


def test_a_single_limb_and_its_joints_at_known_pixels():
    pose = _empty_pose()
    pose.candidate[1] = (0.25, 0.25)  # neck -> pixel (128, 192)
    pose.candidate[2] = (0.5, 0.25)  # R shoulder -> pixel (256, 192)
    pose.subset[[1, 2]] = [1, 2]
    canvas = draw.draw_pose(pose)
    assert canvas.shape == (768, 512, 3) and canvas.dtype == np.uint8
    assert tuple(canvas[192, 192]) == (153, 0, 0)  # limb 0, dimmed 255*0.6
    assert tuple(canvas[192 + 4, 192]) == (153, 0, 0) and not canvas[192 + 6, 192].any()  # half-width 4
    assert tuple(canvas[192, 128]) == (255, 85, 0)  # joint 1, full colour, over the limb
    assert tuple(canvas[192, 256]) == (255, 170, 0)  # joint 2
    assert not canvas[100].any()
    np.testing.assert_array_equal(canvas, _original_body(pose.candidate, pose.subset))


def test_joint_coordinates_are_truncated():
    pose = _empty_pose()
    pose.candidate[0] = (100.9 / 512, 200.9 / 768)
    pose.subset[0] = 0
    canvas = draw.draw_pose(pose)
    assert tuple(canvas[200, 100]) == (255, 0, 0)  # colors[0]
    assert canvas[200, 96].any() and not canvas[200, 105].any()  # centre 100, not 101
    assert canvas[196, 100].any() and not canvas[205, 100].any()


def test_a_whole_body_matches_the_original_dim_after_drawing():
    pose = _pose(SKELETON, missing=(16,))
    pose.hands[:] = -1
    canvas = draw.draw_pose(pose)
    np.testing.assert_array_equal(canvas, _original_body(pose.candidate, pose.subset))
    assert (canvas == 153).any()


def test_a_hand_edge_and_points_with_the_positive_pixel_rule():
    pose = _empty_pose()
    pose.hands[0, 0] = (100 / 512, 300 / 768)  # left wrist
    pose.hands[0, 1] = (140 / 512, 300 / 768)  # left thumb 1: edge 0 (255,0,0)
    pose.hands[1, 19] = (0.5 / 512, 100 / 768)  # int(0.5) = 0: not > 0.01, edge 19 and point undrawn
    pose.hands[1, 20] = (300 / 512, 100 / 768)  # right pinky tip
    canvas = draw.draw_pose(pose)
    assert tuple(canvas[300, 120]) == (255, 0, 0)  # on the line, between the points
    assert tuple(canvas[300, 100]) == (0, 0, 255) and tuple(canvas[300, 140]) == (0, 0, 255)
    assert not canvas[305, 120].any()  # thickness 2
    assert tuple(canvas[100, 300]) == (0, 0, 255)  # the right pinky tip's point
    assert not canvas[100, 150].any() and not canvas[100, :290].any()  # no edge 19, no point at x 0
    assert not canvas[:, 0].any()


def _hsv_to_rgb(h: float) -> tuple[float, float, float]:
    """matplotlib.colors.hsv_to_rgb's formula for s = v = 1."""
    i = int(h * 6.0)
    f = h * 6.0 - i
    p, q, t = 0.0, 1.0 - f, 1.0 - (1.0 - f)
    return [(1.0, t, p), (q, 1.0, p), (p, 1.0, t), (p, q, 1.0), (t, p, 1.0), (1.0, p, q)][i % 6]


def _original_hands(canvas: np.ndarray, hands: np.ndarray) -> np.ndarray:
    """The original's draw_handpose, float colours included."""
    for peaks in hands:
        for ie, (a, b) in enumerate(draw.HAND_EDGES):
            x1, y1 = int(peaks[a][0] * 512), int(peaks[a][1] * 768)
            x2, y2 = int(peaks[b][0] * 512), int(peaks[b][1] * 768)
            if x1 > 0.01 and y1 > 0.01 and x2 > 0.01 and y2 > 0.01:
                cv2.line(canvas, (x1, y1), (x2, y2), np.array(_hsv_to_rgb(ie / 20.0)) * 255, thickness=2)
        for x, y in peaks:
            if int(x * 512) > 0.01 and int(y * 768) > 0.01:
                cv2.circle(canvas, (int(x * 512), int(y * 768)), 4, (0, 0, 255), thickness=-1)
    return canvas


def test_a_whole_pose_with_hands_matches_the_original_drawing():
    rng = np.random.default_rng(9)
    pose = _pose(SKELETON + rng.normal(0, 0.013, (20, 2)), missing=(17,))
    pose.hands += rng.normal(0, 0.03, pose.hands.shape)
    pose.hands[0, 5] = -1  # invisible points and edges
    pose.hands[1, 0, 0] = 0.001  # int() -> 0: undrawn
    want = _original_hands(_original_body(pose.candidate, pose.subset), pose.hands)
    np.testing.assert_array_equal(draw.draw_pose(pose), want)


def test_limb_centre_angle_and_length_are_truncated():
    pose = _empty_pose()
    pose.candidate[1] = (100.3 / 512, 200.8 / 768)
    pose.candidate[2] = (161.9 / 512, 230.9 / 768)  # mid (131.1, 215.85), angle -154.0.. degrees
    pose.subset[[1, 2]] = [1, 2]
    np.testing.assert_array_equal(draw.draw_pose(pose), _original_body(pose.candidate, pose.subset))
    moved = _original_body(pose.candidate + [[0, 0.7 / 768]], pose.subset)
    assert not np.array_equal(draw.draw_pose(pose), moved)  # the comparison sees a sub-pixel change


def test_hand_colours_are_matplotlibs_hsv_rounded_by_opencv():
    hsv_to_rgb = _hsv_to_rgb
    for e in range(20):
        img = np.zeros((5, 5, 3), dtype=np.uint8)
        cv2.line(img, (2, 2), (2, 2), np.array(hsv_to_rgb(e / 20.0)) * 255, 1)
        assert tuple(int(v) for v in img[2, 2]) == draw.HAND_COLOURS[e], e
    assert draw.HAND_COLOURS[3] == (255, 229, 0) and draw.HAND_COLOURS[17] == (255, 0, 230)


def test_faces_are_never_drawn():
    pose = _empty_pose()
    pose.faces[0] = np.stack([np.linspace(0.2, 0.8, 68), np.linspace(0.2, 0.8, 68)], 1)
    assert not draw.draw_pose(pose).any()


def test_jpeg_is_opencvs_default_quality_95(tmp_path):
    pose = _pose(SKELETON)
    canvas = draw.draw_pose(pose)
    path = tmp_path / "0000.jpg"
    draw.write_jpeg(path, canvas)
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8"
    assert data == cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert data != cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    back = cv2.imread(str(path))
    assert back.shape == (768, 512, 3)
    assert np.abs(back.astype(int) - canvas).mean() < 3
    with pytest.raises(OSError):
        draw.write_jpeg(tmp_path / "missing" / "x.jpg", canvas)


def test_the_right_hand_is_drawn_after_the_left():
    pose = _empty_pose()
    pose.hands[0, 0] = (200 / 512, 400 / 768)  # a left-hand point, drawn first
    pose.hands[1, 0] = (180 / 512, 400 / 768)  # the right hand's edge 0 runs over it
    pose.hands[1, 1] = (220 / 512, 400 / 768)
    canvas = draw.draw_pose(pose)
    assert tuple(canvas[400, 200]) == (255, 0, 0)  # edge 0's colour over the left point's (0,0,255)
    assert tuple(canvas[403, 200]) == (0, 0, 255)  # the left point around the 2-px line

"""Wan2.2-Animate's detector + ViTPose numerics (WAN_PREPROCESS.md sections 2-4) on hand-made
arrays, including what the spec's synthetic runs did not reach: previous-body reuse, a non-person
box suppressing the person (Q6), a peak within 2 cells of the heatmap border, the largest-area rule
with its 0.4 side test (Q7), crop corners at .5 ties, and quirk Q8's fix. The models are plain
callables here."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from zoo.families.wan_animate_pose import vitpose as vp
from zoo.families.wan_animate_pose.meta import Meta

F32 = np.float32


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _det_output(rows: list[list[float]], n: int = 300) -> np.ndarray:
    """A YOLOv10 output 0 ``[1, n, 6]``: the given rows, then zero rows (score 0)."""
    out = np.zeros((1, n, 6), dtype=np.float32)
    if rows:
        out[0, : len(rows)] = np.asarray(rows, dtype=np.float32)
    return out


# --- 2.2 detector input ------------------------------------------------------------------------


def test_detector_input_is_a_stretched_rgb_image_over_255():
    img = _image(300, 500)
    x = vp.detector_input(img)
    assert x.shape == (1, 3, 640, 640) and x.dtype == np.float32 and x.flags.c_contiguous
    stretched = cv2.resize(img, (640, 640), interpolation=cv2.INTER_LINEAR)
    expected = (stretched.astype(np.float64) / 255.0).astype(np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(x[0], expected)  # channel 0 is R: no swap, no letterbox


# --- 2.3-2.4 layouts and decoding ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 84, 8400), (1, 8400, 84), (1, 300, 7), (2, 300, 6), (300, 6), (6,)])
def test_detect_person_refuses_other_layouts_naming_the_shape(shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        vp.detect_person(np.zeros(shape, dtype=np.float32), (480, 640))


@pytest.mark.parametrize("shape", [(1, 6), (1, 1, 6)])
def test_detect_person_takes_a_single_row(shape):
    row = np.array([64, 64, 320, 576, 0.9, 0], dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(vp.detect_person(row, (640, 640)), [64, 64, 320, 576, np.float32(0.9)])


def test_decode_scales_in_float32_and_truncates_width_separately():
    # w = 999: fx = 999/640 is no short binary fraction. [np1] f32(87.12712) * f32(fx) = 136.0 exactly,
    # while the float64 product rounded once ([np2]) is 135.99998 -> X would be 135.
    x1 = F32("87.12712")
    assert int(np.float32(float(x1) * (999 / 640))) == 135
    rows = np.array([[x1, 10.5, 300.0, 200.25, 0.5, 0.0]], dtype=np.float32)
    boxes, scores, classes = vp.decode_boxes(rows, (640, 999))
    fx = F32(999 / 640)
    x2 = F32(300.0) * fx
    assert boxes.dtype == np.int32
    assert boxes[0].tolist() == [136, 10, int(x2 - F32(136.0)), 189]
    # 200.25 - 10.5 = 189.75 -> 189; X + Wb = 10 + 189 = 199 while trunc(y2') = 200
    assert scores.tolist() == [F32(0.5)] and classes.tolist() == [0.0]


def test_decode_keeps_scores_at_exactly_float32_005_but_nms_does_not():
    thr = F32(0.05)
    rows = np.array(
        [[0, 0, 100, 100, thr, 0], [0, 0, 100, 100, np.nextafter(thr, F32(0)), 0]],
        dtype=np.float32,
    )
    boxes, scores, _ = vp.decode_boxes(rows, (640, 640))
    assert len(boxes) == 1 and scores[0] == thr  # >= f32(0.05) passes the decode ...
    assert vp.nms(boxes, scores) == []  # ... but NMS needs > 0.05f
    # so such an image falls back to the whole image
    np.testing.assert_array_equal(vp.detect_person(rows[None], (480, 640)), [0, 0, 640, 480, -1])


# --- 2.5 NMS ----------------------------------------------------------------------------------------


def _cv2_nms(boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    kept = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), 0.05, 0.5)
    return [int(i) for i in np.asarray(kept).reshape(-1)]


def test_nms_equals_cv2_nmsboxes_on_random_integer_boxes_with_ties():
    rng = np.random.default_rng(7)
    tie_scores = np.array([0.04, 0.05, 0.06, 0.3, 0.5, 0.5, 0.9], dtype=np.float32)
    kept_total = suppressed_total = 0
    for t in range(1500):
        n = int(rng.integers(0, 30))
        centres = rng.integers(0, 120, (3, 2))[rng.integers(0, 3, n)]
        xy = centres + rng.integers(-12, 12, (n, 2))
        low = -4 if t % 4 == 0 else 0  # some zero and negative sizes: cv2's area sum <= 0 rule
        boxes = np.concatenate([xy, rng.integers(low, 40, (n, 2))], 1).astype(np.int32)
        scores = rng.choice(tie_scores, n)
        mine = vp.nms(boxes, scores)
        assert mine == _cv2_nms(boxes, scores), t
        kept_total += len(mine)
        suppressed_total += int((scores > F32(0.05)).sum()) - len(mine)
    assert kept_total > 1000 and suppressed_total > 1000


def test_nms_hand_cases():
    # equal scores keep row order (stable sort); IoU exactly 0.5 is kept (<=), just above is not
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 20, 10]], dtype=np.int32)
    scores = np.array([0.7, 0.9, 0.9, 0.1], dtype=np.float32)
    # row 1 first (0.9, earlier than row 2); row 2: IoU 100/200 = 0.5 -> kept; row 0: IoU 1 -> gone;
    # row 3: IoU with row 1 = 0.5, with row 2 = 100/300 -> kept
    assert vp.nms(boxes, scores) == [1, 2, 3] == _cv2_nms(boxes, scores)
    # 2 boxes of 10x10 overlapping 10x7: IoU 70/130 > 0.5 -> suppressed
    boxes = np.array([[0, 0, 10, 10], [0, 3, 10, 10]], dtype=np.int32)
    assert vp.nms(boxes, np.array([0.5, 0.6], dtype=np.float32)) == [1]
    # areas summing to <= 0 count as full overlap, wherever the boxes are (not only == 0, as the spec's
    # text says): a 3x10 box suppresses a -5x10 one far away, not a 0x10 one (sum 30 + 0 > 0)
    boxes = np.array([[0, 0, 3, 10], [100, 100, -5, 10], [50, 50, 0, 10]], dtype=np.int32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert vp.nms(boxes, scores) == [0, 2] == _cv2_nms(boxes, scores)
    boxes = np.array([[0, 0, 0, 10], [50, 50, 10, 0]], dtype=np.int32)
    assert vp.nms(boxes, scores[:2]) == [0] == _cv2_nms(boxes, scores[:2])


# --- 2.6 person selection -------------------------------------------------------------------------


def test_a_non_person_box_suppresses_the_person_q6():
    # a dog (class 16) scored above the person and overlapping it by IoU 0.9: the person is gone
    rows = [[100, 100, 300, 500, 0.8, 0], [100, 120, 300, 500, 0.9, 16]]
    np.testing.assert_array_equal(vp.detect_person(_det_output(rows), (640, 640)), [0, 0, 640, 640, -1])
    # a second, smaller person survives and is then chosen
    rows.append([400, 100, 500, 400, 0.3, 0])
    np.testing.assert_array_equal(vp.detect_person(_det_output(rows), (640, 640)), [400, 100, 500, 400, F32(0.3)])
    # without the dog the big person wins
    np.testing.assert_array_equal(vp.detect_person(_det_output(rows[::2]), (640, 640)), [100, 100, 300, 500, F32(0.8)])


def _rows(*boxes: tuple[float, float, float, float, float, float]) -> np.ndarray:
    return np.array(boxes, dtype=np.float64)


def test_largest_area_person_with_the_side_test_q7():
    hw = (2000, 2000)
    # 1) the most confident person is small: the larger one wins (area, not score)
    sel = vp.select_person(_rows((0, 0, 100, 200, 0.9, 0), (500, 0, 800, 600, 0.3, 0)), hw)
    np.testing.assert_array_equal(sel, [500, 0, 800, 600, 0.3])
    # 2) a person shorter than 0.4 x the longest person side is skipped even when first
    #    (longest side 300 -> limit 120; a 100x119 box is skipped, a 100x120 one is not)
    sel = vp.select_person(_rows((0, 0, 100, 119, 0.9, 0), (500, 0, 520, 300, 0.3, 0)), hw)
    np.testing.assert_array_equal(sel, [500, 0, 520, 300, 0.3])
    sel = vp.select_person(_rows((0, 0, 100, 120, 0.9, 0), (500, 0, 520, 300, 0.3, 0)), hw)
    np.testing.assert_array_equal(sel, [0, 0, 100, 120, 0.9])
    # 3) after the first selection the reference is the selected box's side, not the longest side:
    #    thin 100x420 (side 420 >= 0.4*1000) is selected, then 300x300 (300 < 400 but >= 0.4*420) beats it;
    #    the 50x1000 box (area 50000 < 90000) comes last and loses
    thin, square, tall = (0, 0, 100, 420, 0.9, 0), (500, 0, 800, 300, 0.8, 0), (1000, 0, 1050, 1000, 0.7, 0)
    np.testing.assert_array_equal(vp.select_person(_rows(thin, square, tall), hw), square[:5])
    # same boxes, tall second: it is selected (ref 1000) and the square is then too short
    np.testing.assert_array_equal(vp.select_person(_rows(thin, tall, square), hw), tall[:5])
    # 4) equal areas keep the earlier row; non-persons neither win nor set the longest side
    sel = vp.select_person(_rows((0, 0, 10, 40, 0.9, 0), (0, 0, 40, 10, 0.8, 0), (0, 0, 2000, 2000, 0.95, 1)), hw)
    np.testing.assert_array_equal(sel, [0, 0, 10, 40, 0.9])
    # 5) class + 1 == 1 in float64: a class of 1e-17 counts as a person, 1e-15 does not
    np.testing.assert_array_equal(vp.select_person(_rows((0, 0, 10, 10, 0.9, 1e-17)), hw), [0, 0, 10, 10, 0.9])
    np.testing.assert_array_equal(vp.select_person(_rows((0, 0, 10, 10, 0.9, 1e-15)), hw), [0, 0, 2000, 2000, -1])


def test_fallback_box_is_the_whole_image():
    w, h = 720, 400
    expected = [0, 0, w, h, -1]
    # nothing above the threshold
    np.testing.assert_array_equal(vp.detect_person(_det_output([]), (h, w)), expected)
    # only non-persons
    np.testing.assert_array_equal(vp.detect_person(_det_output([[0, 0, 50, 50, 0.9, 2]]), (h, w)), expected)
    # the stretch: input pixels scale by w/640 and h/640 independently
    box = vp.detect_person(_det_output([[64, 64, 320, 576, 0.9, 0]]), (h, w))
    np.testing.assert_array_equal(box, [72, 40, 360, 360, F32(0.9)])


# --- 3.1 crop window ------------------------------------------------------------------------------


def _corners_by_inverse(box: np.ndarray, h: int, w: int) -> tuple[tuple[int, int, int, int], float, float]:
    """The original's route: the 3x3 crop matrix inverted by numpy.linalg.inv, applied to the two
    corners of the 192x256 crop, rounded half to even."""
    x1, y1, x2, y2, score = box
    if score <= 0 or x2 - x1 < 10 or y2 - y1 < 10:
        x1, y1, x2, y2 = 0, 0, w, h
    aspect = 256 / 192
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    size = max((x2 - x1) * aspect, y2 - y1)
    scale = np.array([size / aspect, size]) / 200.0 * 1.25
    hh = 200 * scale.max()
    ww = hh / aspect
    t = np.array([[192 / ww, 0, 192 * (-cx / ww + 0.5)], [0, 256 / hh, 256 * (-cy / hh + 0.5)], [0, 0, 1.0]])
    inv = np.linalg.inv(t)
    ul, br = inv @ np.array([0.0, 0.0, 1.0]), inv @ np.array([192.0, 256.0, 1.0])
    return (round(ul[0]), round(ul[1]), round(br[0]), round(br[1])), scale[0] * 200, scale[1] * 200


def test_crop_corners_equal_the_inverse_matrix_route_at_half_ties():
    rng = np.random.default_rng(3)
    ties = 0
    for _ in range(3000):
        h, w = int(rng.integers(40, 1500)), int(rng.integers(40, 1500))
        x1, y1 = int(rng.integers(-30, w)), int(rng.integers(-30, h))
        box = np.array([x1, y1, x1 + int(rng.integers(4, 700)), y1 + int(rng.integers(4, 700)), 0.5])
        p = vp.crop_params(box, (h, w))
        corners, sw, sh = _corners_by_inverse(box, h, w)
        assert (p.left, p.top, p.right, p.bottom) == corners
        assert (p.sw, p.sh) == (sw, sh)
        # the naive closed form rounds the exact .5 ties differently now and then
        ww = p.sh / (256 / 192)
        ties += round(p.cx - ww / 2) != p.left or round(p.cx + ww / 2) != p.right
    assert ties > 20


def test_crop_params_hand_case_and_small_box_fallback():
    # 150 x 204.8 box: B = max(200, 204.8) = 204.8 -> SH = 256, SW = 192 (+ rounding), a 192x256 window;
    # cx = 175.5: left = 175.5 - 96 = 79.5 -> 80 (half to even)
    p = vp.crop_params(np.array([100.5, 50.0, 250.5, 254.8, 0.9]), (600, 500))
    assert (p.left, p.top, p.right, p.bottom) == (80, 24, 272, 280)
    assert p.sh == 256.0 and p.sw == pytest.approx(192.0, abs=1e-12) and (p.cx, p.cy) == (175.5, 152.4)
    # score <= 0, or a side under 10 px: the whole image
    whole = vp.crop_params(np.array([0, 0, 500, 600, -1.0]), (600, 500))
    for box in ([10, 10, 19.9, 300, 0.9], [10, 10, 300, 19, 0.9], [10, 10, 300, 300, 0.0]):
        assert vp.crop_params(np.array(box), (600, 500)) == whole
    assert (whole.cx, whole.cy) == (250.0, 300.0) and whole.sh == pytest.approx(1.25 * 500 * 256 / 192, abs=1e-9)


# --- 3.2-3.3 crop, resize and normalisation ---------------------------------------------------------


def _normalise_bgr(pixels: np.ndarray) -> np.ndarray:
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    unit = (pixels.astype(np.float32) / F32(255)).astype(np.float64)
    return ((unit - mean) / std).astype(np.float32)


def test_pose_input_is_the_bgr_window_with_rgb_statistics():
    img = _image(600, 500, seed=5)
    # a 192x256 window: cv2.resize is then a copy, so every pixel can be checked
    x, p = vp.pose_input(img, np.array([100.5, 50.0, 250.5, 254.8, 0.9]))
    assert x.shape == (1, 3, 256, 192) and x.dtype == np.float32
    window = img[p.top : p.bottom, p.left : p.right, ::-1]  # BGR
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), _normalise_bgr(window))
    # channel 0 is blue, normalised with the red mean/std (quirk Q1)
    b = int(img[p.top, p.left, 2])
    assert x[0, 0, 0, 0] == F32((float(F32(b) / F32(255)) - 0.485) / 0.229)


def test_pose_input_pads_with_zeros_and_resizes_float32():
    img = _image(300, 200, seed=6)
    box = np.array([-40.0, -20.0, 100.0, 150.0, 0.9])
    x, p = vp.pose_input(img, box)
    assert p.left < 0 and p.top < 0 and not p.outside
    canvas = np.zeros((p.bottom - p.top, p.right - p.left, 3), dtype=np.float32)
    canvas[-p.top :, -p.left :] = img[: p.bottom, : p.right, ::-1]
    resized = cv2.resize(canvas, (192, 256), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), _normalise_bgr(resized))
    # not the uint8 resize
    resized_u8 = cv2.resize(canvas.astype(np.uint8), (192, 256))
    assert not np.array_equal(x[0].transpose(1, 2, 0), _normalise_bgr(resized_u8))
    # the top-left corner lies in the padding: (0 - mean) / std
    np.testing.assert_array_equal(
        x[0, :, 0, 0], (-np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)
    )


def _crop_as_the_original(img_bgr: np.ndarray, p: vp.CropParams) -> np.ndarray:
    """3.2 with the original's index expressions and its try/except around the copy."""
    h, w = img_bgr.shape[:2]
    canvas = np.zeros((p.bottom - p.top, p.right - p.left, 3), dtype=np.float32)
    new_x, new_y = (max(0, -p.left), min(p.right, w) - p.left), (max(0, -p.top), min(p.bottom, h) - p.top)
    old_x, old_y = (max(0, p.left), min(w, p.right)), (max(0, p.top), min(h, p.bottom))
    try:
        canvas[new_y[0] : new_y[1], new_x[0] : new_x[1]] = img_bgr[old_y[0] : old_y[1], old_x[0] : old_x[1]]
    except ValueError:
        pass
    return cv2.resize(canvas, (192, 256))


def test_windows_over_and_outside_the_image_crop_as_the_original():
    img = _image(100, 120, seed=9)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    outside = 0
    for x1 in (-400, -150, -60, -20, 0, 30, 100, 115, 200, 500):
        for y1 in (-300, -130, -10, 50, 95, 300):
            box = np.array([x1, y1, x1 + 60.0, y1 + 90.0, 0.9])
            x, p = vp.pose_input(img, box)
            expected = _crop_as_the_original(img[..., ::-1], p)
            np.testing.assert_array_equal(x[0].transpose(1, 2, 0), _normalise_bgr(expected))
            if p.outside:
                outside += 1
                np.testing.assert_array_equal(x[0, :, 5, 5], (-mean / std).astype(np.float32))
                assert (x[0] == x[0, :, :1, :1]).all()
            else:
                assert p.left < 120 and p.right > 0 and p.top < 100 and p.bottom > 0
    assert 10 < outside < 60


# --- 3.4 heatmap decode -----------------------------------------------------------------------------

PARAMS = vp.CropParams(cx=321.5, cy=250.25, sw=187.5, sh=250.0, left=0, top=0, right=0, bottom=0)


def _to_image(px: float, py: float, params: vp.CropParams, wh: int = 48, hh: int = 64) -> tuple[F32, F32]:
    """[np1] mapping of 3.4 step 4, written out."""
    x = F32(F32(F32(px) * F32(params.sw / wh)) + F32(params.cx)) - F32(params.sw * 0.5)
    y = F32(F32(F32(py) * F32(params.sh / hh)) + F32(params.cy)) - F32(params.sh * 0.5)
    return F32(x), F32(y)


def _gaussian(h: int, w: int, mx: float, my: float, sigma: float = 2.0, amp: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (amp * np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * sigma**2))).astype(np.float32)


def _dark_reference(hm: np.ndarray, params: vp.CropParams, np2: bool = False) -> np.ndarray:
    """3.4 written straightforwardly: np.pad + cv2.GaussianBlur(sigma 2), float64 inverse ([np1]);
    with ``np2`` the NumPy 2 variant (float32 derivatives and inverse, mapping rounded once)."""
    k, hh, ww = hm.shape
    out = np.zeros((k, 3), dtype=np.float32)
    for j in range(k):
        m = hm[j]
        i = int(np.argmax(m))
        peak = m.reshape(-1)[i]
        px, py = (float(i % ww), float(i // ww)) if peak > 0 else (-1.0, -1.0)
        x, y = int(px), int(py)
        if 2 <= x <= ww - 3 and 2 <= y <= hh - 3:
            blurred = cv2.GaussianBlur(np.pad(m, 5), (11, 11), sigmaX=2.0, sigmaY=2.0)[5:-5, 5:-5]
            blurred = blurred * (F32(peak) / F32(blurred.max()))
            lg = np.log(np.maximum(blurred, F32(1e-10)))
            if np2:
                h32, half, quarter = lg, F32(0.5), F32(0.25)
                dx, dy = half * (h32[y, x + 1] - h32[y, x - 1]), half * (h32[y + 1, x] - h32[y - 1, x])
                dxx = quarter * (h32[y, x + 2] - F32(2) * h32[y, x] + h32[y, x - 2])
                dyy = quarter * (h32[y + 2, x] - F32(2) * h32[y, x] + h32[y - 2, x])
                dxy = quarter * (h32[y + 1, x + 1] - h32[y - 1, x + 1] - h32[y + 1, x - 1] + h32[y - 1, x - 1])
                hess = np.array([[dxx, dxy], [dxy, dyy]], dtype=np.float32)
                if dxx * dyy - dxy * dxy != 0:
                    off = -np.linalg.inv(hess) @ np.array([[dx], [dy]], dtype=np.float32)
                    px, py = float(F32(px) + off[0, 0]), float(F32(py) + off[1, 0])
            else:
                c = lg.astype(np.float64)
                dx = 0.5 * np.float64(lg[y, x + 1] - lg[y, x - 1])
                dy = 0.5 * np.float64(lg[y + 1, x] - lg[y - 1, x])
                dxx = 0.25 * (c[y, x + 2] - 2 * c[y, x] + c[y, x - 2])
                dyy = 0.25 * (c[y + 2, x] - 2 * c[y, x] + c[y - 2, x])
                dxy = 0.25 * np.float64(((lg[y + 1, x + 1] - lg[y - 1, x + 1]) - lg[y + 1, x - 1]) + lg[y - 1, x - 1])
                if dxx * dyy - dxy**2 != 0:
                    inv = np.linalg.inv(np.array([[dxx, dxy], [dxy, dyy]], dtype=np.float64))
                    off = -inv @ np.array([[dx], [dy]])
                    px, py = float(F32(px + off[0, 0])), float(F32(py + off[1, 0]))
        if np2:
            out[j, 0] = F32(px * (params.sw / ww) + params.cx - params.sw * 0.5)
            out[j, 1] = F32(py * (params.sh / hh) + params.cy - params.sh * 0.5)
        else:
            out[j, :2] = _to_image(px, py, params, ww, hh)
        out[j, 2] = peak
    return out


def _random_heatmaps(rng: np.random.Generator, k: int = 133, h: int = 64, w: int = 48) -> np.ndarray:
    maps = np.empty((k, h, w), dtype=np.float32)
    for j in range(k):
        mx, my = rng.uniform(-1, w), rng.uniform(-1, h)
        maps[j] = _gaussian(h, w, mx, my, amp=rng.uniform(0.2, 1.2)) + rng.normal(0, 0.02, (h, w)).astype(np.float32)
    maps[:3] -= 2.0  # non-positive maxima
    return maps


def test_dark_decode_equals_a_straightforward_implementation():
    rng = np.random.default_rng(11)
    differs_np2 = stepped = 0
    for _ in range(3):
        maps = _random_heatmaps(rng)
        got = vp.decode_heatmaps(maps, PARAMS)
        assert got.dtype == np.float32 and got.shape == (133, 3)
        np.testing.assert_array_equal(got, _dark_reference(maps, PARAMS))
        differs_np2 += int((got != _dark_reference(maps, PARAMS, np2=True)).any(axis=1).sum())
        cells = maps.reshape(133, -1).argmax(1)
        stepped += int((got[:, 0] != np.array([_to_image(c % 48, 0, PARAMS)[0] for c in cells])).sum())
    assert stepped > 200  # the Taylor step moved most points
    assert differs_np2 > 0  # and the [np1] precision rules matter (NumPy 2's all-float32 step differs)


def test_dark_step_finds_the_sub_pixel_peak():
    maps = np.stack([_gaussian(64, 48, 20.3, 30.7), _gaussian(64, 48, 10.0, 12.0, amp=0.8)])
    p = vp.CropParams(cx=24.0, cy=32.0, sw=48.0, sh=64.0, left=0, top=0, right=0, bottom=0)  # 1 cell = 1 px
    got = vp.decode_heatmaps(maps, p)
    assert got[0, 0] == pytest.approx(20.3, abs=0.02) and got[0, 1] == pytest.approx(30.7, abs=0.02)
    assert (got[1, 0], got[1, 1]) == pytest.approx((10.0, 12.0), abs=1e-4)
    assert got[0, 2] == maps[0].max() and got[1, 2] == F32(0.8)


@pytest.mark.parametrize("cell", [(1, 30), (46, 30), (20, 1), (20, 62), (0, 0), (47, 63)])
def test_peak_within_two_cells_of_the_border_takes_no_taylor_step(cell):
    x, y = cell
    maps = _gaussian(64, 48, x + 0.4, y + 0.3)[None]
    assert np.unravel_index(maps[0].argmax(), (64, 48)) == (y, x)
    got = vp.decode_heatmaps(maps, PARAMS)
    assert (got[0, 0], got[0, 1]) == _to_image(x, y, PARAMS)
    # one cell further in, the step is taken
    inner = (min(max(x, 2), 45), min(max(y, 2), 61))
    maps = _gaussian(64, 48, inner[0] + 0.4, inner[1] + 0.3)[None]
    got = vp.decode_heatmaps(maps, PARAMS)
    assert got[0, 0] != _to_image(*inner, PARAMS)[0]


def test_non_positive_maximum_decodes_to_the_minus_one_cell():
    maps = np.stack([np.full((64, 48), -0.5, np.float32), np.zeros((64, 48), np.float32)])
    maps[0, 30, 20] = -0.25
    got = vp.decode_heatmaps(maps, PARAMS)
    x, y = _to_image(-1, -1, PARAMS)
    assert x == F32(321.5 - 93.75 - 187.5 / 48) and y == F32(250.25 - 125 - 250 / 64)
    np.testing.assert_array_equal(got, [[x, y, -0.25], [x, y, 0.0]])


def test_decode_follows_the_heatmap_array_shape():
    rng = np.random.default_rng(2)
    maps = _random_heatmaps(rng, k=7, h=32, w=24)
    np.testing.assert_array_equal(vp.decode_heatmaps(maps, PARAMS), _dark_reference(maps, PARAMS))


# --- 2-3 the whole per-image chain with fake models ---------------------------------------------------


class _Models:
    """A detector that finds a person where the image is bright, and a pose model whose heatmap peaks
    follow each crop's content (so any mix-up between crops would show)."""

    def __init__(self) -> None:
        self.pose_batches: list[int] = []
        self.detect_inputs: list[np.ndarray] = []

    def detect(self, x: np.ndarray) -> np.ndarray:
        assert x.shape == (1, 3, 640, 640) and x.dtype == np.float32
        self.detect_inputs.append(x)
        mask = x[0, 0] > 0.9  # red channel
        if not mask.any():
            return _det_output([])
        ys, xs = np.nonzero(mask)
        return _det_output([[xs.min(), ys.min(), xs.max(), ys.max(), 0.8, 0], [0, 0, 30, 30, 0.6, 0]])

    def pose(self, x: np.ndarray) -> np.ndarray:
        assert x.ndim == 4 and x.shape[1:] == (3, 256, 192) and x.dtype == np.float32
        self.pose_batches.append(x.shape[0])
        out = np.empty((x.shape[0], 133, 64, 48), dtype=np.float32)
        for b in range(x.shape[0]):
            m = float(x[b].mean())
            for k in range(133):
                out[b, k] = _gaussian(64, 48, 5 + (k * 7 + m * 97) % 38, 5 + (k * 11 + m * 131) % 54)
        return out


def _frames() -> list[np.ndarray]:
    frames = []
    for i in range(5):
        img = np.full((360, 480, 3), 40, dtype=np.uint8)
        img[60 + 10 * i : 300, 100 + 15 * i : 260 + 5 * i] = (250, 80 + 20 * i, 30)  # RGB: a red person
        frames.append(img)
    frames.append(np.zeros((360, 480, 3), dtype=np.uint8))  # nobody: the whole image
    return frames


def test_keypoints_of_images_chain_and_batch_independence():
    frames = _frames()
    results = {}
    for batch in (1, 2, 4):
        models = _Models()
        results[batch] = vp.keypoints_of_images(frames, models.detect, models.pose, batch=batch)
        assert models.pose_batches == {1: [1] * 6, 2: [2, 2, 2], 4: [4, 2]}[batch]
        assert len(models.detect_inputs) == 6
    for batch in (2, 4):
        for a, b in zip(results[1], results[batch]):
            np.testing.assert_array_equal(a, b)
    # the same as the parts chained by hand
    models = _Models()
    for img, got in zip(frames, results[1]):
        box = vp.detect_person(models.detect(vp.detector_input(img)), img.shape[:2])
        x, p = vp.pose_input(img, box)
        np.testing.assert_array_equal(got, vp.decode_heatmaps(models.pose(x)[0], p))
    # the detector saw RGB (the red person), ViTPose BGR
    first = vp.detect_person(models.detect(vp.detector_input(frames[0])), (360, 480))
    assert first[4] == F32(0.8) and 90 <= first[0] <= 110 and 50 <= first[1] <= 70
    np.testing.assert_array_equal(
        vp.detect_person(models.detect(vp.detector_input(frames[5])), (360, 480)), [0, 0, 480, 360, -1]
    )


def test_keypoints_of_images_checks_the_pose_output_batch():
    models = _Models()
    with pytest.raises(ValueError, match="pose output 0"):
        vp.keypoints_of_images(_frames()[:2], models.detect, lambda x: models.pose(x)[:1], batch=2)
    with pytest.raises(ValueError, match="batch"):
        vp.keypoints_of_images(_frames()[:2], models.detect, models.pose, batch=0)


# --- 4 metas -----------------------------------------------------------------------------------------


def _keypoints(seed: int, w: int = 640, h: int = 480) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kp = np.empty((133, 3), dtype=np.float32)
    kp[:, 0] = rng.uniform(0, w, 133)
    kp[:, 1] = rng.uniform(0, h, 133)
    kp[:, 2] = rng.uniform(0, 1, 133)
    return kp


def test_meta_conversion_hand_values():
    kp = _keypoints(0)
    kp[5] = (100.0, 50.0, 0.5)  # L shoulder
    kp[6] = (300.0, 70.0, 0.75)  # R shoulder
    kp[17] = (10.0, 20.0, 1.0)  # L big toe
    kp[18] = (-1.0, 30.0, -0.5)  # L small toe decoded to the -1 cell
    kp[22] = (7.0, 8.0, 0.25)  # R heel: face row 0
    metas, warnings = vp.metas_from_keypoints([kp], 640, 480)
    m = metas[0]
    assert warnings == [] and isinstance(m, Meta) and (m.width, m.height, m.reused) == (640, 480, False)
    assert m.body.dtype == np.float32 and m.body.shape == (20, 3)
    x = kp[:, 0] / F32(640)
    y = kp[:, 1] / F32(480)
    np.testing.assert_array_equal(m.body[1], [(x[6] + x[5]) / F32(2), (y[6] + y[5]) / F32(2), F32(0.625)])
    np.testing.assert_array_equal(m.body[2], [x[6], y[6], kp[6, 2]])  # (a + a) / 2 == a
    np.testing.assert_array_equal(m.body[18], [(x[17] + x[18]) / F32(2), (y[17] + y[18]) / F32(2), F32(0.25)])
    np.testing.assert_array_equal(m.body[14], [x[2], y[2], kp[2, 2]])  # R eye = wb 2
    np.testing.assert_array_equal(m.face[0], [F32(7) / F32(640), F32(8) / F32(480), F32(0.25)])
    assert m.face.shape == (69, 3) and m.left_hand.shape == m.right_hand.shape == (21, 3)
    np.testing.assert_array_equal(m.left_hand[:, 0], x[91:112])
    np.testing.assert_array_equal(m.right_hand[:, 1], y[112:133])
    np.testing.assert_array_equal(m.right_hand[:, 2], kp[112:133, 2])


def test_previous_body_reuse():
    k0, k1, k2, k3 = _keypoints(1), _keypoints(2), _keypoints(3), _keypoints(4)
    k1[:, 0] = -5.0  # every point left of the image -> image 0's body
    k2[:, 1] = -1.0  # every point above -> the reused body again
    k3[:, 0] = -5.0
    k3[0, 0] = 0.0  # one point (the nose) at x = 0, y >= 0: not all negative, kept
    metas, warnings = vp.metas_from_keypoints([k0, k1, k2, k3], 640, 480)
    assert warnings == []
    assert [m.reused for m in metas] == [False, True, True, False]
    np.testing.assert_array_equal(metas[1].body, metas[0].body)
    np.testing.assert_array_equal(metas[2].body, metas[0].body)
    assert metas[1].body is not metas[0].body
    # hands and face are never reused
    np.testing.assert_array_equal(metas[1].left_hand[:, 0], np.full(21, F32(-5) / F32(640)))
    np.testing.assert_array_equal(metas[2].face[:, 1], np.full(69, F32(-1) / F32(480)))
    assert metas[3].body[0, 0] == 0.0 and (metas[3].body[1:, 0] < 0).all()


def test_first_image_with_a_negative_body_warns_instead_of_crashing_q8():
    k0, k1 = _keypoints(5), _keypoints(6)
    k0[:, :2] = -3.0
    k1[:, 1] = -2.0
    metas, warnings = vp.metas_from_keypoints([k0, k1], 640, 480)
    assert len(warnings) == 1 and warnings[0].startswith("image 0:") and "kept" in warnings[0]
    assert not metas[0].reused
    np.testing.assert_array_equal(metas[0].body[:, :2], np.full((20, 2), [F32(-3) / F32(640), F32(-3) / F32(480)]))
    assert metas[1].reused  # the next all-negative body takes the kept one, as the original would
    np.testing.assert_array_equal(metas[1].body, metas[0].body)


def test_to_pixels():
    kp = _keypoints(7)
    meta = vp.metas_from_keypoints([kp], 640, 480)[0][0]
    d = vp.to_pixels(meta)
    assert (d.width, d.height) == (640, 480)
    assert d.body.dtype == d.body_scores.dtype == np.float64
    np.testing.assert_array_equal(d.body, meta.body[:, :2].astype(np.float64) * [640.0, 480.0])
    # float32 times an int64 array, as the original computes it
    np.testing.assert_array_equal(d.body, meta.body[:, :2] * np.array([640, 480]))
    np.testing.assert_array_equal(d.body_scores, meta.body[:, 2].astype(np.float64))
    (lxy, lsc), (rxy, rsc) = d.hands
    np.testing.assert_array_equal(lxy, meta.left_hand[:, :2] * np.array([640, 480]))
    np.testing.assert_array_equal(rsc, meta.right_hand[:, 2].astype(np.float64))
    assert lsc.dtype == rxy.dtype == np.float64

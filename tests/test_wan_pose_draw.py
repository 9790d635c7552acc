"""wan-animate-pose: pose drawing (WAN_PREPROCESS.md 6), face boxes and crops (5), retargeting
without FLUX (7), on hand-made poses. Drawings are compared pixel for pixel with a sequence of cv2
calls written out here; boxes and retargeted points with values worked out by hand or by the
plain geometry they must satisfy."""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np
import pytest

from zoo.families.wan_animate_pose.draw import DIMMED, HAND_COLOURS, draw_pose, hand_width, stick_width
from zoo.families.wan_animate_pose.face import face_box, face_crop
from zoo.families.wan_animate_pose.meta import DrawPose, Meta
from zoo.families.wan_animate_pose.retarget import FULL, HALF, THREE_QUARTER, Retargeter, body_type

NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# 6: drawing


def test_stick_width_v2_by_min_side():
    assert [stick_width(h, 2000) for h in (399, 400, 599, 600, 720, 1080)] == [1, 1, 1, 2, 2, 4]
    assert stick_width(1080, 720) == 2  # the smaller side counts
    assert [hand_width(h, 2000) for h in (399, 720, 1080)] == [1, 1, 2]


def test_colour_tables():
    # the limbs' fill trunc(colour * 0.6): the spec's table
    assert DIMMED[:19] == (
        (153, 0, 0), (153, 51, 0), (153, 102, 0), (153, 153, 0), (102, 153, 0), (51, 153, 0), (0, 153, 0),
        (0, 153, 51), (0, 153, 102), (0, 153, 153), (0, 102, 153), (0, 51, 153), (0, 0, 153), (51, 0, 153),
        (102, 0, 153), (153, 0, 153), (153, 0, 102), (153, 0, 51), (120, 120, 0),
    )  # fmt: skip
    # the hand edges: hsv_to_rgb(e/20, 1, 1) * 255 as floats, as OpenCV rounds them when drawing
    for e in range(20):
        colour = tuple(c * 255 for c in colorsys.hsv_to_rgb(e / 20.0, 1.0, 1.0))
        img = np.zeros((3, 3, 3), np.uint8)
        cv2.line(img, (1, 1), (1, 1), colour, 1)
        assert tuple(int(v) for v in img[1, 1]) == HAND_COLOURS[e], e


def _hand(points: dict[int, tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    xy = np.full((21, 2), NAN)
    scores = np.zeros(21)
    for k, (x, y, s) in points.items():
        xy[k], scores[k] = (x, y), s
    return xy, scores


BODY = [
    (200, 100, 0.9), (200, 160, 0.9), (150, 160, 0.9), (150.7, 230.2, 0.8), (140, 300, 0.49),
    (250, 160, 0.9), (-1.5, 240, 0.7), (30, 330, 0.6), (170, 330, 0.5), (175, 420, 0.2),
    (180, 500, 0.1), (230, 330, 0.4), (235, 420, 0.3), (240, 500, 0.3), (190, 90, 0.3),
    (210, 90, 0.2), (180, 95, 0.1), (220, 95, 0.1), (300, 520, 0.9), (350, 520, 0.9),
]  # fmt: skip
LEFT_SLOT = {
    0: (400.9, 400.2, 0.9), 1: (420, 380, 0.9), 2: (0.5, 370, 0.9), 3: (440, 0.99, 0.9), 4: (460, 350, 0.45),
    5: (NAN, NAN, 0.9), 6: (430, 430, 0.9), 7: (440, 440, 0.9), 9: (380, 420, 0.6), 10: (370.5, 440.5, 0.5),
}  # fmt: skip
RIGHT_SLOT = {0: (500, 300, 0.9), 17: (520, 320, 0.9), 18: (1.2, 340, 0.9), 19: (2, 1e4, 0.9), 20: (600, 300, 0.1)}


def _pose(width: int, height: int, body=BODY, hands=(LEFT_SLOT, RIGHT_SLOT)) -> DrawPose:
    arr = np.array(body, dtype=np.float64)
    return DrawPose(width, height, arr[:, :2].copy(), arr[:, 2].copy(), (_hand(hands[0]), _hand(hands[1])))


def test_draw_pose_matches_direct_cv2_calls():
    canvas = draw_pose(_pose(800, 600))  # min side 600: stick width 2, hand width 1
    assert canvas.shape == (600, 800, 3) and canvas.dtype == np.uint8

    exp = np.zeros((600, 800, 3), np.uint8)

    def limb(centre, axes, angle, fill):
        cv2.fillConvexPoly(exp, cv2.ellipse2Poly(centre, axes, angle, 0, 360, 1), fill)

    # limbs with both scores >= 0.5, in table order (centre and angle truncated toward zero)
    limb((175, 160), (25, 2), 0, (153, 0, 0))  # 0 neck - R shoulder
    limb((225, 160), (25, 2), 180, (153, 51, 0))  # 1 neck - L shoulder
    limb((150, 195), (35, 2), -90, (153, 102, 0))  # 2: atan2(-70.2, -0.7) = -90.57 deg, length 70.2
    # 3 R elbow - R wrist: wrist score 0.49, not drawn
    limb((124, 200), (131, 2), -17, (102, 153, 0))  # 4 to the elbow at x = -1.5: length 263.9, -17.6 deg
    limb((14, 285), (47, 2), -109, (51, 153, 0))  # 5: length 95.35, -109.3 deg
    limb((185, 245), (86, 2), -79, (0, 153, 0))  # 6 neck - R hip (score exactly 0.5): -79.99 deg
    # 7-11 have an endpoint below 0.5 (the L hip's 0.4 included)
    limb((200, 130), (30, 2), 90, (0, 0, 153))  # 12 neck - nose
    # 13-18: eyes, ears and ankles below 0.5
    # joints >= 0.5 in full colour (the L elbow at x = -1.5 truncates to -1, still partly visible)
    for centre, colour in (
        ((200, 100), (255, 0, 0)), ((200, 160), (255, 85, 0)), ((150, 160), (255, 170, 0)),
        ((150, 230), (255, 255, 0)), ((250, 160), (85, 255, 0)), ((-1, 240), (0, 255, 0)),
        ((30, 330), (0, 255, 85)), ((170, 330), (0, 255, 170)), ((300, 520), (200, 200, 0)),
        ((350, 520), (100, 100, 0)),
    ):  # fmt: skip
        cv2.circle(exp, centre, 2, colour, -1)
    # slot "left": edges with scores >= 0.5 and all four truncated coordinates >= 1
    cv2.line(exp, (400, 400), (420, 380), (255, 0, 0), 1)  # e0
    cv2.line(exp, (430, 430), (440, 440), (51, 255, 0), 1)  # e6
    cv2.line(exp, (400, 400), (380, 420), (0, 255, 102), 1)  # e8
    cv2.line(exp, (380, 420), (370, 440), (0, 255, 179), 1)  # e9 (score exactly 0.5)
    for centre in ((400, 400), (420, 380), (430, 430), (440, 440), (380, 420), (370, 440)):
        cv2.circle(exp, centre, 1, (0, 0, 255), -1)
    # slot "right": x = 1.2 truncates to 1 and is drawn; no upper bound on y
    cv2.line(exp, (500, 300), (520, 320), (204, 0, 255), 1)  # e16
    cv2.line(exp, (520, 320), (1, 340), (255, 0, 230), 1)  # e17
    cv2.line(exp, (1, 340), (2, 10000), (255, 0, 153), 1)  # e18
    for centre in ((500, 300), (520, 320), (1, 340), (2, 10000)):
        cv2.circle(exp, centre, 1, (0, 0, 255), -1)

    assert np.array_equal(canvas, exp)
    assert tuple(canvas[240, 0]) == (0, 255, 0)  # the off-canvas joint's visible part


def test_draw_pose_1080_widths_and_hand_order():
    body = [(x, y, 0.2) for x, y, _ in BODY]
    body[1], body[2] = (600, 500, 0.9), (500, 500, 0.9)
    left = {0: (700, 700, 0.9), 1: (760, 700, 0.9)}
    right = {0: (730, 680, 0.9), 5: (730, 720, 0.9)}
    canvas = draw_pose(_pose(1440, 1080, body, (left, right)))  # stick width 4, hand width 2

    exp = np.zeros((1080, 1440, 3), np.uint8)
    cv2.fillConvexPoly(exp, cv2.ellipse2Poly((550, 500), (50, 4), 0, 0, 360, 1), (153, 0, 0))
    cv2.circle(exp, (600, 500), 4, (255, 85, 0), -1)
    cv2.circle(exp, (500, 500), 4, (255, 170, 0), -1)
    cv2.line(exp, (700, 700), (760, 700), (255, 0, 0), 2)
    cv2.circle(exp, (700, 700), 2, (0, 0, 255), -1)
    cv2.circle(exp, (760, 700), 2, (0, 0, 255), -1)
    cv2.line(exp, (730, 680), (730, 720), (204, 255, 0), 2)  # e4, the second slot over the first
    cv2.circle(exp, (730, 680), 2, (0, 0, 255), -1)
    cv2.circle(exp, (730, 720), 2, (0, 0, 255), -1)
    assert np.array_equal(canvas, exp)
    assert tuple(canvas[700, 730]) == (204, 255, 0) and tuple(canvas[700, 740]) == (255, 0, 0)


# ----------------------------------------------------------------------------------------------
# 5: face boxes and crops


def _face_meta(xs, ys, nose=(0.5, 0.25), width=640, height=480) -> Meta:
    face = np.zeros((69, 3), np.float32)
    face[0] = (0.0, 0.99, 1.0)  # row 0 is the right heel: never part of the box
    face[1:, 0] = np.resize(np.asarray(xs, np.float32), 68)
    face[1:, 1] = np.resize(np.asarray(ys, np.float32), 68)
    body = np.zeros((20, 3), np.float32)
    body[0] = (nose[0], nose[1], 0.9)
    hand = np.zeros((21, 3), np.float32)
    return Meta(width, height, body, hand, hand.copy(), face)


def _grid(x0, x1, y0, y1):
    """68 landmarks spanning exactly [x0, x1] x [y0, y1] (17 columns x 4 rows)."""
    i = np.arange(68)
    return x0 + (x1 - x0) * (i % 17) / 16, y0 + (y1 - y0) * (i // 17) / 3


def test_face_box_margins():
    # 800x600 frame, landmarks x 200..400 px, y 150..300 px: each side grows by sqrt(1.3), a quarter of
    # the height's growth below and three quarters above
    box, warning = face_box(_face_meta(*_grid(0.25, 0.5, 0.25, 0.5)), (600, 800), None)
    grow = math.sqrt(1.3) - 1
    dw, dh = 200 * grow / 2, 150 * grow / 4
    assert warning is None
    assert box == (int(200 - dw), int(150 - 3 * dh), int(400 + dw), int(300 + dh)) == (185, 134, 414, 305)
    # square landmarks on a 1024x512 frame
    box, _ = face_box(_face_meta(*_grid(0.375, 0.625, 0.25, 0.75)), (512, 1024), None)
    assert box == (366, 101, 657, 392)


def test_face_box_clamped_to_frame():
    box, warning = face_box(_face_meta(*_grid(0.0, 0.25, 0.125, 0.5)), (480, 640), None)
    grow = math.sqrt(1.3) - 1
    assert warning is None
    assert box == (0, int(60 - 3 * 180 * grow / 4), int(160 + 160 * grow / 2), int(240 + 180 * grow / 4))
    assert box == (0, 41, 171, 246)
    box, _ = face_box(_face_meta(*_grid(0.0, 1.0, 0.0, 1.0)), (480, 640), None)
    assert box == (0, 0, 640, 480)


def test_face_box_left_of_frame_wraps_like_the_original():
    # x1 + dw < -1: the original slices frame[:, 0:-k], which is not empty (no crash, no fallback)
    meta = _face_meta(*_grid(-0.3, -0.2, 0.25, 0.5))
    box, warning = face_box(meta, (480, 640), None)
    assert warning is None and box[0] == 0 and box[2] == int(-128 + 64 * (math.sqrt(1.3) - 1) / 2) == -123
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    crop = face_crop(frame, box)
    x0, y0, x1, y1 = box
    assert np.array_equal(crop, cv2.resize(frame[y0:y1, 0 : 640 + x1], (512, 512), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize(
    "xs_ys, what",
    [
        (([0.5], [0.5]), "degenerate"),  # all landmarks on one point: 0/0
        ((_grid(0.25, 0.5, 0.5, 0.5)), "degenerate"),  # a horizontal line: zero height
        ((_grid(1.2, 1.3, 0.25, 0.5)), "crops nothing"),  # right of the frame: X0 > X1 = w
        ((_grid(-65 / 640, -5 / 640, 0.25, 0.5)), "crops nothing"),  # X1 = trunc(-0.8) = 0
    ],
)
def test_face_box_fallbacks(xs_ys, what):
    meta = _face_meta(*xs_ys)
    box, warning = face_box(meta, (480, 640), None)
    # no previous box: a 120 px square (a quarter of the short side) centred on the nose (320, 120)
    assert box == (260, 60, 380, 180)
    assert warning is not None and what in warning and "nose" in warning
    box, warning = face_box(meta, (480, 640), (10, 20, 110, 140))
    assert box == (10, 20, 110, 140)
    assert warning is not None and what in warning and "previous" in warning


def test_face_box_nose_fallback_stays_inside():
    box, warning = face_box(_face_meta([0.5], [0.5], nose=(0.999, 1.5)), (480, 640), None)
    assert warning is not None and box == (520, 360, 640, 480)
    box, _ = face_box(_face_meta([0.5], [0.5], nose=(-3.0, 0.0)), (480, 640), None)
    assert box == (0, 0, 120, 120)


def test_face_crop_is_a_stretched_bilinear_resize():
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    crop = face_crop(frame, (185, 134, 414, 305))
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, cv2.resize(frame[134:305, 185:414], (512, 512), interpolation=cv2.INTER_LINEAR))


# ----------------------------------------------------------------------------------------------
# 7: retargeting

# a standing figure on 512 x 512 (wrists off the pixel grid, so truncated hand pixels are stable)
FIGURE = np.array([
    (256, 64), (256, 112), (216, 112), (208, 176), (204.25, 232.25), (296, 112), (304, 176), (308.25, 232.25),
    (232, 256), (230, 344), (228, 432), (280, 256), (282, 344), (284, 432), (248, 56), (264, 56), (236, 60),
    (276, 60), (290, 448), (222, 448),
], dtype=np.float64)  # fmt: skip
HAND_OFFSETS = np.array([(3 * (k % 5), 4 * (k // 5)) for k in range(21)], dtype=np.float64)


def _meta(body_px, width=512, height=512, scores=None, right_root=None, left_root=None, right_scores=None):
    """A meta from pixel coordinates (all exact in float32 once normalised)."""
    size = np.array([width, height], np.float64)
    sc = np.full(20, 0.9) if scores is None else np.asarray(scores, np.float64)
    body = np.concatenate([np.asarray(body_px) / size, sc[:, None]], 1).astype(np.float32)

    def hand(root, scores):
        s = np.full(21, 0.9) if scores is None else np.asarray(scores, np.float64)
        return np.concatenate([(root + HAND_OFFSETS) / size, s[:, None]], 1).astype(np.float32)

    right = hand(body_px[4] if right_root is None else right_root, right_scores)
    left = hand(body_px[7] if left_root is None else left_root, None)
    return Meta(width, height, body, left, right, np.zeros((69, 3), np.float32))


def _stable_trunc(values):
    """Truncation of values that are not within 1e-6 of an integer (the retargeted points carry
    ~1e-13 of cos/sin rounding)."""
    values = np.asarray(values, np.float64)
    assert np.all(np.abs(values - np.round(values)) > 1e-6)
    return np.trunc(values)


def test_retarget_identity_full_body():
    s = _meta(FIGURE)
    r = Retargeter(s, s)
    assert r.sigma == 1.0 and r.scaled_size == (512, 512) and r.body_type == FULL
    assert r.ratios == [1.0] * 19 and r.warnings == []
    # ground: the reference's ankle-toe midpoints (440) against frame 0's ankles (432)
    assert r.delta_y == pytest.approx(432 - 440, abs=1e-9) and r.delta_x == pytest.approx(0, abs=1e-9)
    pose = r.frame(s)
    assert (pose.width, pose.height) == (512, 512)
    np.testing.assert_allclose(pose.body, FIGURE + (0, 8), rtol=0, atol=1e-9)
    assert np.array_equal(pose.body_scores, np.full(20, np.float32(0.9), np.float64))
    # hands: rho = 1; each root lands on its retargeted wrist (right-hand data in the slot "left")
    (xy0, p0), (xy1, p1) = pose.hands
    assert np.array_equal(xy0, _stable_trunc(FIGURE[4] + (0, 8) + HAND_OFFSETS))
    assert np.array_equal(xy1, _stable_trunc(FIGURE[7] + (0, 8) + HAND_OFFSETS))
    assert np.array_equal(p0, np.full(21, np.float32(0.9), np.float64)) and np.array_equal(p1, p0)


def test_retarget_scaled_reference_and_hand_scaling():
    # the same figure in a 1024 x 1024 reference: sigma 0.5, ratios 1, everything twice as large
    d, s = _meta(FIGURE * 2, 1024, 1024), _meta(FIGURE)
    r = Retargeter(d, s)
    assert r.sigma == 0.5 and r.scaled_size == (512, 512) and r.ratios == [1.0] * 19
    pose = r.frame(s)
    assert (pose.width, pose.height) == (1024, 1024)
    np.testing.assert_allclose(pose.body, 2 * (FIGURE + (0, 8)), rtol=0, atol=1e-9)
    # rho = max(r0, r1) / sigma = 2: the hand doubles about its root, the root on the new wrist
    (xy0, _), (xy1, _) = pose.hands
    assert np.array_equal(xy0, _stable_trunc(2 * (FIGURE[4] + (0, 8)) + 2 * HAND_OFFSETS))
    assert np.array_equal(xy1, _stable_trunc(2 * (FIGURE[7] + (0, 8)) + 2 * HAND_OFFSETS))


def _limb_lengths(p):
    from zoo.families.wan_animate_pose.meta import LIMBS

    return np.array([math.hypot(*(p[a] - p[b])) for a, b in LIMBS])


def test_retarget_ratios_and_symmetry():
    # a reference with longer right forearm and left thigh, and a wider left eye
    ref = FIGURE.copy()
    ref[4] += (0, 20)  # R forearm 56.1 -> 76.1
    ref[12] += (0, 30)  # L thigh 88.0 -> 118.0 (the calf shorter; the ankles stay: sigma 1)
    ref[15] += (8, 0)  # nose - L eye
    d, s = _meta(ref), _meta(FIGURE)
    r = Retargeter(d, s)
    assert r.sigma == 1.0 and r.scaled_size == (512, 512)
    raw = _limb_lengths(ref) / _limb_lengths(FIGURE)
    sym = raw.copy()
    for i, j in ((0, 1), (2, 4), (3, 5), (6, 9), (7, 10), (8, 11), (17, 18)):
        sym[i] = sym[j] = max(raw[i], raw[j])
    for i, j in ((13, 15), (14, 16)):
        sym[i] = sym[j] = (raw[i] + raw[j]) / 2
    np.testing.assert_allclose(r.ratios, sym, rtol=1e-12)
    assert r.ratios[3] == r.ratios[5] > 1.3 and r.ratios[10] == r.ratios[7] > 1.3 and r.ratios[12] == 1.0
    assert r.ratios[13] == r.ratios[15] != 1.0


def test_retarget_three_quarter_and_half_body_use_the_neck():
    d = _meta(FIGURE * 2, 1024, 1024)
    scores = np.full(20, 0.9)
    scores[[10, 13]] = 0.3  # ankles unsure: three-quarter body, sigma from the hips
    s = _meta(FIGURE, scores=scores)
    r = Retargeter(d, s)
    assert r.body_type == THREE_QUARTER and r.sigma == 0.5
    assert (r.delta_x, r.delta_y, r.anchor_x) == (0.0, 0.0, 256.0)  # neck of frame 0 = neck of the reference
    pose = r.frame(s)
    assert tuple(pose.body[1]) == (512.0, 224.0)  # the neck never moves: exactly the reference's neck
    np.testing.assert_allclose(pose.body, 2 * FIGURE, rtol=0, atol=1e-9)

    scores[[8, 11]] = 0.3  # hips too: half body, sigma from the areas sqrt(512 * 512) / sqrt(1024 * 1024)
    r = Retargeter(d, _meta(FIGURE, scores=scores))
    assert r.body_type == HALF and r.sigma == 0.5
    np.testing.assert_allclose(r.frame(_meta(FIGURE, scores=scores)).body, 2 * FIGURE, rtol=0, atol=1e-9)


def test_body_type_rules():
    def rows(y_hips=0.5, y_ankles=0.8, p_hips=0.9, p_ankles=0.9):
        b = [[0.5, 0.5, 0.9] for _ in range(20)]
        b[8] = b[11] = [0.5, y_hips, p_hips]
        b[10] = b[13] = [0.5, y_ankles, p_ankles]
        return b

    assert body_type(rows()) == FULL
    assert body_type(rows(y_ankles=1.0, p_ankles=0.4)) == FULL  # <= 1 and >= 0.4 pass
    assert body_type(rows(y_ankles=1.01)) == THREE_QUARTER
    assert body_type(rows(p_ankles=0.39)) == THREE_QUARTER
    assert body_type(rows(y_hips=1.01)) == HALF
    assert body_type(rows(p_hips=0.39, y_ankles=0.5)) == HALF
    # the pair's type is the lesser of the two
    s_scores = np.full(20, 0.9)
    s_scores[[10, 13]] = 0.2
    assert Retargeter(_meta(FIGURE), _meta(FIGURE, scores=s_scores)).body_type == THREE_QUARTER
    assert Retargeter(_meta(FIGURE, scores=s_scores), _meta(FIGURE)).body_type == THREE_QUARTER


def test_retarget_foot_clamp():
    s = _meta(FIGURE)
    r = Retargeter(s, s)
    long_feet = FIGURE.copy()
    long_feet[19] = long_feet[10] + (0, 60)  # R foot 60 > half the R calf (88.02 / 2)
    long_feet[18] = long_feet[13] + (-20, 20)  # L foot 28.3 > half the L calf (88.02 / 2)? no: kept
    pose = r.frame(_meta(long_feet))
    calf = math.hypot(2, 88)
    np.testing.assert_allclose(pose.body[19], pose.body[10] + (0, calf / 2), rtol=0, atol=1e-9)
    np.testing.assert_allclose(pose.body[18], pose.body[13] + (-20, 20), rtol=0, atol=1e-9)
    long_feet[18] = long_feet[13] + (-40, 40)  # 56.6 > 44.0: clamped along its direction
    pose = r.frame(_meta(long_feet))
    np.testing.assert_allclose(pose.body[18], pose.body[13] + np.array([-1, 1]) * calf / 2 / math.sqrt(2), atol=1e-9)
    # everything else as in the identity case
    np.testing.assert_allclose(pose.body[:18], FIGURE[:18] + (0, 8), rtol=0, atol=1e-9)


def test_retarget_hand_swap():
    s = _meta(FIGURE)
    r = Retargeter(s, s)
    q4, q7 = FIGURE[4] + (0, 8), FIGURE[7] + (0, 8)  # the retargeted wrists (identity case)
    # right-hand data (A) around the left wrist, left-hand data (B) around the right wrist: e1 > e2
    a0, b0 = FIGURE[7] + (0.5, 0.5), FIGURE[4] + (0.5, 0.5)
    (xy0, _), (xy1, _) = r.frame(_meta(FIGURE, right_root=a0, left_root=b0)).hands
    # slot "left" = B moved by dA = Q4 - A0; slot "right" = A moved by dB = Q7 - B0
    assert np.array_equal(xy0, _stable_trunc(b0 + HAND_OFFSETS + q4 - a0))
    assert np.array_equal(xy1, _stable_trunc(a0 + HAND_OFFSETS + q7 - b0))
    # both right where they are (e1 < e2): A's root on the right wrist in slot "left"
    a0, b0 = FIGURE[4] + (0.5, 0.5), FIGURE[7] + (0.5, 0.5)
    (xy0, _), (xy1, _) = r.frame(_meta(FIGURE, right_root=a0, left_root=b0)).hands
    assert np.array_equal(xy0, _stable_trunc(q4 + HAND_OFFSETS))
    assert np.array_equal(xy1, _stable_trunc(q7 + HAND_OFFSETS))
    # A's root nearer the left wrist, B's root on it: both distances use A's root, so they swap
    a0, b0 = np.array([270.25, 232.75]), FIGURE[7] + (0.5, 0.5)
    (xy0, _), (xy1, _) = r.frame(_meta(FIGURE, right_root=a0, left_root=b0)).hands
    assert np.array_equal(xy0, _stable_trunc(b0 + HAND_OFFSETS + q4 - a0))
    assert np.array_equal(xy1, _stable_trunc(a0 + HAND_OFFSETS + q7 - b0))


def test_retarget_dropped_hand_points():
    s = _meta(FIGURE)
    r = Retargeter(s, s)
    right_scores = np.full(21, 0.9)
    right_scores[[3, 4, 5]] = (0.39, 0.4, 0.45)  # below 0.4 dropped; 0.4 and 0.45 kept (not drawn later)
    (xy0, p0), _ = r.frame(_meta(FIGURE, right_scores=right_scores)).hands
    assert np.isnan(xy0[3]).all() and p0[3] == 0.0
    assert p0[4] == np.float32(0.4) and p0[5] == np.float32(0.45)
    kept = np.arange(21) != 3
    assert np.array_equal(xy0[kept], _stable_trunc(FIGURE[4] + (0, 8) + HAND_OFFSETS)[kept])
    # a dropped root: no root offset, the hand only follows the wrist's move (0, 8); A's root is
    # (-1, -1) for the swap test, nearer the right wrist: no swap
    right_scores[0] = 0.1
    a0 = FIGURE[4] + (10.5, 0.5)
    (xy0, p0), _ = r.frame(_meta(FIGURE, right_root=a0, right_scores=right_scores)).hands
    assert np.isnan(xy0[0]).all() and p0[0] == 0.0
    assert np.array_equal(xy0[4:], _stable_trunc(a0 + HAND_OFFSETS + (0, 8))[4:])
    # missing points are never drawn; the retargeted hand pixels are integers
    assert np.array_equal(xy0[np.isfinite(xy0)], np.trunc(xy0[np.isfinite(xy0)]))
    draw_pose(r.frame(_meta(FIGURE, right_root=a0, right_scores=right_scores)))


def test_retarget_sigma_branches():
    d_px = FIGURE * (2, 1.5)  # a 1024 x 768 reference
    s = _meta(FIGURE)
    ankles = Retargeter(_meta(d_px, 1024, 768), s)
    expected = (512 * abs((432 + 432) / 2 / 512 - 64 / 512)) / (768 * abs((648 + 648) / 2 / 768 - 96 / 768))
    assert ankles.sigma == expected and ankles.sigma == pytest.approx(2 / 3, rel=1e-15)
    assert ankles.scaled_size == (int(1024 * expected), int(768 * expected))

    scores = np.full(20, 0.9)
    scores[13] = 0.5  # not > 0.5: the hips
    hips = Retargeter(_meta(d_px, 1024, 768, scores=scores), s)
    assert hips.sigma == (512 * abs(256 / 512 - 64 / 512)) / (768 * abs(384 / 768 - 96 / 768))

    scores[0] = 0.5  # the nose: the image areas
    areas = Retargeter(_meta(d_px, 1024, 768), _meta(FIGURE, scores=scores))
    assert areas.sigma == math.sqrt(512 * 512) / math.sqrt(768 * 1024)
    assert hips.warnings == areas.warnings == ankles.warnings == []


def test_retarget_zero_sigma_heights_fall_back_to_areas():
    flat = FIGURE.copy()
    flat[[10, 13], 1] = flat[0, 1]  # nose and ankles on one line: zero height
    r = Retargeter(_meta(flat, 1024, 512), _meta(FIGURE))  # the original divides by zero
    assert r.sigma == math.sqrt(512 * 512) / math.sqrt(512 * 1024)
    assert len(r.warnings) == 1 and "reference" in r.warnings[0] and "areas" in r.warnings[0]
    r = Retargeter(_meta(FIGURE), _meta(flat))  # sigma would be 0
    assert r.sigma == 1.0 and len(r.warnings) == 1 and "first frame" in r.warnings[0]
    assert np.isfinite(r.frame(_meta(flat)).body).all()


def test_retarget_zero_length_limb_gets_ratio_one():
    s_px = FIGURE.copy()
    s_px[4] = s_px[3]  # R forearm of length 0 in frame 0: the original's ratio is inf, then a crash
    ref = FIGURE.copy()
    ref[7] += (0, 10)  # a longer L forearm in the reference
    r = Retargeter(_meta(ref), _meta(s_px))
    assert len(r.warnings) == 1 and "limb 3 (right elbow - right wrist)" in r.warnings[0] and "1.0" in r.warnings[0]
    left_forearm = math.hypot(4.25, 66.25) / math.hypot(4.25, 56.25)
    assert r.ratios[3] == r.ratios[5] == pytest.approx(left_forearm, rel=1e-12)  # max(1.0, that), symmetrised
    pose = r.frame(_meta(s_px))
    assert np.isfinite(pose.body).all()
    draw_pose(pose)
    # equal left forearms: the symmetrised ratio is the 1.0
    r = Retargeter(_meta(FIGURE), _meta(s_px))
    assert r.ratios[3] == r.ratios[5] == 1.0

"""Pose drawing as Wan2.2-Animate draws its pose video (``draw_aapose_by_meta_new``, threshold 0.5,
stick width "v2"): ``../shared/design/WAN_PREPROCESS.md`` section 6, bit for bit.

The canvas is RGB (the original writes it to the video as RGB, so ``(255,0,0)`` is red). Limbs are
filled ellipses in their dimmed colour ``trunc(colour * 0.6)``, then the joints in full colour, then
the two hands (the slot the original calls "left" first); face landmarks are never drawn.

Geometry is computed on Python floats, which are the IEEE doubles of the original's NumPy float64
scalars: squares and square roots go through ``**`` (C ``pow``, as NumPy's scalar power does; it is
not always ``x * x``), angles through ``math``. The hand edges' ``hsv_to_rgb`` colours are written as
the uint8 values OpenCV rounds the original's float colours to (6, table).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from zoo.families.wan_animate_pose.meta import LIMBS, U8, DrawPose

THRESHOLD = 0.5  # body limbs, joints and hand points are drawn from this score on (6)
EPS = 0.01  # hand ends must have truncated coordinates above this (i.e. >= 1) (6)

# limb i and joint j colours (R, G, B) (6, table); joint 18 (L toe) takes limb 18's colour, joint 19 its own
COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (200, 200, 0), (100, 100, 0),
)  # fmt: skip
# the limbs' fill: ``int(float(c) * 0.6)`` per channel, as the original computes it
DIMMED: tuple[tuple[int, int, int], ...] = tuple(
    (int(float(r) * 0.6), int(float(g) * 0.6), int(float(b) * 0.6)) for r, g, b in COLOURS
)

HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
# ``hsv_to_rgb([e / 20, 1, 1]) * 255`` as OpenCV rounds a float colour (6, table)
HAND_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 77, 0), (255, 153, 0), (255, 229, 0), (204, 255, 0), (128, 255, 0), (51, 255, 0),
    (0, 255, 25), (0, 255, 102), (0, 255, 179), (0, 255, 255), (0, 178, 255), (0, 102, 255), (0, 25, 255),
    (51, 0, 255), (128, 0, 255), (204, 0, 255), (255, 0, 230), (255, 0, 153), (255, 0, 77),
)  # fmt: skip
HAND_POINT_COLOUR = (0, 0, 255)  # blue in RGB (6)


def stick_width(height: int, width: int) -> int:
    """Limb half-width and joint radius "v2": ``max(trunc(min(H, W) / 200) - 1, 1)`` (6)."""
    return max(int(min(height, width) / 200) - 1, 1)


def hand_width(height: int, width: int) -> int:
    """Hand line thickness and hand point radius: ``max(stick_width // 2, 1)`` (6)."""
    return max(stick_width(height, width) // 2, 1)


DRAWABLE = 2.0**30  # OpenCV's coordinates are int32: beyond this the original's cv2 call raises


def _finite(*values: float) -> bool:
    """Whether every value is a coordinate OpenCV can draw (finite, within int32 with room)."""
    return all(math.isfinite(v) and abs(v) < DRAWABLE for v in values)


def draw_body(canvas: U8, body: list[list[float]], scores: list[float], sw: int) -> None:
    """In place (6): the 19 limbs in table order where both endpoint scores are >= 0.5 (no coordinate
    test: OpenCV clips), then the 20 joints with score >= 0.5. A non-finite coordinate (the original
    would crash on it) is not drawn."""
    for i, (a, b) in enumerate(LIMBS):
        if scores[a] < THRESHOLD or scores[b] < THRESHOLD:
            continue
        (xa, ya), (xb, yb) = body[a], body[b]
        if not _finite(xa, ya, xb, yb):
            continue
        mx, my = (xa + xb) / 2, (ya + yb) / 2
        length = ((ya - yb) ** 2 + (xa - xb) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        polygon = np.asarray(
            cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), sw), int(angle), 0, 360, 1), dtype=np.int32
        )
        cv2.fillConvexPoly(canvas, polygon, DIMMED[i])
    for j, (x, y) in enumerate(body):
        if scores[j] < THRESHOLD or not _finite(x, y):
            continue
        cv2.circle(canvas, (int(x), int(y)), sw, COLOURS[j], thickness=-1)


def draw_hand(canvas: U8, points: list[list[float]], scores: list[float], hw: int) -> None:
    """In place (6): the 20 edges whose end scores are >= 0.5 and whose four truncated coordinates are
    all >= 1, then the points with score >= 0.5 and both truncated coordinates >= 1. NaN points (a
    missing hand point) are never drawn."""
    for e, (a, b) in enumerate(HAND_EDGES):
        if scores[a] < THRESHOLD or scores[b] < THRESHOLD or not _finite(*points[a], *points[b]):
            continue
        x1, y1 = int(points[a][0]), int(points[a][1])
        x2, y2 = int(points[b][0]), int(points[b][1])
        if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
            cv2.line(canvas, (x1, y1), (x2, y2), HAND_COLOURS[e], thickness=hw)
    for (x, y), score in zip(points, scores, strict=True):
        if score < THRESHOLD or not _finite(x, y):
            continue
        px, py = int(x), int(y)
        if px > EPS and py > EPS:
            cv2.circle(canvas, (px, py), hw, HAND_POINT_COLOUR, thickness=-1)


def draw_pose(pose: DrawPose) -> U8:
    """Section 6: a new black ``height x width x 3`` RGB canvas with the pose drawn: limbs, joints,
    then the hands in the order of ``pose.hands``."""
    canvas = np.zeros((pose.height, pose.width, 3), dtype=np.uint8)
    sw = stick_width(pose.height, pose.width)
    hw = hand_width(pose.height, pose.width)
    body = np.asarray(pose.body, dtype=np.float64).tolist()
    scores = np.asarray(pose.body_scores, dtype=np.float64).tolist()
    draw_body(canvas, body, scores, sw)
    for xy, hand_scores in pose.hands:
        draw_hand(
            canvas,
            np.asarray(xy, dtype=np.float64).tolist(),
            np.asarray(hand_scores, dtype=np.float64).tolist(),
            hw,
        )
    return canvas

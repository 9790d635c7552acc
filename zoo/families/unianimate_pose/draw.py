"""OpenPose-style drawing of a pose dict as UniAnimate-DiT saves it (``draw_pose`` ->
``util.draw_body_and_foot``, ``util.draw_handpose``): ``../shared/design/POSE.md`` section 5, bit
for bit, on the fixed 512x768 canvas, and the JPEG file (``cv2.imwrite`` defaults, quality 95).

Colours are written in the array's channel order, which ``cv2.imwrite`` reads as BGR (so
``(255,0,0)`` is saved blue), as the original does. Two bit-identical simplifications (POSE.md 5.1,
5.3): each limb is drawn directly in its dimmed colour ``floor(colour * 0.6)`` instead of dimming
the whole canvas after the limbs, and the hand edges' ``hsv_to_rgb`` colours are the table's
uint8 values (OpenCV rounds the original's float colours to those). Faces are never drawn: the
original saves the face-less canvas (5.4).
"""

from __future__ import annotations

import math
from os import PathLike

import cv2
import numpy as np
import numpy.typing as npt

from zoo.families.unianimate_pose.dwpose import Pose

CANVAS_W, CANVAS_H = 512, 768
STICK_WIDTH = 4
JOINT_RADIUS = 4
HAND_POINT_RADIUS = 4
HAND_LINE_THICKNESS = 2
HAND_POINT_COLOUR = (0, 0, 255)
EPS = 0.01

# 1-based pairs into the 20-point body (POSE.md 5.1)
LIMBS = (
    (2, 3),
    (2, 6),
    (3, 4),
    (4, 5),
    (6, 7),
    (7, 8),
    (2, 9),
    (9, 10),
    (10, 11),
    (2, 12),
    (12, 13),
    (13, 14),
    (2, 1),
    (1, 15),
    (15, 17),
    (1, 16),
    (16, 18),
    (14, 19),
    (11, 20),
)
COLOURS = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
    (170, 255, 255),
    (255, 255, 0),
)
# the canvas-wide ``(canvas * 0.6).astype(uint8)`` applied to each limb colour
DIMMED = tuple(tuple(int(v) for v in (np.array(c, dtype=np.float64) * 0.6).astype(np.uint8)) for c in COLOURS)

HAND_EDGES = (
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 4),
    (0, 5),
    (5, 6),
    (6, 7),
    (7, 8),
    (0, 9),
    (9, 10),
    (10, 11),
    (11, 12),
    (0, 13),
    (13, 14),
    (14, 15),
    (15, 16),
    (0, 17),
    (17, 18),
    (18, 19),
    (19, 20),
)
# ``matplotlib.colors.hsv_to_rgb([e/20, 1, 1]) * 255`` as OpenCV rounds it (POSE.md 5.3's table)
HAND_COLOURS = (
    (255, 0, 0),
    (255, 77, 0),
    (255, 153, 0),
    (255, 229, 0),
    (204, 255, 0),
    (128, 255, 0),
    (51, 255, 0),
    (0, 255, 25),
    (0, 255, 102),
    (0, 255, 179),
    (0, 255, 255),
    (0, 178, 255),
    (0, 102, 255),
    (0, 25, 255),
    (51, 0, 255),
    (128, 0, 255),
    (204, 0, 255),
    (255, 0, 230),
    (255, 0, 153),
    (255, 0, 77),
)

U8 = npt.NDArray[np.uint8]


def draw_body(canvas: U8, candidate: npt.NDArray[np.float64], subset: npt.NDArray[np.float64]) -> None:
    """POSE.md 5.1-5.2 in place: the 19 limbs (dimmed ellipses), then the 20 joints."""
    h, w = canvas.shape[:2]
    for i, (a, b) in enumerate(LIMBS):
        ia, ib = subset[a - 1], subset[b - 1]
        if ia == -1 or ib == -1:
            continue
        xa, ya = candidate[int(ia)][0] * float(w), candidate[int(ia)][1] * float(h)
        xb, yb = candidate[int(ib)][0] * float(w), candidate[int(ib)][1] * float(h)
        mx, my = (xa + xb) / 2, (ya + yb) / 2
        length = ((ya - yb) ** 2 + (xa - xb) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        polygon = np.asarray(
            cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1), dtype=np.int32
        )
        cv2.fillConvexPoly(canvas, polygon, DIMMED[i])
    for j in range(len(subset)):
        index = int(subset[j])
        if index == -1:
            continue
        x, y = candidate[index][0:2]
        cv2.circle(canvas, (int(x * w), int(y * h)), JOINT_RADIUS, COLOURS[j], thickness=-1)


def draw_hands(canvas: U8, hands: npt.NDArray[np.float64]) -> None:
    """POSE.md 5.3 in place: each hand (left first) its 20 edges, then its 21 points, where the
    truncated pixel coordinates are > 0.01."""
    h, w = canvas.shape[:2]
    for peaks in hands:
        for e, (a, b) in enumerate(HAND_EDGES):
            x1, y1 = int(peaks[a][0] * w), int(peaks[a][1] * h)
            x2, y2 = int(peaks[b][0] * w), int(peaks[b][1] * h)
            if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
                cv2.line(canvas, (x1, y1), (x2, y2), HAND_COLOURS[e], thickness=HAND_LINE_THICKNESS)
        for point in peaks:
            x, y = int(point[0] * w), int(point[1] * h)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), HAND_POINT_RADIUS, HAND_POINT_COLOUR, thickness=-1)


def draw_pose(pose: Pose) -> U8:
    """POSE.md section 5: the saved canvas of one pose, ``uint8 [768,512,3]`` (body, then hands;
    no face)."""
    canvas = np.zeros((CANVAS_H, CANVAS_W, 3), dtype=np.uint8)
    draw_body(canvas, pose.candidate, np.asarray(pose.subset).reshape(-1))
    draw_hands(canvas, pose.hands)
    return canvas


def write_jpeg(path: str | PathLike[str], canvas: U8) -> None:
    """``cv2.imwrite(path, canvas)`` with its defaults (JPEG quality 95, 4:2:0) as the original
    writes the pose frames; raises OSError where OpenCV cannot write it."""
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")

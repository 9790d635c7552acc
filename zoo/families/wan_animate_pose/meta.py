"""The pose step's data: a frame's pose meta (WAN_PREPROCESS.md 4), the drawable form of a pose
(6) and the tables both the drawing and the retargeting read (the 19 limbs and their order).

Arithmetic conventions of the whole package: the original runs under NumPy 1 (Wan2.2 pins
``numpy<2``), whose value-based casting decides float32 vs float64 in four places (spec section
0, "[np1]"). Every function here writes the [np1] dtypes out explicitly (``np.float32(...)``
casts, float64 where NumPy 1 computes in double), so the results are the same whichever NumPy is
installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# ImageNet statistics (RGB order): ViTPose's normalisation (applied to BGR crops, 3.3 Q1) and SAM2's
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WHOLEBODY_POINTS = 133  # COCO-WholeBody (3.5)
BODY_POINTS = 20  # the body layout of section 4
HAND_POINTS = 21
FACE_ROWS = 69  # wb 22..90: row 0 is the right heel, rows 1..68 the face (4 item 4)

# op j -> (A_j, B_j): body[j] = (kp[A_j] + kp[B_j]) / 2 (4 item 2)
BODY_FROM_WHOLEBODY: tuple[tuple[int, int], ...] = (
    (0, 0), (6, 5), (6, 6), (8, 8), (10, 10), (5, 5), (7, 7), (9, 9), (12, 12), (14, 14),
    (16, 16), (11, 11), (13, 13), (15, 15), (2, 2), (1, 1), (4, 4), (3, 3), (17, 18), (20, 21),
)  # fmt: skip
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
FACE = slice(22, 91)

# the 19 limbs in drawing (and retargeting) order: (first endpoint a, second endpoint b), op indices (6, 7)
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (13, 18), (10, 19),
)  # fmt: skip
BODY_NAMES: tuple[str, ...] = (
    "nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder", "left elbow",
    "left wrist", "right hip", "right knee", "right ankle", "left hip", "left knee", "left ankle",
    "right eye", "left eye", "right ear", "left ear", "left toe", "right toe",
)  # fmt: skip


@dataclass
class Meta:
    """One image's pose (4 item 5): coordinates normalised by the size of the first image of the
    pose call (``width`` x ``height``), ``(x, y, score)`` float32 rows."""

    width: int
    height: int
    body: F32  # [20, 3]
    left_hand: F32  # [21, 3] (wb 91..111)
    right_hand: F32  # [21, 3] (wb 112..132)
    face: F32  # [69, 3] (wb 22..90)
    reused: bool = False  # the body was taken from the previous image (4 item 3)


@dataclass
class DrawPose:
    """A pose as the drawing takes it (6): pixel coordinates on a ``width`` x ``height`` canvas.
    ``hands`` are drawn in order (the slot the original calls "left" first); a missing hand point
    is NaN with score 0 (never drawn)."""

    width: int
    height: int
    body: F64  # [20, 2] pixels
    body_scores: F64  # [20]
    hands: tuple[tuple[F64, F64], tuple[F64, F64]]  # ((xy [21, 2], scores [21]) "left", ... "right")

"""Retargeting without FLUX (``get_retarget_pose(meta0, ref_meta, metas, None, None)``):
``../shared/design/WAN_PREPROCESS.md`` section 7, bit for bit.

Every driving frame's skeleton is re-drawn with the reference's limb lengths: limb ratios reference /
frame 0 (symmetrised), forward kinematics from the neck, a global scale ``sigma`` and an anchor
offset (feet or neck), and the hands scaled about their roots and moved with the wrists (quirk Q11:
integer hand pixels, the right hand lands in the slot named "left").

Arithmetic is on Python floats, the IEEE doubles the original computes with (its float32 metas are
turned into Python floats by ``tolist``): lengths ``(dx**2 + dy**2)**0.5`` through C ``pow`` as NumPy's
scalar power does, angles through ``math``. The result does not depend on the installed NumPy.

Where the original crashes (Q10) something sensible is done and a warning recorded in ``warnings``:
a zero-length limb in frame 0 (ratio inf/NaN) gets ratio 1.0; a zero numerator or denominator of
``sigma`` (ZeroDivisionError / a zero scale) uses the ``sqrt``-of-areas fallback.
"""

from __future__ import annotations

import math

import numpy as np

from zoo.families.wan_animate_pose.meta import BODY_NAMES, LIMBS, DrawPose, Meta

SCALE_SCORE = 0.5  # nose / ankles / hips must score above this for sigma (7 item 1)
TYPE_SCORE = 0.4  # body type and hand points (7 items 3, 8 g)
FOOT_RATIO = 0.5  # a foot is at most half its calf (7 item 8 c)
FULL, THREE_QUARTER, HALF = 2, 1, 0
BODY_TYPE_NAMES = {FULL: "full body", THREE_QUARTER: "three-quarter body", HALF: "half body"}
# limb index pairs that get the larger ratio of the two, then the pairs that get their mean (7 item 5)
SYMMETRIC_MAX = ((0, 1), (2, 4), (3, 5), (6, 9), (7, 10), (8, 11), (17, 18))
SYMMETRIC_MEAN = ((13, 15), (14, 16))

Points = list[list[float]]


def _pixels(body: Points, width: float, height: float) -> Points:
    """Normalised ``(x, y, ...)`` rows to pixel ``[x * W, y * H]``."""
    return [[row[0] * width, row[1] * height] for row in body]


def _length(p: Points, a: int, b: int) -> float:
    """``((dx)**2 + (dy)**2) ** 0.5`` of the limb ``a -> b``; ``**`` is C ``pow`` like NumPy's scalar power."""
    return float(((p[a][0] - p[b][0]) ** 2 + (p[a][1] - p[b][1]) ** 2) ** 0.5)


def _angle(p: Points, a: int, b: int) -> float:
    """``degrees(atan2(y_a - y_b, x_a - x_b))`` (7)."""
    return math.degrees(math.atan2(p[a][1] - p[b][1], p[a][0] - p[b][0]))


def _first_pass(p: Points, ratios: list[float]) -> tuple[list[float], list[float]]:
    """New limb lengths ``len_i(P) * r_i`` and angles ``ang_i``, all on the unmodified ``P`` (7 items 6, 8 b)."""
    lengths = [_length(p, a, b) * ratios[i] for i, (a, b) in enumerate(LIMBS)]
    angles = [_angle(p, a, b) for a, b in LIMBS]
    return lengths, angles


def _second_pass(p: Points, lengths: list[float], angles: list[float]) -> Points:
    """Forward kinematics from the neck in limb order: ``Q[b] = Q[a] - L * (cos, sin)(radians(ang))``,
    ``Q[a]`` as already updated (7 items 6, 8 d)."""
    q = [list(row) for row in p]
    for i, (a, b) in enumerate(LIMBS):
        rad = math.radians(angles[i])
        q[b] = [q[a][0] - lengths[i] * math.cos(rad), q[a][1] - lengths[i] * math.sin(rad)]
    return q


def body_type(body: Points) -> int:
    """``FULL`` / ``THREE_QUARTER`` / ``HALF`` of a normalised skeleton (threshold 0.4) (7 item 3)."""
    hips = body[8][1] <= 1 and body[11][1] <= 1 and body[8][2] >= TYPE_SCORE and body[11][2] >= TYPE_SCORE
    ankles = body[10][1] <= 1 and body[13][1] <= 1 and body[10][2] >= TYPE_SCORE and body[13][2] >= TYPE_SCORE
    if ankles and hips:
        return FULL
    return THREE_QUARTER if hips else HALF


def _limb_name(i: int) -> str:
    a, b = LIMBS[i]
    return f"limb {i} ({BODY_NAMES[a]} - {BODY_NAMES[b]})"


class Retargeter:
    """Section 7: set up from the reference meta ``D`` (at the resized reference size ``W_d x H_d``) and
    the frame-0 meta ``S`` (video size), then :meth:`frame` retargets each frame onto a ``W_d x H_d``
    canvas. ``warnings`` lists what was done where the original crashes.

    Attributes (7 items 1-7): ``sigma``; ``scaled_size`` ``(W', H')``; ``body_type`` (``FULL``,
    ``THREE_QUARTER``, ``HALF``); ``ratios`` (19, symmetrised); ``delta_x``, ``delta_y``, ``anchor_x``;
    ``reference_size`` ``(W_d, H_d)``."""

    def __init__(self, reference: Meta, first: Meta) -> None:
        self.warnings: list[str] = []
        d = np.asarray(reference.body, dtype=np.float64).tolist()
        s = np.asarray(first.body, dtype=np.float64).tolist()
        self.reference_size = (reference.width, reference.height)  # (W_d, H_d): the drawing canvas
        w_d, h_d = reference.width, reference.height
        w_s, h_s = first.width, first.height

        self.sigma = self._sigma(d, s, (w_d, h_d), (w_s, h_s))  # (7 item 1)
        w_r, h_r = int(w_d * self.sigma), int(h_d * self.sigma)  # (7 item 2)
        self.scaled_size = (w_r, h_r)
        self.body_type = min(body_type(d), body_type(s))  # (7 item 3)

        # limb ratios: the reference at the scaled, truncated size over frame 0 (7 item 4)
        d_px, s_px = _pixels(d, float(w_r), float(h_r)), _pixels(s, float(w_s), float(h_s))
        ratios = []
        for i, (a, b) in enumerate(LIMBS):
            src = _length(s_px, a, b)
            if src == 0:  # Q10: inf / NaN, the original crashes later
                self.warnings.append(
                    f"retargeting: {_limb_name(i)} has zero length in frame 0; its ratio is set to 1.0"
                )
                ratios.append(1.0)
            else:
                ratios.append(_length(d_px, a, b) / src)
        for i, j in SYMMETRIC_MAX:  # (7 item 5)
            ratios[i] = ratios[j] = max(ratios[i], ratios[j])
        for i, j in SYMMETRIC_MEAN:
            ratios[i] = ratios[j] = (ratios[i] + ratios[j]) / 2
        self.ratios = ratios

        # frame 0 rescaled (no foot clamp), for the anchor only (7 item 6)
        lengths, angles = _first_pass(s_px, ratios)
        t = _second_pass(s_px, lengths, angles)
        if self.body_type == FULL:  # (7 item 7)
            ground_d = max((d[13][1] + d[18][1]) / 2, (d[10][1] + d[19][1]) / 2) * h_r
            self.delta_y = max(t[10][1], t[13][1]) - ground_d
            self.anchor_x = (t[8][0] + t[11][0]) / 2
            self.delta_x = self.anchor_x - (d[8][0] + d[11][0]) * w_r / 2
        else:
            self.delta_y = t[1][1] - d[1][1] * h_r
            self.delta_x = t[1][0] - d[1][0] * w_r
            self.anchor_x = t[1][0]

    def _sigma(self, d: Points, s: Points, size_d: tuple[int, int], size_s: tuple[int, int]) -> float:
        """The global scale (7 item 1): nose-to-mean-ankle (else nose-to-mean-hip) height, frame 0 over
        the reference, else ``sqrt(H_s W_s) / sqrt(H_d W_d)``. A zero height (the original divides by
        zero or later by ``sigma = 0``) falls back to the areas, with a warning."""
        (w_d, h_d), (w_s, h_s) = size_d, size_s
        for name, (left, right) in (("ankles", (10, 13)), ("hips", (8, 11))):
            joints = (0, left, right)
            if all(s[j][2] > SCALE_SCORE and d[j][2] > SCALE_SCORE for j in joints):
                src = h_s * abs((s[left][1] + s[right][1]) / 2 - s[0][1])
                dst = h_d * abs((d[left][1] + d[right][1]) / 2 - d[0][1])
                if src != 0 and dst != 0:
                    return 1.0 * src / dst
                self.warnings.append(
                    f"retargeting: the nose-to-{name} height is zero in the "
                    f"{'reference' if dst == 0 else 'first frame'}; the scale is taken from the image areas"
                )
                break
        return math.sqrt(h_s * w_s) / math.sqrt(h_d * w_d)

    def frame(self, meta: Meta) -> DrawPose:
        """One frame retargeted (7 item 8), as drawn on the reference-size canvas (7 item 9).

        The frame-0 correction of ``delta_x`` (8 e) is skipped: with ``S`` = frame 0 it is exactly 0.0.
        """
        w_s, h_s = meta.width, meta.height
        w_d, h_d = self.reference_size
        sigma = self.sigma
        body = np.asarray(meta.body, dtype=np.float64).tolist()
        p = _pixels(body, w_s, h_s)  # (a)
        lengths, angles = _first_pass(p, self.ratios)  # (b)
        if lengths[18] > lengths[8] * FOOT_RATIO:  # (c) right foot vs right calf, then left
            lengths[18] = lengths[8] * FOOT_RATIO
        if lengths[17] > lengths[11] * FOOT_RATIO:
            lengths[17] = lengths[11] * FOOT_RATIO
        q = _second_pass(p, lengths, angles)  # (d)
        q = [[(x - self.delta_x) / sigma, (y - self.delta_y) / sigma] for x, y in q]  # (f)

        # (g) hands: pixels f64(x) * W, then back over the frame size, scaled by rho about the root
        rho = max(self.ratios[0], self.ratios[1]) / sigma
        right = _scale_hand(_normalised_hand(meta.right_hand, w_s, h_s), rho)  # A
        left = _scale_hand(_normalised_hand(meta.left_hand, w_s, h_s), rho)  # B
        d_a = [q[4][0] - p[4][0], q[4][1] - p[4][1]]
        d_b = [q[7][0] - p[7][0], q[7][1] - p[7][1]]
        a0, b0 = right[0], left[0]
        if a0[0] != -1:
            d_a = [d_a[0] + (p[4][0] - a0[0] * w_s), d_a[1] + (p[4][1] - a0[1] * h_s)]
        if b0[0] != -1:
            d_b = [d_b[0] + (p[7][0] - b0[0] * w_s), d_b[1] + (p[7][1] - b0[1] * h_s)]
        # both distances use the right hand's root (Q11)
        e1 = ((p[4][0] - a0[0] * w_s) ** 2 + (p[4][1] - a0[1] * h_s) ** 2) ** 0.5
        e2 = ((p[7][0] - a0[0] * w_s) ** 2 + (p[7][1] - a0[1] * h_s) ** 2) ** 0.5
        if e1 > e2:
            slots = (_place(left, d_a, w_s, h_s), _place(right, d_b, w_s, h_s))
        else:
            slots = (_place(right, d_a, w_s, h_s), _place(left, d_b, w_s, h_s))

        # (h) normalised by the unscaled reference size, back to pixels for drawing
        xy = np.array([[(x / w_d) * w_d, (y / h_d) * h_d] for x, y in q], dtype=np.float64)
        scores = np.array([row[2] for row in body], dtype=np.float64)
        return DrawPose(width=w_d, height=h_d, body=xy, body_scores=scores, hands=slots)


def _normalised_hand(hand: np.ndarray, width: int, height: int) -> Points:
    """``(f64(x) * W / W, f64(y) * H / H, p)``: the original's pixel conversion and its undoing (7, 8 g)."""
    return [[(x * float(width)) / width, (y * float(height)) / height, pr] for x, y, pr in hand.tolist()]


def _scale_hand(hand: Points, rho: float) -> Points:
    """Points scoring below 0.4 -> ``(-1, -1, 0)``; the others scaled by ``rho`` about the root:
    ``x * rho - x0 * (rho - 1)`` (8 g)."""
    off_x, off_y = hand[0][0] * (rho - 1), hand[0][1] * (rho - 1)
    return [[-1.0, -1.0, 0.0] if pr < TYPE_SCORE else [x * rho - off_x, y * rho - off_y, pr] for x, y, pr in hand]


def _place(hand: Points, delta: list[float], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixels ``trunc(x * W + dx)``; a score of exactly 0 -> missing (NaN, score 0) (8 g)."""
    xy = np.full((len(hand), 2), np.nan, dtype=np.float64)
    scores = np.zeros(len(hand), dtype=np.float64)
    for k, (x, y, pr) in enumerate(hand):
        if pr == 0:
            continue
        xy[k] = (int(x * width + delta[0]), int(y * height + delta[1]))
        scores[k] = pr
    return xy, scores

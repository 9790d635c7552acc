"""Pictures to try the pose step with: a white figure (head, torso, arms, legs) on a dark, noisy
background, walking across the frame beside a red ball. The stand-in graphs (:mod:`.standins`)
find white regions as people and coloured ones as other objects, so these exercise every step."""

from __future__ import annotations

import cv2
import numpy as np

from zoo.families.wan_animate_pose.meta import U8


def draw_figure(canvas: U8, cx: float, top: float, height: float, phase: float) -> None:
    """A white figure ``height`` pixels tall, its head's top at ``top``, centred on ``cx``; arms
    and legs swing with ``phase`` (radians)."""
    h = height
    white = (235, 235, 235)
    head = (int(cx), int(top + 0.08 * h))
    cv2.ellipse(canvas, head, (max(int(0.08 * h), 1), max(int(0.09 * h), 1)), 0, 0, 360, white, -1)
    neck_y, hip_y = top + 0.17 * h, top + 0.55 * h
    cv2.rectangle(canvas, (int(cx - 0.13 * h), int(neck_y)), (int(cx + 0.13 * h), int(hip_y)), white, -1)
    thick = max(int(0.09 * h), 1)
    swing = 0.25 * np.sin(phase)
    for side in (-1, 1):
        shoulder = (int(cx + side * 0.13 * h), int(neck_y + 0.03 * h))
        hand = (int(shoulder[0] + side * 0.08 * h + swing * side * 0.2 * h), int(neck_y + 0.38 * h))
        cv2.line(canvas, shoulder, hand, white, thick)
        hip = (int(cx + side * 0.07 * h), int(hip_y))
        foot = (int(hip[0] + side * swing * 0.3 * h), int(top + h))
        cv2.line(canvas, hip, foot, white, thick)


def figure_frames(count: int, height: int, width: int, seed: int = 0) -> list[U8]:
    """``count`` RGB frames ``height`` x ``width``: the figure walking left to right (a still
    portrait for ``count == 1``), a red ball bouncing beside it."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    frames = []
    for t in range(count):
        canvas = background.copy()
        progress = t / max(count - 1, 1)
        figure_h = 0.8 * height
        cx = width * (0.5 if count == 1 else 0.25 + 0.5 * progress)
        draw_figure(canvas, cx, 0.1 * height, figure_h, phase=2 * np.pi * progress)
        ball = (int(width * (0.85 - 0.1 * progress)), int(height * (0.7 - 0.2 * abs(np.sin(3 * progress)))))
        cv2.circle(canvas, ball, max(int(0.06 * min(height, width)), 2), (220, 40, 30), -1)
        frames.append(canvas)
    return frames

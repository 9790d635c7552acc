"""Alignment of every driving frame's skeleton to the reference (``run_align_pose.py``'s ``mp_main``):
``../shared/design/POSE.md`` section 4, bit for bit: a global anisotropic scale from frame 0
(shoulder x-extent, torso height; signed), the 15 bones in order with ratios measured on frame 0's
current coordinates during its own pass, then the offset that puts frame 0's neck on the
reference's, every frame in order.

Deliberate deviation (POSE.md 7, item 14): where the original computes a factor from a missing
keypoint (``-1``) or divides by zero, and so draws nonsense or crashes (``int(nan)``), that factor
is 1 and an :class:`AlignWarning` says what and why:

* a bone whose parent or child is missing in frame 0 or in the reference, or whose frame-0 length
  is 0: ``bone head16 kept at its length (ratio 1)``;
* the x scale when a shoulder (op 2, op 5) is missing in either image, or frame 0's shoulders have
  the same x: ``x scale 1 (ratio 1)``; the y scale likewise for the shoulders and hips (op 2, 5,
  8, 11) or a zero frame-0 torso height: ``y scale 1 (ratio 1)``;
* the neck (op 1) missing in either image (which in a DWPose dict means a shoulder is missing
  too): ``no translation (offset 0)``.

Each warning names the keypoint by its OpenPose name and index (``R ear (op 16)``) and the image
(``frame 0`` / ``the reference``). Everywhere else the arithmetic is the original's. "Missing"
means the point's subset entry is -1 (its candidate row is then ``(-1,-1)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from zoo.families.unianimate_pose.dwpose import OPENPOSE_NAMES, Pose

FRAME0 = "frame 0"
REFERENCE = "the reference"


@dataclass(frozen=True)
class Bone:
    name: str
    parent: int
    child: int
    body: tuple[int, ...]  # body rows moved with the child
    hand: int | None  # hands[hand] moves too (0 left, 1 right)
    upper: bool  # the original writes the displacement as (parent - child) * (1 - r)


# POSE.md 4.2, in the order they are applied
BONES = (
    Bone("neck", 1, 0, (0, 14, 15, 16, 17), None, True),
    Bone("shoulder2", 1, 2, (2, 3, 4), 1, True),
    Bone("shoulder5", 1, 5, (5, 6, 7), 0, True),
    Bone("arm3", 2, 3, (3, 4), 1, True),
    Bone("arm4", 3, 4, (4,), 1, True),
    Bone("arm6", 5, 6, (6, 7), 0, True),
    Bone("arm7", 6, 7, (7,), 0, True),
    Bone("head14", 0, 14, (14, 16), None, True),
    Bone("head15", 0, 15, (15, 17), None, True),
    Bone("head16", 14, 16, (16,), None, True),
    Bone("head17", 15, 17, (17,), None, True),
    Bone("ll1", 8, 9, (9, 10, 19), None, False),
    Bone("ll2", 9, 10, (10, 19), None, False),
    Bone("rl1", 11, 12, (12, 13, 18), None, False),
    Bone("rl2", 12, 13, (13, 18), None, False),
)


def keypoint_name(j: int) -> str:
    """``R ear (op 16)``."""
    return f"{OPENPOSE_NAMES[j]} (op {j})"


@dataclass(frozen=True)
class AlignWarning:
    """A factor the original would compute from a missing keypoint or a zero length, and what was
    done instead. ``step`` is a bone's name, ``x scale``, ``y scale`` or ``offset``; ``missing``
    the ``(image, keypoint name)`` pairs that were missing; ``reason`` and ``action`` in words."""

    step: str
    missing: tuple[tuple[str, str], ...]
    reason: str
    action: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.action}"


@dataclass
class Alignment:
    """The factors measured on frame 0: global scale, the 15 bone ratios (in :data:`BONES` order)
    and the offset."""

    x_ratio: float
    y_ratio: float
    ratios: list[float]
    offset: tuple[float, float]


def _missing(points: Sequence[int], frame0: Pose, reference: Pose) -> tuple[tuple[str, str], ...]:
    out = []
    for image, pose in ((FRAME0, frame0), (REFERENCE, reference)):
        out += [(image, keypoint_name(j)) for j in points if pose.subset[j] == -1]
    return tuple(out)


def _missing_reason(missing: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{name} is missing in {image}" for image, name in missing)


def _scale(pose: Pose, x_ratio: float, y_ratio: float) -> None:
    pose.candidate[:, 0] *= x_ratio
    pose.candidate[:, 1] *= y_ratio
    pose.faces[:, :, 0] *= x_ratio
    pose.faces[:, :, 1] *= y_ratio
    pose.hands[:, :, 0] *= x_ratio
    pose.hands[:, :, 1] *= y_ratio


def _move(pose: Pose, bone: Bone, ratio: float) -> None:
    c = pose.candidate
    p, q = bone.parent, bone.child
    if bone.upper:
        dx = (c[p][0] - c[q][0]) * (1.0 - ratio)
        dy = (c[p][1] - c[q][1]) * (1.0 - ratio)
    else:
        dx = (c[q][0] - c[p][0]) * (ratio - 1.0)
        dy = (c[q][1] - c[p][1]) * (ratio - 1.0)
    for j in bone.body:
        c[j, 0] += dx
        c[j, 1] += dy
    if bone.hand is not None:
        pose.hands[bone.hand, :, 0] += dx
        pose.hands[bone.hand, :, 1] += dy


def _length(c: npt.NDArray[np.float64], a: int, b: int) -> np.float64:
    """The original's ``((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5`` on float64 scalars."""
    length: np.float64 = ((c[a][0] - c[b][0]) ** 2 + (c[a][1] - c[b][1]) ** 2) ** 0.5
    return length


def _ratio(num: np.float64, den: np.float64) -> float | None:
    """``num / den``, or None where the original would divide by zero or overflow."""
    if den == 0:
        return None
    with np.errstate(over="ignore"):
        ratio = float(num / den)
    return ratio if np.isfinite(ratio) else None


def _translate(pose: Pose, offset: np.ndarray) -> None:
    pose.candidate += offset[np.newaxis, :]
    pose.faces += offset[np.newaxis, np.newaxis, :]
    pose.hands += offset[np.newaxis, np.newaxis, :]


def _global_scale(frame0: Pose, reference: Pose, warnings: list[AlignWarning]) -> tuple[float, float]:
    r, f = reference.candidate, frame0.candidate
    missing = _missing((2, 5), frame0, reference)
    if missing:
        x_ratio = 1.0
        warnings.append(AlignWarning("x scale", missing, _missing_reason(missing), "x scale 1 (ratio 1)"))
    elif (ratio := _ratio(r[5][0] - r[2][0], f[5][0] - f[2][0])) is not None:
        x_ratio = ratio
    else:
        x_ratio = 1.0
        warnings.append(
            AlignWarning(
                "x scale",
                (),
                f"{keypoint_name(2)} and {keypoint_name(5)} have the same x in {FRAME0} (zero shoulder x-extent)",
                "x scale 1 (ratio 1)",
            )
        )
    missing = _missing((2, 5, 8, 11), frame0, reference)
    ref_torso = 0.5 * (r[8] + r[11])[1] - 0.5 * (r[2] + r[5])[1]
    frame_torso = 0.5 * (f[8] + f[11])[1] - 0.5 * (f[2] + f[5])[1]
    if missing:
        y_ratio = 1.0
        warnings.append(AlignWarning("y scale", missing, _missing_reason(missing), "y scale 1 (ratio 1)"))
    elif (ratio := _ratio(ref_torso, frame_torso)) is not None:
        y_ratio = ratio
    else:
        y_ratio = 1.0
        warnings.append(
            AlignWarning(
                "y scale",
                (),
                f"the shoulders' and hips' midpoints have the same y in {FRAME0} (zero torso height)",
                "y scale 1 (ratio 1)",
            )
        )
    return x_ratio, y_ratio


def _measure(frame0: Pose, reference: Pose, warnings: list[AlignWarning]) -> Alignment:
    """Frame 0's own pass (POSE.md 4.4), in place: scale, bones measured right before each is
    applied, then the offset. Returns the factors for the other frames."""
    x_ratio, y_ratio = _global_scale(frame0, reference, warnings)
    _scale(frame0, x_ratio, y_ratio)
    ref, c = reference.candidate, frame0.candidate
    ratios = []
    for bone in BONES:
        missing = _missing((bone.parent, bone.child), frame0, reference)
        action = f"bone {bone.name} kept at its length (ratio 1)"
        ratio = 1.0
        if missing:
            warnings.append(AlignWarning(bone.name, missing, _missing_reason(missing), action))
        elif (measured := _ratio(_length(ref, bone.parent, bone.child), _length(c, bone.parent, bone.child))) is None:
            reason = (
                f"bone {bone.name} has zero length in {FRAME0} after the global scale "
                f"({keypoint_name(bone.parent)} and {keypoint_name(bone.child)} coincide)"
            )
            warnings.append(AlignWarning(bone.name, (), reason, action))
        else:
            ratio = measured
        ratios.append(ratio)
        _move(frame0, bone, ratio)
    missing = _missing((1,), frame0, reference)
    if missing:
        offset = np.zeros(2)
        warnings.append(AlignWarning("offset", missing, _missing_reason(missing), "no translation (offset 0)"))
    else:
        offset = ref[1] - c[1]
    _translate(frame0, offset)
    return Alignment(x_ratio, y_ratio, ratios, (float(offset[0]), float(offset[1])))


def alignment_factors(reference: Pose, frame0: Pose) -> tuple[Alignment, list[AlignWarning]]:
    """The factors frame 0 gives (POSE.md 4.1-4.3) and the warnings of the deviation above."""
    warnings: list[AlignWarning] = []
    return _measure(frame0.copy(), reference, warnings), warnings


def align_poses(reference: Pose, frames: Sequence[Pose]) -> tuple[list[Pose], list[AlignWarning]]:
    """POSE.md section 4: every frame aligned to the reference with the factors measured on
    frame 0 (new :class:`Pose` objects; the inputs are not changed), and the warnings of the
    deviation above (empty when the original's arithmetic applied throughout)."""
    if not frames:
        return [], []
    warnings: list[AlignWarning] = []
    first = frames[0].copy()
    factors = _measure(first, reference, warnings)
    out = [first]
    offset = np.array(factors.offset)
    for frame in frames[1:]:
        pose = frame.copy()
        _scale(pose, factors.x_ratio, factors.y_ratio)
        for bone, ratio in zip(BONES, factors.ratios):
            _move(pose, bone, ratio)
        _translate(pose, offset)
        out.append(pose)
    return out, warnings

"""UniAnimate-DiT's pose step (``../shared/design/POSE.md``): DWPose on a driving video and a
reference image, alignment of every frame's skeleton to the reference, OpenPose-style drawing,
as the original's ``run_align_pose.py`` does it.

The numerical core lives here as pure functions on numpy arrays and model callables:
:mod:`.dwpose` (detection, whole-body keypoints, the drawing dict), :mod:`.align` (alignment to
the reference) and :mod:`.draw` (the 512x768 canvases and their JPEG files).

The family's declaration is :data:`FAMILY` (see ``family.py``): the two imported graphs, their
sources and the stand-ins ``zoo random`` writes."""

from zoo.families.unianimate_pose.family import FAMILY

__all__ = ["FAMILY"]

"""``zoo pose`` for unianimate-pose: the original's ``run_align_pose.py`` (POSE.md section 0) on the
export's runners.

Every frame of the driving video as ``cv2.VideoCapture`` decodes it (a folder: every video in it,
sorted by name, frames concatenated: POSE.md 7 item 17), the reference by ``cv2.imread``, DWPose
through the ``detector`` and ``pose_model`` runners (one pose call per image, person 0's crop:
:func:`~.dwpose.pose_of_image`), the alignment to the reference from frame 0 (:func:`~.align.align_poses`,
ratio 1 with a warning where a keypoint is missing or a bone has no length), the drawing and the
JPEG files ``0000.jpg, 0001.jpg, ...`` and ``pose.jpg`` (the reference's own pose, unaligned).

Inputs are checked when the step is made (:func:`pose_step`), before any runner exists: the
image must decode, every video must open and give a first frame. Frames are decoded again,
streamed, when the step runs, so a long video is never held in memory whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from zoo.contract import Option, PoseRun, Runner, Runners
from zoo.errors import InputError
from zoo.families.unianimate_pose.align import AlignWarning, align_poses
from zoo.families.unianimate_pose.draw import draw_pose, write_jpeg
from zoo.families.unianimate_pose.dwpose import F32, U8, PoseResult, pose_of_image
from zoo.infra.media import check_media_path

REFERENCE_POSE_FILE = "pose.jpg"  # the names the original writes and its inference scripts read

POSE_OPTIONS = (
    Option("image", "The reference (character) image: any image cv2.imread reads.", type="path", required=True),
    Option(
        "video",
        "The driving video (any video cv2.VideoCapture opens), or a folder of videos: every file in it, "
        "sorted by name, frames concatenated.",
        type="path",
        required=True,
    ),
)


def frame_name(index: int) -> str:
    """``0000.jpg``: the original's ``str(i).zfill(4)``."""
    return f"{str(index).zfill(4)}.jpg"


def is_pose_output(folder: Path) -> bool:
    """True for a folder a pose step wrote (``pose.jpg`` and ``NNNN.jpg`` files, nothing else):
    ``zoo pose`` may replace it whole. No marker file is written, since the original's inference
    scripts open every entry of the folder but ``pose.jpg`` as an image."""
    names = [p.name for p in folder.iterdir()]
    return REFERENCE_POSE_FILE in names and all(
        n == REFERENCE_POSE_FILE or (n.endswith(".jpg") and n[:-4].isdigit()) for n in names
    )


def read_image(path: Path, option: str = "--image") -> U8:
    """``cv2.imread(path)`` (BGR uint8), an :class:`InputError` naming the file otherwise."""
    check_media_path(path, option)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; expected an image file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{option} {path}: not an image (OpenCV cannot decode it); expected an image file")
    return np.ascontiguousarray(image)


def video_files(path: Path, option: str = "--video") -> list[Path]:
    """The driving video's files: ``path`` itself, or a folder's regular, non-hidden files sorted by name."""
    check_media_path(path, option)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"{option} {path}: the folder holds no video file; expected a video or a folder of videos")
    return files


def _frames_of(path: Path) -> Iterator[U8]:
    capture = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def check_video(path: Path, option: str = "--video") -> int:
    """The frame count the container states (at least 1), after checking OpenCV opens ``path``
    and decodes its first frame; an :class:`InputError` naming the file otherwise."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise InputError(f"{option} {path}: not a video (OpenCV cannot open it); expected a video file")
        ok, frame = capture.read()
        if not ok or frame is None:
            raise InputError(f"{option} {path}: a video with no frames (OpenCV decodes none); expected a video")
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 1)
    finally:
        capture.release()


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _model(runner: Runner) -> Callable[[F32], list[np.ndarray]]:
    """A runner as the numerical core's model callable: the first input fed, every output in order."""
    feed = runner.input_names[0]
    outputs = [t.name for t in runner.record.outputs]

    def call(x: F32) -> list[np.ndarray]:
        result = runner({feed: torch.from_numpy(np.ascontiguousarray(x))})
        return [_array(result[name]) for name in outputs]

    return call


def _result_json(result: PoseResult, image_hw: tuple[int, int]) -> dict[str, Any]:
    return {
        "size": list(image_hw),  # [H, W] of the image
        "boxes": result.boxes.tolist(),  # every person box the detector kept: x1, y1, x2, y2
        "box": result.box.tolist(),  # the box person 0 was estimated in ([0, 0, W, H]: none detected)
        "keypoints": result.keypoints.tolist(),  # person 0, 133 COCO-WholeBody points, image pixels
        "scores": result.scores.tolist(),
        "pose": result.pose.to_dict(),  # the original's drawing dict (normalised, -1 invisible)
    }


def _warning_json(w: AlignWarning) -> dict[str, Any]:
    return {
        "step": w.step,
        "missing": [{"image": image, "keypoint": name} for image, name in w.missing],
        "reason": w.reason,
        "action": w.action,
    }


@dataclass
class UniAnimatePoseStep:
    """The pose step for one reference image and driving video (:class:`~zoo.contract.PoseStep`)."""

    image_path: Path
    image: U8
    videos: list[Path]
    frames: int
    stated: tuple[int, ...] = ()  # each video's frame count as its container states it (check_video)

    def __call__(self, runners: Runners, out: Path, advance: Callable[[int], None]) -> PoseRun:
        detector = _model(runners["detector"])

        def detect(x: F32) -> F32:  # POSE.md 1.1: the first output only
            return np.asarray(detector(x)[0], dtype=np.float32)

        estimate = _model(runners["pose_model"])
        shape = runners["pose_model"].record.inputs[0].shape  # POSE.md 2.1: the size is read from the graph
        input_hw = (int(shape[2]), int(shape[3]))

        reference = pose_of_image(self.image, detect, estimate, input_hw=input_hw)
        if not len(reference.boxes):
            raise InputError(
                f"--image {self.image_path}: the detector finds no person in it; expected an image of the character"
            )
        results: list[tuple[PoseResult, tuple[int, int]]] = []
        for i, video in enumerate(self.videos):
            decoded = 0
            for frame in _frames_of(video):
                results.append((pose_of_image(frame, detect, estimate, input_hw=input_hw), frame.shape[:2]))
                decoded += 1
                advance(1)
            if i < len(self.stated) and decoded < self.stated[i]:  # nothing is written before this point
                raise InputError(
                    f"--video {video}: truncated: OpenCV decodes {decoded} of the {self.stated[i]} frames its "
                    f"container states; expected a whole video file"
                )
        if not any(len(r.boxes) for r, _ in results):
            where = self.videos[0].parent if len(self.videos) > 1 else self.videos[0]
            raise InputError(
                f"--video {where}: the detector finds no person in any of its {len(results)} frames; "
                f"expected a video of a person moving"
            )
        aligned, warnings = align_poses(reference.pose, [r.pose for r, _ in results])

        files = []
        for i, pose in enumerate(aligned):
            write_jpeg(out / frame_name(i), draw_pose(pose))
            files.append(frame_name(i))
        write_jpeg(out / REFERENCE_POSE_FILE, draw_pose(reference.pose))
        files.append(REFERENCE_POSE_FILE)

        keypoints = {
            "reference": {"image": str(self.image_path), **_result_json(reference, self.image.shape[:2])},
            "videos": [str(v) for v in self.videos],
            "frames": [
                {"file": frame_name(i), **_result_json(r, hw), "aligned": pose.to_dict()}
                for i, ((r, hw), pose) in enumerate(zip(results, aligned))
            ],
            "warnings": [_warning_json(w) for w in warnings],
        }
        return PoseRun(tuple(files), tuple(str(w) for w in warnings), keypoints)


def pose_step(options: Mapping[str, Any]) -> UniAnimatePoseStep:
    """The step for ``zoo pose``'s parsed options (``image``, ``video``), both read and checked."""
    image_path = Path(options["image"])
    image = read_image(image_path)
    videos = video_files(Path(options["video"]))
    stated = tuple(check_video(v) for v in videos)
    return UniAnimatePoseStep(image_path, image, videos, sum(stated), stated)

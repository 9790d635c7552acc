"""`zoo pose` -> `zoo run` on UniAnimate-DiT: `--pose-video DIR` reads a pose folder's frames in name
order and skips `pose.jpg` as the original's inference does (POSE.md 5.6); `--pose-start` /
`--pose-frames` choose the frames deterministically where the original picks a random window; a
truncated driving video is refused by `zoo pose`."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from conftest import assert_error, zoo
from PIL import Image

from zoo.errors import InputError
from zoo.families.unianimate_dit.family import POSE_FOLDER_SKIPS, select_pose_frames
from zoo.infra.media import load_video

FRAMES = 5  # the fewest 4k+1 pose frames the tiny UniAnimate-DiT export takes


def _frame(value: int, size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8))


def _values(frames) -> list[int]:
    return [int(np.asarray(f)[0, 0, 0]) for f in frames]


def test_pose_folder_skips_pose_jpg_and_reads_frames_in_order(tmp_path):
    folder = tmp_path / "poses"
    folder.mkdir()
    for i in range(4):
        _frame(10 * (i + 1)).save(folder / f"{i:04d}.png")  # PNG: exact values
    _frame(200).save(folder / "pose.jpg")
    assert POSE_FOLDER_SKIPS == ("pose.jpg",)
    assert _values(load_video(folder, option="--pose-video", exclude=POSE_FOLDER_SKIPS)) == [10, 20, 30, 40]
    assert len(load_video(folder, option="--pose-video")) == 5  # generic: nothing skipped unless declared
    # names where the original's lexicographic sort would differ (more than 4 digits): frame order kept
    odd = tmp_path / "odd"
    odd.mkdir()
    for name, value in (("10000.png", 3), ("1000.png", 1), ("1001.png", 2)):
        _frame(value).save(odd / name)
    assert _values(load_video(odd, option="--pose-video", exclude=POSE_FOLDER_SKIPS)) == [1, 2, 3]
    # a folder holding only pose.jpg has no frames
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(folder / "pose.jpg", only / "pose.jpg")
    with pytest.raises(InputError, match="empty video .*pose.jpg not counted as frames"):
        load_video(only, option="--pose-video", exclude=POSE_FOLDER_SKIPS)


def test_pose_frame_selection_is_deterministic():
    frames = list(range(10))
    assert select_pose_frames(frames, 0, None, source="x") == frames  # default: every frame
    assert select_pose_frames(frames, 3, None, source="x") == frames[3:]
    assert select_pose_frames(frames, 2, 5, source="x") == [2, 3, 4, 5, 6]  # a window, as the original's
    assert select_pose_frames(frames, 0, 13, source="x") == frames + [9, 9, 9]  # the original's padding
    assert select_pose_frames(frames, 8, 5, source="x") == [8, 9, 9, 9, 9]
    for start in (10, 11, -1):
        with pytest.raises(InputError) as err:
            select_pose_frames(frames, start, 5, source="--pose-video DIR")
        assert str(err.value) == (
            f"--pose-start {start}: out of range: --pose-video DIR has 10 pose frame(s), expected 0 to 9"
        )


def _video(path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 8, (160, 120))
    for i in range(frames):
        frame = np.full((120, 160, 3), 20, np.uint8)
        cv2.rectangle(frame, (50 + 4 * i, 20), (80 + 4 * i, 110), (250, 250, 250), -1)
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def posed(tiny_export, tmp_path_factory):
    """`zoo pose` on a reference image and a driving video of FRAMES + 2 frames: (folder, image)."""
    root = tmp_path_factory.mktemp("pose-run")
    image = np.full((150, 100, 3), 12, np.uint8)
    cv2.rectangle(image, (30, 15), (70, 140), (250, 250, 250), -1)
    cv2.imwrite(str(root / "ref.png"), image)
    _video(root / "drive.avi", FRAMES + 2)
    result = zoo(
        "pose", tiny_export("unianimate-pose"), "--image", root / "ref.png", "--video", root / "drive.avi",
        "--out", root / "poses",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "poses", root / "ref.png"


def test_zoo_pose_folder_runs_its_frames(posed, tiny_export, tmp_path):
    """The run on the pose folder equals the run on a folder of exactly the chosen frames (no pose.jpg)."""
    poses, image = posed
    names = sorted(p.name for p in poses.iterdir())
    assert names == [f"{i:04d}.jpg" for i in range(FRAMES + 2)] + ["pose.jpg"]
    export = tiny_export("unianimate-dit")
    common = ["--image", image, "--ref-pose", poses / "pose.jpg", "--resize-pose", "--steps", "1"]
    common += ["--guidance-scale", "1", "--height", "32", "--width", "32", "--seed", "0"]
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    for i in range(1, 1 + FRAMES):
        shutil.copy(poses / f"{i:04d}.jpg", chosen / f"{i:04d}.jpg")
    runs = {
        "folder": ["--pose-video", poses, "--pose-start", "1", "--pose-frames", FRAMES],
        "chosen": ["--pose-video", chosen],
        "first": ["--pose-video", poses, "--pose-frames", FRAMES],  # another window: another video
    }
    for name, args in runs.items():
        result = zoo("run", export, *common, *args, "--out", tmp_path / f"{name}.npy")
        assert result.exit_code == 0, result.output
    folder, reference = np.load(tmp_path / "folder.npy"), np.load(tmp_path / "chosen.npy")
    assert folder.shape[-4] == FRAMES
    np.testing.assert_array_equal(folder, reference)
    assert not np.array_equal(folder, np.load(tmp_path / "first.npy"))
    # errors name the option: a start past the frames, and all 7 frames (not 4k+1) for a short video
    assert_error(
        zoo("run", export, *common, "--pose-video", poses, "--pose-start", FRAMES + 2, "--out", tmp_path / "x.npy"),
        f"--pose-start {FRAMES + 2}: out of range: --pose-video {poses} has {FRAMES + 2} pose frame(s), expected 0 to",
    )
    assert_error(
        zoo("run", export, *common, "--pose-video", poses, "--out", tmp_path / "x.npy"),
        f"--pose-video has {FRAMES + 2} frames: a short video needs 4k+1 pose frames",
    )
    assert not (tmp_path / "x.npy").exists()


def test_zoo_pose_refuses_a_truncated_video(tiny_export, tmp_path):
    image = np.full((150, 100, 3), 12, np.uint8)
    cv2.rectangle(image, (30, 15), (70, 140), (250, 250, 250), -1)
    cv2.imwrite(str(tmp_path / "ref.png"), image)
    whole = tmp_path / "whole.avi"
    _video(whole, 8)
    cut = tmp_path / "cut.avi"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    result = zoo("pose", tiny_export("unianimate-pose"), "--image", tmp_path / "ref.png", "--video", cut, "--out", out)
    assert_error(result, f"--video {cut}: truncated: OpenCV decodes")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.avi", "ref.png", "whole.avi"]  # no staging left

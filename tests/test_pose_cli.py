"""`zoo pose` on a unianimate-pose export of `zoo random`'s stand-ins: the files the original's
run_align_pose.py writes (NNNN.jpg per frame, pose.jpg, 512x768), byte for byte what the pure
functions give on ONNX Runtime sessions of the source graphs; --keypoints; warnings instead of a
traceback; bad input refused before any runtime with one error line and nothing written; a family
without a pose step refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from conftest import assert_error, zoo

from zoo.families.unianimate_pose.align import align_poses
from zoo.families.unianimate_pose.draw import draw_pose
from zoo.families.unianimate_pose.dwpose import pose_of_image
from zoo.families.unianimate_pose.family import DETECTOR_FILE, POSE_MODEL_FILE

FAMILY = "unianimate-pose"
FRAMES = 4


def _person(canvas: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    cv2.rectangle(canvas, (x, y), (x + w, y + h), (250, 250, 250), -1)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A reference image (one white person) and a small MJPG driving video whose person moves."""
    folder = tmp_path_factory.mktemp("pose-media")
    image = np.full((300, 200, 3), 12, np.uint8)
    _person(image, 60, 30, 80, 250)
    cv2.imwrite(str(folder / "ref.png"), image)
    video = folder / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 8, (320, 240))
    for i in range(FRAMES):
        frame = np.full((240, 320, 3), 20, np.uint8)
        _person(frame, 100 + 9 * i, 40 - 3 * i, 60, 180)
        cv2.circle(frame, (40, 200), 12, (30, 200, 240), -1)  # a coloured blob: not a person
        writer.write(frame)
    writer.release()
    return folder / "ref.png", video


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export(FAMILY)


@pytest.fixture(scope="module")
def posed(export, media, tmp_path_factory):
    """`zoo pose` once: (result, output folder, keypoints JSON)."""
    out = tmp_path_factory.mktemp("posed")
    image, video = media
    result = zoo(
        "pose", export, "--image", image, "--video", video, "--out", out / "poses", "--keypoints", out / "kp.json"
    )
    assert result.exit_code == 0, result.output
    return result, out / "poses", json.loads((out / "kp.json").read_text())


def _direct(checkpoint: Path, image_path: Path, video: Path):
    """The pure functions on ORT sessions of the source graphs: canvases by name, raw and aligned poses."""
    det = ort.InferenceSession(str(checkpoint / DETECTOR_FILE), providers=["CPUExecutionProvider"])
    est = ort.InferenceSession(str(checkpoint / POSE_MODEL_FILE), providers=["CPUExecutionProvider"])

    def detect(x):
        return det.run(None, {det.get_inputs()[0].name: x})[0]

    def estimate(x):
        return est.run(None, {est.get_inputs()[0].name: x})

    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    reference = pose_of_image(cv2.imread(str(image_path)), detect, estimate, input_hw=(384, 288))
    results = [pose_of_image(f, detect, estimate, input_hw=(384, 288)) for f in frames]
    aligned, warnings = align_poses(reference.pose, [r.pose for r in results])
    canvases = {f"{i:04d}.jpg": draw_pose(p) for i, p in enumerate(aligned)}
    canvases["pose.jpg"] = draw_pose(reference.pose)
    return canvases, reference, results, aligned, warnings


def test_pose_writes_the_original_files_byte_for_byte(posed, media, tiny_checkpoint):
    result, out, _ = posed
    canvases, *_ = _direct(tiny_checkpoint(FAMILY), *media)
    assert len(canvases) == FRAMES + 1
    assert sorted(p.name for p in out.iterdir()) == sorted(canvases)
    for name, canvas in canvases.items():
        written = cv2.imread(str(out / name))
        assert written.shape == (768, 512, 3), name
        ok, encoded = cv2.imencode(".jpg", canvas)
        assert ok and (out / name).read_bytes() == encoded.tobytes(), name
    assert any(canvas.any() for canvas in canvases.values())  # something was drawn
    assert f"wrote {out} ({FRAMES + 1} files" in result.stdout


def test_keypoints_json_and_warnings(posed, media, tiny_checkpoint):
    result, _, record = posed
    _, reference, results, aligned, warnings = _direct(tiny_checkpoint(FAMILY), *media)
    assert record["reference"]["image"] == str(media[0])
    assert record["reference"]["boxes"] == reference.boxes.tolist()
    assert record["reference"]["keypoints"] == reference.keypoints.tolist()
    assert record["reference"]["scores"] == reference.scores.tolist()
    assert record["reference"]["pose"] == reference.pose.to_dict()
    assert [f["file"] for f in record["frames"]] == [f"{i:04d}.jpg" for i in range(FRAMES)]
    for frame, r, a in zip(record["frames"], results, aligned, strict=True):
        assert len(frame["keypoints"]) == 133 and len(frame["scores"]) == 133
        assert frame["keypoints"] == r.keypoints.tolist() and frame["scores"] == r.scores.tolist()
        assert frame["boxes"] == r.boxes.tolist() and frame["box"] == r.box.tolist()
        assert frame["size"] == [240, 320]
        assert frame["pose"] == r.pose.to_dict() and frame["aligned"] == a.to_dict()
    # the stand-ins' scores sit around 0.3: keypoints go missing, each fallback a warning line
    assert warnings, "the stand-ins should leave some keypoint missing"
    assert [w["reason"] for w in record["warnings"]] == [w.reason for w in warnings]
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert lines == [f"warning: {w}" for w in warnings]
    assert "missing in" in lines[0] and "ratio 1" in result.stderr
    assert "Traceback" not in result.output


def test_pose_again_replaces_its_output_and_is_deterministic(posed, export, media, tmp_path):
    _, out, _ = posed
    copy = tmp_path / "poses"
    shutil.copytree(out, copy)
    (copy / "0099.jpg").write_bytes(b"old")  # an earlier, longer output: replaced whole
    result = zoo("pose", export, "--image", media[0], "--video", media[1], "--out", copy)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in out.iterdir())
    for p in out.iterdir():
        assert (copy / p.name).read_bytes() == p.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_folder_of_videos_sorted_and_concatenated(export, media, tmp_path):
    image, video = media
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(video, folder / "b.avi")
    writer = cv2.VideoWriter(str(folder / "a.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 8, (320, 240))
    frame = np.full((240, 320, 3), 20, np.uint8)
    _person(frame, 30, 20, 70, 200)
    writer.write(frame)
    writer.release()
    result = zoo(
        "pose",
        export,
        "--image",
        image,
        "--video",
        folder,
        "--out",
        tmp_path / "out",
        "--keypoints",
        tmp_path / "k.json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "k.json").read_text())
    assert record["videos"] == [str(folder / "a.avi"), str(folder / "b.avi")]
    assert len(record["frames"]) == FRAMES + 1
    assert len(list((tmp_path / "out").iterdir())) == FRAMES + 2


def test_bad_inputs_one_error_line_nothing_written(export, media, tmp_path):
    image, video = media
    text = tmp_path / "notes.txt"
    text.write_text("not media\n")
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 8, (64, 64)).release()
    dark = tmp_path / "dark.png"
    cv2.imwrite(str(dark), np.full((200, 100, 3), 5, np.uint8))
    no_person = tmp_path / "no_person.avi"
    writer = cv2.VideoWriter(str(no_person), cv2.VideoWriter_fourcc(*"MJPG"), 8, (160, 120))
    for _ in range(2):
        writer.write(np.full((120, 160, 3), 5, np.uint8))
    writer.release()
    out = tmp_path / "out"
    cases = [
        (["--image", tmp_path / "nope.png", "--video", video], f"--image {tmp_path / 'nope.png'}: does not exist"),
        (["--image", text, "--video", video], f"--image {text}: not an image"),
        (["--image", image, "--video", tmp_path / "nope.avi"], f"--video {tmp_path / 'nope.avi'}: does not exist"),
        (["--image", image, "--video", text], f"--video {text}: not a video"),
        (["--image", image, "--video", empty], f"--video {empty}:"),
        (["--image", dark, "--video", video], f"--image {dark}: the detector finds no person"),
        (["--image", image, "--video", no_person], f"--video {no_person}: the detector finds no person in any"),
    ]
    for args, message in cases:
        result = zoo("pose", export, *args, "--out", out)
        assert_error(result, message)
        assert not out.exists(), args
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], args  # no staging left
    # --keypoints into a folder that does not exist: refused before any runtime, nothing written
    lost = tmp_path / "no_such_folder" / "kp.json"
    assert_error(
        zoo("pose", export, "--image", image, "--video", video, "--out", out, "--keypoints", lost),
        f"--keypoints {lost}: {lost.parent} is not an existing folder",
    )
    assert not out.exists() and not lost.parent.exists()
    # an output folder that is not an earlier pose output is refused untouched
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert_error(zoo("pose", export, "--image", image, "--video", video, "--out", busy), "is not a `zoo pose` output")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    # not an export; an export lacking a component
    assert_error(zoo("pose", tmp_path, "--image", image, "--video", video, "--out", out), "manifest.json")
    partial = tmp_path / "partial"
    shutil.copytree(export, partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    del manifest["components"]["pose_model"]
    (partial / "manifest.json").write_text(json.dumps(manifest))
    assert_error(
        zoo("pose", partial, "--image", image, "--video", video, "--out", out), "lacks component(s) pose_model"
    )
    assert not out.exists()
    # usage errors are click's own
    result = zoo("pose", export, "--image", image, "--out", out)
    assert result.exit_code == 2 and "Missing option '--video'" in result.output


def test_help_and_families_without_a_pose_step(export, tiny_export, media, tmp_path):
    result = zoo("pose", "--help")
    assert result.exit_code == 0 and "--keypoints" in result.output
    result = zoo("pose", export, "--help")
    assert result.exit_code == 0 and "--image" in result.output and "--video" in result.output
    other = tiny_export("transformer-temporal")
    result = zoo("pose", other, "--image", media[0], "--video", media[1], "--out", tmp_path / "out")
    assert_error(
        result, "family 'transformer-temporal' has no pose step: `zoo pose` takes an export of unianimate-pose"
    )
    assert not (tmp_path / "out").exists()

"""`zoo pose` on a wan-animate-pose export of `zoo random`'s stand-ins: the files Wan2.2's
preprocess_data.py writes (src_ref.png, src_pose.mp4, src_face.mp4; src_bg.mp4, src_mask.mp4 in
replace mode) and the same frames as lossless PNG folders; animate mode with and without
retargeting, replace mode with a mask video and with the export's SAM2; `zoo run --conditions` on a
Wan-Animate export equal to passing the files one by one; bad input refused before any runtime
with one error line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import assert_error, zoo

from exporters.onnx import export_family
from zoo.contract import Source
from zoo.families.wan_animate_pose.frames import iter_frames, resize_by_area
from zoo.families.wan_animate_pose.masks import dilate_and_fill, random_sam2
from zoo.families.wan_animate_pose.samples import figure_frames
from zoo.registry import get_family

FAMILY = "wan-animate-pose"


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """RGB frames as a lossless FFV1 video (decoded back exactly)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-pose-media")
    cv2.imwrite(str(root / "ref.png"), figure_frames(1, 160, 120, seed=1)[0][..., ::-1])
    return {
        "image": root / "ref.png",
        "video": _write_video(root / "drive.avi", figure_frames(8, 96, 128, seed=0), 24),  # 10 frames at 30 fps
        "small": _write_video(root / "small.avi", figure_frames(13, 32, 48, seed=2), 30),  # Wan's tiny size
        "root": root,
    }


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export(FAMILY)


@pytest.fixture(scope="module")
def sam2_export(tiny_checkpoint, tmp_path_factory):
    """An export carrying a tiny random SAM2 (transformers' format), for replace mode."""
    fam = get_family(FAMILY)
    sam2 = random_sam2(tmp_path_factory.mktemp("sam2") / "sam2")
    ref = fam.load((Source("model", tiny_checkpoint(FAMILY)), Source("sam2", sam2)))
    out = tmp_path_factory.mktemp("sam2-export") / "export"
    export_family(fam, ref, fam.envelope(ref), out, progress=False)
    return out


def _pngs(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1] for p in sorted(folder.iterdir())]


def _mp4_frames(path: Path) -> int:
    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def _pose(export, media, out, *extra):
    return zoo("pose", export, "--image", media["image"], "--video", media["video"], "--out", out, *extra)


def test_animate_writes_the_original_files_and_lossless_frames(export, media, tmp_path):
    result = _pose(export, media, tmp_path / "c", "--keypoints", tmp_path / "kp.json")
    assert result.exit_code == 0, result.output
    out = tmp_path / "c"
    conditions = json.loads((out / "conditions.json").read_text())
    # 8 frames at 24 fps resampled to 30 fps: 10 frames (1.2); the reference 120x160 sized to the area (1.4)
    assert conditions["mode"] == "animate" and conditions["frames"] == 10 and conditions["fps"] == 30
    assert conditions["size"] == [1104, 816]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["conditions.json", "src_ref.png", "src_pose.mp4", "src_face.mp4", "src_pose", "src_face"]
    )
    assert (out / "src_ref.png").read_bytes() == media["image"].read_bytes()  # a byte copy (1.3)
    poses, faces = _pngs(out / "src_pose"), _pngs(out / "src_face")
    assert len(poses) == len(faces) == 10
    assert poses[0].shape == (1104, 816, 3) and faces[0].shape == (512, 512, 3)
    assert any(p.any() for p in poses)  # skeletons were drawn
    assert _mp4_frames(out / "src_pose.mp4") == _mp4_frames(out / "src_face.mp4") == 10  # exactly T (8.3)
    record = json.loads((tmp_path / "kp.json").read_text())
    assert len(record["frames"]) == 10 and len(record["frames"][0]["keypoints"]) == 133
    assert [f["index"] for f in record["frames"]] == [0, 1, 2, 2, 3, 4, 5, 6, 6, 7]  # 1.2's index formula

    # a second run replaces its own folder whole
    again = _pose(export, media, out, "--fps", "24")
    assert again.exit_code == 0, again.output
    assert (
        json.loads((out / "conditions.json").read_text())["frames"] == 8
        and len(list((out / "src_pose").iterdir())) == 8
    )


def test_retarget_draws_at_the_reference_size(export, media, tmp_path):
    plain, retargeted = tmp_path / "plain", tmp_path / "retargeted"
    assert _pose(export, media, plain).exit_code == 0
    result = _pose(export, media, retargeted, "--retarget")
    assert result.exit_code == 0, result.output
    a, b = _pngs(plain / "src_pose"), _pngs(retargeted / "src_pose")
    assert a[0].shape == b[0].shape == (1104, 816, 3)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))
    # face crops do not depend on retargeting (7, last line)
    assert all(np.array_equal(x, y) for x, y in zip(_pngs(plain / "src_face"), _pngs(retargeted / "src_face")))


def test_replace_with_a_mask_video(export, media, tmp_path):
    """The user's masks: dilated and grid-filled (8.2), the background black inside them."""
    masks = tmp_path / "masks"
    masks.mkdir()
    frames = [resize_by_area(f, 48 * 32) for f in iter_frames(media["small"], range(13))]
    raw = []
    for i, f in enumerate(frames):
        m = np.zeros(f.shape[:2], np.uint8)
        m[8 : 20 + i % 3, 10 : 30 - i % 4] = 1
        raw.append(m)
        cv2.imwrite(str(masks / f"{i:04d}.png"), np.repeat(m[..., None] * 255, 3, axis=2))
    out = tmp_path / "c"
    result = zoo(
        "pose", export, "--image", media["image"], "--video", media["small"], "--out", out, "--mode", "replace",
        "--mask-video", masks, "--resolution-area", "48", "32",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    conditions = json.loads((out / "conditions.json").read_text())
    assert conditions["mode"] == "replace" and conditions["size"] == [32, 48] and conditions["frames"] == 13
    for name in ("src_bg", "src_mask", "src_pose", "src_face"):
        assert len(list((out / name).iterdir())) == 13 and _mp4_frames(out / f"{name}.mp4") == 13
    for i, (frame, m, bg, mask) in enumerate(zip(frames, raw, _pngs(out / "src_bg"), _pngs(out / "src_mask"))):
        want, note = dilate_and_fill(m, 3, 7, 1, 1)
        assert note is None
        assert np.array_equal(mask, np.repeat(want[..., None] * 255, 3, axis=2)), i
        assert np.array_equal(bg, frame * (1 - want[..., None])), i


def test_replace_with_the_exports_sam2(sam2_export, media, tmp_path):
    out = tmp_path / "c"
    result = zoo(
        "pose", sam2_export, "--image", media["image"], "--video", media["small"], "--out", out, "--mode", "replace",
        "--resolution-area", "48", "32", "--fps", "-1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    masks = _pngs(out / "src_mask")
    assert len(masks) == 13 and masks[0].shape == (32, 48, 3)
    assert all(set(np.unique(m)) <= {0, 255} for m in masks)


def test_run_with_conditions_equals_the_files_one_by_one(export, tiny_export, media, tmp_path):
    """`zoo run --conditions DIR` is `zoo run` with the folder's files (the reference letterboxed as
    Wan's consumer does it: here the pose size is the video's, replace mode), bit for bit."""
    wan = tiny_export("wan-animate")
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(13):
        m = np.zeros((32, 48, 3), np.uint8)
        m[6:26, 12 + i % 3 : 36] = 255
        cv2.imwrite(str(masks / f"{i:04d}.png"), m)
    cond = tmp_path / "c"
    result = zoo(
        "pose", export, "--image", media["image"], "--video", media["small"], "--out", cond, "--mode", "replace",
        "--mask-video", masks, "--resolution-area", "48", "32",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    common = ["--steps", "2", "--segment-frames", "9", "--seed", "3", "--resize-face"]
    via_folder = zoo("run", wan, "--conditions", cond, *common, "--out", tmp_path / "a.npy")
    assert via_folder.exit_code == 0, via_folder.output

    # the files one by one: the reference letterboxed to the pose size with cv2 INTER_LINEAR (9.2)
    from zoo.models.letterbox import padding_resize

    letterboxed = padding_resize(cv2.imread(str(media["image"]))[..., ::-1].copy(), 32, 48, cv2.INTER_LINEAR)
    cv2.imwrite(str(tmp_path / "ref.png"), letterboxed[..., ::-1])
    by_hand = zoo(
        "run", wan, "--image", tmp_path / "ref.png", "--pose-video", cond / "src_pose", "--face-video",
        cond / "src_face", "--background-video", cond / "src_bg", "--mask-video", cond / "src_mask", "--mode",
        "replace", "--height", "32", "--width", "48", "--fps", "30", *common, "--out", tmp_path / "b.npy",
    )  # fmt: skip
    assert by_hand.exit_code == 0, by_hand.output
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (1, 13, 32, 48, 3) and np.array_equal(a, b)

    given = zoo("run", wan, "--conditions", cond, "--image", tmp_path / "ref.png", *common, "--out", tmp_path / "x.npy")
    assert_error(given, "--image: --conditions gives it")
    assert not (tmp_path / "x.npy").exists()
    missing = zoo("run", wan, *common, "--out", tmp_path / "x.npy")
    assert_error(missing, "--image is required (or --conditions DIR")


# --------------------------------------------------------------------------------------
# Bad input: one error line, exit 2, nothing written
# --------------------------------------------------------------------------------------


def _files(tmp: Path) -> dict[str, Path]:
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "text.mp4").write_text("not a video\n")
    (tmp / "notimage.png").write_text("not an image\n")
    return {"empty": tmp / "empty.mp4", "text": tmp / "text.mp4", "notimage": tmp / "notimage.png"}


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing video", "--video"),
        ("empty video", "empty"),
        ("not a video", "not a video"),
        ("truncated video", "truncated"),
        ("not an image", "--image"),
        ("replace without masks", "--mode replace needs masks: this export has no SAM2"),
        ("mask video of another length", "9 frames of 128x96; expected 10 frames of 128x96"),
        ("mask video of another size", "10 frames of 64x48; expected 10 frames of 128x96"),
        ("retarget in replace mode", "the original silently ignores --retarget_flag there"),
        ("use_flux", "--use_flux: FLUX.1-Kontext-assisted retargeting is not supported"),
        ("fps 0", "--fps 0: expected a frame rate of at least 1"),
        ("area too small", "expected an area that gives at least 16 pixels a side"),
        ("mask video in animate mode", "--mask-video: masks are for --mode replace"),
    ],
)
def test_bad_input_is_one_error_line_and_nothing_written(export, media, tmp_path, case, message):
    files = _files(tmp_path)
    video, image, extra = media["video"], media["image"], []
    if case == "missing video":
        video = tmp_path / "nothing.mp4"
    elif case == "empty video":
        video = files["empty"]
    elif case == "not a video":
        video = files["text"]
    elif case == "truncated video":
        data = media["video"].read_bytes()
        video = tmp_path / "cut.avi"
        video.write_bytes(data[: len(data) * 2 // 3])
    elif case == "not an image":
        image = files["notimage"]
    elif case == "replace without masks":
        extra = ["--mode", "replace"]
    elif case.startswith("mask video"):
        frames = figure_frames(
            9 if "length" in case else 10, 48 if "size" in case else 96, 64 if "size" in case else 128
        )
        extra = ["--mode", "replace", "--mask-video", _write_video(tmp_path / "m.avi", frames, 30)]
        extra += ["--resolution-area", "128", "96"]
        if "animate" in case:
            extra = extra[2:]
    elif case == "retarget in replace mode":
        extra = ["--mode", "replace", "--retarget"]
    elif case == "use_flux":
        extra = ["--retarget", "--use_flux"]
    elif case == "fps 0":
        extra = ["--fps", "0"]
    elif case == "area too small":
        extra = ["--resolution-area", "8", "8"]
    out = tmp_path / "out"
    result = zoo("pose", export, "--image", image, "--video", video, "--out", out, *extra)
    assert_error(result, message)
    assert not out.exists()


def test_truncated_message_names_both_counts(export, media, tmp_path):
    data = media["video"].read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])
    result = zoo("pose", export, "--image", media["image"], "--video", cut, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_export_refuses_a_folder_without_the_graphs_and_graphs_with_the_wrong_io(tiny_checkpoint, tmp_path):
    empty = tmp_path / "ckpt"
    empty.mkdir()
    result = zoo("export", FAMILY, "--model", empty, "--out", tmp_path / "e1")
    assert_error(result, "has no det/yolov10m.onnx and no pose2d/vitpose_h_wholebody.onnx")
    assert not (tmp_path / "e1").exists()

    ckpt = tiny_checkpoint(FAMILY)
    swapped = zoo(
        "export", FAMILY, "--model", ckpt, "--pose-model", ckpt / "det" / "yolov10m.onnx", "--out", tmp_path / "e2"
    )
    assert_error(swapped, "of component 'pose_model' is FLOAT [1, 3, 640, 640] in the graph; the declaration says")
    assert not (tmp_path / "e2").exists()

    not_sam2 = zoo("export", FAMILY, "--model", ckpt, "--sam2", ckpt / "det", "--out", tmp_path / "e3")
    assert_error(not_sam2, "no config.json; expected a SAM2 video checkpoint in transformers format")
    assert not (tmp_path / "e3").exists()


def test_where_the_original_crashes_zoo_pose_warns_and_writes(export, media, tmp_path):
    """A video without a person: the original crashes on the all-invisible first body (Q8), the
    degenerate face box (Q9), zero-length limbs in retargeting (Q10) and empty masks (Q12); `zoo pose`
    says what it did instead, as warnings, and writes every frame."""
    dark = _write_video(tmp_path / "dark.avi", [np.full((96, 128, 3), 20, np.uint8)] * 6, 24)
    out = tmp_path / "a"
    result = zoo("pose", export, "--image", media["image"], "--video", dark, "--out", out, "--retarget")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert any("there is no previous image to take the body from (the original crashes here)" in w for w in warnings)
    assert any("has zero length in frame 0; its ratio is set to 1.0" in w for w in warnings)
    assert any("frame 0: the face landmarks span a degenerate box" in w for w in warnings)
    assert len(list((out / "src_pose").iterdir())) == 7 and "Traceback" not in result.output

    masks = tmp_path / "zeros"
    masks.mkdir()
    for i in range(7):
        cv2.imwrite(str(masks / f"{i:04d}.png"), np.zeros((96, 128, 3), np.uint8))
    out = tmp_path / "r"
    result = zoo(
        "pose", export, "--image", media["image"], "--video", dark, "--out", out, "--mode", "replace",
        "--resolution-area", "128", "96", "--mask-video", masks,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: frame 2: the mask is empty in this frame (no person found): nothing is replaced" in result.output
    # one warning per frame of a long video would drown the output: three of a kind, then how many more
    assert "frame 3: the mask is empty" not in result.output
    assert "warning: ... and 4 more like the last (every one in --keypoints' JSON)" in result.output
    backgrounds = _pngs(out / "src_bg")
    frames = list(iter_frames(dark, [0, 1, 2, 2, 3, 4, 5]))
    assert all(np.array_equal(b, resize_by_area(f, 128 * 96)) for b, f in zip(backgrounds, frames))


def test_a_request_runs_the_step_zoo_pose_runs(export, media, tmp_path):
    """Served like any family (runtimes.serving.Service, as `zoo serve` runs it): the options parsed
    as `zoo pose` parses them (--resolution-area's two values as a JSON list), the image and video
    sent as bytes, the folder `zoo pose` writes back, frame for frame."""
    from runtimes.serving import Payload, RequestError, Service

    local = zoo("pose", export, "--image", media["image"], "--video", media["video"], "--out", tmp_path / "local",
                "--resolution-area", "256", "192", "--retarget")  # fmt: skip
    assert local.exit_code == 0, local.output
    files = {"image": ("ref.png", media["image"].read_bytes()), "video": ("drive.avi", media["video"].read_bytes())}
    service = Service(export)
    try:
        result = service.run(Payload({"resolution_area": [256, 192], "retarget": True}, out_name="served", files=files))
        with pytest.raises(RequestError, match="--resolution-area.*is not a list of 2 values"):
            service.run(Payload({"resolution_area": 256}, out_name="x", files=files))
    finally:
        service.close()
    served = dict(result.files)
    wanted = sorted(
        p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*") if p.is_file()
    )
    assert sorted(name.split("/", 1)[1] for name in served) == wanted
    for name in wanted:
        if name.endswith((".png", ".json")):
            assert served[f"served/{name}"] == (tmp_path / "local" / name).read_bytes(), name


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--k", "0"], "Invalid value for '--k': 0 is not in the range x>=1"),
        (["--iterations", "-1"], "Invalid value for '--iterations': -1 is not in the range x>=0"),
        (["--w-len", "0"], "Invalid value for '--w-len' / '--w_len': 0 is not in the range x>=1"),
        (["--mode", "swap"], "Invalid value for '--mode'"),
        (["--resolution-area", "1280"], "Option '--resolution-area' requires 2 arguments"),
    ],
)
def test_option_values_are_click_usage_errors(export, media, tmp_path, extra, message):
    out = tmp_path / "out"
    result = zoo("pose", export, "--image", media["image"], "--video", media["video"], "--out", out, *extra)
    assert result.exit_code == 2 and "Error: " in result.output and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_missing_mask_video_and_a_folder_without_conditions_are_one_error_line(export, tiny_export, media, tmp_path):
    out = tmp_path / "out"
    result = zoo(
        "pose", export, "--image", media["image"], "--video", media["video"], "--out", out, "--mode", "replace",
        "--mask-video", tmp_path / "no-masks.mp4",
    )  # fmt: skip
    assert_error(result, "--mask-video")
    assert not out.exists()

    (tmp_path / "notpose").mkdir()
    for folder, message in ((tmp_path / "notpose", "no conditions.json"), (tmp_path / "absent", "--conditions")):
        result = zoo("run", tiny_export("wan-animate"), "--conditions", folder, "--out", tmp_path / "x.mp4")
        assert_error(result, message)
        assert not (tmp_path / "x.mp4").exists()
    (tmp_path / "notpose" / "conditions.json").write_text(
        '{"mode": "animate", "fps": 30, "frames": 2, "size": [32], '
        '"reference": "src_ref.png", "pose": "p", "face": "f"}'
    )
    result = zoo("run", tiny_export("wan-animate"), "--conditions", tmp_path / "notpose", "--out", tmp_path / "x.mp4")
    assert_error(result, "size [32]; expected [height, width] in pixels")

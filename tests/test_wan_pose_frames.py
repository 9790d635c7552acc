"""Wan-Animate pose step, reading and resizing (WAN_PREPROCESS.md 1) and video writing (8.3):
frame counts and rates, the index formula's examples, the reference, resize_by_area's sizes and
interpolation, the letterbox, the input errors, and the mp4 writer's FFmpeg command line."""

from __future__ import annotations

import struct
import subprocess
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from zoo.errors import InputError, OutputError
from zoo.families.wan_animate_pose import frames as fr

W, H = 64, 48


def _frame(i: int) -> np.ndarray:
    """A BGR frame with content that changes with ``i`` (noise, so decoding differences would show)."""
    return np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)


def make_video(path: Path, n: int, fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for i in range(n):
        writer.write(_frame(i))
    writer.release()
    return path


def decode_all_bgr(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        out.append(frame)
    capture.release()
    return out


def ffmpeg_exe() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return str(imageio_ffmpeg.get_ffmpeg_exe())


# --- 1.1 probe -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "fps"), [(16, 24.0), (15, 30.0), (12, 60.0), (61, 29.97)])
def test_probe_counts_frames_and_reads_the_rate(tmp_path, n, fps):
    path = make_video(tmp_path / "v.mp4", n, fps)
    info = fr.probe_video(path)
    assert info == fr.VideoInfo(path=path, frames=n, fps=pytest.approx(fps, abs=1e-9), height=H, width=W)
    assert info.frames == len(decode_all_bgr(path))  # N = the frames cv2 decodes (read(), not grab())
    assert info.fps == cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS)


# --- 1.2 indices -----------------------------------------------------------------------------------


def test_frame_indices_spec_examples():
    assert fr.frame_indices(16, 24.0, 30) == [0, 1, 2, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 10, 11, 12, 13, 14, 14, 15]
    assert fr.frame_indices(15, 30.0, 15) == [0, 2, 4, 6, 8, 10, 12]
    assert fr.frame_indices(12, 60.0, 30) == [0, 2, 4, 6, 8, 10]
    assert fr.frame_indices(16, 24.0, 30.0) == fr.frame_indices(16, 24.0, 30)  # an int F is its double
    assert fr.frame_indices(10, 30.0, 30) == list(range(10))


def test_frame_indices_keep_rate_loses_the_last_frame_q3():
    # trunc(61 / 29.97 * 29.97) = 60: the double product lands just below 61 (Q3, reproduced)
    assert 61 / 29.97 * 29.97 < 61
    assert fr.frame_indices(61, 29.97, -1) == list(range(60))
    assert fr.frame_indices(60, 29.97, -1) == list(range(60))
    assert fr.frame_indices(62, 29.97, -1) == list(range(62))


def test_frame_indices_round_half_to_even_and_clip():
    # 3 frames @ 2 fps sampled at F = 4: times 0, .25, .5, .75, 1, 1.25 -> *2 = 0, .5, 1, 1.5, 2, 2.5
    # half to even: 0, 0, 1, 2, 2, 2 (2.5 -> 2); clipping to N - 1 = 2
    assert fr.frame_indices(3, 2.0, 4) == [0, 0, 1, 2, 2, 2]
    # 5 @ 10, F = 20 -> 10 frames; 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, 4.5 -> 4
    assert fr.frame_indices(5, 10.0, 20) == [0, 0, 1, 2, 2, 2, 3, 4, 4, 4]


def test_frame_indices_empty_and_bad_rates():
    assert fr.frame_indices(1, 30.0, 15) == []  # T = trunc(0.5) = 0: the caller reports it
    assert fr.frame_indices(0, 30.0, 30) == []
    with pytest.raises(ValueError):
        fr.frame_indices(10, 30.0, 0)
    with pytest.raises(ValueError):
        fr.frame_indices(10, 0.0, 30)


# --- iter_frames -----------------------------------------------------------------------------------


def test_iter_frames_equals_cv2_frames_reversed_to_rgb(tmp_path):
    path = make_video(tmp_path / "v.mp4", 16, 24.0)
    bgr = decode_all_bgr(path)
    info = fr.probe_video(path)
    idx = fr.frame_indices(info.frames, info.fps, 30)
    assert len(idx) == 20
    got = fr.iter_frames(path, idx)
    assert isinstance(got, types.GeneratorType)  # streamed, not a list
    frames = list(got)
    assert len(frames) == 20
    for i, frame in zip(idx, frames):
        assert frame.dtype == np.uint8 and frame.shape == (H, W, 3) and frame.flags.c_contiguous
        np.testing.assert_array_equal(frame, bgr[i][:, :, ::-1])
    assert frames[2] is not frames[3]  # a repeated index is a fresh array
    np.testing.assert_array_equal(frames[2], frames[3])


def test_iter_frames_skips_and_stops(tmp_path):
    path = make_video(tmp_path / "v.mp4", 12, 60.0)
    bgr = decode_all_bgr(path)
    got = list(fr.iter_frames(path, [0, 2, 4, 6, 8, 10]))
    for i, frame in zip([0, 2, 4, 6, 8, 10], got):
        np.testing.assert_array_equal(frame, bgr[i][:, :, ::-1])
    assert list(fr.iter_frames(path, [])) == []
    first = next(fr.iter_frames(path, [11]))
    np.testing.assert_array_equal(first, bgr[11][:, :, ::-1])
    with pytest.raises(ValueError, match="nondecreasing"):
        fr.iter_frames(path, [3, 2])
    with pytest.raises(InputError, match="ends after 12 frames"):
        list(fr.iter_frames(path, [5, 12]))


# --- 1.3 reference ---------------------------------------------------------------------------------


def test_read_reference_is_imread_reversed(tmp_path):
    bgr = _frame(7)
    cv2.imwrite(str(tmp_path / "r.png"), bgr)
    rgb = fr.read_reference(tmp_path / "r.png")
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])
    assert rgb.flags.c_contiguous
    grey = bgr[:, :, 0]
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    np.testing.assert_array_equal(fr.read_reference(tmp_path / "g.png"), np.stack([grey] * 3, axis=-1))
    bgra = np.dstack([bgr, np.full((H, W), 9, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    np.testing.assert_array_equal(fr.read_reference(tmp_path / "a.png"), bgr[:, :, ::-1])  # alpha dropped


def test_read_reference_errors(tmp_path):
    with pytest.raises(InputError, match=r"^--image .*nope\.png: no such file; expected an image file$"):
        fr.read_reference(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a folder; expected an image file"):
        fr.read_reference(tmp_path)
    (tmp_path / "t.png").write_text("not an image\n")
    with pytest.raises(InputError, match=r"^--ref .*t\.png: not an image"):
        fr.read_reference(tmp_path / "t.png", option="--ref")


# --- 1.4 / 1.5 resizing ----------------------------------------------------------------------------

AREA = 1280 * 720


@pytest.mark.parametrize(
    ("w", "h", "w2", "h2"),  # W x H as the spec writes them
    [
        (1920, 1080, 1280, 720),
        (1080, 1920, 720, 1280),
        (600, 800, 816, 1104),
        (750, 1101, 784, 1152),
        (512, 512, 960, 960),
    ],
)
def test_area_size_spec_examples(w, h, w2, h2):
    assert fr.area_size(h, w, AREA) == (h2, w2)


def _letterbox(image: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    """Written out for the test: where the resized image goes for each example below."""
    h, w = image.shape[:2]
    out = np.zeros((height, width, 3), np.uint8)
    if h * width > height * w:  # taller than the canvas: full height
        nw = height * w // h
        p = (width - nw) // 2
        out[:, p : p + nw] = cv2.resize(image, (nw, height), interpolation=interpolation)
    else:
        nh = width * h // w
        p = (height - nh) // 2
        out[p : p + nh] = cv2.resize(image, (width, nh), interpolation=interpolation)
    return out


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_by_area_shrinks_with_inter_area():
    img = _image(1080, 1920)
    out = fr.resize_by_area(img, AREA)
    area = cv2.resize(img, (1280, 720), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, area)  # exact fit: no bars
    assert not np.array_equal(out, cv2.resize(img, (1280, 720), interpolation=cv2.INTER_LINEAR))


def test_resize_by_area_upscales_with_inter_linear_and_8px_bars():
    img = _image(800, 600, seed=1)  # 600 x 800 (W x H)
    out = fr.resize_by_area(img, AREA)
    assert out.shape == (1104, 816, 3)
    # else-branch: nh = trunc(816 / 600 * 800) = 1088, p = 8
    assert not out[:8].any() and not out[1096:].any()
    linear = cv2.resize(img, (816, 1088), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out[8:1096], linear)
    assert not np.array_equal(out[8:1096], cv2.resize(img, (816, 1088), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize(("w", "h"), [(750, 1101), (512, 512), (1080, 1920), (333, 200)])
def test_resize_by_area_matches_letterbox(w, h):
    img = _image(h, w, seed=w)
    h2, w2 = fr.area_size(h, w, AREA)
    interpolation = cv2.INTER_AREA if w2 * h2 < w * h else cv2.INTER_LINEAR
    np.testing.assert_array_equal(fr.resize_by_area(img, AREA), _letterbox(img, h2, w2, interpolation))


def test_padding_resize_both_branches():
    tall = _image(100, 40, seed=2)  # h / w = 2.5 > 60 / 80: full height, columns [p, p + nw)
    out = fr.padding_resize(tall, 60, 80)
    nw, p = 24, 28  # trunc(60 / 100 * 40) = 24, trunc((80 - 24) / 2) = 28
    expected = np.zeros((60, 80, 3), np.uint8)
    expected[:, p : p + nw] = cv2.resize(tall, (nw, 60), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out, expected)

    wide = _image(30, 90, seed=3)  # h / w = 1/3 <= 61 / 50: full width, rows [p, p + nh)
    out = fr.padding_resize(wide, 61, 50, cv2.INTER_AREA)
    nh, p = 16, 22  # trunc(50 / 90 * 30) = trunc(16.67) = 16, trunc((61 - 16) / 2) = 22
    expected = np.zeros((61, 50, 3), np.uint8)
    expected[p : p + nh] = cv2.resize(wide, (50, nh), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, expected)

    same = _image(30, 40, seed=4)  # equal ratio: the else-branch, exact fit
    np.testing.assert_array_equal(fr.padding_resize(same, 60, 80), cv2.resize(same, (80, 60)))


def test_resize_by_area_too_elongated_is_an_input_error():
    with pytest.raises(InputError, match="too elongated"):
        fr.resize_by_area(np.zeros((1, 200000, 3), np.uint8), AREA)


# --- probe errors ----------------------------------------------------------------------------------


def test_probe_errors_missing_folder_text_empty(tmp_path):
    with pytest.raises(InputError, match=r"^--video .*nope\.mp4: no such file; expected a video file$"):
        fr.probe_video(tmp_path / "nope.mp4")
    with pytest.raises(InputError, match=r"^--video .*: is a folder; expected a video file$"):
        fr.probe_video(tmp_path)
    for name in ("notes.txt", "notes.mp4"):
        (tmp_path / name).write_text("hello world\n" * 20)
        with pytest.raises(InputError, match=rf"^--driving .*{name}: not a video \(OpenCV cannot open it"):
            fr.probe_video(tmp_path / name, option="--driving")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.mp4: an empty file \(0 bytes\); expected a video file$"):
        fr.probe_video(tmp_path / "empty.mp4")


def test_probe_truncated_mp4_with_index_at_the_end(tmp_path):
    # cv2's mp4v writer puts the index (moov) last: cutting the file loses it, the file does not open
    data = make_video(tmp_path / "v.mp4", 16, 24.0).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        fr.probe_video(tmp_path / "cut.mp4")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"--video {tmp_path / 'cut.mp4'}: not a video")
    assert "cut short before its index" in message


def _faststart_video(tmp_path: Path) -> bytes:
    """30 frames, index first (``-movflags +faststart``), so a cut keeps the stated frame count."""
    src = make_video(tmp_path / "src.mp4", 30, 30.0)
    out = tmp_path / "fs.mp4"
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-c:v", "mpeg4", "-movflags", "+faststart"]
    subprocess.run([*cmd, str(out)], check=True)
    data = out.read_bytes()
    assert fr.probe_video(out).frames == 30
    return data


def _mdat_offset(data: bytes) -> int:
    offset = 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"mdat":
            return offset
        offset += size
    raise AssertionError("no mdat box")


def test_probe_truncated_mp4_with_index_first(tmp_path):
    data = _faststart_video(tmp_path)
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        fr.probe_video(path)
    message = str(err.value)
    assert "\n" not in message
    prefix = f"--video {path}: truncated or corrupt video: "
    assert message.startswith(prefix)
    decoded = int(message[len(prefix) :].split()[0])
    assert 0 < decoded < 30
    assert message.endswith(f"{decoded} frames decode but the container states 30; expected a complete video file")
    # cut inside the first frame's data: nothing decodes at all
    path.write_bytes(data[: _mdat_offset(data) + 8])
    with pytest.raises(
        InputError, match=r"cut\.mp4: a video with no decodable frame \(the container states 30 frames\)"
    ):
        fr.probe_video(path)


# --- 8.3 writing -----------------------------------------------------------------------------------


def test_ffmpeg_args_are_moviepys():
    # moviepy 1.0.3, moviepy/video/io/ffmpeg_writer.py, FFMPEG_VideoWriter.__init__ as
    # ImageSequenceClip(frames, fps=F).write_videofile("x.mp4") calls it (codec libx264 from the
    # extension, preset "medium", no audio, no bitrate/threads/ffmpeg_params, logfile -> PIPE):
    # [FFMPEG_BINARY, '-y', '-loglevel', 'error', '-f', 'rawvideo', '-vcodec', 'rawvideo',
    #  '-s', '%dx%d' % size, '-pix_fmt', 'rgb24', '-r', '%.02f' % fps, '-an', '-i', '-',
    #  '-vcodec', codec, '-preset', preset, ('-pix_fmt', 'yuv420p' if libx264 and both sides even), filename]
    head = ["ff", "-y", "-loglevel", "error", "-f", "rawvideo", "-vcodec", "rawvideo"]
    tail = ["-an", "-i", "-", "-vcodec", "libx264", "-preset", "medium"]
    args = fr.ffmpeg_args(Path("/o/src_pose.mp4"), 30, 1280, 720, "ff")
    assert args == [
        *head,
        "-s",
        "1280x720",
        "-pix_fmt",
        "rgb24",
        "-r",
        "30.00",
        *tail,
        "-pix_fmt",
        "yuv420p",
        "/o/src_pose.mp4",
    ]
    args = fr.ffmpeg_args(Path("a.mp4"), 30000 / 1001, 512, 512, "ff")
    assert args == [*head, "-s", "512x512", "-pix_fmt", "rgb24", "-r", "29.97", *tail, "-pix_fmt", "yuv420p", "a.mp4"]
    assert fr.ffmpeg_args(Path("a.mp4"), 23.976, 64, 48, "ff")[13] == "23.98"
    args = fr.ffmpeg_args(Path("a.mp4"), 24, 65, 48, "ff")  # an odd side: moviepy adds no pixel format
    assert args == [*head, "-s", "65x48", "-pix_fmt", "rgb24", "-r", "24.00", *tail, "a.mp4"]


def test_mp4_writer_writes_exactly_the_frames(tmp_path):
    exe = ffmpeg_exe()
    rgb = [np.full((H, W, 3), (40 * i, 200 - 30 * i, 90), np.uint8) for i in range(5)]
    path = tmp_path / "out.mp4"
    with fr.Mp4Writer(path, 30, W, H, ffmpeg_exe=exe) as writer:
        assert writer.args == fr.ffmpeg_args(path, 30, W, H, exe)
        for frame in rgb:
            writer.write(frame)
    assert writer.frames == 5
    back = decode_all_bgr(path)
    assert len(back) == 5
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) == 30
    for frame, decoded in zip(rgb, back):
        assert decoded.shape == (H, W, 3)
        diff = np.abs(decoded[:, :, ::-1].astype(int) - frame.astype(int))
        assert diff.max() <= 4  # flat colours survive H.264 + yuv420p within a few levels


def test_mp4_writer_77_frames_at_30_fps(tmp_path):
    # moviepy 1.0.3 writes 78 frames here (8.3); the writer writes T
    path = tmp_path / "t.mp4"
    with fr.Mp4Writer(path, 30, 16, 16, ffmpeg_exe=ffmpeg_exe()) as writer:
        for i in range(77):
            writer.write(np.full((16, 16, 3), i, np.uint8))
    assert len(decode_all_bgr(path)) == 77


def test_mp4_writer_errors(tmp_path):
    exe = ffmpeg_exe()
    with fr.Mp4Writer(tmp_path / "x.mp4", 30, W, H, ffmpeg_exe=exe) as writer:
        with pytest.raises(ValueError, match="expected uint8"):
            writer.write(np.zeros((H, W + 1, 3), np.uint8))
        with pytest.raises(ValueError, match="expected uint8"):
            writer.write(np.zeros((H, W, 3), np.float32))
        writer.write(np.zeros((H, W, 3), np.uint8))
    assert len(decode_all_bgr(tmp_path / "x.mp4")) == 1
    with pytest.raises(OutputError, match=r"ffmpeg failed writing .*no_such_folder.*exit status"):
        with fr.Mp4Writer(tmp_path / "no_such_folder" / "x.mp4", 30, W, H, ffmpeg_exe=exe) as writer:
            writer.write(np.zeros((H, W, 3), np.uint8))
    with pytest.raises(KeyError):  # an error inside the block is the one reported
        with fr.Mp4Writer(tmp_path / "no_such_folder" / "y.mp4", 30, W, H, ffmpeg_exe=exe):
            raise KeyError("inside")


def test_write_png_is_lossless(tmp_path):
    rgb = _image(H, W, seed=5)
    fr.write_png(tmp_path / "f.png", rgb)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "f.png"))[:, :, ::-1], rgb)
    np.testing.assert_array_equal(fr.read_reference(tmp_path / "f.png"), rgb)
    with pytest.raises(OSError, match="cannot write"):
        fr.write_png(tmp_path / "missing" / "f.png", rgb)


def test_mp4_writer_without_ffmpeg(tmp_path):
    with pytest.raises(OutputError, match="cannot start ffmpeg"):
        fr.Mp4Writer(tmp_path / "x.mp4", 30, W, H, ffmpeg_exe=str(tmp_path / "no-ffmpeg"))

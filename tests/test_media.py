"""Reading and writing media: round trips, palette GIFs, odd sizes, typed errors, atomic writes."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest

from runtimes.writers import VIDEO_SUFFIXES, write_images, write_output, write_video
from zoo.errors import InputError, OutputError
from zoo.infra.media import check_frame_size, load_image, load_video


def _video(b: int = 1, f: int = 6, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth moving gradients in [0, 1] (B, F, H, W, 3): codec-friendly, every frame distinct."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((b, f, h, w, 3), np.float32)
    for i in range(b):
        phase = rng.uniform(0, 2 * np.pi, 3)
        for t in range(f):
            for c in range(3):
                out[i, t, :, :, c] = 0.5 + 0.4 * np.sin(x / w * 3 + y / h * 2 + phase[c] + 0.5 * t)
    return out


def _uint8(frames: np.ndarray) -> np.ndarray:
    return (frames * 255).round().astype(np.uint8)


def _as_array(frames: list[PIL.Image.Image]) -> np.ndarray:
    assert all(frame.mode == "RGB" for frame in frames)
    return np.stack([np.asarray(frame) for frame in frames])


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _h264(path: Path) -> tuple[str, int, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, stream.frames, stream.codec_context.width, stream.codec_context.height


# ---- write then read back ----------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(32, 32), (18, 30)])
def test_mp4_round_trip_is_h264_at_the_exact_size(tmp_path, h, w):
    frames = _video(f=6, h=h, w=w)
    out = tmp_path / "clip.mp4"
    assert write_video(frames, out, fps=8) == [out]
    assert _names(tmp_path) == ["clip.mp4"]
    assert _h264(out) == ("h264", 6, w, h)  # 30x18 is not a multiple of 16: still not resized
    back = load_video(out, option="--video")
    assert len(back) == 6 and back[0].size == (w, h)
    err = np.abs(_as_array(back).astype(float) - _uint8(frames[0]).astype(float))
    assert err.mean() < 10 and err.max() < 80  # lossy (quality 5 = crf 25, yuv420p chroma); measured 4.5-5.5 mean


def test_mp4_odd_size_is_edge_padded_to_even(tmp_path):
    frames = _video(f=4, h=17, w=31)
    out = tmp_path / "odd.mp4"
    write_video(frames, out)
    assert _names(tmp_path) == ["odd.mp4"]
    assert _h264(out) == ("h264", 4, 32, 18)
    back = _as_array(load_video(out, option="--video")).astype(float)
    assert np.abs(back[:, :17, :31] - _uint8(frames[0])).mean() < 10  # the picture is not rescaled


def test_mp4_batch_writes_one_file_per_video(tmp_path):
    frames = _video(b=2, f=3, seed=1)
    paths = write_video(frames, tmp_path / "clip.mp4")
    assert paths == [tmp_path / "clip-0.mp4", tmp_path / "clip-1.mp4"]
    assert _names(tmp_path) == ["clip-0.mp4", "clip-1.mp4"]
    for i, path in enumerate(paths):
        back = _as_array(load_video(path, option="--video")).astype(float)
        assert back.shape == (3, 32, 32, 3)
        assert np.abs(back - _uint8(frames[i])).mean() < 10


def test_gif_round_trip_every_frame_rgb(tmp_path):
    frames = _video(f=5)
    out = tmp_path / "clip.gif"
    assert write_video(frames, out, fps=8) == [out]
    back = load_video(out, option="--video")
    assert len(back) == 5 and back[0].size == (32, 32)
    err = np.abs(_as_array(back).astype(float) - _uint8(frames[0]))
    assert err.mean() < 6 and err.max() < 48  # 256-colour palette per frame
    with PIL.Image.open(out) as gif:
        assert gif.info["duration"] == 120  # 1000 // 8 = 125 ms, stored in 10 ms steps


def test_png_folder_round_trip_is_exact(tmp_path):
    frames = _video(f=12)
    out = tmp_path / "frames"
    assert write_video(frames, out) == [out]
    assert _names(out) == [f"frame-{i:04d}.png" for i in range(12)]
    np.testing.assert_array_equal(_as_array(load_video(out, option="--video")), _uint8(frames[0]))


def test_png_folder_batch_uses_subfolders(tmp_path):
    frames = _video(b=2, f=3)
    out = tmp_path / "frames"
    assert write_video(frames, out) == [out / "video-0", out / "video-1"]
    assert _names(out) == ["video-0", "video-1"]
    for i in range(2):
        np.testing.assert_array_equal(_as_array(load_video(out / f"video-{i}", option="--video")), _uint8(frames[i]))


def test_existing_folder_with_a_suffix_gets_frames(tmp_path):
    out = tmp_path / "run.v1"
    out.mkdir()
    write_video(_video(f=2), out)
    assert _names(out) == ["frame-0000.png", "frame-0001.png"]


def test_rewriting_a_frame_folder_replaces_it_whole(tmp_path):
    out = tmp_path / "frames"
    write_video(_video(f=4), out)
    write_video(_video(f=2, seed=3), out)
    assert _names(out) == ["frame-0000.png", "frame-0001.png"]
    assert _names(tmp_path) == ["frames"]


def test_npy_keeps_the_float_array(tmp_path):
    frames = _video(b=2, f=3)
    out = tmp_path / "clip.npy"
    assert write_video(frames, out) == [out]
    np.testing.assert_array_equal(np.load(out), frames)
    assert _names(tmp_path) == ["clip.npy"]


def test_uint8_conversion_rounds_like_diffusers(tmp_path):
    from diffusers.utils import numpy_to_pil

    frames = np.random.default_rng(0).random((1, 2, 8, 8, 3)).astype(np.float32)
    write_video(frames, tmp_path / "f")
    expected = np.stack([np.asarray(im) for im in numpy_to_pil(frames[0])])
    np.testing.assert_array_equal(_as_array(load_video(tmp_path / "f", option="--video")), expected)


def test_write_output_dispatches_on_rank(tmp_path):
    images = _video(f=2)[0]  # (N, H, W, 3)
    assert write_output(images, tmp_path / "img.png") == [tmp_path / "img-0.png", tmp_path / "img-1.png"]
    assert write_output(_video(f=2), tmp_path / "vid.mp4") == [tmp_path / "vid.mp4"]
    assert _h264(tmp_path / "vid.mp4")[0] == "h264"
    with pytest.raises(OutputError, match=r"expected images \(N, H, W, 3\) or video \(B, F, H, W, 3\)"):
        write_output(images[0], tmp_path / "x.png")
    with pytest.raises(InputError, match=r"cannot write images to '\.mp4'; accepted: \.png \.npy"):
        write_output(images, tmp_path / "x.mp4")
    assert VIDEO_SUFFIXES == (".mp4", ".gif", ".npy")


def test_write_images_unchanged(tmp_path):
    images = _video(f=1)[0]
    assert write_images(images, tmp_path / "a.png") == [tmp_path / "a.png"]
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "a.png")), _uint8(images[0]))


# ---- reading -----------------------------------------------------------------------------------


def test_palette_gif_loads_every_frame_as_rgb(tmp_path):
    colours = [(255, 0, 0), (0, 200, 0), (10, 20, 250)]
    frames = []
    for colour in colours:
        frame = PIL.Image.new("P", (10, 6), 0)
        frame.putpalette([*colour, 255, 255, 255] + [0] * (256 - 2) * 3)
        frame.paste(1, (0, 0, 3, 3))  # a white square in palette index 1
        frames.append(frame)
    path = tmp_path / "p.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with PIL.Image.open(path) as gif:
        assert gif.mode == "P" and gif.n_frames == 3
    back = load_video(path, option="--video")
    assert [f.mode for f in back] == ["RGB"] * 3
    assert [f.getpixel((8, 4)) for f in back] == colours
    assert [f.getpixel((1, 1)) for f in back] == [(255, 255, 255)] * 3


def test_rgba_gif_frames_become_rgb(tmp_path):
    frames = [PIL.Image.new("RGBA", (8, 8), (0, 0, 255, 255)), PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 255))]
    frames[1].paste((0, 0, 0, 0), (0, 0, 4, 4))  # transparent corner
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, disposal=2)
    back = load_video(path, option="--video")
    assert [f.mode for f in back] == ["RGB", "RGB"]
    assert back[0].getpixel((6, 6)) == (0, 0, 255) and back[1].getpixel((6, 6)) == (255, 0, 0)


def test_folder_is_read_in_natural_order(tmp_path):
    for i in range(12):  # frame9.png must come before frame10.png
        PIL.Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(tmp_path / f"frame{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    back = load_video(tmp_path, option="--video")
    assert [f.getpixel((0, 0))[0] for f in back] == [i * 20 for i in range(12)]


def test_folder_of_jpegs_with_greyscale_frames(tmp_path):
    PIL.Image.new("L", (6, 4), 100).save(tmp_path / "a.jpg")
    PIL.Image.new("L", (6, 4), 100).save(tmp_path / "b.JPEG")
    back = load_video(tmp_path, option="--video")
    assert len(back) == 2 and all(f.mode == "RGB" and f.size == (6, 4) for f in back)


def test_load_image_is_rgb(tmp_path):
    path = tmp_path / "a.png"
    PIL.Image.new("RGBA", (5, 3), (1, 2, 3, 4)).save(path)
    image = load_image(path, option="--image")
    assert image.mode == "RGB" and image.size == (5, 3) and image.getpixel((0, 0)) == (1, 2, 3)


def test_check_frame_size(tmp_path):
    frames = [PIL.Image.new("RGB", (64, 48), (9, 9, 9))] * 2
    assert check_frame_size(frames, option="--video", height=48, width=64, resize=False) == frames
    resized = check_frame_size(frames, option="--video", height=32, width=32, resize=True)
    assert [f.size for f in resized] == [(32, 32)] * 2 and resized[0].getpixel((5, 5)) == (9, 9, 9)
    assert frames[0].size == (64, 48)  # a new list; the input is untouched
    with pytest.raises(InputError) as info:
        check_frame_size(frames, option="--video", height=32, width=32, resize=False, path="/x/a.mp4")
    assert str(info.value) == (
        "--video /x/a.mp4: frames are 64x48 (WxH), expected 32x32; they were not resized: "
        "pass --resize to resize them (bicubic), or supply 32x32 frames"
    )


# ---- input errors: type and message ------------------------------------------------------------


def test_load_image_errors(tmp_path):
    with pytest.raises(InputError, match=r"^--image .*missing\.png: does not exist$"):
        load_image(tmp_path / "missing.png", option="--image")
    text = tmp_path / "a.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match=r"^--image .*a\.txt: not an image \(cannot be decoded: cannot identify"):
        load_image(text, option="--image")
    with pytest.raises(InputError, match=r"^--image .*: is a folder, not an image file$"):
        load_image(tmp_path, option="--image")
    broken = tmp_path / "broken.png"
    buf = tmp_path / "ok.png"
    PIL.Image.new("RGB", (64, 64), (1, 2, 3)).save(buf)
    broken.write_bytes(buf.read_bytes()[:60])  # a truncated PNG: the header parses, the data does not
    with pytest.raises(InputError, match=r"^--image .*broken\.png: not an image \(cannot be decoded"):
        load_image(broken, option="--image")


def test_load_video_missing_and_unknown_type(tmp_path):
    with pytest.raises(InputError, match=r"^--video .*nope\.mp4: does not exist$"):
        load_video(tmp_path / "nope.mp4", option="--video")
    other = tmp_path / "clip.xyz"
    other.write_bytes(b"\0" * 10)
    with pytest.raises(InputError) as info:
        load_video(other, option="--video")
    assert str(info.value) == (
        f"--video {other}: unknown video type '.xyz'; accepted: .mp4 .mov .webm .mkv .avi .gif, "
        "or a folder of .png/.jpg/.jpeg/.webp/.bmp frames"
    )


def test_load_video_undecodable_files(tmp_path):
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n")
    with pytest.raises(InputError, match=r"^--video .*text\.mp4: not a video \(cannot be decoded: "):
        load_video(text, option="--video")
    good = tmp_path / "good.mp4"
    write_video(_video(f=3), good)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match=r"^--video .*corrupt\.mp4: not a video \(cannot be decoded: "):
        load_video(corrupt, option="--video")
    gif = tmp_path / "bad.gif"
    gif.write_bytes(b"GIF89a" + b"\xff" * 5)
    with pytest.raises(InputError, match=r"^--video .*bad\.gif: not a video \(cannot be decoded: "):
        load_video(gif, option="--video")


def test_load_video_empty(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"^--video .*empty: empty video \(the folder holds no frame images"):
        load_video(empty, option="--video")
    (empty / "readme.txt").write_text("no frames here")
    (empty / "sub").mkdir()
    with pytest.raises(InputError, match=r"^--video .*empty: empty video"):
        load_video(empty, option="--video")
    # a container that decodes to 0 frames (hard to produce with ffmpeg, so the decoder is stubbed)
    import diffusers.utils

    monkeypatch.setattr(diffusers.utils, "load_video", lambda *a, **k: [])
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"x")
    with pytest.raises(InputError, match=r"^--video .*zero\.mp4: empty video \(0 frames\)$"):
        load_video(zero, option="--video")


def test_load_video_folder_of_mixed_sizes(tmp_path):
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "f1.png")
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "f2.png")
    PIL.Image.new("RGB", (16, 8)).save(tmp_path / "f10.png")
    with pytest.raises(InputError) as info:
        load_video(tmp_path, option="--video")
    assert str(info.value) == f"--video {tmp_path}: frames are of different sizes (f1.png is 8x8, f10.png is 16x8, WxH)"


def test_load_video_folder_with_an_undecodable_frame(tmp_path):
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "f1.png")
    (tmp_path / "f2.png").write_text("not a png")
    with pytest.raises(InputError, match=r"^--video .*f2\.png: not an image \(cannot be decoded"):
        load_video(tmp_path, option="--video")


# ---- output errors: typed, and nothing left behind ---------------------------------------------


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "clip.npy", "frames"])
def test_nan_or_inf_writes_nothing(tmp_path, name):
    frames = _video(f=2)
    frames[0, 1, 3, 3, 0] = np.nan if name != "clip.gif" else np.inf
    with pytest.raises(OutputError, match="NaN or Inf"):
        write_video(frames, tmp_path / name)
    assert _names(tmp_path) == []


def test_bad_shape_dtype_suffix_and_fps(tmp_path):
    with pytest.raises(OutputError, match=r"expected video frames of shape \(B, F, H, W, 3\), got \(2, 32, 32, 3\)"):
        write_video(_video(f=2)[0], tmp_path / "a.mp4")
    with pytest.raises(OutputError, match=r"shape \(B, F, H, W, 3\), got \(1, 2, 32, 32, 4\)"):
        write_video(np.zeros((1, 2, 32, 32, 4), np.float32), tmp_path / "a.mp4")
    with pytest.raises(OutputError, match=r"expected float video frames in \[0, 1\], got uint8"):
        write_video(np.zeros((1, 2, 8, 8, 3), np.uint8), tmp_path / "a.mp4")
    with pytest.raises(InputError) as info:
        write_video(_video(f=2), tmp_path / "a.avi")
    assert str(info.value) == (
        f"{tmp_path / 'a.avi'}: cannot write a video to '.avi'; accepted: .mp4 .gif .npy, "
        "or no suffix for a folder of PNG frames"
    )
    with pytest.raises(InputError, match="fps must be a positive integer, got 0"):
        write_video(_video(f=2), tmp_path / "a.mp4", fps=0)
    assert _names(tmp_path) == []


def test_encoder_failure_leaves_no_file(tmp_path, monkeypatch):
    import diffusers.utils

    calls = []
    real = diffusers.utils.export_to_video

    def flaky(frames, path, **kwargs):  # the second video fails half-way through its file
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise RuntimeError("encoder died")
        return real(frames, path, **kwargs)

    monkeypatch.setattr(diffusers.utils, "export_to_video", flaky)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_video(_video(b=2, f=2), tmp_path / "clip.mp4")
    assert _names(tmp_path) == []  # neither clip-0.mp4 (done) nor the partial temp of clip-1


def test_silent_encoder_failure_is_an_output_error(tmp_path, monkeypatch):
    import diffusers.utils

    # ffmpeg can exit cleanly having written an empty file (it does so for odd sizes)
    monkeypatch.setattr(diffusers.utils, "export_to_video", lambda frames, path, **k: Path(path).write_bytes(b""))
    with pytest.raises(OutputError, match="encoding the video failed"):
        write_video(_video(f=2), tmp_path / "clip.mp4")
    assert _names(tmp_path) == []


def test_frame_folder_failure_leaves_nothing(tmp_path, monkeypatch):
    real = PIL.Image.Image.save
    count = []

    def failing(self, *args, **kwargs):
        count.append(1)
        if len(count) == 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PIL.Image.Image, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        write_video(_video(f=4), tmp_path / "frames")
    assert _names(tmp_path) == []


def test_folder_holding_other_files_is_not_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="is a folder holding other files; refusing to replace it"):
        write_video(_video(f=2), out)
    assert _names(out) == ["thesis.tex"]
    assert _names(tmp_path) == ["mine"]


def test_an_existing_file_is_never_replaced_by_a_frame_folder(tmp_path):
    """A suffix-less --out that is a file is refused (it once was moved aside, then deleted)."""
    precious = tmp_path / "precious"
    precious.write_text("important data")
    with pytest.raises(OutputError, match="is an existing file, not a folder: refusing to replace it"):
        write_video(np.zeros((1, 2, 4, 4, 3), np.float32), precious)
    assert precious.read_text() == "important data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]

"""Writing generated images and videos atomically: a failed or interrupted run leaves no partial
file, folder or temporary file behind."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from exporters.artifacts import _temp_sibling, atomic_write_bytes, staged_dir
from zoo.errors import InputError, OutputError
from zoo.infra.media import require_video_libs

#: What :func:`write_video` writes by suffix; no suffix (or an existing folder) is a folder of PNG frames.
VIDEO_SUFFIXES = (".mp4", ".gif", ".npy")
#: What :func:`write_output` writes a rank-4 image batch to (through :func:`write_images`).
IMAGE_SUFFIXES = (".png", ".npy")


def write_images(images: NDArray[Any], out: Path) -> list[Path]:
    """``images`` (N, H, W, 3) float in [0, 1], as the diffusers pipeline returns with
    ``output_type="np"``. ``.npy`` gets the whole float array; ``.png`` one file per image
    (``name.png``, or ``name-0.png``, ``name-1.png``, ... for several)."""
    from PIL import Image

    images = np.asarray(images)
    if not np.isfinite(images).all():
        raise OutputError(f"the generated images contain NaN or Inf values; nothing written to {out}")
    if out.suffix.lower() == ".npy":
        buf = io.BytesIO()
        np.save(buf, images)
        atomic_write_bytes(out, buf.getvalue())
        return [out]
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    encoded = []
    for image in images:  # encode all first: a failure leaves no file behind
        buf = io.BytesIO()
        # the pipeline's own numpy_to_pil rounding: (x * 255).round()
        Image.fromarray((image * 255).round().astype("uint8")).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    for data, path in zip(encoded, paths):
        atomic_write_bytes(path, data)
    return paths


def _video_uint8(frames: NDArray[Any]) -> NDArray[Any]:
    """(B, F, H, W, 3) float -> uint8 the way diffusers' ``numpy_to_pil`` does: ``(x * 255).round()``.

    Values are clipped to [0, 1] first (a no-op for pipeline output, which is already clamped) so an
    out-of-range value saturates instead of wrapping around."""
    video: NDArray[Any] = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)  # np.clip's stub returns Any
    return video


def _pad_even(video: NDArray[Any]) -> NDArray[Any]:
    """Pad (F, H, W, 3) to even H and W by repeating the last row / column (H.264 yuv420p needs even)."""
    h, w = video.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return video
    return np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _check_h264(path: Path, frames: int, height: int, width: int) -> None:
    """Read the encoded file back with PyAV: ffmpeg can exit without error having written nothing."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            found = (stream.codec_context.name, stream.frames, stream.codec_context.height, stream.codec_context.width)
    except (av.FFmpegError, IndexError) as exc:
        raise OutputError(f"encoding the video failed; nothing written ({exc})") from exc
    if found != ("h264", frames, height, width):
        raise OutputError(
            f"encoding the video failed: got codec {found[0]}, {found[1]} frames, {found[3]}x{found[2]} "
            f"(WxH); expected h264, {frames} frames, {width}x{height}; nothing written"
        )


def _encode_mp4(video: NDArray[Any], path: Path, fps: int) -> None:
    from diffusers.utils import export_to_video
    from PIL import Image

    video = _pad_even(video)
    # PIL frames, not arrays: export_to_video would scale uint8 arrays by 255 again (it truncates
    # float arrays with ``(x * 255).astype(uint8)``, so the rounding is done here instead)
    export_to_video([Image.fromarray(frame) for frame in video], str(path), fps=fps, macro_block_size=1)
    _check_h264(path, len(video), video.shape[1], video.shape[2])


def _encode_gif(video: NDArray[Any], path: Path, fps: int) -> None:
    from diffusers.utils import export_to_gif
    from PIL import Image

    export_to_gif([Image.fromarray(frame) for frame in video], str(path), fps=fps)


def _write_files(
    videos: NDArray[Any], out: Path, fps: int, encode: Callable[[NDArray[Any], Path, int], None]
) -> list[Path]:
    """Encode every video to a temporary sibling (same suffix, so the encoder picks the format),
    then ``os.replace`` them all into place; on any failure no temporary file remains."""
    paths = [out] if len(videos) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(videos))]
    out.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        for video, path in zip(videos, paths):
            tmp = _temp_sibling(path, "tmp")
            tmp = tmp.with_name(tmp.name + path.suffix)
            temps.append(tmp)
            encode(video, tmp, fps)
            _fsync(tmp)
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return paths


def _is_frames_folder(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but a previous frame-folder output (safe to replace whole)."""
    for entry in folder.iterdir():
        if entry.is_dir() and re.fullmatch(r"video-\d+", entry.name):
            if not _is_frames_folder(entry):
                return False
        elif not (entry.is_file() and re.fullmatch(r"frame-\d+\.png", entry.name)):
            return False
    return True


def _write_frame_folder(videos: NDArray[Any], out: Path) -> list[Path]:
    from PIL import Image

    if out.is_dir() and not _is_frames_folder(out):
        raise OutputError(f"{out} is a folder holding other files; refusing to replace it with video frames")
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"{out} is an existing file, not a folder: refusing to replace it with a folder of frames "
            f"(give a video suffix such as .mp4, or another path)"
        )
    with staged_dir(out) as stage:
        for i, video in enumerate(videos):
            folder = stage if len(videos) == 1 else stage / f"video-{i}"
            folder.mkdir(exist_ok=True)
            for j, frame in enumerate(video):
                Image.fromarray(frame).save(folder / f"frame-{j:04d}.png", format="PNG")
    return [out] if len(videos) == 1 else [out / f"video-{i}" for i in range(len(videos))]


def write_video(frames: NDArray[Any], out: Path, *, fps: int = 8) -> list[Path]:
    """Write ``frames`` (B, F, H, W, 3) float in [0, 1], as a diffusers video pipeline returns with
    ``output_type="np"``; returns the written paths.

    By ``out``'s suffix: ``.mp4`` H.264 (diffusers' ``export_to_video``, imageio-ffmpeg's ffmpeg,
    yuv420p) with ``macro_block_size=1`` so imageio never rescales; yuv420p needs an even width and
    height, so an odd one is padded by one repeated edge row / column (a 31x17 video is written
    32x18), nothing else is resized. ``.gif`` diffusers' ``export_to_gif`` (palette-quantized;
    Pillow merges identical consecutive frames into one longer frame, and stores durations in 10 ms
    steps, so 8 fps plays at 1000 / 120 ms). ``.npy`` the whole float array. No suffix, or an
    existing folder: PNG frames ``frame-0000.png ...`` (in ``video-0/``, ``video-1/`` ... for
    B > 1). For B > 1, ``.mp4`` / ``.gif`` write ``name-0.mp4``, ``name-1.mp4`` ...
    """
    out = Path(out)
    frames = np.asarray(frames)
    kind = "folder" if out.is_dir() or not out.suffix else out.suffix.lower()
    if kind not in ("folder", *VIDEO_SUFFIXES):
        raise InputError(
            f"{out}: cannot write a video to {out.suffix!r}; accepted: {' '.join(VIDEO_SUFFIXES)}, "
            "or no suffix for a folder of PNG frames"
        )
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps < 1:
        raise InputError(f"fps must be a positive integer, got {fps!r}")
    if frames.ndim != 5 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise OutputError(
            f"expected video frames of shape (B, F, H, W, 3), got {frames.shape}; nothing written to {out}"
        )
    if not np.issubdtype(frames.dtype, np.floating):
        raise OutputError(f"expected float video frames in [0, 1], got {frames.dtype}; nothing written to {out}")
    if not np.isfinite(frames).all():
        raise OutputError(f"the generated video contains NaN or Inf values; nothing written to {out}")
    if kind == ".npy":
        buf = io.BytesIO()
        np.save(buf, frames)
        atomic_write_bytes(out, buf.getvalue())
        return [out]
    videos = _video_uint8(frames)
    if kind == "folder":
        return _write_frame_folder(videos, out)
    if kind == ".mp4":
        require_video_libs(f"writing {out}", "imageio", "imageio_ffmpeg", "av")
        return _write_files(videos, out, int(fps), _encode_mp4)
    return _write_files(videos, out, int(fps), _encode_gif)


def check_output_path(output_format: str, out: Path) -> None:
    """``--out`` must suit the request's output (``images``: .png / .npy; ``video``: .mp4 / .gif /
    .npy or a folder for PNG frames) and lie in a folder; :class:`InputError` otherwise."""
    out = Path(out)
    suffix = out.suffix.lower()
    if output_format == "images" and suffix not in IMAGE_SUFFIXES:
        raise InputError(f"--out {out}: expected a {' or '.join(IMAGE_SUFFIXES)} file")
    if output_format == "video" and suffix and suffix not in VIDEO_SUFFIXES:
        raise InputError(f"--out {out}: expected a {', '.join(VIDEO_SUFFIXES)} file, or a folder for PNG frames")
    if out.is_dir() and output_format == "images":
        raise InputError(f"--out {out}: expected a file path in a folder")
    check_writable(out)


def check_writable(out: Path) -> None:
    """That ``out`` can be written, before anything runs: its nearest existing folder takes a new
    file (tried with an unnamed temporary file: nothing is left, and the answer is the file
    system's own, for root, ACLs and read-only mounts alike); the folders still to be made can be
    made there. :class:`InputError` naming the cause otherwise."""
    import errno
    import tempfile

    out = Path(out)
    folder = out.parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        what = "a file" if folder.is_file() else "a broken symbolic link" if not folder.exists() else "not a folder"
        raise InputError(f"--out {out}: {folder} is {what}, not a folder, so nothing can be written under it")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        causes: dict[int | None, str] = {
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EROFS: "a read-only file system",
            errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "disk quota exceeded",
        }
        cause = causes.get(e.errno, e.strerror or str(e))
        raise InputError(f"--out {out}: cannot write in {folder}: {cause}") from None


def write_output(array: NDArray[Any], out: Path, *, fps: int = 8) -> list[Path]:
    """Write a pipeline's ``output_type="np"`` result: rank 4 (N, H, W, 3) images through
    :func:`write_images` (``.png`` / ``.npy``), rank 5 (B, F, H, W, 3) video through :func:`write_video`."""
    out = Path(out)
    array = np.asarray(array)
    if array.ndim == 5:
        return write_video(array, out, fps=fps)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise OutputError(
            f"expected images (N, H, W, 3) or video (B, F, H, W, 3), got shape {array.shape}; nothing written to {out}"
        )
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(
            f"{out}: cannot write images to {out.suffix or '(no suffix)'!r}; accepted: {' '.join(IMAGE_SUFFIXES)}"
        )
    return write_images(array, out)

"""Reading the driving video and the reference, resizing them (WAN_PREPROCESS.md 1), and writing
the output videos (8.3).

The driving video is read with OpenCV's FFmpeg reader, the spec's "cv2 reader" variant of 1.1:
every frame is decoded, ``N`` is the number of frames decoded, ``fps_v`` is ``CAP_PROP_FPS`` and
decord's 10 % frame-count rule does not apply (on the spec's test videos this reader gave the same
frames and counts as decord). Frames are streamed one at a time; nothing here holds a whole video.

The mp4 files are written the way moviepy 1.0.3's ``ImageSequenceClip.write_videofile`` writes
them (the same FFmpeg binary and command line), but with exactly the frames given (8.3: moviepy
writes ``T`` or ``T + 1`` frames).
"""

from __future__ import annotations

import math
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import cv2
import numpy as np

from zoo.errors import BackendUnavailableError, InputError, OutputError
from zoo.families.wan_animate_pose.meta import U8
from zoo.models.letterbox import padding_resize

DIVISOR = 16  # resize_by_area's divisor as the pipeline calls it (1.4)
_STDERR_TAIL = 2000  # characters of FFmpeg's error output quoted in a RuntimeError


@dataclass(frozen=True)
class VideoInfo:
    """A driving video as the cv2 reader sees it (1.1): ``frames`` = ``N`` decoded frames,
    ``fps`` = ``fps_v`` (``CAP_PROP_FPS``), ``height`` x ``width`` of the decoded frames."""

    path: Path
    frames: int
    fps: float
    height: int
    width: int


def _check_file(path: Path, option: str, expected: str) -> None:
    """A path that a reader can open without blocking: an existing, non-empty regular file."""
    if not path.exists():
        raise InputError(f"{option} {path}: no such file; expected {expected}")
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; expected {expected}")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # a FIFO or a device would block the reader
        raise InputError(f"{option} {path}: not a regular file; expected {expected}")
    if path.stat().st_size == 0:
        raise InputError(f"{option} {path}: an empty file (0 bytes); expected {expected}")


def _open_capture(path: Path) -> cv2.VideoCapture:
    """OpenCV's FFmpeg reader (decord, which the original uses, is FFmpeg too), any backend where
    this OpenCV build has no FFmpeg."""
    api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    return cv2.VideoCapture(str(path), api)


def probe_video(path: Path, option: str = "--video") -> VideoInfo:
    """Open ``path`` and decode it once to count its frames (1.1, cv2 reader).

    Raises :class:`InputError` (one line naming ``option`` and ``path``) for a missing path, a
    folder, an empty file, a file OpenCV cannot open (not a video, or an mp4 cut short before its
    index), a video with no decodable frame, a truncated video (fewer frames decode than the
    container states) and a frame rate that is not a positive number.
    """
    path = Path(path)
    _check_file(path, option, "a video file")
    capture = _open_capture(path)
    try:
        if not capture.isOpened():
            raise InputError(
                f"{option} {path}: not a video (OpenCV cannot open it; an mp4 cut short before its index "
                "reads the same); expected a video file"
            )
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        stated = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        stated_frames = int(stated) if math.isfinite(stated) and stated > 0 else 0
        ok, first = capture.read()
        if not ok or first is None:
            states = f" (the container states {stated_frames} frames)" if stated_frames else ""
            raise InputError(
                f"{option} {path}: a video with no decodable frame{states}; expected a video with at least one frame"
            )
        frames = 1
        while capture.grab():  # grab() decodes without the colour conversion; it counts as read() does
            frames += 1
    finally:
        capture.release()
    if frames < stated_frames:
        raise InputError(
            f"{option} {path}: truncated or corrupt video: {frames} frames decode but the container states "
            f"{stated_frames}; expected a complete video file"
        )
    if not fps > 0 or not math.isfinite(fps):
        raise InputError(f"{option} {path}: the frame rate reads as {fps}; expected a positive frame rate")
    height, width = first.shape[:2]
    return VideoInfo(path=path, frames=frames, fps=fps, height=int(height), width=int(width))


def frame_indices(frames: int, fps_v: float, fps: float) -> list[int]:
    """The source frames to take (1.2): ``T = trunc(N / fps_v * F)`` frames (``F = fps_v`` when
    ``fps == -1``; Q3: that can be ``N - 1``, reproduced), ``idx_i = clip(rne(i / F * fps_v), 0, N - 1)``
    in double arithmetic. ``[]`` when ``T == 0`` (the caller reports it).
    """
    if frames < 0:
        raise ValueError(f"frame_indices: frames={frames}; expected a count >= 0")
    if not fps_v > 0 or not math.isfinite(fps_v):
        raise ValueError(f"frame_indices: fps_v={fps_v}; expected a positive source frame rate")
    if fps == -1:
        fps = fps_v
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"frame_indices: fps={fps}; expected a positive frame rate or -1")
    f = float(fps)  # an int F divides exactly as its double does
    fv = float(fps_v)
    count = int(frames / fv * f)  # (N / fps_v) * F, doubles, truncated
    if count <= 0:
        return []
    times = np.arange(count, dtype=np.int64).astype(np.float64) / np.float64(f)
    idx = np.round(times * np.float64(fv)).astype(np.int64)  # half to even
    return [int(i) for i in np.clip(idx, 0, frames - 1)]


def iter_frames(path: Path, indices: Sequence[int]) -> Iterator[U8]:
    """RGB frames of ``path`` at ``indices`` (nondecreasing, repeats allowed), in that order: the file
    is decoded once from the start, one frame held at a time (1.1-1.2; the frames the original's
    ``get_batch`` returns). A repeated index yields a fresh copy each time."""
    path = Path(path)
    wanted = [int(i) for i in indices]
    for a, b in zip(wanted, wanted[1:]):
        if b < a:
            raise ValueError(f"iter_frames: indices must be nondecreasing ({a} then {b})")
    if wanted and wanted[0] < 0:
        raise ValueError(f"iter_frames: negative frame index {wanted[0]}")
    return _decode(path, wanted)  # the checks above run at the call, the decoding as frames are taken


def _decode(path: Path, wanted: list[int]) -> Iterator[U8]:
    if not wanted:
        return
    capture = _open_capture(path)
    try:
        if not capture.isOpened():
            raise InputError(f"{path}: not a video (OpenCV cannot open it); expected a video file")
        position = -1  # index of the frame last grabbed
        current: np.ndarray | None = None
        for index in wanted:
            while position < index:
                if not capture.grab():
                    raise InputError(
                        f"{path}: the video ends after {position + 1} frames; frame {index} was expected to decode"
                    )
                position += 1
                current = None
            if current is None:
                ok, bgr = capture.retrieve()
                if not ok or bgr is None:
                    raise InputError(f"{path}: frame {index} does not decode")
                current = bgr
            yield np.ascontiguousarray(current[..., ::-1])  # BGR -> RGB, a new array every time
    finally:
        capture.release()


def read_reference(path: Path, option: str = "--image") -> U8:
    """The reference image (1.3): ``cv2.imread`` with default flags (8-bit, 3 channels, EXIF
    orientation applied, alpha dropped, grey expanded), channels reversed to RGB."""
    path = Path(path)
    _check_file(path, option, "an image file")
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise InputError(f"{option} {path}: not an image (OpenCV cannot decode it); expected an image file")
    return np.ascontiguousarray(bgr[..., ::-1])


def area_size(height: int, width: int, area: int) -> tuple[int, int]:
    """``(H', W')`` of ``resize_by_area`` (1.4, the fallback the original always takes, Q2):
    ``ar = w / h``, ``nh = sqrt(A / ar)``, ``nw = A / nh``, each floored to a multiple of 16."""
    if height <= 0 or width <= 0:
        raise ValueError(f"area_size: image size {width}x{height} (WxH); expected positive sides")
    if area <= 0:
        raise ValueError(f"area_size: area {area}; expected a positive pixel count")
    ar = width / height
    nh = math.sqrt(area / ar)
    nw = area / nh
    return int((nh // DIVISOR) * DIVISOR), int((nw // DIVISOR) * DIVISOR)


def resize_by_area(image: U8, area: int) -> U8:
    """``resize_by_area(img, A)`` with divisor 16 (1.4): the canvas of :func:`area_size`, ``INTER_AREA``
    when it has fewer pixels than the image, else ``INTER_LINEAR``, then :func:`padding_resize`."""
    h, w = image.shape[:2]
    new_h, new_w = area_size(h, w, area)
    if new_h <= 0 or new_w <= 0:  # the original divides by zero here
        raise InputError(
            f"an image of {w}x{h} (WxH) is too elongated for a {area}-pixel canvas in multiples of "
            f"{DIVISOR} ({new_w}x{new_h}); expected a less extreme aspect ratio"
        )
    interpolation = cv2.INTER_AREA if new_w * new_h < w * h else cv2.INTER_LINEAR
    return padding_resize(image, new_h, new_w, interpolation)


def ffmpeg_args(path: Path, fps: float, width: int, height: int, ffmpeg_exe: str) -> list[str]:
    """The FFmpeg command line of moviepy 1.0.3's ``FFMPEG_VideoWriter`` as ``write_videofile`` calls
    it for an ``.mp4`` without audio (8.3): raw RGB24 on stdin, ``-r`` with two decimals, libx264,
    preset medium, ``-pix_fmt yuv420p`` when both sides are even (moviepy leaves it out otherwise)."""
    args = [
        ffmpeg_exe,
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-vcodec",
        "rawvideo",
        "-s",
        f"{int(width)}x{int(height)}",  # moviepy: '%dx%d' % size
        "-pix_fmt",
        "rgb24",
        "-r",
        f"{float(fps):.2f}",  # moviepy: '%.02f' % fps
        "-an",
        "-i",
        "-",
        "-vcodec",
        "libx264",
        "-preset",
        "medium",
    ]
    if width % 2 == 0 and height % 2 == 0:
        args += ["-pix_fmt", "yuv420p"]
    args.append(str(path))
    return args


def default_ffmpeg_exe() -> str:
    """The FFmpeg binary imageio-ffmpeg ships (moviepy's default, ``FFMPEG_BINARY='ffmpeg-imageio'``)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise BackendUnavailableError("writing mp4 videos needs imageio-ffmpeg: pip install imageio-ffmpeg") from exc
    return str(imageio_ffmpeg.get_ffmpeg_exe())


class Mp4Writer:
    """An mp4 written as moviepy 1.0.3 writes one (8.3, :func:`ffmpeg_args`), one frame at a time and
    exactly the frames given. Use as a context manager; :meth:`close` waits for FFmpeg and raises
    :class:`RuntimeError` with the end of FFmpeg's error output if it failed."""

    def __init__(self, path: Path, fps: float, width: int, height: int, ffmpeg_exe: str | None = None) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"Mp4Writer: size {width}x{height} (WxH); expected positive sides")
        if not fps > 0 or not math.isfinite(fps):
            raise ValueError(f"Mp4Writer: fps={fps}; expected a positive frame rate")
        self.path = Path(path)
        self.width = width
        self.height = height
        self.frames = 0
        self.args = ffmpeg_args(self.path, fps, width, height, ffmpeg_exe or default_ffmpeg_exe())
        # FFmpeg's messages go to a file, not a pipe nobody reads while frames are written
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                self.args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError as exc:  # the binary is missing or not executable
            self._stderr.close()
            raise OutputError(f"cannot start ffmpeg ({self.args[0]}) to write {self.path}: {exc}") from exc

    def write(self, frame_rgb: U8) -> None:
        """Append one ``height x width x 3`` uint8 RGB frame."""
        if self._proc is None:
            raise RuntimeError(f"Mp4Writer {self.path}: already closed")
        shape = (self.height, self.width, 3)
        if frame_rgb.dtype != np.uint8 or frame_rgb.shape != shape:
            raise ValueError(
                f"Mp4Writer {self.path}: frame {frame_rgb.dtype} {frame_rgb.shape}; expected uint8 {shape}"
            )
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame_rgb).tobytes())
        except OSError:  # a broken pipe: FFmpeg has stopped
            self._finish()  # raises with FFmpeg's message
            raise OutputError(f"ffmpeg stopped reading frames for {self.path}") from None
        self.frames += 1

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return text[-_STDERR_TAIL:] if text else "(no message)"

    def _finish(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
            code = proc.wait()
            if code != 0:
                raise OutputError(f"ffmpeg failed writing {self.path} (exit status {code}): {self._stderr_tail()}")
        finally:
            self._stderr.close()

    def close(self) -> None:
        """Finish the file: close FFmpeg's input and wait for it (idempotent)."""
        self._finish()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an error inside the block: finish quietly, the block's error is the one reported
            self.close()
        except (RuntimeError, OutputError):
            pass


def write_png(path: Path, frame_rgb: U8) -> None:
    """A lossless PNG of an RGB frame (``cv2.imwrite`` of the channel-reversed array)."""
    try:
        ok = cv2.imwrite(str(path), np.ascontiguousarray(frame_rgb[..., ::-1]))
    except cv2.error as exc:
        raise OSError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if not ok:
        raise OSError(f"cannot write {path} (OpenCV could not write the PNG)")

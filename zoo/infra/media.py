"""Reading user-supplied images and videos as RGB PIL frames, with errors that name the option.

The lowest layer: only third-party libraries and :mod:`zoo.errors`. Decoding is diffusers' own
(``diffusers.utils.load_image`` / ``load_video``); this module adds the path checks, RGB
conversion of every frame, folders of frame images, and :class:`~zoo.errors.InputError` messages
of the form ``--video /x/a.mp4: not a video (cannot be decoded: ...)``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Collection, Sequence
from pathlib import Path

import PIL.Image

from zoo.errors import BackendUnavailableError, InputError

#: Containers decoded by ffmpeg (through imageio / imageio-ffmpeg).
VIDEO_CONTAINERS = (".mp4", ".mov", ".webm", ".mkv", ".avi")
#: Single-file video types :func:`load_video` accepts (ffmpeg containers and GIF).
VIDEO_FILE_SUFFIXES = (*VIDEO_CONTAINERS, ".gif")
#: Frame images accepted in a folder given as a video.
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def require_video_libs(what: str, *modules: str) -> None:
    """Raise :class:`BackendUnavailableError` naming the pip packages ``what`` needs but lacks."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pip = " ".join(m.replace("_", "-") for m in missing)
        raise BackendUnavailableError(f"{what} needs {', '.join(missing)}: pip install {pip}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def natural_key(path: Path) -> list[int | str]:
    """``frame9.png`` before ``frame10.png``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def check_media_path(path: Path, option: str) -> None:
    """A media path must exist and be a regular file or a folder, checked before anything opens
    it: a FIFO, a socket or a device would block a reader or never end."""
    if not path.exists():
        raise InputError(f"{option} {path}: does not exist")
    if not (path.is_file() or path.is_dir()):
        raise InputError(f"{option} {path}: not a regular file or folder (a FIFO, socket or device is not read)")


def _decode_image(path: Path, option: str) -> PIL.Image.Image:
    from diffusers.utils import load_image as diffusers_load_image

    try:  # diffusers: exif_transpose, then convert("RGB"), which forces the full decode
        return diffusers_load_image(str(path))
    except Exception as exc:  # any decoder failure is the user's file, not a bug here
        raise InputError(f"{option} {path}: not an image (cannot be decoded: {_first_line(exc)})") from exc


def load_image(path: str | Path, *, option: str) -> PIL.Image.Image:
    """Decode ``path`` into an RGB image; :class:`InputError` starting with ``option`` otherwise."""
    path = Path(path)
    check_media_path(path, option)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, not an image file")
    return _decode_image(path, option)


def _to_rgb(frames: list[PIL.Image.Image]) -> list[PIL.Image.Image]:
    # diffusers leaves GIF frames as decoded: the first is 'P', the rest 'RGB' or 'RGBA'
    return [frame if frame.mode == "RGB" else frame.convert("RGB") for frame in frames]


def _load_frame_folder(folder: Path, option: str, exclude: Collection[str] = ()) -> list[PIL.Image.Image]:
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file()
            and p.suffix.lower() in FRAME_SUFFIXES
            and not p.name.startswith(".")
            and p.name not in exclude
        ),
        key=natural_key,
    )
    if not files:
        accepted = " ".join(FRAME_SUFFIXES)
        skipped = f"; {', '.join(sorted(exclude))} not counted as frames" if exclude else ""
        raise InputError(f"{option} {folder}: empty video (the folder holds no frame images: {accepted}{skipped})")
    frames = [_decode_image(p, option) for p in files]
    for file, frame in zip(files, frames):
        if frame.size != frames[0].size:
            w0, h0 = frames[0].size
            w, h = frame.size
            raise InputError(
                f"{option} {folder}: frames are of different sizes ({files[0].name} is {w0}x{h0}, "
                f"{file.name} is {w}x{h}, WxH)"
            )
    return frames


def _load_video_file(path: Path, option: str) -> list[PIL.Image.Image]:
    from diffusers.utils import load_video as diffusers_load_video

    if not path.name.endswith(".gif"):  # diffusers decodes *.gif with PIL, the rest (.GIF too) with imageio
        require_video_libs(f"{option} {path}: reading {path.suffix}", "imageio", "imageio_ffmpeg")
    try:
        return diffusers_load_video(str(path), convert_method=_to_rgb)
    except Exception as exc:  # corrupt bytes, a text file named .mp4, a truncated container ...
        raise InputError(f"{option} {path}: not a video (cannot be decoded: {_first_line(exc)})") from exc


def load_video(path: str | Path, *, option: str, exclude: Collection[str] = ()) -> list[PIL.Image.Image]:
    """RGB frames of a video file (``.mp4 .mov .webm .mkv .avi .gif``) or a folder of frame images.

    A folder's ``.png/.jpg/.jpeg/.webp/.bmp`` files are read in natural order (``frame9`` before
    ``frame10``) and must share one size; files named (exactly) in ``exclude`` are not frames (a
    caller's declared companions, e.g. a pose folder's reference pose). Every GIF frame is
    returned, converted to RGB.
    """
    path = Path(path)
    check_media_path(path, option)
    if path.is_dir():
        frames = _load_frame_folder(path, option, exclude)
    elif path.suffix.lower() in VIDEO_FILE_SUFFIXES:
        frames = _load_video_file(path, option)
    else:
        accepted = " ".join(VIDEO_FILE_SUFFIXES)
        raise InputError(
            f"{option} {path}: unknown video type {path.suffix or '(no suffix)'!r}; accepted: {accepted}, "
            f"or a folder of {'/'.join(FRAME_SUFFIXES)} frames"
        )
    if not frames:
        raise InputError(f"{option} {path}: empty video (0 frames)")
    return frames


def check_frame_size(
    frames: Sequence[PIL.Image.Image],
    *,
    option: str,
    height: int,
    width: int,
    resize: bool,
    path: str | Path | None = None,
    resize_flag: str = "--resize",
    resample: str = "bicubic",
) -> list[PIL.Image.Image]:
    """Frames as ``width`` x ``height``: resized copies (PIL ``resample``: bicubic, bilinear,
    lanczos) when ``resize``, else :class:`InputError` naming the actual and expected sizes (WxH)
    and how to fix it."""
    sizes = {frame.size for frame in frames}
    if sizes <= {(width, height)}:
        return list(frames)
    if resize:
        method = getattr(PIL.Image.Resampling, resample.upper())
        return [frame.resize((width, height), method) for frame in frames]
    found = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
    where = f"{option} {path}" if path is not None else option
    raise InputError(
        f"{where}: frames are {found} (WxH), expected {width}x{height}; they were not resized: "
        f"pass {resize_flag} to resize them ({resample}), or supply {width}x{height} frames"
    )

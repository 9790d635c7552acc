"""``zoo run --conditions DIR``: the folder ``zoo pose`` writes for a wan-animate-pose export (Wan2.2's
preprocessing), read as the files one would pass one by one.

The folder's ``conditions.json`` names the mode, the frame rate, the frame count, the pose frames'
size and the lossless PNG folders (pose, face, and in replace mode background and mask). The
reference is read as Wan's own consumer reads ``src_ref.png`` (WAN_PREPROCESS.md 9.2): ``cv2.imread``
(EXIF orientation applied), RGB, letterboxed to the pose frames' size with ``INTER_LINEAR``; so the
pipeline's own fill-resize is an identity and the CLIP image encoder sees what Wan's does (9.4).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.infra.media import check_media_path, load_video
from zoo.models.letterbox import padding_resize

OPTION = "--conditions"
MANIFEST = "conditions.json"
STREAMS = ("pose", "face", "background", "mask")  # conditions.json keys of the PNG folders


@dataclass
class Conditions:
    mode: str
    fps: float
    size: tuple[int, int]  # H, W of the pose frames
    image: Any  # PIL image: the reference, letterboxed to ``size``
    videos: dict[str, list[Any]]  # stream -> PIL frames (pose, face; background, mask in replace mode)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{OPTION} {folder}: no {MANIFEST}; expected a folder `zoo pose` wrote for wan-animate-pose")
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{OPTION} {path}: not JSON; expected the {MANIFEST} `zoo pose` writes") from None
    need = {"mode": str, "fps": (int, float), "frames": int, "size": list, "reference": str, "pose": str, "face": str}
    for key, kind in need.items():
        if not isinstance(data, dict) or not isinstance(data.get(key), kind):
            raise InputError(f"{OPTION} {path}: no {key!r} entry; expected the {MANIFEST} `zoo pose` writes")
    size = data["size"]
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise InputError(f"{OPTION} {path}: size {size!r}; expected [height, width] in pixels")
    if data["mode"] not in ("animate", "replace"):
        raise InputError(f"{OPTION} {path}: mode {data['mode']!r}; expected animate or replace")
    if data["mode"] == "replace" and not all(isinstance(data.get(k), str) for k in ("background", "mask")):
        raise InputError(f"{OPTION} {path}: replace mode without background and mask folders")
    return data


def read_conditions(folder: str | Path) -> Conditions:
    """The conditions in ``folder``, every file read and checked (frame counts, sizes)."""
    import cv2
    from PIL import Image

    folder = Path(folder)
    check_media_path(folder, OPTION)
    if not folder.is_dir():
        raise InputError(f"{OPTION} {folder}: not a folder; expected the folder `zoo pose` wrote")
    data = _read_manifest(folder)
    height, width = (int(v) for v in data["size"])
    streams = STREAMS if data["mode"] == "replace" else STREAMS[:2]
    videos: dict[str, list[Any]] = {}
    for stream in streams:
        frames = load_video(folder / data[stream], option=f"{OPTION} {stream}")
        if len(frames) != data["frames"]:
            raise InputError(
                f"{OPTION} {folder / data[stream]}: {len(frames)} frames; {MANIFEST} says {data['frames']}"
            )
        if stream != "face" and frames[0].size != (width, height):
            raise InputError(
                f"{OPTION} {folder / data[stream]}: frames of {frames[0].size[0]}x{frames[0].size[1]}; "
                f"{MANIFEST} says {width}x{height}"
            )
        videos[stream] = frames
    reference = folder / data["reference"]
    image = cv2.imread(str(reference), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{OPTION} {reference}: not an image (OpenCV cannot decode it)")
    letterboxed = padding_resize(image[..., ::-1].copy(), height, width, cv2.INTER_LINEAR)
    return Conditions(data["mode"], float(data["fps"]), (height, width), Image.fromarray(letterboxed), videos)

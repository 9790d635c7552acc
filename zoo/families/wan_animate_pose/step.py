"""``zoo pose`` for wan-animate-pose: Wan2.2's ``preprocess_data.py`` (WAN_PREPROCESS.md 8) on the
export's runners.

Animate mode: the reference resized by area (1.4) and posed once; the driving video's frames
resampled to ``--fps`` (1.2) and posed at full resolution (2-4, the pose model batched over
frames); a face crop per frame (5); the poses drawn at the video's size and letterboxed to the
reference's (6, 8.1), or retargeted to the reference's proportions and drawn at its size (7).
Replace mode: the frames resized by area, posed, face-cropped and drawn at that size; masks from
SAM2 (the export's, 10) or the user's ``--mask-video``, dilated and grid-filled (8.2); the
background is the frame outside the mask.

Outputs, in a folder swapped in whole: what the original writes (``src_ref.png`` a byte copy of
the reference, ``src_pose.mp4``, ``src_face.mp4``, replace mode ``src_bg.mp4`` and
``src_mask.mp4``: H.264 at ``--fps``, exactly T frames) and the same frames losslessly as PNG
folders (``src_pose/0000.png`` ...), which ``zoo run --conditions`` reads, and
``conditions.json`` (mode, fps, frame count, sizes, file names).

Where the original crashes (section 11: Q8 an all-invisible first body, Q9 a degenerate face
box, Q10 a zero-length limb in retargeting, Q12 an empty mask) the step does what the part's
module says and reports it as a warning; everything is checked before a runner runs.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from zoo.contract import HostModules, Option, PoseRun, Runner, Runners
from zoo.errors import InputError
from zoo.families.wan_animate_pose.draw import draw_pose
from zoo.families.wan_animate_pose.face import face_box, face_crop
from zoo.families.wan_animate_pose.frames import (
    Mp4Writer,
    VideoInfo,
    area_size,
    frame_indices,
    iter_frames,
    padding_resize,
    probe_video,
    read_reference,
    resize_by_area,
    write_png,
)
from zoo.families.wan_animate_pose.masks import (
    background,
    dilate_and_fill,
    mask_frame,
    processor_for,
    read_mask_video,
    sam2_masks,
)
from zoo.families.wan_animate_pose.meta import F32, U8, Meta
from zoo.families.wan_animate_pose.retarget import Retargeter
from zoo.families.wan_animate_pose.vitpose import keypoints_of_images, metas_from_keypoints, to_pixels
from zoo.infra.media import FRAME_SUFFIXES, natural_key

CONDITIONS = "conditions.json"
REFERENCE = "src_ref.png"
STREAMS = {"pose": "src_pose", "face": "src_face", "background": "src_bg", "mask": "src_mask"}
SAM2_CHUNK = 400  # frames per SAM2 session (10.1)
MIN_SIZE = 16

POSE_OPTIONS = (
    Option("image", "The reference (character) image: any image cv2.imread reads.", type="path", required=True),
    Option("video", "The driving video: any video cv2.VideoCapture opens.", type="path", required=True),
    Option(
        "mode",
        "animate: conditions to animate the character with the video's motion; replace: to put the character "
        "in the video in place of its person (adds background and mask frames).",
        type="choice",
        choices=("animate", "replace"),
        default="animate",
    ),
    Option(
        "retarget",
        "Animate mode: retarget the poses to the character's proportions (the original's --retarget_flag, "
        "without FLUX).",
        type="flag",
        aliases=("--retarget_flag",),
    ),
    Option(
        "fps",
        "Frames per second of the outputs: the video is resampled to it (frames repeated or dropped); "
        "-1 keeps its own rate.",
        type="int",
        default=30,
    ),
    Option(
        "resolution_area",
        "W H: the outputs' pixel area (only W*H counts): animate mode sizes the reference, replace mode the "
        "video, to that area, each side floored to a multiple of 16.",
        type="int",
        nargs=2,
        default=(1280, 720),
        aliases=("--resolution_area",),
    ),
    Option(
        "mask_video",
        "Replace mode, instead of the export's SAM2: your own masks, a video or a folder of images with one "
        "frame per output frame at the outputs' size, white where the person to replace is (before the "
        "dilation).",
        type="path",
    ),
    Option(
        "iterations",
        "Replace mode: mask dilation iterations (0: the mask as is, no dilation and no grid fill).",
        type="int",
        default=3,
        low=0,
    ),
    Option("k", "Replace mode: the dilation kernel's side in pixels.", type="int", default=7, low=1),
    Option(
        "w_len", "Replace mode: grid cells across the mask's box.", type="int", default=1, low=1, aliases=("--w_len",)
    ),
    Option(
        "h_len", "Replace mode: grid cells down the mask's box.", type="int", default=1, low=1, aliases=("--h_len",)
    ),
    Option(
        "use_flux",
        "Not supported: FLUX.1-Kontext-assisted retargeting (refused with the reason).",
        type="flag",
        aliases=("--use_flux",),
    ),
)


def frame_name(index: int) -> str:
    return f"{index:04d}.png"


def is_pose_output(folder: Path) -> bool:
    """True for a folder this step wrote (``conditions.json`` and only the names it writes):
    ``zoo pose`` may replace it whole."""
    allowed = {CONDITIONS, REFERENCE, *STREAMS.values(), *(f"{s}.mp4" for s in STREAMS.values())}
    names = {p.name for p in folder.iterdir()}
    return CONDITIONS in names and names <= allowed


def _array(runner: Runner, x: np.ndarray) -> np.ndarray:
    import torch

    feed = runner.input_names[0]
    out = runner.record.outputs[0].name  # the original reads output 0 of both graphs
    return np.ascontiguousarray(runner({feed: torch.from_numpy(np.ascontiguousarray(x))})[out].cpu().numpy())


def _pose_batch(runner: Runner) -> int:
    """The frames per pose-model call: the export's opt batch (1 where the batch is static)."""
    dims = runner.record.dims
    return int(dims["batch"].opt) if "batch" in dims else 1


def _images(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES]
    return sorted(files, key=natural_key)


@dataclass
class MaskSource:
    """The user's masks (``--mask-video``): a video file or a folder of images, T frames of H x W."""

    path: Path
    frames: int

    def __iter__(self) -> Iterator[U8]:
        if self.path.is_dir():
            for file in _images(self.path):
                image = cv2.imread(str(file), cv2.IMREAD_COLOR)
                yield np.ascontiguousarray(image[..., ::-1])
        else:
            yield from iter_frames(self.path, range(self.frames))


def check_mask_source(path: Path, frames: int, size: tuple[int, int]) -> MaskSource:
    """``--mask-video``: T frames of the outputs' size, checked before any runner runs."""
    option = "--mask-video"
    want = f"{frames} frames of {size[1]}x{size[0]} (one per output frame, at the outputs' size)"
    if path.is_dir():
        files = _images(path)
        if not files:
            raise InputError(f"{option} {path}: the folder holds no image; expected {want}")
        first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise InputError(f"{option} {files[0]}: not an image (OpenCV cannot decode it); expected {want}")
        count, hw = len(files), first.shape[:2]
        for file in files[1:]:
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if image is None or image.shape[:2] != hw:
                raise InputError(f"{option} {file}: not an image of the first one's size; expected {want}")
    else:
        info = probe_video(path, option)
        count, hw = info.frames, (info.height, info.width)
    if count != frames or tuple(hw) != tuple(size):
        raise InputError(f"{option} {path}: {count} frames of {hw[1]}x{hw[0]}; expected {want}")
    return MaskSource(path, frames)


@dataclass
class WanAnimatePoseStep:
    """The step for one reference image and driving video (:class:`~zoo.contract.PoseStep`)."""

    image_path: Path
    reference: U8  # RGB, as read
    video: VideoInfo
    indices: list[int]
    fps: float
    mode: str
    retarget: bool
    area: int
    size: tuple[int, int]  # H, W of the pose frames
    frame_size: tuple[int, int]  # H, W of the frames posed (full resolution in animate mode)
    dilation: tuple[int, int, int, int]  # iterations, k, w_len, h_len
    masks: MaskSource | None = None
    sam2: Callable[[], Any] | None = None  # the export's SAM2 model, loaded when called
    _sam2_model: Any = field(default=None, repr=False)  # loaded once, before the first frame is posed

    @property
    def frames(self) -> int:
        """Each output frame counts twice: posed, then cropped, drawn (and masked) and written."""
        return 2 * len(self.indices)

    def _frames(self) -> Generator[U8, None, None]:
        for frame in iter_frames(self.video.path, self.indices):
            yield resize_by_area(frame, self.area) if self.mode == "replace" else frame

    def __call__(self, runners: Runners, out: Path, advance: Callable[[int], None]) -> PoseRun:
        detector, pose_model = runners["detector"], runners["pose_model"]
        batch = _pose_batch(pose_model)

        def detect(x: F32) -> np.ndarray:
            return _array(detector, x)

        def estimate(x: F32) -> np.ndarray:
            return _array(pose_model, x)

        warnings: list[str] = []
        record: dict[str, Any] = {"image": str(self.image_path), "video": str(self.video.path)}
        if self.sam2 is not None:  # loaded now: a broken SAM2 in the export is found before hours of posing
            self._sam2_model = self.sam2()
        reference_meta: Meta | None = None
        if self.mode == "animate":  # 8.1 item 1: the reference resized by area, posed alone
            resized = resize_by_area(self.reference, self.area)
            keypoints = keypoints_of_images([resized], detect, estimate)
            metas, notes = metas_from_keypoints(keypoints, resized.shape[1], resized.shape[0])
            reference_meta = metas[0]
            warnings += [f"reference: {n}" for n in notes]
            record["reference"] = {"size": list(resized.shape[:2]), "keypoints": keypoints[0].tolist()}

        # pass 1: every frame posed, OPT frames per pose-model call (8.1 item 2 / 8.2 item 2)
        keypoints = []
        group: list[U8] = []
        with contextlib.closing(self._frames()) as frames:  # the reader released on an error too
            for frame in frames:
                group.append(frame)
                if len(group) == batch:
                    keypoints += keypoints_of_images(group, detect, estimate, batch=batch)
                    advance(len(group))
                    group = []
        if group:
            keypoints += keypoints_of_images(group, detect, estimate, batch=batch)
            advance(len(group))
        height, width = self.frame_size
        metas, notes = metas_from_keypoints(keypoints, width, height)
        warnings += [n.replace("image ", "frame ", 1) if n.startswith("image ") else n for n in notes]
        retargeter = Retargeter(reference_meta, metas[0]) if self.retarget and reference_meta else None
        if retargeter is not None:
            warnings += retargeter.warnings

        # pass 2: face crops, pose images (and masks, backgrounds), written as they come
        shutil.copyfile(self.image_path, out / REFERENCE)  # 1.3: a byte copy, whatever its format
        streams = ["pose", "face"] + (["background", "mask"] if self.mode == "replace" else [])
        sizes = {"pose": self.size, "face": (512, 512), "background": self.size, "mask": self.size}
        for s in streams:
            (out / STREAMS[s]).mkdir()
        faces: list[list[int]] = []
        with contextlib.ExitStack() as stack:  # an error inside: the writers finish quietly, it is reported
            writers = {
                s: stack.enter_context(Mp4Writer(out / f"{STREAMS[s]}.mp4", self.fps, sizes[s][1], sizes[s][0]))
                for s in streams
            }
            box: tuple[int, int, int, int] | None = None
            masks = iter(self.masks) if self.masks is not None else None
            frames = stack.enter_context(contextlib.closing(self._frames()))  # its reader released on error too
            chunk = SAM2_CHUNK if self.mode == "replace" else len(metas)
            for start in range(0, len(metas), chunk):
                chunk_metas = metas[start : start + chunk]
                chunk_frames: Iterator[U8] | list[U8] = frames
                chunk_masks: list[U8] | None = None
                if self.mode == "replace":  # SAM2 takes a chunk of frames at once (10.1)
                    chunk_frames = [next(frames) for _ in chunk_metas]
                    chunk_masks = self._chunk_masks(chunk_frames, chunk_metas, masks, start, warnings)
                for i, (frame, meta) in enumerate(zip(chunk_frames, chunk_metas)):
                    t = start + i
                    box, note = face_box(meta, (height, width), box)
                    if note:
                        warnings.append(f"frame {t}: {note}")
                    faces.append(list(box))
                    outputs = {"face": face_crop(frame, box), "pose": self._pose_image(meta, retargeter)}
                    if chunk_masks is not None:
                        outputs["background"] = background(frame, chunk_masks[i])
                        outputs["mask"] = mask_frame(chunk_masks[i])
                    for s in streams:
                        write_png(out / STREAMS[s] / frame_name(t), outputs[s])
                        writers[s].write(outputs[s])
                    advance(1)

        conditions = {
            "mode": self.mode,
            "fps": self.fps,
            "frames": len(metas),
            "size": list(self.size),
            "reference": REFERENCE,
            **{s: STREAMS[s] for s in streams},
            "videos": {s: f"{STREAMS[s]}.mp4" for s in streams},
        }
        (out / CONDITIONS).write_text(_json(conditions))
        record["frames"] = [
            {"index": self.indices[t], "keypoints": k.tolist(), "body_reused": metas[t].reused, "face_box": faces[t]}
            for t, k in enumerate(keypoints)
        ]
        record["warnings"] = warnings  # every one; the command line prints them condensed
        files = (REFERENCE, *(f"{STREAMS[s]}.mp4" for s in streams), *(STREAMS[s] for s in streams), CONDITIONS)
        return PoseRun(files, condensed(warnings), record)

    def _pose_image(self, meta: Meta, retargeter: Retargeter | None) -> U8:
        """6, 8.1 item 4, 8.2 item 4."""
        if retargeter is not None:
            return draw_pose(retargeter.frame(meta))
        canvas = draw_pose(to_pixels(meta))
        if self.mode == "replace":
            return canvas
        return padding_resize(canvas, self.size[0], self.size[1], cv2.INTER_LINEAR)

    def _chunk_masks(
        self, frames: list[U8], metas: Sequence[Meta], masks: Iterator[U8] | None, start: int, warnings: list[str]
    ) -> list[U8]:
        if masks is not None:
            raw = read_mask_video([next(masks) for _ in frames])
        else:
            assert self.sam2 is not None
            model = self._sam2_model
            device = str(next(model.parameters()).device)
            raw = sam2_masks(model, processor_for(model), frames, metas, device=device)
        iterations, k, w_len, h_len = self.dilation
        result = []
        for i, mask in enumerate(raw):
            filled, note = dilate_and_fill(mask, iterations, k, w_len, h_len)
            if note:
                warnings.append(f"frame {start + i}: {note}")
            result.append(filled)
        return result


SHOWN_PER_KIND = 3


def condensed(warnings: Sequence[str]) -> tuple[str, ...]:
    """The warnings to print: of each kind (the text without its numbers and parentheses: one per
    frame of a long video, or per limb, otherwise) the first :data:`SHOWN_PER_KIND`, then one line saying how many more
    there are and where they all are (``--keypoints``)."""
    import re

    kinds: dict[str, list[str]] = {}
    for line in warnings:
        kind = re.sub(r"-?\d+", "#", re.sub(r"\([^)]*\)", "()", line))  # numbers and parentheses left out
        kinds.setdefault(kind, []).append(line)
    shown: list[str] = []
    for lines in kinds.values():
        shown += lines[:SHOWN_PER_KIND]
        if len(lines) > SHOWN_PER_KIND:
            shown.append(f"... and {len(lines) - SHOWN_PER_KIND} more like the last (every one in --keypoints' JSON)")
    return tuple(shown)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=1) + "\n"


def pose_step(options: Mapping[str, Any], host: HostModules) -> WanAnimatePoseStep:
    """The step for ``zoo pose``'s parsed options, every input read and checked (an
    :class:`InputError` naming the option and what was expected) before any runner exists."""
    if options["use_flux"]:
        raise InputError(
            "--use_flux: FLUX.1-Kontext-assisted retargeting is not supported (it edits the reference and a driving "
            "frame with a 12B diffusion model before measuring limbs; out of this step's scope): use --retarget "
            "without it"
        )
    mode = options["mode"]  # every option parsed: click (or a served request) filled the defaults
    retarget = bool(options["retarget"])
    if retarget and mode == "replace":
        raise InputError(
            "--retarget: replace mode draws the video's own poses at the video's size; the original silently "
            "ignores --retarget_flag there, so it is refused here: leave it out, or use --mode animate"
        )
    fps = int(options["fps"])
    if fps == 0 or fps < -1:
        raise InputError(f"--fps {fps}: expected a frame rate of at least 1, or -1 to keep the video's own")
    w_area, h_area = options["resolution_area"]
    if w_area < 1 or h_area < 1:
        raise InputError(f"--resolution-area {w_area} {h_area}: expected two positive numbers")
    area = int(w_area) * int(h_area)
    mask_path = options["mask_video"]
    if mask_path is not None and mode != "replace":
        raise InputError("--mask-video: masks are for --mode replace; animate mode uses none")

    image_path = Path(options["image"])
    reference = read_reference(image_path)
    video = probe_video(Path(options["video"]))
    rate = video.fps if fps == -1 else float(fps)
    indices = frame_indices(video.frames, video.fps, rate)
    if not indices:
        raise InputError(
            f"--fps {fps}: the video's {video.frames} frames at {video.fps:g} fps give no frame at {rate:g} fps; "
            f"expected a longer video or a higher --fps"
        )
    sized = reference.shape[:2] if mode == "animate" else (video.height, video.width)
    size = area_size(sized[0], sized[1], area)
    if min(size) < MIN_SIZE:
        what = "reference" if mode == "animate" else "video"
        raise InputError(
            f"--resolution-area {w_area} {h_area}: sizes the {what} ({sized[1]}x{sized[0]}) to {size[1]}x{size[0]}; "
            f"expected an area that gives at least {MIN_SIZE} pixels a side"
        )
    frame_size = (video.height, video.width) if mode == "animate" else size
    step = WanAnimatePoseStep(
        image_path=image_path,
        reference=reference,
        video=video,
        indices=indices,
        fps=rate,
        mode=mode,
        retarget=retarget,
        area=area,
        size=size,
        frame_size=frame_size,
        dilation=(int(options["iterations"]), int(options["k"]), int(options["w_len"]), int(options["h_len"])),
    )  # fmt: skip
    if mode == "replace":
        if mask_path is not None:
            step.masks = check_mask_source(Path(mask_path), len(indices), size)
        elif "sam2" in host:
            step.sam2 = host["sam2"]
        else:
            raise InputError(
                "--mode replace needs masks: this export has no SAM2 (export it with --sam2 FOLDER, a SAM2 "
                "checkpoint in transformers' format) and no --mask-video was given"
            )
    return step

"""REPLACE mode's masks (WAN_PREPROCESS.md 8.2 items 5-8, 10.1-10.2): the SAM2 prompts and the
transformers ``Sam2VideoModel`` run that replaces the original's SAM2 video predictor, the dilation
and grid fill of each mask, the background frames and the mask frames, and a user's mask video.

The numeric part (dilation, grid fill, background, prompts) needs only numpy and cv2; torch and
transformers are imported inside the SAM2 functions, so importing this module does not load them.

transformers' ``Sam2VideoProcessor`` needs torchvision (its image processor imports
``torchvision.ops`` and its video processor resizes with ``torchvision.transforms.v2``), which the
zoo does not depend on. :class:`TorchSam2VideoProcessor` is a torch-only stand-in with the same three
methods :func:`sam2_masks` calls (same resize, normalisation, point scaling and mask upsampling).
``zoo pose`` always uses it (:func:`processor_for`: an export carries the model only);
:func:`load_sam2` also returns transformers' own processor where torchvision is installed, which is
how the two were compared.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from zoo.errors import CheckpointError
from zoo.families.wan_animate_pose.meta import IMAGENET_MEAN, IMAGENET_STD, U8, Meta

# body op indices prompted on each key frame (10.1): nose, neck, R/L shoulder, R/L hip, R/L ankle
PROMPT_POINTS: tuple[int, ...] = (0, 1, 2, 5, 8, 11, 10, 13)
CHUNK = 400  # frames per SAM2 session (10.1)
SAM2_MODEL_TYPE = "sam2_video"
PROCESSOR_CONFIG = "processor_config.json"


# --------------------------------------------------------------------------------------------- 8.2


def _check_mask(mask: U8) -> None:
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a mask is an H x W uint8 array, got shape {mask.shape} dtype {mask.dtype}")


def dilate_and_fill(mask: U8, iterations: int = 3, k: int = 7, w_len: int = 1, h_len: int = 1) -> tuple[U8, str | None]:
    """The mask post-processing of 8.2 item 6; returns ``(mask, warning)`` (a new array, values 0/1).

    ``iterations == 0``: the mask unchanged (no dilation, no grid). Otherwise ``cv2.dilate`` with a
    ``k x k`` block of ones (anchor centre, default border) ``iterations`` times, then the grid fill:
    the nonzero pixels' bounding box ``[x_min, x_max] x [y_min, y_max]`` is cut into cells of
    ``trunc((x_max - x_min) / w_len)`` by ``trunc((y_max - y_min) / h_len)`` starting at the top-left
    corner, clipped at ``x_max`` / ``y_max`` (end-exclusive: the last column and row are never in a
    cell, Q13 (R)); a cell with any nonzero pixel becomes all ones.

    Q12 (F), where the original crashes: an empty mask (the person was not found) is returned empty
    (nothing replaced, the frame kept whole) with a warning; a box narrower than ``w_len`` or shorter
    than ``h_len`` (a cell size of 0) keeps the dilated mask without the grid fill, with a warning.
    """
    _check_mask(mask)
    if iterations < 0 or k < 1 or w_len < 1 or h_len < 1:
        raise ValueError(
            f"need iterations >= 0, k >= 1, w_len >= 1, h_len >= 1; got {iterations}, {k}, {w_len}, {h_len}"
        )
    if mask.size and int(mask.max()) > 1:
        raise ValueError(f"a mask holds 0/1 values, got a maximum of {int(mask.max())}")
    if iterations == 0:
        return mask.copy(), None
    dilated = np.asarray(cv2.dilate(mask, np.ones((k, k), np.uint8), iterations=iterations), dtype=np.uint8)
    rows, cols = np.nonzero(dilated)
    if cols.size == 0:
        return dilated, (
            "the mask is empty in this frame (no person found): nothing is replaced, the frame is kept whole "
            "(the original crashes here, WAN_PREPROCESS.md Q12)"
        )
    x_min, x_max = int(cols.min()), int(cols.max())
    y_min, y_max = int(rows.min()), int(rows.max())
    step_x = int((x_max - x_min) / w_len)  # double division, truncation (np.int32 in the original)
    step_y = int((y_max - y_min) / h_len)
    if step_x == 0 or step_y == 0:
        return dilated, (
            f"the person mask's box ({x_max - x_min} x {y_max - y_min} px between its extreme pixels) is smaller "
            f"than the grid (w_len {w_len}, h_len {h_len}): the dilated mask is kept without the grid fill "
            "(the original crashes here, WAN_PREPROCESS.md Q12)"
        )
    for x0 in range(x_min, x_max, step_x):
        for y0 in range(y_min, y_max, step_y):
            cell = dilated[y0 : min(y0 + step_y, y_max), x0 : min(x0 + step_x, x_max)]
            if cell.any():
                cell[...] = 1
    return dilated, None


def background(frame_rgb: U8, mask: U8) -> U8:
    """``src_bg`` frame (8.2 item 7): ``frame * (1 - mask)`` per channel, uint8 (0 inside the mask)."""
    _check_mask(mask)
    if frame_rgb.shape[:2] != mask.shape:
        raise ValueError(f"frame {frame_rgb.shape} and mask {mask.shape} differ in size")
    keep = (np.uint8(1) - mask)[:, :, None]
    out: U8 = frame_rgb * keep
    return out


def mask_frame(mask: U8) -> U8:
    """``src_mask`` frame (8.2 item 8): ``mask * 255`` in all three channels (white = region to generate)."""
    _check_mask(mask)
    white: U8 = mask * np.uint8(255)
    return np.stack([white, white, white], axis=2)


def read_mask_video(frames: Sequence[U8]) -> list[U8]:
    """A user's mask video (frames RGB ``H x W x 3`` uint8) as 0/1 masks: channel 0 ``> 127``.

    The convention is ``src_mask.mp4``'s (8.2 item 8): white = the region to generate (the person to
    replace), black = the background to keep. Such videos are H.264 (8.3), so the pixels are near, not
    at, 0 and 255 (compression noise, chroma subsampling blurring the edge): the midpoint threshold puts
    each pixel on the side it is closer to; one channel suffices because white and black are grey.
    """
    out: list[U8] = []
    for frame in frames:
        if frame.ndim != 3 or frame.dtype != np.uint8:
            raise ValueError(f"a mask video frame is an H x W x 3 uint8 array, got {frame.shape} {frame.dtype}")
        out.append((frame[:, :, 0] > 127).astype(np.uint8))
    return out


# -------------------------------------------------------------------------------------------- 10.1


def chunks(n_frames: int, size: int = CHUNK) -> list[range]:
    """The frame ranges SAM2 runs on, one session each (10.1): ``[0, size), [size, 2 size), ...``.

    The original loops ``(n + size) // size`` times (once below ``size``) and skips the empty last
    slice when ``size`` divides ``n``; that is the same list of non-empty ranges.
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [range(start, min(start + size, n_frames)) for start in range(0, max(n_frames, 0), size)]


def sam2_prompts(metas: Sequence[Meta]) -> list[tuple[int, list[list[int]]]]:
    """The SAM2 prompts of ONE chunk (10.1, Q23 (R)): ``[(key frame index in the chunk, 8 points [x, y])]``.

    ``k = 4`` key frames if the chunk has more than 4 frames, else 1; ``step = n // k``; key frames
    ``0, step, 2 step, ... < n`` (so 4, 5 or n of them). Each key frame's own meta gives the points
    (body op 0, 1, 2, 5, 8, 11, 10, 13), scaled by the chunk's FIRST meta's width and height and
    truncated to int32 (float32 points times int64 sizes: a float64 product); no score or bounds check.
    """
    n = len(metas)
    if n == 0:
        return []
    key = 4 if n > 4 else 1
    step = n // key
    size = np.array([[metas[0].width, metas[0].height]], dtype=np.float64)
    prompts: list[tuple[int, list[list[int]]]] = []
    for index in range(0, n, step):
        xy = metas[index].body[list(PROMPT_POINTS), :2].astype(np.float64)
        points = (xy * size).astype(np.int32)
        prompts.append((index, [[int(x), int(y)] for x, y in points]))
    return prompts


# -------------------------------------------------------------------------------------------- 10.2


class TorchSam2VideoProcessor:
    """A torch-only stand-in for transformers' ``Sam2VideoProcessor`` (10.2), for where torchvision is
    absent: the three methods :func:`sam2_masks` uses, with the same arithmetic (frames resized to
    ``size x size`` bilinear with antialiasing on uint8, then ``(x - 255 mean) / (255 std)`` in float32;
    points scaled by ``size / W`` and ``size / H``; masks upsampled bilinearly and thresholded)."""

    def __init__(self, size: int, image_mean: Sequence[float], image_std: Sequence[float], rescale_factor: float):
        self.target_size = size
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.rescale_factor = float(rescale_factor)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TorchSam2VideoProcessor:
        """Read ``processor_config.json`` as transformers writes it for a ``Sam2VideoProcessor``."""
        path = Path(folder) / PROCESSOR_CONFIG
        try:
            config = json.loads(path.read_text())
            video = config["video_processor"]
            size = video["size"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path}: not a Sam2VideoProcessor configuration ({error})") from error
        flags = [video.get(name, True) for name in ("do_resize", "do_rescale", "do_normalize")]
        if not all(flags) or video.get("resample", 2) != 2 or size.get("height") != size.get("width"):
            raise CheckpointError(
                f"{path}: only a square bilinear resize with rescale and normalisation is supported without "
                "torchvision (install torchvision to use transformers' own processor)"
            )
        return cls(
            int(size["height"]),
            video.get("image_mean", list(IMAGENET_MEAN)),
            video.get("image_std", list(IMAGENET_STD)),
            video.get("rescale_factor", 1 / 255),
        )

    def init_video_session(
        self, video: Sequence[U8], inference_device: Any = "cpu", dtype: Any = None, **kwargs: Any
    ) -> Any:
        """A ``Sam2VideoInferenceSession`` over the frames (RGB ``H x W x 3`` uint8)."""
        import torch
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        frames = torch.from_numpy(np.stack(list(video))).permute(0, 3, 1, 2).contiguous()
        height, width = int(frames.shape[2]), int(frames.shape[3])
        size = self.target_size
        # on the CPU: uint8 antialiased bilinear there is torchvision's resize of a uint8 tensor, exactly
        resized = torch.nn.functional.interpolate(
            frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        mean = torch.tensor(self.image_mean) * (1.0 / self.rescale_factor)
        std = torch.tensor(self.image_std) * (1.0 / self.rescale_factor)
        pixels = (resized.to(torch.float32) - mean[:, None, None]) / std[:, None, None]
        return Sam2VideoInferenceSession(
            video=pixels.to(inference_device),
            video_height=height,
            video_width=width,
            inference_device=inference_device,
            inference_state_device=kwargs.get("inference_state_device") or inference_device,
            video_storage_device=kwargs.get("video_storage_device") or inference_device,
            dtype=torch.float32 if dtype is None else dtype,
            max_vision_features_cache_size=kwargs.get("max_vision_features_cache_size", 1),
        )

    def add_inputs_to_inference_session(
        self,
        inference_session: Any,
        frame_idx: int,
        obj_ids: int,
        input_points: Sequence[Sequence[Sequence[Sequence[float]]]],
        input_labels: Sequence[Sequence[Sequence[int]]],
    ) -> Any:
        """Positive/negative points of one object on one frame (replacing that frame's earlier inputs)."""
        import torch

        coords = torch.tensor(input_points, dtype=torch.float32)  # [1, 1, N, 2]
        labels = torch.tensor(input_labels, dtype=torch.int64)  # [1, 1, N]
        coords[..., 0] = coords[..., 0] * (self.target_size / inference_session.video_width)
        coords[..., 1] = coords[..., 1] * (self.target_size / inference_session.video_height)
        obj_idx = inference_session.obj_id_to_idx(obj_ids)
        inference_session.add_point_inputs(obj_idx, frame_idx, {"point_coords": coords, "point_labels": labels})
        inference_session.remove_mask_inputs(obj_idx, frame_idx)
        inference_session.obj_with_new_inputs = [obj_ids]
        return inference_session

    def post_process_masks(
        self,
        masks: Sequence[Any],
        original_sizes: Sequence[Sequence[int]],
        mask_threshold: float = 0.0,
        binarize: bool = True,
    ) -> list[Any]:
        """Low-resolution mask logits upsampled (bilinear) to each original size, thresholded if ``binarize``."""
        import torch

        out = []
        for logits, (height, width) in zip(masks, original_sizes):
            up = torch.nn.functional.interpolate(
                logits, (int(height), int(width)), mode="bilinear", align_corners=False
            )
            out.append(up > mask_threshold if binarize else up)
        return out


def sam2_masks(
    model: Any,
    processor: Any,
    frames_rgb: Sequence[U8],
    metas: Sequence[Meta],
    device: str = "cpu",
    chunk_size: int = CHUNK,
) -> list[U8]:
    """SAM2 masks of the resized RGB frames (8.2 item 5, 10.1-10.2): uint8 0/1 ``H x W``, one per frame.

    Per chunk of ``chunk_size`` (400) frames, a new session (``processor.init_video_session``); on each
    key frame of :func:`sam2_prompts` the 8 points (labels 1, object id 1) are added and the frame is segmented
    (``model(inference_session=..., frame_idx=k)``), then ``model.propagate_in_video_iterator`` runs
    forward from frame 0 and each frame's logits are upsampled to the frame size and thresholded at 0
    (``processor.post_process_masks(binarize=True)``).
    """
    import torch

    if len(frames_rgb) != len(metas):
        raise ValueError(f"{len(frames_rgb)} frames but {len(metas)} pose metas")
    masks: list[U8] = []
    with torch.inference_mode():
        for part in chunks(len(frames_rgb), chunk_size):
            frames = [frames_rgb[i] for i in part]
            height, width = frames[0].shape[:2]
            session = processor.init_video_session(video=frames, inference_device=device, dtype=model.dtype)
            for index, points in sam2_prompts([metas[i] for i in part]):
                processor.add_inputs_to_inference_session(
                    inference_session=session,
                    frame_idx=index,
                    obj_ids=1,
                    input_points=[[points]],
                    input_labels=[[[1] * len(points)]],
                )
                model(inference_session=session, frame_idx=index)
            found: dict[int, U8] = {}
            for output in model.propagate_in_video_iterator(session):
                up = processor.post_process_masks(
                    [output.pred_masks.float()], original_sizes=[[height, width]], binarize=True
                )[0]
                found[int(output.frame_idx)] = up[0, 0].cpu().numpy().astype(np.uint8)
            missing = [i for i in range(len(part)) if i not in found]
            if missing:
                raise RuntimeError(f"SAM2 propagation returned no mask for frames {missing} of chunk {part}")
            masks.extend(found[i] for i in range(len(part)))
    return masks


def _tiny_config() -> Any:
    from transformers import Sam2VideoConfig

    size = 64  # image side; features 16, 8, 4 (strides 4, 8, 16)
    return Sam2VideoConfig(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 8,
                "image_size": [size, size],
                "blocks_per_stage": [1, 1, 2, 1],  # a global block must not be a stage's (pooling) first block
                "embed_dim_per_stage": [8, 16, 32, 64],
                "num_attention_heads_per_stage": [1, 1, 1, 1],
                "window_size_per_stage": [2, 2, 2, 2],
                "global_attention_blocks": [3],
                "window_positional_embedding_background_size": [2, 2],
            },
            "backbone_channel_list": [64, 32, 16, 8],
            "backbone_feature_sizes": [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
            # 128: the memory attention reads 64-channel memories (hard-coded) and splits the
            # object pointers into hidden / 64 tokens, which needs hidden > 64
            "fpn_hidden_size": 128,
        },
        prompt_encoder_config={"hidden_size": 128, "image_size": size, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 128, "mlp_dim": 32, "num_attention_heads": 2, "iou_head_hidden_dim": 16},
        image_size=size,
        num_maskmem=2,
        max_object_pointers_in_encoder=2,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=32,
        memory_attention_rope_feat_sizes=[size // 16, size // 16],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=32,
    )


def _processor_config(size: int) -> dict[str, Any]:
    """``processor_config.json`` of a ``Sam2VideoProcessor`` at ``size`` (as transformers 5 writes it)."""
    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": size, "width": size},
    }
    return {
        "image_processor": {
            **common,
            "image_processor_type": "Sam2ImageProcessor",
            "mask_size": {"height": size // 4, "width": size // 4},
        },
        "point_pad_value": -10,
        "processor_class": "Sam2VideoProcessor",
        "target_size": size,
        "video_processor": {**common, "return_metadata": False, "video_processor_type": "Sam2VideoVideoProcessor"},
    }


def random_sam2(dest: Path, seed: int = 0) -> Path:
    """Write a tiny random-weight ``Sam2VideoModel`` and its processor configuration into ``dest``
    (64 px images, ~1 M parameters), loadable with ``Sam2VideoModel.from_pretrained`` and
    ``Sam2VideoProcessor.from_pretrained`` (or :class:`TorchSam2VideoProcessor`). For tests only."""
    import torch
    from transformers import Sam2VideoModel

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = _tiny_config()
    torch.manual_seed(seed)
    model = Sam2VideoModel(config).eval()
    model.save_pretrained(dest)
    (dest / PROCESSOR_CONFIG).write_text(json.dumps(_processor_config(config.image_size), indent=2) + "\n")
    return dest


def _transformers_processor(folder: Path) -> Any | None:
    """transformers' ``Sam2VideoProcessor`` for ``folder``, or None where torchvision is missing."""
    try:
        import torchvision  # noqa: F401
        from transformers import Sam2VideoProcessor
    except Exception:  # noqa: BLE001 - absent or broken torchvision: the torch-only processor
        return None
    return Sam2VideoProcessor.from_pretrained(folder)


SAM2_EXPECTED = (
    "a SAM2 video checkpoint in transformers format (config.json with model_type 'sam2_video', "
    "model.safetensors, processor_config.json; e.g. facebook/sam2.1-hiera-large)"
)


def check_sam2_folder(folder: Path, option: str = "--sam2") -> None:
    """``folder`` is a SAM2 video checkpoint transformers loads, whose processor is the one
    :func:`processor_for` rebuilds from the model's config (square resize to the model's image
    size, ImageNet statistics): :class:`CheckpointError` saying what it is instead. Reads only
    the JSON files (no weights)."""
    folder = Path(folder)
    where = f"{option} {folder}"
    if not folder.is_dir():
        raise CheckpointError(
            f"{where}: {'not a folder' if folder.exists() else 'no such folder'}; expected {SAM2_EXPECTED}"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        original = sorted(p.name for p in folder.glob("*.pt"))
        hint = (
            f" ({', '.join(original)} is the original SAM2 package's checkpoint, the one Wan's process_checkpoint "
            f"ships: convert it with transformers' models/sam2/convert_sam2_to_hf.py, or use facebook/sam2.1-hiera-large)"
            if original
            else ""
        )
        raise CheckpointError(f"{where}: no config.json; expected {SAM2_EXPECTED}{hint}")
    try:
        config = json.loads(config_path.read_text())
        model_type = config.get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(
            f"{where}: config.json is not readable JSON ({error}); expected {SAM2_EXPECTED}"
        ) from None
    if model_type != SAM2_MODEL_TYPE:
        raise CheckpointError(f"{where}: config.json has model_type {model_type!r}; expected {SAM2_EXPECTED}")
    if not (folder / PROCESSOR_CONFIG).is_file():
        raise CheckpointError(f"{where}: no {PROCESSOR_CONFIG}; expected {SAM2_EXPECTED}")
    given = TorchSam2VideoProcessor.from_pretrained(folder)
    size = config.get("image_size")
    derived = (size, list(IMAGENET_MEAN), list(IMAGENET_STD), 1 / 255)
    found = (given.target_size, given.image_mean, given.image_std, given.rescale_factor)
    if not all(np.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(found, derived)):
        raise CheckpointError(
            f"{where}: {PROCESSOR_CONFIG} resizes to {given.target_size} with mean {given.image_mean}, std "
            f"{given.image_std}, scale {given.rescale_factor}; the zoo runs SAM2 with its standard processor "
            f"(the model's image size {size}, ImageNet statistics, 1/255)"
        )


def processor_for(model: Any) -> TorchSam2VideoProcessor:
    """The processor of a SAM2 video model: square resize to its ``image_size``, ImageNet
    statistics (checked against the checkpoint's own ``processor_config.json`` at export by
    :func:`check_sam2_folder`). The export carries the model only."""
    return TorchSam2VideoProcessor(int(model.config.image_size), IMAGENET_MEAN, IMAGENET_STD, 1 / 255)


def load_sam2(folder: Path, device: str) -> tuple[Any, Any]:
    """A SAM2 video checkpoint in transformers format (:func:`check_sam2_folder`): ``(model in eval
    mode on device, processor)`` (transformers' own processor where torchvision is installed)."""
    folder = Path(folder)
    check_sam2_folder(folder)
    from transformers import Sam2VideoModel

    try:
        model = Sam2VideoModel.from_pretrained(folder)
        processor = _transformers_processor(folder)
        if processor is None:
            processor = processor_for(model)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder}: could not load ({error}); expected {SAM2_EXPECTED}") from error
    return model.eval().to(device), processor

"""UniAnimate-DiT: pose-driven human animation on Wan2.1-I2V-14B (``../shared/design/UNIANIMATE.md``).

No library has it: the DiT is diffusers' ``WanTransformer3DModel`` (I2V) with UniAnimate's LoRA
merged the way the original merges it (``W += B @ A``, no alpha / rank factor), and the two pose
encoders are the original's ``nn.Sequential`` modules, built from the checkpoint. Sources: a
diffusers-format ``WanImageToVideoPipeline`` folder (``--model``) and UniAnimate's own checkpoint
(``--checkpoint``: the flat state dict the original saves with ``torch.save``, or the same keys
in a ``.safetensors`` file).

This module is the declaration (components, dims, the family); beside it: ``checkpoint.py``
(the original's checkpoint: LoRA pairs and merge, pose encoders, a random checkpoint),
``sampler.py`` (the original's loop: flow schedule, TeaCache, long-video windows, CFG) and
``vae_tiling.py`` (the original's tiled decode).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from zoo.contract import (
    COMMON_RUN_OPTIONS,
    Axis,
    Component,
    Dim,
    Envelope,
    Family,
    Modules,
    Option,
    PipelineSlot,
    Precision,
    Quantization,
    Range,
    Reference,
    Request,
    RequestContext,
    Rounding,
    Runners,
    Source,
    SourceRole,
    Sources,
    TensorSpec,
    source_of,
    specs,
)
from zoo.errors import CheckpointError, InputError
from zoo.families.unianimate_dit.checkpoint import (
    RANDOM_CHECKPOINT,
    lora_pairs,
    merge_lora,
    merged_weights,
    pose_encoders,
    random_checkpoint,
    read_checkpoint,
)
from zoo.families.unianimate_dit.sampler import UniAnimateLoop, context_windows
from zoo.families.unianimate_dit.vae_tiling import TILE_STRIDE
from zoo.infra.checkpoint import pipeline_modules, random_preset, require_folder, write_random_marker
from zoo.models import wan_vae
from zoo.models.wan_dit import (
    DIT_PRECISION,
    condition_dims,
    conditions,
    output_head,
    random_dit_config,
    random_wan_parts,
    time_embedding,
)
from zoo.models.wan_encoders import IMAGE_ENCODER, TEXT_ENCODER, TEXT_LENGTH

PIPELINE = "WanImageToVideoPipeline"
T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Export wrappers
# --------------------------------------------------------------------------------------


class PoseEncoderExport(nn.Module):
    """Pose frames ``(1, 3, F, H, W)`` in 0..255 -> pose features ``(1, D, T, H/16, W/16)``: the
    first frame repeated 3 more times, / 255, the guider, rounded to bf16 as the original
    rounds them (``.to(torch.bfloat16)``), returned in fp32."""

    def __init__(self, guider: nn.Module) -> None:
        super().__init__()
        self.guider = guider

    def forward(self, pose_frames: torch.Tensor) -> torch.Tensor:
        x = torch.cat([pose_frames[:, :, :1].expand(-1, -1, 3, -1, -1), pose_frames], dim=2) / 255.0
        return self.guider(x).to(torch.bfloat16).to(torch.float32)


class RefPoseEncoderExport(nn.Module):
    """Reference pose ``(1, 3, H, W)`` in 0..255 -> ``(1, 20, H/8, W/8)``, rounded to bf16."""

    def __init__(self, guider: nn.Module) -> None:
        super().__init__()
        self.guider = guider

    def forward(self, ref_pose: torch.Tensor) -> torch.Tensor:
        return self.guider(ref_pose / 255.0).to(torch.bfloat16).to(torch.float32)


def _patch_tokens(m: nn.Module, hidden_states: torch.Tensor, pose_features: torch.Tensor) -> torch.Tensor:
    """Patch tokens with the pose features added right after patchify (the original's ``add_condition``)."""
    x = m.patch_embedding(hidden_states).flatten(2).transpose(1, 2)  # (B, N, D)
    return x + pose_features.flatten(2).transpose(1, 2)  # (B, D, T, h/2, w/2) -> (B, N, D)


# NVIDIA's Wan recipe (UniAnimate-DiT is Wan 2.1 I2V 14B with a pose stream added to its input): the
# patch embedding, the condition embedder (time, text, image), the first and the last transformer block
# and the output projection stay in high precision.
QUANTIZE_TRANSFORMER = Quantization(
    keep=("patch_embedding*", "condition_embedder*", "proj_out*"),
    keep_ends=("blocks",),
    min_cosine={"int8": 0.9, "fp8": 0.99},
    min_psnr={"int8": 40.0, "fp8": 40.0},
    why="NVIDIA's Wan recipe: embedders, condition embedder, first and last blocks, output projection",
)


class UniAnimateTransformerExport(nn.Module):
    """``WanTransformer3DModel.forward`` (I2V) with the pose features added to the patch tokens
    right after patchify; the CFG negative branch passes zeros. The timestep arrives as float32
    ``(B,)``. Also returns the blocks' residual (tokens out - tokens in, laid out as the pose
    features) that TeaCache reuses when it skips a call."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor,
        pose_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.transformer
        rotary_emb = m.rope(hidden_states)
        x = x_in = _patch_tokens(m, hidden_states, pose_features)
        temb, timestep_proj, context = conditions(m, timestep, encoder_hidden_states, encoder_hidden_states_image)
        for block in m.blocks:
            x = block(x, context, timestep_proj, rotary_emb)
        residual = (x - x_in).transpose(1, 2).reshape(pose_features.shape)  # (B, D, T, h/2, w/2)
        return output_head(m, x, temb, hidden_states.shape), residual


class TransformerSkipExport(nn.Module):
    """A call TeaCache skips: patch tokens + the stored residual, then the head (no blocks)."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, pose_features: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        m = self.transformer
        x = _patch_tokens(m, hidden_states, pose_features) + residual.flatten(2).transpose(1, 2)
        temb, _ = time_embedding(m, timestep)
        return output_head(m, x, temb, hidden_states.shape)


class TimeEmbeddingExport(nn.Module):
    """``t_mod`` for a timestep: what TeaCache compares step to step, to plan its skips on the host."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        return time_embedding(self.transformer, timestep)[1]


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def _pose_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original's lines: ``dwpose_embedding(cat([P[:,:,:1].repeat(1,1,3,1,1), P], 2) / 255).to(bf16)``."""
    p = feeds["pose_frames"]
    out = ref.module("pose_encoder")(torch.cat([p[:, :, :1].repeat(1, 1, 3, 1, 1), p], dim=2) / 255)
    return {"pose_features": out.to(torch.bfloat16).float()}


def _ref_pose_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"ref_pose_features": ref.module("ref_pose_encoder")(feeds["ref_pose"] / 255).to(torch.bfloat16).float()}


def _transformer_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' own forward, the pose tokens added by a hook on ``patch_embedding`` and the
    blocks' residual taken by hooks around them."""
    m = ref.module("transformer")
    pose = feeds["pose_features"]
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, value: torch.Tensor) -> None:
        seen[name] = value

    hooks = [
        m.patch_embedding.register_forward_hook(lambda mod, args, out: out + pose),
        m.blocks[0].register_forward_pre_hook(lambda mod, args: keep("in", args[0])),
        m.blocks[-1].register_forward_hook(lambda mod, args, out: keep("out", out)),
    ]
    try:
        out = m(
            feeds["hidden_states"],
            feeds["timestep"],
            feeds["encoder_hidden_states"],
            encoder_hidden_states_image=feeds["encoder_hidden_states_image"],
            return_dict=False,
        )[0]
    finally:
        for h in hooks:
            h.remove()
    residual = (seen["out"] - seen["in"]).transpose(1, 2).reshape(pose.shape)
    return {"noise_pred": out, "residual": residual}


def _skip_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' own forward with its blocks replaced by adding the residual (what a skip computes)."""
    m = ref.module("transformer")
    pose, residual = feeds["pose_features"], feeds["residual"].flatten(2).transpose(1, 2)
    blocks = m.blocks
    m.blocks = nn.ModuleList([_AddResidual(residual)])
    handle = m.patch_embedding.register_forward_hook(lambda mod, args, out: out + pose)
    try:
        batch = feeds["hidden_states"].shape[0]
        cfg = m.config
        context = torch.zeros(batch, TEXT_LENGTH, cfg.text_dim)
        image = torch.zeros(batch, 1, cfg.image_dim)
        out = m(
            feeds["hidden_states"], feeds["timestep"], context, encoder_hidden_states_image=image, return_dict=False
        )[0]
    finally:
        handle.remove()
        m.blocks = blocks
    return {"noise_pred": out}


class _AddResidual(nn.Module):
    def __init__(self, residual: torch.Tensor) -> None:
        super().__init__()
        self.residual = residual

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        return x + self.residual


def _time_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    m = ref.module("transformer")
    cfg = m.config
    _, t_mod, _, _ = m.condition_embedder(feeds["timestep"], torch.zeros(1, 1, cfg.text_dim), None)
    return {"t_mod": t_mod.unflatten(1, (6, -1))}


# --------------------------------------------------------------------------------------
# Dims: the source dims are latent frames and the pose-token grid (H/16, W/16)
# --------------------------------------------------------------------------------------


def _grid(env: Envelope, ref: Reference) -> dict[str, Dim]:
    t = env["frames"]
    latent = Dim.of_range("latent_frames", Range(*((v - 1) // 4 + 1 for v in (t.min, t.opt, t.max))))
    gh = Dim.of_range("grid_height", env["height"].scaled(1, 16))
    gw = Dim.of_range("grid_width", env["width"].scaled(1, 16))
    return {
        "batch": Dim.static("batch", 1),
        "latent_frames": latent,
        "grid_height": gh,
        "grid_width": gw,
        "pose_frames": Dim.derived("pose_frames", latent, scale=4, offset=-3),
        "latent_height": Dim.derived("latent_height", gh, scale=2),
        "latent_width": Dim.derived("latent_width", gw, scale=2),
        "height": Dim.derived("height", gh, scale=16),
        "width": Dim.derived("width", gw, scale=16),
    }


def _pose_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return {**_grid(env, ref), "pose_dim": Dim.static("pose_dim", _pose_width(ref))}


def _ref_pose_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    channels = ref.module("ref_pose_encoder")[-1].out_channels  # the I2V conditioning: 4 mask + z latent channels
    return {**_grid(env, ref), "ref_pose_channels": Dim.static("ref_pose_channels", channels)}


def _transformer_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    cfg = ref.config("transformer")
    return {
        **_grid(env, ref),
        "in_channels": Dim.static("in_channels", cfg.in_channels),
        "out_channels": Dim.static("out_channels", cfg.out_channels),
        "inner_dim": Dim.static("inner_dim", cfg.num_attention_heads * cfg.attention_head_dim),
        **condition_dims(ref),
    }


def _vae_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    """The Wan VAE's dims; the decoder's profile also holds the tiles of the original's tiled decode."""
    tiles = {"height": (TILE_STRIDE[0] + 1) * 8, "width": (TILE_STRIDE[1] + 1) * 8}  # the smallest tile
    env = {**env, **{k: Range(min(env[k].min, tiles[k]), env[k].opt, env[k].max) for k in tiles}}
    return wan_vae.vae_dims(Dim.static("batch", 1), env, ref)


def _pose_width(ref: Reference) -> int:
    return ref.module("pose_encoder")[-1].out_channels


def _pose_pixels(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=gen).float()  # rendered pose frames, 0..255


def _call_graph(runners: Runners, name: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return runners[name](feeds)


def _vae_decode_unclamped(runners: Runners, z: torch.Tensor) -> torch.Tensor:
    return wan_vae.decode(runners, z, clamp=False)


def _image_size(runners: Runners) -> int:
    """The CLIP input size the exported image encoder was built for."""
    return runners["image_encoder"].record.dims["image_size"].min


GRAPHS = PipelineSlot(
    "graphs",
    "vae",
    {
        "forward": _call_graph,
        "vae_encode": wan_vae.encode,
        "vae_decode": _vae_decode_unclamped,
        "image_size": _image_size,
    },
    (
        "text_encoder",
        "image_encoder",
        "pose_encoder",
        "ref_pose_encoder",
        "transformer",
        "vae_encoder_first",
        "vae_encoder_step",
        "vae_decoder_first",
        "vae_decoder_step",
    ),
)
TEACACHE_COMPONENTS = ("transformer_skip", "time_embedding")

#: File names of a pose folder (``zoo pose``'s or the original's ``run_align_pose.py`` output) that
#: are not pose frames: the reference's own pose, which the original's inference skips while it reads
#: ``sorted(os.listdir(dir))`` (POSE.md 5.6) and which ``--ref-pose DIR/pose.jpg`` reads instead.
POSE_FOLDER_SKIPS = ("pose.jpg",)


def select_pose_frames(frames: Sequence[T], start: int, count: int | None, *, source: str) -> list[T]:
    """The pose frames a run uses: ``count`` consecutive frames from index ``start`` (``None``:
    every frame from ``start``), the last frame repeated when fewer than ``count`` remain, as the
    original pads a folder of fewer than 81 frames (POSE.md 5.6). The original's short-video
    selection is ``start`` 0 (fewer than 82 frames) or a random unseeded start (82 or more) with
    ``count`` 81; here the start is the caller's, so a run is deterministic."""
    if not 0 <= start < len(frames):
        raise InputError(
            f"--pose-start {start}: out of range: {source} has {len(frames)} pose frame(s), "
            f"expected 0 to {len(frames) - 1}"
        )
    if count is not None and count < 1:
        raise InputError(f"--pose-frames {count}: expected at least 1")
    chosen = list(frames[start:] if count is None else frames[start : start + count])
    if count is not None:
        chosen += [chosen[-1]] * (count - len(chosen))
    return chosen


# --------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------


class UniAnimateDiT(Family):
    name = "unianimate-dit"
    description = "UniAnimate-DiT on Wan2.1-I2V (umT5, CLIP vision, pose encoders, merged DiT, Wan VAE chunks)"
    variants = ("default",)
    random_presets = ("tiny", "bench")
    source_roles = (
        SourceRole(
            "checkpoint",
            "UniAnimate-DiT's checkpoint (.ckpt state dict or .safetensors): LoRA and pose encoders.",
            kind="file",
        ),
    )
    axis_help = {
        "height": "MIN:OPT:MAX video height in pixels (multiple of 16).",
        "width": "MIN:OPT:MAX video width in pixels (multiple of 16).",
        "frames": "MIN:OPT:MAX pixel frames per clip or long-video window, each 4k+1.",
    }

    components = (
        TEXT_ENCODER,
        IMAGE_ENCODER,
        Component(
            name="pose_encoder",
            tolerance="image_encoder",
            module="pose_encoder",
            inputs=specs(
                TensorSpec(
                    "pose_frames", "float32", ("batch", 3, "pose_frames", "height", "width"), sample=_pose_pixels
                )
            ),
            outputs=specs(
                TensorSpec(
                    "pose_features", "float32", ("batch", "pose_dim", "latent_frames", "grid_height", "grid_width")
                )
            ),
            dims=_pose_dims,
            wrapper=lambda ref: PoseEncoderExport(ref.module("pose_encoder")),
            reference=_pose_reference,
            precision=Precision(keep_fp32=("*",)),  # fp32 compute, bf16-rounded output (original)
        ),
        Component(
            name="ref_pose_encoder",
            tolerance="image_encoder",
            module="ref_pose_encoder",
            inputs=specs(TensorSpec("ref_pose", "float32", ("batch", 3, "height", "width"), sample=_pose_pixels)),
            outputs=specs(
                TensorSpec(
                    "ref_pose_features", "float32", ("batch", "ref_pose_channels", "latent_height", "latent_width")
                )
            ),
            dims=_ref_pose_dims,
            wrapper=lambda ref: RefPoseEncoderExport(ref.module("ref_pose_encoder")),
            reference=_ref_pose_reference,
            precision=Precision(keep_fp32=("*",)),  # fp32 compute, bf16-rounded output (original)
        ),
        Component(
            name="transformer",
            tolerance="denoiser",
            module="transformer",
            inputs=specs(
                TensorSpec(
                    "hidden_states",
                    "float32",
                    ("batch", "in_channels", "latent_frames", "latent_height", "latent_width"),
                ),
                TensorSpec("timestep", "float32", ("batch",), sample="timestep"),
                TensorSpec("encoder_hidden_states", "float32", ("batch", "text_length", "text_dim")),
                TensorSpec("encoder_hidden_states_image", "float32", ("batch", "image_tokens", "image_dim")),
                TensorSpec(
                    "pose_features", "float32", ("batch", "inner_dim", "latent_frames", "grid_height", "grid_width")
                ),
            ),
            outputs=specs(
                TensorSpec(
                    "noise_pred", "float32", ("batch", "out_channels", "latent_frames", "latent_height", "latent_width")
                ),
                TensorSpec("residual", "float32", ("batch", "inner_dim", "latent_frames", "grid_height", "grid_width")),
            ),
            dims=_transformer_dims,
            wrapper=lambda ref: UniAnimateTransformerExport(ref.module("transformer")),
            reference=_transformer_reference,
            precision=DIT_PRECISION,
            quantize=QUANTIZE_TRANSFORMER,
        ),
        Component(
            name="transformer_skip",
            tolerance="denoiser",
            module="transformer",
            inputs=specs(
                TensorSpec(
                    "hidden_states",
                    "float32",
                    ("batch", "in_channels", "latent_frames", "latent_height", "latent_width"),
                ),
                TensorSpec("timestep", "float32", ("batch",), sample="timestep"),
                TensorSpec(
                    "pose_features", "float32", ("batch", "inner_dim", "latent_frames", "grid_height", "grid_width")
                ),
                TensorSpec("residual", "float32", ("batch", "inner_dim", "latent_frames", "grid_height", "grid_width")),
            ),
            outputs=specs(
                TensorSpec(
                    "noise_pred", "float32", ("batch", "out_channels", "latent_frames", "latent_height", "latent_width")
                )
            ),
            dims=_transformer_dims,
            wrapper=lambda ref: TransformerSkipExport(ref.module("transformer")),
            reference=_skip_reference,
            precision=DIT_PRECISION,
        ),
        Component(
            name="time_embedding",
            tolerance="denoiser",
            module="transformer",
            inputs=specs(TensorSpec("timestep", "float32", ("batch",), sample="timestep")),
            outputs=specs(TensorSpec("t_mod", "float32", ("batch", 6, "inner_dim"))),
            dims=_transformer_dims,
            wrapper=lambda ref: TimeEmbeddingExport(ref.module("transformer")),
            reference=_time_reference,
            precision=DIT_PRECISION,
        ),
        *wan_vae.chunk_components(_vae_dims),
    )

    pipeline_slots = (GRAPHS,)
    host_modules = ("tokenizer",)
    host_loop = wan_vae.HOST_LOOP  # the chunk loops, checked against AutoencoderKLWan.encode / decode
    reference_backend = "torch"  # no library pipeline: the same loop on the torch backend is the reference
    roundings = (  # the original's hard-coded .to(torch.bfloat16) of both pose features (UNIANIMATE.md 9.3)
        Rounding("pose_encoder", "pose_features", "bfloat16", why="dwpose_embedding(...).to(torch.bfloat16)"),
        Rounding(
            "ref_pose_encoder", "ref_pose_features", "bfloat16", why="randomref_embedding_pose(...).to(torch.bfloat16)"
        ),
    )
    run_options = (
        Option("image", "The reference image (the person to animate).", type="path", required=True),
        Option(
            "pose_video",
            "Rendered pose frames: MP4, GIF or a folder of frames, e.g. a `zoo pose` output (its frames in name "
            "order, 0000.jpg, 0001.jpg, ...; pose.jpg is not a frame: pass it as --ref-pose).",
            type="path",
            required=True,
        ),
        Option(
            "ref_pose",
            "The reference image's rendered pose (an image, e.g. a `zoo pose` folder's pose.jpg).",
            type="path",
            required=True,
        ),
        Option(
            "pose_start",
            "The first pose frame used (0-based, after pose.jpg is skipped); default 0. The original picks a random "
            "start when a folder has 82 or more frames: pass that window's start here.",
            type="int",
            default=0,
            low=0,
        ),
        Option(
            "pose_frames",
            "How many pose frames from --pose-start (default: all of them); the last is repeated if fewer remain, "
            "as the original pads a folder of fewer than 81. The original uses 81; a short video needs 4k+1.",
            type="int",
            low=1,
        ),
        Option(
            "resize_pose",
            "Resize pose frames of another size to --height/--width (PIL bilinear, as the original's example does).",
            type="flag",
        ),
        Option("prompt", "What to generate.", default="a person is dancing"),
        COMMON_RUN_OPTIONS[1],
        Option("steps", "Denoising steps.", type="int", default=50, low=1),
        Option(
            "guidance_scale", "CFG scale (1 disables CFG; the negative branch gets no pose).", type="float", default=1.5
        ),
        Option("height", "Pixels; default: the export's opt height.", type="int"),
        Option("width", "Pixels; default: the export's opt width.", type="int"),
        Option("long_video", "Long video: overlapping windows of --context-frames latent frames.", type="flag"),
        Option("context_frames", "Long video: latent frames per window.", type="int", default=21, low=1),
        Option("context_overlap", "Long video: latent frames two windows share (>= 2).", type="int", default=4),
        Option(
            "teacache",
            "TeaCache threshold (the original uses 0.3): skip DiT calls its rule allows.",
            type="float",
            low=0.0,
            low_open=True,
        ),
        Option("untiled", "Decode the whole video at once instead of the original's 30x52-latent tiles.", type="flag"),
        Option("fps", "Frames per second of an .mp4 / .gif output.", type="int", default=15, low=1),
    )
    request_axes = {"height": "height", "width": "width", "frames": "frames"}
    trajectory = ("transformer", "hidden_states")

    def request(self, options: Mapping[str, Any], context: RequestContext) -> Request:
        from zoo.infra.media import check_frame_size, load_image, load_video

        options = self.with_defaults(options)
        height = context.envelope["height"].opt if options.get("height") is None else options["height"]
        width = context.envelope["width"].opt if options.get("width") is None else options["width"]
        image = load_image(options["image"], option="--image")
        ref_pose = load_image(options["ref_pose"], option="--ref-pose")
        poses = load_video(options["pose_video"], option="--pose-video", exclude=POSE_FOLDER_SKIPS)
        poses = select_pose_frames(
            poses,
            int(options.get("pose_start") or 0),
            options.get("pose_frames"),
            source=f"--pose-video {options['pose_video']}",
        )
        resize = bool(options.get("resize_pose"))
        poses = check_frame_size(
            poses,
            option="--pose-video",
            height=height,
            width=width,
            path=options["pose_video"],
            resize=resize,
            resize_flag="--resize-pose",
            resample="bilinear",
        )
        if ref_pose.size != (width, height):
            if not resize:
                raise InputError(
                    f"--ref-pose {options['ref_pose']}: {ref_pose.size[0]}x{ref_pose.size[1]} (WxH), expected "
                    f"{width}x{height}; not resized: pass --resize-pose to resize it (PIL bilinear)"
                )
            ref_pose = ref_pose.resize((width, height), resample=_bilinear())
        long_video = bool(options.get("long_video"))
        kwargs: dict[str, Any] = {
            "image": image,
            "ref_pose": ref_pose,
            "prompt": options["prompt"],
            "negative_prompt": options["negative_prompt"],
            "height": height,
            "width": width,
            "num_inference_steps": options["steps"],
            "guidance_scale": options["guidance_scale"],
            "long_video": long_video,
            "tiled": not options.get("untiled"),
            "teacache": options.get("teacache"),
        }
        if kwargs["teacache"] is not None:
            if kwargs["teacache"] <= 0:
                raise InputError(
                    f"--teacache {kwargs['teacache']}: expected a positive threshold (the original uses 0.3)"
                )
            missing = [c for c in TEACACHE_COMPONENTS if c not in context.components]
            if missing:
                raise InputError(
                    f"--teacache needs the {', '.join(missing)} component(s), which this export lacks; re-export"
                )
        if long_video:
            size, overlap = options["context_frames"], options["context_overlap"]
            if not 2 <= overlap < size:
                raise InputError(
                    f"--context-overlap {overlap}: expected at least 2 and fewer than --context-frames {size}"
                )
            usable = (len(poses) - 1) // 4 * 4 + 1  # the original rounds a long video down to 4k+1 frames
            context_windows((usable - 1) // 4 + 1, size, overlap)
            kwargs.update(pose_video=poses[:usable], context_frames=size, context_overlap=overlap)
        else:
            if len(poses) % 4 != 1:
                raise InputError(
                    f"--pose-video has {len(poses)} frames: a short video needs 4k+1 pose frames (5, 9, ..., 81); "
                    f"use --long-video for longer ones, or choose them with --pose-start / --pose-frames"
                )
            kwargs["pose_video"] = poses
        chosen = ""
        if options.get("pose_start") or options.get("pose_frames") is not None:
            chosen = f" chosen by --pose-start {options.get('pose_start') or 0} --pose-frames {len(poses)}"
        return Request(
            "UniAnimateLoop",
            kwargs,
            output_format="video",
            fps=options["fps"],
            shape_sources={
                "frames": f"--pose-video {options['pose_video']} frames{chosen}"
                if not long_video
                else f"--context-frames {kwargs.get('context_frames')} window frames"
            },
        )

    def shapes_run(self, request: Request, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        k = request.kwargs
        frames = 4 * k["context_frames"] - 3 if k["long_video"] else len(k["pose_video"])
        return {"height": k["height"], "width": k["width"], "frames": frames}

    def build_pipeline(self, request: Request, modules: Mapping[str, Any]) -> Any:
        return UniAnimateLoop(modules["graphs"], modules["tokenizer"])

    def output(self, result: Any) -> Any:
        return result.frames

    def sample_media(self, ref: Reference) -> dict[str, Any]:
        """A reference image and its pose at the default opt size, ``poses/`` (the opt frames, a
        short video) and ``poses-long/`` (17 frames: long video in windows of 3 latent frames):
        random pixels, for trying `zoo run` on a random model."""
        import numpy as np
        from PIL import Image

        env = self.envelope(ref)
        h, w = env["height"].opt, env["width"].opt
        rng = np.random.default_rng(0)

        def frames(n: int) -> list:
            return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(n)]

        return {
            "ref.png": frames(1)[0],
            "pose.png": frames(1)[0],
            "poses": frames(env["frames"].opt),
            "poses-long": frames(17),
        }

    def parity_requests(self, context: RequestContext) -> list[tuple[str, Request]]:
        import numpy as np
        from PIL import Image

        env = context.envelope
        h, w, f = env["height"].opt, env["width"].opt, env["frames"].max
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        poses = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(f)]
        base = {
            "image": image,
            "ref_pose": poses[0],
            "pose_video": poses,
            "prompt": "a person is dancing",
            "negative_prompt": "blurry",
            "height": h,
            "width": w,
            "num_inference_steps": 3,
            "guidance_scale": 1.5,
            "long_video": False,
            "tiled": True,
            "teacache": None,
        }
        window = (env["frames"].min - 1) // 4 + 1 + 1  # two windows at least: one more latent frame than the smallest
        requests = [("short", Request("UniAnimateLoop", base, output_format="video"))]
        if (f - 1) // 4 + 1 > window >= 3:
            requests.append(
                (
                    "long",
                    Request(
                        "UniAnimateLoop",
                        {**base, "long_video": True, "context_frames": window, "context_overlap": 2},
                        output_format="video",
                    ),
                )
            )
        if all(c in context.components for c in TEACACHE_COMPONENTS):
            requests.append(
                (
                    "teacache",
                    Request(
                        "UniAnimateLoop", {**base, "num_inference_steps": 6, "teacache": 1e6}, output_format="video"
                    ),
                )
            )
        return requests

    def axes(self, ref: Reference) -> tuple[Axis, ...]:
        cfg = ref.config("transformer")
        ceiling = min(2048, cfg.rope_max_seq_len * 16)
        frames_ceiling = 4 * cfg.rope_max_seq_len - 3
        if random_preset(ref.source) == "tiny":
            height, width, frames = Range(32, 32, 48), Range(32, 48, 64), Range(5, 9, 13)
        else:  # the original's 480p and 720p, portrait; 81 frames per clip or window
            height, width, frames = Range(480, 832, 1280), Range(480, 480, 720), Range(5, 81, 81)
        return (
            Axis("height", height, multiple_of=16, floor=32, ceiling=ceiling, unit="pixels"),
            Axis("width", width, multiple_of=16, floor=32, ceiling=ceiling, unit="pixels"),
            Axis("frames", frames, multiple_of=4, remainder=1, floor=5, ceiling=frames_ceiling, unit="frames"),
        )

    # -- loading ------------------------------------------------------------------------
    def load_sources(self, sources: Sources) -> Reference:
        source = sources[0].path
        checkpoint = source_of(sources, "checkpoint")
        if checkpoint is None and random_preset(source) and (source / RANDOM_CHECKPOINT).is_file():
            checkpoint = Source("checkpoint", source / RANDOM_CHECKPOINT)  # a random folder carries its own
        if checkpoint is None:
            raise CheckpointError("unianimate-dit needs --checkpoint UNIANIMATE_CKPT beside --model WAN_I2V_FOLDER")
        index = require_folder(source, family=self.name, index_file="model_index.json", accepted=(PIPELINE,))
        found = pipeline_modules(source, index, skip=("transformer_2",))
        needed = {"text_encoder", "tokenizer", "image_encoder", "image_processor", "transformer", "vae", "scheduler"}
        missing = sorted(needed - set(found))
        if missing:
            raise CheckpointError(
                f"{source / 'model_index.json'} names no {', '.join(missing)}; expected a Wan2.1-I2V {PIPELINE} folder"
            )
        state = read_checkpoint(checkpoint.path)
        pose, ref_pose = pose_encoders(state, checkpoint.path)
        base = found["transformer"][0]

        def transformer() -> nn.Module:
            model = base()
            merge_lora(model, lora_pairs(state, model, checkpoint.path))
            return model

        modules = Modules.from_found(
            found,
            {"transformer": lambda: merged_weights(found["transformer"][2](), state, checkpoint.path)},
            transformer=transformer,
            pose_encoder=lambda: pose,
            ref_pose_encoder=lambda: ref_pose,
        )
        ref = Reference("default", tuple(sources), modules, pipeline="UniAnimateLoop")
        wan_vae.check_vae(ref)
        if ref.config("transformer").image_dim is None:
            raise CheckpointError(
                f"{source / 'transformer'} is a text-to-video WanTransformer3DModel (no image_dim): "
                f"UniAnimate-DiT is built on Wan2.1-I2V"
            )
        cfg = ref.config("transformer")
        if _pose_width(ref) != cfg.num_attention_heads * cfg.attention_head_dim:
            raise CheckpointError(
                f"--checkpoint {checkpoint.path}: the pose encoder outputs {_pose_width(ref)} channels, "
                f"the transformer is {cfg.num_attention_heads * cfg.attention_head_dim} wide: a "
                f"checkpoint for another base model"
            )
        if ref_pose[-1].out_channels != 4 + ref.config("vae").z_dim:
            raise CheckpointError(
                f"--checkpoint {checkpoint.path}: the reference-pose encoder outputs "
                f"{ref_pose[-1].out_channels} channels, the I2V conditioning has {4 + ref.config('vae').z_dim}"
            )
        return ref

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        """A random Wan2.1-I2V folder with a random UniAnimate checkpoint (original format) inside it."""
        from diffusers import WanImageToVideoPipeline

        variant = self.random_choice(variant, preset)
        parts = _random_parts(preset, seed)
        WanImageToVideoPipeline(**parts).save_pretrained(dest)
        torch.save(
            random_checkpoint(parts["transformer"], z_dim=parts["vae"].config.z_dim, seed=seed + 1),
            Path(dest) / RANDOM_CHECKPOINT,
        )
        write_random_marker(Path(dest), family=self.name, variant=variant, preset=preset, seed=seed)
        return Path(dest)

    def write_random_sources(self, dest: Path, *, preset: str = "tiny", seed: int = 0) -> tuple[Source, ...]:
        """The documented layout: a random Wan2.1-I2V folder and, beside it, the UniAnimate checkpoint."""
        dest = Path(dest)
        model = self.build_random(dest / "wan-i2v", preset=preset, seed=seed)
        checkpoint = (model / RANDOM_CHECKPOINT).rename(dest / RANDOM_CHECKPOINT)
        return (Source("model", model), Source("checkpoint", checkpoint))


def _random_parts(preset: str, seed: int) -> dict[str, Any]:
    """A random Wan2.1-I2V pipeline: tiny, or Wan2.1-I2V-14B's widths at one block (bench); the
    encoders and VAE are the Wan random parts of the same preset (:func:`random_wan_parts`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    parts = random_wan_parts(preset, seed)
    parts["transformer"] = WanTransformer3DModel(
        **random_dit_config(
            preset,
            z_dim=parts["vae"].config.z_dim,
            text_dim=parts["text_encoder"].config.d_model,
            image_dim=parts["image_encoder"].config.hidden_size,
        )
    )
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=5.0)
    return parts


def _bilinear() -> Any:
    from PIL import Image

    return Image.BILINEAR


FAMILY = UniAnimateDiT()

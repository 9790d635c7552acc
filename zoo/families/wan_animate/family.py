"""Wan-Animate (Wan2.2-Animate-14B): character animation and replacement from a reference image,
a pose video and a face video.

References are the diffusers classes (``WanAnimateTransformer3DModel``, ``AutoencoderKLWan``,
``WanAnimatePipeline``) and transformers' ``UMT5EncoderModel`` and ``CLIPVisionModel``, loaded
from a folder in the ``Wan2.2-Animate-14B-Diffusers`` layout.

Components: ``text_encoder`` (umT5), ``image_encoder`` (CLIP vision, the hidden state the
pipeline uses), ``face_encoder`` (motion encoder + face encoder: face pixels to the motion
vectors the DiT consumes, the QR of a weight computed once at load time), ``transformer`` (the
DiT taking those motion vectors), and the Wan VAE as chunk graphs (:mod:`zoo.models.wan_vae`). The
sampler is ``WanAnimatePipeline`` itself; the face encoder runs once per segment and CFG branch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    Runners,
    Sources,
    TensorSpec,
    Transform,
    specs,
)
from zoo.errors import CheckpointError, InputError
from zoo.infra.checkpoint import pipeline_modules, random_preset, require_folder, write_random_marker
from zoo.models import wan_vae
from zoo.models.wan_dit import DIT_PRECISION, condition_dims, conditions, output_head, random_wan_parts
from zoo.models.wan_encoders import IMAGE_ENCODER, TEXT_ENCODER

PIPELINE = "WanAnimatePipeline"
MODES = ("animate", "replace")
# the run options a --conditions folder gives (its mode too)
CONDITION_OPTIONS = ("image", "pose_video", "face_video", "background_video", "mask_video")


# --------------------------------------------------------------------------------------
# Export wrappers
# --------------------------------------------------------------------------------------


MOTION_WEIGHT = "motion_encoder.motion_synthesis_weight"


def motion_basis(weight: torch.Tensor) -> torch.Tensor:
    """``Q.T`` of the QR of the motion synthesis weight, in fp32, as the library's forward computes it."""
    return torch.linalg.qr((weight.detach() + 1e-8).to(torch.float32))[0].T.contiguous()


class FaceEncoderExport(nn.Module):
    """Face pixels ``(B, 3, S, M, M)`` in [-1, 1] -> motion vectors ``(B, T+1, tokens, inner)``: the
    motion encoder and face encoder of ``WanAnimateTransformer3DModel.forward`` (its section 4),
    with a zero frame prepended as the library does.

    Differences from the library (value-preserving): the QR of ``motion_synthesis_weight`` (a weight
    only) is computed once here, in fp32, and kept as a buffer, so the graph has no ``linalg_qr``
    (which has no ONNX operator); ``sum(diag_embed(f) @ Q.T, 1)`` is written ``f @ Q.T``; the
    library's ``torch.split`` loop over frame batches is one batch (it only trades memory)."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.motion_encoder = transformer.motion_encoder
        self.face_encoder = transformer.face_encoder
        self.register_buffer("q_t", motion_basis(self.motion_encoder.motion_synthesis_weight), persistent=False)

    def forward(self, face_pixel_values: torch.Tensor) -> torch.Tensor:
        me = self.motion_encoder
        batch, channels, frames, height, width = face_pixel_values.shape
        x = face_pixel_values.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        x = me.conv_in(x, 1)
        for block in me.res_blocks:
            x = block(x, 1)
        feat = me.conv_out(x, 1).squeeze(-1).squeeze(-1)  # (B*S, style_dim)
        for linear in me.motion_network:
            feat = linear(feat, channel_dim=1)  # (B*S, motion_dim)
        motion = (feat.to(torch.float32) @ self.q_t).to(feat.dtype)  # (B*S, motion_encoder_dim)
        motion = self.face_encoder(motion.reshape(batch, frames, -1))  # (B, T, tokens, inner)
        return torch.cat([torch.zeros_like(motion[:, :1]), motion], dim=1)  # (B, T+1, tokens, inner)


# NVIDIA's Wan recipe: the patch embedding, the condition embedder (time, text, image), the first and
# the last transformer block and the output projection stay in high precision; Wan-Animate's own
# condition streams (the pose patch embedding, the motion and face encoders) are embedders too. The
# face adapters' attention is quantized like the blocks'.
QUANTIZE_TRANSFORMER = Quantization(
    keep=(
        "patch_embedding*",
        "pose_patch_embedding*",
        "condition_embedder*",
        "motion_encoder*",
        "face_encoder*",
        "proj_out*",
    ),
    keep_ends=("blocks",),
    min_cosine={"int8": 0.95, "fp8": 0.97},
    min_psnr={"int8": 40.0, "fp8": 40.0},
    why="NVIDIA's Wan recipe: embedders, condition embedder, first and last blocks, output projection",
)


class WanAnimateTransformerExport(nn.Module):
    """``WanAnimateTransformer3DModel.forward`` with the motion vectors as an input (the face
    encoder is its own graph), computing the same function.

    Differences from the library forward (value-preserving): the pose embedding is added with
    ``cat`` instead of an in-place slice write; the timestep arrives as float32 ``(B,)``; no
    gradient checkpointing or device moves."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor,
        pose_hidden_states: torch.Tensor,
        motion_vec: torch.Tensor,
    ) -> torch.Tensor:
        m = self.transformer

        # 1. rotary position embedding (real-valued cos / sin) and patch embeddings
        rotary_emb = m.rope(hidden_states)
        x = m.patch_embedding(hidden_states)  # (B, D, T+1, h/2, w/2)
        pose = m.pose_patch_embedding(pose_hidden_states)  # (B, D, T, h/2, w/2)
        x = torch.cat([x[:, :, :1], x[:, :, 1:] + pose], dim=2)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)

        # 2. time, text and image conditions
        temb, timestep_proj, context = conditions(m, timestep, encoder_hidden_states, encoder_hidden_states_image)

        # 3. blocks, the face adapter after every inject_face_latents_blocks-th block
        every = m.config.inject_face_latents_blocks
        for i, block in enumerate(m.blocks):
            x = block(x, context, timestep_proj, rotary_emb)
            if i % every == 0:
                x = m.face_adapter[i // every](x, motion_vec) + x

        # 4. output norm (fp32), projection, unpatchify: (B, N, p*C) -> (B, C, T+1, h, w)
        return output_head(m, x, temb, hidden_states.shape)


# --------------------------------------------------------------------------------------
# References called exactly as the pipeline calls them
# --------------------------------------------------------------------------------------


def _motion_vectors(ref: Reference, face: torch.Tensor) -> torch.Tensor:
    """The library's own section 4 of the forward: motion encoder (QR and all), face encoder, zero frame."""
    m = ref.module("transformer")
    batch, channels, frames, height, width = face.shape
    pixels = face.permute(0, 2, 1, 3, 4).reshape(-1, channels, height, width)
    motion = torch.cat([m.motion_encoder(b) for b in torch.split(pixels, m.config.motion_encoder_batch_size)])
    motion = m.face_encoder(motion.view(batch, frames, -1))
    return torch.cat([torch.zeros_like(motion[:, :1]), motion], dim=1)


def _face_encoder_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"motion_vec": _motion_vectors(ref, feeds["face_pixel_values"])}


def _transformer_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The library forward, with the motion vectors it would compute itself from the face pixels
    replaced by the given ones (its face encoder is checked as the face_encoder component)."""
    m = ref.module("transformer")
    batch, size = feeds["motion_vec"].shape[0], m.config.motion_encoder_size
    face = torch.zeros(batch, 3, 1, size, size)  # one dummy frame: its encoding is replaced below
    given = feeds["motion_vec"][:, 1:]
    originals = m.motion_encoder.forward, m.face_encoder.forward
    m.motion_encoder.forward = lambda x: x.new_zeros(x.shape[0], m.config.motion_encoder_dim)
    m.face_encoder.forward = lambda x: given
    try:
        out = m(
            hidden_states=feeds["hidden_states"],
            timestep=feeds["timestep"],
            encoder_hidden_states=feeds["encoder_hidden_states"],
            encoder_hidden_states_image=feeds["encoder_hidden_states_image"],
            pose_hidden_states=feeds["pose_hidden_states"],
            face_pixel_values=face,
            return_dict=False,
        )[0]
    finally:
        m.motion_encoder.forward, m.face_encoder.forward = originals
    return {"noise_pred": out}


# --------------------------------------------------------------------------------------
# Dims, from the envelope (pixels, pixel frames per segment) and the configs
# --------------------------------------------------------------------------------------


def _latent_frames(env: Envelope) -> Dim:
    """Latent frames per segment: pixel frames S = 4(T-1)+1."""
    s = env["segment_frames"]
    return Dim.of_range("latent_frames", Range(*((v - 1) // 4 + 1 for v in (s.min, s.opt, s.max))))


def _batch(env: Envelope) -> Dim:
    return Dim.of_range("batch", env["batch"])


def _motion_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    cfg = ref.config("transformer")
    t = _latent_frames(env)
    return {
        "batch": _batch(env),
        "latent_frames": t,
        "face_frames": Dim.derived("face_frames", t, scale=4, offset=-3),
        "segment_latent_frames": Dim.derived("segment_latent_frames", t, offset=1),  # + the reference frame
        "face_size": Dim.static("face_size", cfg.motion_encoder_size),
        "face_tokens": Dim.static("face_tokens", cfg.face_encoder_num_heads + 1),
        "inner_dim": Dim.static("inner_dim", cfg.num_attention_heads * cfg.attention_head_dim),
    }


def _transformer_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    cfg = ref.config("transformer")
    s = wan_vae.spatial_factor(ref)
    patch = cfg.patch_size[1]
    return {
        **_motion_dims(env, ref),
        "in_channels": Dim.static("in_channels", cfg.in_channels),
        "latent_channels": Dim.static("latent_channels", cfg.latent_channels),
        "out_channels": Dim.static("out_channels", cfg.out_channels),
        "latent_height": Dim.of_range("latent_height", env["height"].scaled(1, s), patch),
        "latent_width": Dim.of_range("latent_width", env["width"].scaled(1, s), patch),
        **condition_dims(ref),
    }


def _vae_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return wan_vae.vae_dims(_batch(env), env, ref)


def _motion_vec(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    """Motion vectors as the face encoder gives them: the reference frame's are zeros."""
    vec = torch.randn(shape, generator=gen)
    vec[:, 0] = 0
    return vec


# --------------------------------------------------------------------------------------
# Pipeline slots
# --------------------------------------------------------------------------------------


def _call_text_encoder(runners: Runners, input_ids, attention_mask=None, **_: Any):
    from transformers.modeling_outputs import BaseModelOutput

    out = runners["text_encoder"]({"input_ids": input_ids, "attention_mask": attention_mask.long()})
    return BaseModelOutput(last_hidden_state=out["last_hidden_state"])


def _call_image_encoder(runners: Runners, pixel_values=None, output_hidden_states=None, **_: Any):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    hidden = runners["image_encoder"]({"pixel_values": pixel_values})["image_embeds"]
    return BaseModelOutputWithPooling(hidden_states=(hidden, None))  # the pipeline reads hidden_states[-2]


def _call_transformer(
    runners: Runners,
    hidden_states,
    timestep,
    encoder_hidden_states,
    encoder_hidden_states_image,
    pose_hidden_states,
    face_pixel_values,
    motion_encode_batch_size=None,
    attention_kwargs=None,
    return_dict=True,
):
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    if attention_kwargs:
        raise InputError("this export's transformer takes no attention_kwargs")
    batch = hidden_states.shape[0]
    # the face pixels are the same every step of a segment: their motion vectors are computed
    # once per segment and CFG branch, not once per step
    motion_vec = runners["face_encoder"].call_cached({"face_pixel_values": face_pixel_values})["motion_vec"]
    feeds = {
        "hidden_states": hidden_states,
        "timestep": timestep.float().reshape(-1).expand(batch),
        "encoder_hidden_states": encoder_hidden_states,
        "encoder_hidden_states_image": encoder_hidden_states_image,
        "pose_hidden_states": pose_hidden_states,
        "motion_vec": motion_vec,
    }
    out = runners["transformer"](feeds)["noise_pred"]
    return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def _check_segments(frames: int, segment: int, prev: int) -> None:
    """``WanAnimatePipeline``'s own segment count, checked before running: it counts
    ``ceil((frames - prev) / (segment - prev))`` segments plus ``prev // (segment - prev)``, and
    asserts that each segment starts ``prev`` frames before the video's end, which fails when
    ``prev`` is at least the effective segment length (e.g. 5 conditioning frames, segments of 9)."""
    effective = segment - prev
    if effective < 1:
        raise InputError(f"--segment-frames {segment} must be longer than --prev-frames {prev}")
    if frames <= prev:
        raise InputError(f"--pose-video has {frames} frames: WanAnimatePipeline needs more than --prev-frames {prev}")
    remainder = (frames - prev) % effective
    target = frames + (effective - remainder if remainder else 0)
    last_start = (target // effective - 1) * effective
    if last_start + prev >= frames:
        raise InputError(
            f"--pose-video has {frames} frames: WanAnimatePipeline cannot segment them with --segment-frames {segment} "
            f"and --prev-frames {prev} (its last segment would start at frame {last_start}, leaving fewer than {prev} "
            f"conditioning frames; it asserts); use longer segments (> {2 * prev}) or --prev-frames 1"
        )


# --------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------


class WanAnimate(Family):
    name = "wan-animate"
    description = (
        "Wan2.2-Animate: character animation / replacement (umT5, CLIP vision, face encoder, DiT, Wan VAE chunks)"
    )
    variants = ("default",)
    random_presets = ("tiny", "bench")
    axis_help = {
        "batch": "MIN:OPT:MAX videos per call.",
        "height": "MIN:OPT:MAX video height in pixels (multiple of 16).",
        "width": "MIN:OPT:MAX video width in pixels (multiple of 16).",
        "segment_frames": "MIN:OPT:MAX pixel frames per segment, each 4k+1.",
    }

    components = (
        TEXT_ENCODER,
        IMAGE_ENCODER,
        Component(
            name="face_encoder",
            tolerance="image_encoder",
            module="transformer",
            inputs=specs(
                TensorSpec(
                    "face_pixel_values",
                    "float32",
                    ("batch", 3, "face_frames", "face_size", "face_size"),
                    sample="pixels",
                )
            ),
            outputs=specs(
                TensorSpec("motion_vec", "float32", ("batch", "segment_latent_frames", "face_tokens", "inner_dim"))
            ),
            dims=_motion_dims,
            wrapper=lambda ref: FaceEncoderExport(ref.module("transformer")),
            reference=_face_encoder_reference,
            precision=Precision(keep_fp32=("q_t",)),  # the motion decomposition (QR basis) in fp32
            derived=lambda ref: {
                "q_t": Transform(
                    f"Q.T of the QR of {MOTION_WEIGHT} (fp32)", lambda read: motion_basis(read(MOTION_WEIGHT))
                )
            },
        ),
        Component(
            name="transformer",
            tolerance="denoiser",
            module="transformer",
            inputs=specs(
                TensorSpec(
                    "hidden_states",
                    "float32",
                    ("batch", "in_channels", "segment_latent_frames", "latent_height", "latent_width"),
                ),
                TensorSpec("timestep", "float32", ("batch",), sample="timestep"),
                TensorSpec("encoder_hidden_states", "float32", ("batch", "text_length", "text_dim")),
                TensorSpec("encoder_hidden_states_image", "float32", ("batch", "image_tokens", "image_dim")),
                TensorSpec(
                    "pose_hidden_states",
                    "float32",
                    ("batch", "latent_channels", "latent_frames", "latent_height", "latent_width"),
                ),
                TensorSpec(
                    "motion_vec",
                    "float32",
                    ("batch", "segment_latent_frames", "face_tokens", "inner_dim"),
                    sample=_motion_vec,
                ),
            ),
            outputs=specs(
                TensorSpec(
                    "noise_pred",
                    "float32",
                    ("batch", "out_channels", "segment_latent_frames", "latent_height", "latent_width"),
                )
            ),
            dims=_transformer_dims,
            wrapper=lambda ref: WanAnimateTransformerExport(ref.module("transformer")),
            reference=_transformer_reference,
            precision=DIT_PRECISION,
            quantize=QUANTIZE_TRANSFORMER,
        ),
        *wan_vae.chunk_components(_vae_dims),
    )

    pipeline_slots = (
        PipelineSlot("text_encoder", "text_encoder", {"forward": _call_text_encoder}, ("text_encoder",)),
        PipelineSlot("image_encoder", "image_encoder", {"forward": _call_image_encoder}, ("image_encoder",)),
        PipelineSlot("transformer", "transformer", {"forward": _call_transformer}, ("face_encoder", "transformer")),
        wan_vae.vae_slot(),
    )
    host_modules = ("tokenizer", "scheduler", "image_processor")
    host_loop = wan_vae.HOST_LOOP
    run_options = (
        Option(
            "conditions",
            "The folder `zoo pose` wrote with a wan-animate-pose export: reference, pose, face (and background, "
            "mask) frames, mode, size and fps, instead of --image, --pose-video, --face-video, ...",
            type="path",
        ),
        Option("image", "The reference image (the character); required without --conditions.", type="path"),
        Option(
            "pose_video",
            "Pose video (MP4, GIF or a folder of frames); its length is the output's. Required without --conditions.",
            type="path",
        ),
        Option(
            "face_video",
            "Face video, the same length as the pose video, at the model's face size. Required without --conditions.",
            type="path",
        ),
        Option(
            "mode",
            "animate: the character in the pose video's motion; replace: into the background video.",
            type="choice",
            choices=MODES,
            default="animate",
        ),
        Option("background_video", "Replace mode: the background video.", type="path"),
        Option("mask_video", "Replace mode: the mask video (white where the character goes).", type="path"),
        Option(
            "resize_face",
            "Let WanAnimatePipeline resize face frames of another size to the model's face size "
            "(its plain lanczos resize).",
            type="flag",
        ),
        Option("prompt", "What to generate.", default=""),
        COMMON_RUN_OPTIONS[1],
        COMMON_RUN_OPTIONS[2],
        Option("guidance_scale", "CFG scale (<= 1 disables CFG).", type="float", default=1.0),
        COMMON_RUN_OPTIONS[4],
        Option("height", "Pixels; default: the export's opt height.", type="int"),
        Option("width", "Pixels; default: the export's opt width.", type="int"),
        Option("segment_frames", "Pixel frames per segment (4k+1); default: the export's opt.", type="int"),
        Option(
            "prev_frames",
            "Frames of the previous segment that condition the next (1 or 5).",
            type="choice",
            choices=("1", "5"),
            default="1",
        ),
        Option(
            "fps",
            "Frames per second of an .mp4 / .gif output; default: the --conditions' rate (rounded), else 16.",
            type="int",
            low=1,
        ),
    )
    request_axes = {"height": "height", "width": "width", "segment_frame_length": "segment_frames"}

    option_names = {**Family.option_names, "segment_frame_length": "--segment-frames"}
    trajectory = ("transformer", "hidden_states")

    # -- shapes -------------------------------------------------------------------------
    def axes(self, ref: Reference) -> tuple[Axis, ...]:
        cfg = ref.config("transformer")
        step = wan_vae.spatial_factor(ref) * cfg.patch_size[1]
        multiple = math.lcm(step, 16)  # WanAnimatePipeline.check_inputs requires multiples of 16
        # RoPE tables hold rope_max_seq_len positions per axis (frames, and patches per side)
        ceiling = min(2048, cfg.rope_max_seq_len * step // multiple * multiple)
        frames_ceiling = 4 * (cfg.rope_max_seq_len - 1) - 3  # latent frames + the reference frame
        if random_preset(ref.source) == "tiny":
            height, width, segment = Range(32, 32, 48), Range(32, 48, 64), Range(5, 9, 13)
        else:
            height, width, segment = Range(256, 720, 1280), Range(256, 1280, 1280), Range(5, 77, 81)
        height, width = (
            Range(*(max(multiple, min(v, ceiling)) for v in (r.min, r.opt, r.max))) for r in (height, width)
        )
        segment = Range(*(min(v, frames_ceiling) for v in (segment.min, segment.opt, segment.max)))
        return (
            Axis("batch", Range(1, 1, 1), ceiling=4),  # videos per call
            Axis("height", height, multiple_of=multiple, floor=multiple, ceiling=ceiling, unit="pixels"),
            Axis("width", width, multiple_of=multiple, floor=multiple, ceiling=ceiling, unit="pixels"),
            Axis("segment_frames", segment, multiple_of=4, remainder=1, floor=5, ceiling=frames_ceiling, unit="frames"),
        )

    # -- requests -----------------------------------------------------------------------
    def request(self, options: Mapping[str, Any], context: RequestContext) -> Request:
        from zoo.infra.media import check_frame_size, load_image, load_video

        options = self.with_defaults(options)
        fps = options.get("fps")
        if options.get("conditions") is not None:  # zoo pose's folder: the files, read as given one by one
            from zoo.families.wan_animate.conditions import read_conditions

            given = [n for n in CONDITION_OPTIONS if options.get(n) is not None]
            if given or "mode" in options and options["mode"] != self.option_default("mode"):
                flag = self.option_name(given[0] if given else "mode")
                raise InputError(f"{flag}: --conditions gives it; leave it out (or leave out --conditions)")
            conditions = read_conditions(options["conditions"])
            options = {**options, "mode": conditions.mode}
            fps = fps or max(1, round(conditions.fps))
            for name in ("height", "width"):
                if options.get(name) is None:
                    options[name] = conditions.size[0 if name == "height" else 1]
        for name in ("image", "pose_video", "face_video"):
            if options.get("conditions") is None and options.get(name) is None:
                raise InputError(f"{self.option_name(name)} is required (or --conditions DIR, a `zoo pose` folder)")
        mode = options["mode"]
        if options.get("conditions") is not None:
            image, pose, face = conditions.image, conditions.videos["pose"], conditions.videos["face"]
        else:
            image = load_image(options["image"], option="--image")
            pose = load_video(options["pose_video"], option="--pose-video")
            face = load_video(options["face_video"], option="--face-video")
        if len(face) != len(pose):
            raise InputError(
                f"--face-video has {len(face)} frames, --pose-video {len(pose)}: they must be the same length"
            )
        size = context.configs["transformer"]["motion_encoder_size"]
        if not options.get("resize_face"):  # with --resize-face the pipeline resizes them itself (lanczos)
            check_frame_size(
                face,
                option="--face-video",
                height=size,
                width=size,
                path=options["face_video"],
                resize=False,
                resize_flag="--resize-face",
                resample="lanczos",
            )
        kwargs: dict[str, Any] = {"image": image, "pose_video": pose, "face_video": face, "mode": mode}
        for name in ("background_video", "mask_video"):
            value = options.get(name)
            if mode == "replace" and options.get("conditions") is not None:
                kwargs[name] = conditions.videos[name.split("_")[0]]  # background, mask
            elif mode == "replace":
                if value is None:
                    raise InputError(f"--mode replace needs --{name.replace('_', '-')}")
                video = load_video(value, option=f"--{name.replace('_', '-')}")
                if len(video) != len(pose):
                    raise InputError(
                        f"--{name.replace('_', '-')} has {len(video)} frames, --pose-video {len(pose)}: "
                        f"they must be the same length"
                    )
                kwargs[name] = video
            elif value is not None:
                raise InputError(f"--{name.replace('_', '-')} is for --mode replace")
        segment = options.get("segment_frames")
        segment = context.envelope["segment_frames"].opt if segment is None else segment
        if segment % 4 != 1:
            raise InputError(f"--segment-frames {segment}: pixel frames per segment must be 4k+1 (5, 9, 13, ...)")
        prev = int(options["prev_frames"])
        _check_segments(len(pose), segment, prev)
        kwargs.update(
            prompt=options["prompt"],
            negative_prompt=options["negative_prompt"],
            height=context.envelope["height"].opt if options.get("height") is None else options["height"],
            width=context.envelope["width"].opt if options.get("width") is None else options["width"],
            segment_frame_length=segment,
            prev_segment_conditioning_frames=prev,
            num_inference_steps=options["steps"],
            guidance_scale=options["guidance_scale"],
        )
        return Request(PIPELINE, kwargs, scheduler=options.get("scheduler"), output_format="video", fps=fps or 16)

    def sample_media(self, ref: Reference) -> dict[str, Any]:
        """A reference image, pose / background / mask videos at the default opt size and a face
        video at the model's face size, 17 frames (two or three segments of the default 9 or of 13
        with 5 conditioning frames): random pixels, for trying `zoo run` on a random model."""
        import numpy as np
        from PIL import Image

        env = self.envelope(ref)
        h, w, size = env["height"].opt, env["width"].opt, ref.config("transformer").motion_encoder_size
        rng = np.random.default_rng(0)

        def frames(n: int, hh: int, ww: int) -> list:
            return [Image.fromarray(rng.integers(0, 255, (hh, ww, 3), dtype=np.uint8)) for _ in range(n)]

        mask = [
            Image.fromarray(
                np.pad(
                    np.full((h // 2, w // 2, 3), 255, np.uint8),
                    ((h // 4, h - h // 2 - h // 4), (w // 4, w - w // 2 - w // 4), (0, 0)),
                )
            )
            for _ in range(17)
        ]
        return {
            "ref.png": frames(1, h, w)[0],
            "pose.mp4": frames(17, h, w),
            "face.mp4": frames(17, size, size),
            "bg.mp4": frames(17, h, w),
            "mask.mp4": mask,
        }

    def parity_requests(self, context: RequestContext) -> list[tuple[str, Request]]:
        import numpy as np
        from PIL import Image

        env = context.envelope
        h, w, s = env["height"].opt, env["width"].opt, env["segment_frames"].opt
        frames = 2 * s - 1  # two segments with one conditioning frame
        size = context.configs["transformer"]["motion_encoder_size"]
        rng = np.random.default_rng(0)

        def clip(n: int, hh: int, ww: int) -> list:
            return [Image.fromarray(rng.integers(0, 255, (hh, ww, 3), dtype=np.uint8)) for _ in range(n)]

        base = {
            "image": clip(1, h, w)[0],
            "pose_video": clip(frames, h, w),
            "face_video": clip(frames, size, size),
            "prompt": "a person dancing",
            "negative_prompt": "blurry",
            "height": h,
            "width": w,
            "segment_frame_length": s,
            "prev_segment_conditioning_frames": 1,
            "num_inference_steps": 2,
        }
        mask = [Image.fromarray((rng.random((h, w)) > 0.5).astype(np.uint8) * 255, "L") for _ in range(frames)]
        return [
            ("animate", Request(PIPELINE, {**base, "mode": "animate", "guidance_scale": 2.0}, output_format="video")),
            (
                "replace",
                Request(
                    PIPELINE,
                    {
                        **base,
                        "mode": "replace",
                        "guidance_scale": 1.0,
                        "background_video": clip(frames, h, w),
                        "mask_video": mask,
                    },
                    output_format="video",
                ),
            ),
        ]

    def output(self, result: Any) -> Any:
        return result.frames

    def shapes_run(self, request: Request, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        k = request.kwargs
        return {"height": k["height"], "width": k["width"], "segment_frame_length": k["segment_frame_length"]}

    # -- loading ------------------------------------------------------------------------
    def load_sources(self, sources: Sources) -> Reference:
        source = sources[0].path
        index = require_folder(source, family=self.name, index_file="model_index.json", accepted=(PIPELINE,))
        found = pipeline_modules(source, index)
        needed = {"text_encoder", "tokenizer", "image_encoder", "image_processor", "transformer", "vae", "scheduler"}
        missing = sorted(needed - set(found))
        if missing:
            raise CheckpointError(
                f"{source / 'model_index.json'} names no {', '.join(missing)}; expected a complete {PIPELINE} folder"
            )
        ref = Reference("default", tuple(sources), Modules.from_found(found), pipeline=PIPELINE)
        wan_vae.check_vae(ref)
        if wan_vae.temporal_factor(ref) != 4:
            raise CheckpointError(
                f"{source / 'vae'}: this AutoencoderKLWan packs {wan_vae.temporal_factor(ref)} frames per "
                f"latent frame; WanAnimatePipeline assumes 4 (pixel frames 4k+1)"
            )
        return ref

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        from diffusers import WanAnimatePipeline

        variant = self.random_choice(variant, preset)
        WanAnimatePipeline(**random_wan_parts(preset, seed)).save_pretrained(dest)
        write_random_marker(Path(dest), family=self.name, variant=variant, preset=preset, seed=seed)
        return Path(dest)


FAMILY = WanAnimate()

"""AnimateDiff: a Stable Diffusion 1.5 UNet with motion modules (a MotionAdapter), text-to-video
and video-to-video.

References are the diffusers classes: ``UNetMotionModel`` (``UNet2DConditionModel`` +
``MotionAdapter``, built with ``UNetMotionModel.from_unet2d`` as ``AnimateDiffPipeline`` builds
it), ``AnimateDiffPipeline`` and ``AnimateDiffVideoToVideoPipeline``, ``AutoencoderKL`` and
transformers' ``CLIPTextModel``.

Sources: ``--model`` a Stable Diffusion folder plus ``--motion-adapter`` a MotionAdapter folder
(the way the AnimateDiff documentation loads it), or ``--model`` alone on a folder saved by
``AnimateDiffPipeline.save_pretrained``; ``--lora PATH[:SCALE]`` motion LoRAs, fused by diffusers
itself (``load_lora_weights`` / ``set_adapters`` / ``fuse_lora``) before export, and rebuilt the
same way for the torch side of every parity run.
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
    Source,
    SourceRole,
    Sources,
    TensorSpec,
    WeightlessModule,
    source_of,
    specs,
    token_ids,
)
from zoo.errors import CheckpointError, InputError
from zoo.infra.checkpoint import empty_module, pipeline_modules, random_preset, require_folder, write_random_marker
from zoo.models.sd_vae import decoder_component, encoder_component, latent_dims, vae_dims, vae_scale, vae_slot

T2V = "AnimateDiffPipeline"
V2V = "AnimateDiffVideoToVideoPipeline"
SD_PIPELINES = ("StableDiffusionPipeline",)
DECODE_CHUNK = 16  # the pipelines' decode_chunk_size: the VAE sees at most this many frames per call


def latent_multiple(ref: Reference) -> int:
    """Latent sizes the UNet up-samples back exactly: a multiple of 2 ** (number of up-samplers)."""
    return 2 ** (len(ref.config("unet").block_out_channels) - 1)


# --------------------------------------------------------------------------------------
# Export wrappers
# --------------------------------------------------------------------------------------


class CLIPTextExport(nn.Module):
    """``CLIPTextModel`` with token ids in and its last hidden state out (what the pipeline uses)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[0]


class UNetMotionExport(nn.Module):
    """``UNetMotionModel.forward`` made exportable, computing the same function.

    Differences from the library forward (all value-preserving):
    1. the prompt embeddings arrive once per video ``(B, L, D)`` and are repeated per frame in the
       graph with ``expand + reshape`` (the pipeline's ``repeat_interleave`` by a shape-derived
       count bakes the frame count in when traced);
    2. the time embedding is repeated per frame the same way: the library's
       ``repeat_interleave(num_frames, output_size=...)`` exports to an Expand that ONNX Runtime
       rejects for every batch >= 2;
    3. the timestep arrives as float32 ``(B,)``;
    4. latent sizes are multiples of the up-sampling factor (the envelope guarantees it), so the
       library's ``forward_upsample_size`` branch is never taken;
    5. no IP-adapter, ControlNet residuals or attention mask (the pipelines pass none).
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        u = self.unet
        batch, _, frames, height, width = sample.shape  # (B, C, F, h, w)

        # 1. time embedding, one row per frame: (B, T) -> (B*F, T)
        emb = u.time_embedding(u.time_proj(timestep).to(sample.dtype), None)
        emb = emb[:, None].expand(batch, frames, emb.shape[-1]).reshape(batch * frames, emb.shape[-1])

        # 2. prompt embeddings, one copy per frame: (B, L, D) -> (B*F, L, D)
        _, length, dim = encoder_hidden_states.shape
        context = encoder_hidden_states[:, None].expand(batch, frames, length, dim).reshape(batch * frames, length, dim)

        # 3. frames into the batch: (B, C, F, h, w) -> (B*F, C, h, w)
        x = sample.permute(0, 2, 1, 3, 4).reshape(batch * frames, sample.shape[1], height, width)
        x = u.conv_in(x)

        # 4. down blocks, mid block, up blocks, as UNetMotionModel.forward calls them
        skips = (x,)
        for block in u.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(
                    hidden_states=x,
                    temb=emb,
                    encoder_hidden_states=context,
                    attention_mask=None,
                    num_frames=frames,
                    cross_attention_kwargs=None,
                )
            else:
                x, res = block(hidden_states=x, temb=emb, num_frames=frames)
            skips += res
        if u.mid_block is not None:
            if hasattr(u.mid_block, "motion_modules"):
                x = u.mid_block(
                    x,
                    emb,
                    encoder_hidden_states=context,
                    attention_mask=None,
                    num_frames=frames,
                    cross_attention_kwargs=None,
                )
            else:
                x = u.mid_block(x, emb, encoder_hidden_states=context, attention_mask=None, cross_attention_kwargs=None)
        for block in u.up_blocks:
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            if getattr(block, "has_cross_attention", False):
                x = block(
                    hidden_states=x,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=context,
                    upsample_size=None,
                    attention_mask=None,
                    num_frames=frames,
                    cross_attention_kwargs=None,
                )
            else:
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=None, num_frames=frames)

        # 5. output: (B*F, C, h, w) -> (B, C, F, h, w)
        if u.conv_norm_out is not None:
            x = u.conv_act(u.conv_norm_out(x))
        x = u.conv_out(x)
        return x.reshape(batch, frames, x.shape[1], height, width).permute(0, 2, 1, 3, 4)


# --------------------------------------------------------------------------------------
# References called exactly as the pipeline calls them
# --------------------------------------------------------------------------------------


def _text_encoder_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"last_hidden_state": ref.module("text_encoder")(feeds["input_ids"], attention_mask=None)[0]}


def _unet_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    frames = feeds["sample"].shape[2]
    context = feeds["encoder_hidden_states"].repeat_interleave(repeats=frames, dim=0)  # as the pipeline does
    out = ref.module("unet")(
        feeds["sample"],
        feeds["timestep"],
        encoder_hidden_states=context,
        cross_attention_kwargs=None,
        added_cond_kwargs=None,
    ).sample
    return {"noise_pred": out}


# --------------------------------------------------------------------------------------
# Dims of each component, from the envelope (pixels, frames, prompts) and the configs
# --------------------------------------------------------------------------------------


def _text_length(ref: Reference) -> int:
    return ref.module("tokenizer").model_max_length  # the pipeline pads every prompt to it


def _text_encoder_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    # the pipeline encodes the prompts, then the negative prompts, in separate calls
    return {
        "batch": Dim("batch", 1, 1, env["batch"].max),
        "text_length": Dim.static("text_length", _text_length(ref)),
        "hidden_size": Dim.static("hidden_size", ref.config("text_encoder").hidden_size),
    }


def _unet_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    cfg = ref.config("unet")
    b = env["batch"]
    return {
        # classifier-free guidance runs negative and positive as one 2B batch
        "cfg_batch": Dim("cfg_batch", b.min, 2 * b.opt, 2 * b.max),
        "latent_channels": Dim.static("latent_channels", cfg.in_channels),
        "out_channels": Dim.static("out_channels", cfg.out_channels),
        "frames": Dim.of_range("frames", env["frames"]),
        **latent_dims(env, ref, latent_multiple(ref)),
        "text_length": Dim.static("text_length", _text_length(ref)),
        "cross_attention_dim": Dim.static("cross_attention_dim", cfg.cross_attention_dim),
    }


def _vae_batch(env: Envelope) -> Dim:
    """Frames per VAE call: the pipelines decode (and encode) in chunks of 16 frames."""
    most = min(DECODE_CHUNK, env["frames"].max * env["batch"].max)
    return Dim("frames_chunk", 1, min(most, env["frames"].opt), most)


def _vae_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return vae_dims(_vae_batch(env), env, ref)


# --------------------------------------------------------------------------------------
# Pipeline slots: the pipelines' modules, replaced by exported components
# --------------------------------------------------------------------------------------


def _call_text_encoder(
    runners: Runners,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    output_hidden_states: bool | None = None,
    **_: Any,
) -> tuple[torch.Tensor]:
    if attention_mask is not None or output_hidden_states:
        raise InputError(
            "this export's text encoder returns the last hidden state only: clip_skip and "
            "attention masks are not supported"
        )
    return (runners["text_encoder"]({"input_ids": input_ids})["last_hidden_state"],)


def _call_unet(
    runners: Runners,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    cross_attention_kwargs: Mapping[str, Any] | None = None,
    added_cond_kwargs: Mapping[str, Any] | None = None,
    return_dict: bool = True,
    **unsupported: Any,
) -> Any:
    from diffusers.models.unets.unet_motion_model import UNetMotionOutput

    if added_cond_kwargs or cross_attention_kwargs or any(v is not None for v in unsupported.values()):
        raise InputError(
            "this export's unet takes latents, timestep and prompt embeddings only "
            "(no IP-adapter, ControlNet or attention processor arguments)"
        )
    batch, frames = sample.shape[0], sample.shape[2]
    # the pipeline repeats each prompt embedding per frame; the graph does that itself
    per_frame = encoder_hidden_states.reshape(batch, frames, *encoder_hidden_states.shape[1:])
    if not torch.equal(per_frame, per_frame[:, :1].expand_as(per_frame)):
        raise InputError(
            "per-frame prompt embeddings (FreeNoise prompt interpolation) are not supported by this export"
        )
    feeds = {
        "sample": sample,
        "timestep": timestep.float().reshape(-1).expand(batch),
        "encoder_hidden_states": per_frame[:, 0],
    }
    out = runners["unet"](feeds)["noise_pred"]
    return UNetMotionOutput(sample=out) if return_dict else (out,)


# --------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------

FREE_INIT_METHODS = ("butterworth", "gaussian", "ideal")

# NVIDIA's UNet recipe (Model Optimizer's diffusers example, its filter of SD / SDXL UNets): the first and
# last convolutions, the timestep embedding and its projections into the resnets, and the resnets'
# shortcut convolutions stay in high precision; modelopt's own preset also keeps every `proj_out`. The
# motion modules' attention and feed-forward layers are quantized like the spatial ones. Bounds: the tiny
# model's worst rows with margin (README).
QUANTIZE_UNET = Quantization(
    keep=("conv_in*", "conv_out*", "time_embedding*", "*time_emb_proj*", "*conv_shortcut*"),
    min_cosine={"int8": 0.97, "fp8": 0.97},
    min_psnr={"int8": 24.0, "fp8": 24.0},
    why="NVIDIA's UNet recipe: conv_in / conv_out, timestep embedding and projections, shortcut convolutions",
)


class AnimateDiff(Family):
    name = "animatediff"
    description = "AnimateDiff text-to-video and video-to-video (CLIP encoder, motion UNet, SD VAE)"
    variants = ("default",)
    random_presets = ("tiny", "bench")
    source_roles = (
        SourceRole("motion_adapter", "MotionAdapter folder, with --model a Stable Diffusion 1.5 folder."),
        SourceRole(
            "lora",
            "LoRA to fuse (a .safetensors file or a folder holding one, diffusers format), with its "
            "weight as in set_adapters; repeatable.",
            kind="lora",
            multiple=True,
        ),
    )
    axis_help = {
        "batch": "MIN:OPT:MAX prompts per call (the UNet sees 2x with CFG).",
        "frames": "MIN:OPT:MAX frames per video (at most the motion modules' positional table).",
        "height": "MIN:OPT:MAX video height in pixels.",
        "width": "MIN:OPT:MAX video width in pixels.",
    }

    components = (
        Component(
            name="text_encoder",
            tolerance="text_encoder",
            module="text_encoder",
            inputs=specs(TensorSpec("input_ids", "int64", ("batch", "text_length"), sample=token_ids)),
            outputs=specs(TensorSpec("last_hidden_state", "float32", ("batch", "text_length", "hidden_size"))),
            dims=_text_encoder_dims,
            wrapper=lambda ref: CLIPTextExport(ref.module("text_encoder")),
            reference=_text_encoder_reference,
            precision=Precision(keep_fp32=("layer_norm",)),  # LayerNorms in fp32
        ),
        Component(
            name="unet",
            tolerance="denoiser",
            module="unet",
            inputs=specs(
                TensorSpec(
                    "sample", "float32", ("cfg_batch", "latent_channels", "frames", "latent_height", "latent_width")
                ),
                TensorSpec("timestep", "float32", ("cfg_batch",), sample="timestep"),
                TensorSpec("encoder_hidden_states", "float32", ("cfg_batch", "text_length", "cross_attention_dim")),
            ),
            outputs=specs(
                TensorSpec(
                    "noise_pred", "float32", ("cfg_batch", "out_channels", "frames", "latent_height", "latent_width")
                ),
            ),
            dims=_unet_dims,
            wrapper=lambda ref: UNetMotionExport(ref.module("unet")),
            reference=_unet_reference,
            precision=Precision(keep_fp32=("time_embedding", "norm")),  # timestep embedding and GroupNorms
            quantize=QUANTIZE_UNET,
        ),
        encoder_component("frames_chunk", _vae_dims),
        decoder_component("frames_chunk", _vae_dims),
    )

    pipeline_slots = (
        PipelineSlot("text_encoder", "text_encoder", {"forward": _call_text_encoder}, ("text_encoder",)),
        PipelineSlot("unet", "unet", {"forward": _call_unet}, ("unet",)),
        vae_slot(),
    )
    host_modules = ("tokenizer", "scheduler")
    run_options = COMMON_RUN_OPTIONS[:3] + (
        Option("guidance_scale", "CFG scale (<= 1 disables CFG).", type="float", default=7.5),
        COMMON_RUN_OPTIONS[4],
        Option(
            "frames", "Frames to generate; default: the export's opt frames (video-to-video: the video's).", type="int"
        ),
        Option("height", "Pixels; default: the export's opt height (video-to-video: the video's).", type="int"),
        Option("width", "Pixels; default: the export's opt width (video-to-video: the video's).", type="int"),
        Option("video", "Video-to-video: the input video (MP4, GIF or a folder of frames).", type="path"),
        Option(
            "strength",
            "Video-to-video: how much of the video is re-noised, in (0, 1].",
            type="float",
            default=0.8,
            low=0.0,
            high=1.0,
            low_open=True,
        ),
        Option("resize_video", "Video-to-video: resize the video's frames to --height/--width (bicubic).", type="flag"),
        Option("free_init", "FreeInit: re-noising iterations (the pipeline's enable_free_init).", type="int", low=1),
        Option("free_init_method", "FreeInit filter.", type="choice", choices=FREE_INIT_METHODS, default="butterworth"),
        Option(
            "free_init_fast", "FreeInit with coarse-to-fine sampling (fewer steps in early iterations).", type="flag"
        ),
        Option("free_u", "FreeU: not supported by exported graphs (the message says why).", type="flag"),
        Option("fps", "Frames per second of an .mp4 / .gif output.", type="int", default=8, low=1),
    )
    request_axes = {"height": "height", "width": "width", "num_frames": "frames"}
    option_names = {**Family.option_names, "num_frames": "--frames"}
    trajectory = ("unet", "sample")

    # -- shapes -------------------------------------------------------------------------
    def axes(self, ref: Reference) -> tuple[Axis, ...]:
        scale = vae_scale(ref)
        multiple = math.lcm(8, scale * latent_multiple(ref))
        table = ref.config("unet").motion_max_seq_length  # the motion modules' positional table
        if random_preset(ref.source) == "tiny":
            height = width = Range(2 * multiple, 3 * multiple, 4 * multiple)
            frames = Range(4, 8, 16)
        else:
            native = ref.config("unet").sample_size * scale
            height = width = Range(
                max(multiple, native // 2 // multiple * multiple), native, 3 * native // 2 // multiple * multiple
            )
            frames = Range(8, 16, 32)
        frames = Range(*(min(v, table) for v in (frames.min, frames.opt, frames.max)))
        return (
            Axis("batch", Range(1, 1, 1), ceiling=4),  # prompts per call
            Axis("frames", frames, ceiling=table, unit="frames"),
            # SD 1.5 is trained at 512 px; past 4x the motion modules' attention alone runs out of memory
            Axis("height", height, multiple_of=multiple, floor=multiple, ceiling=4 * 512, unit="pixels"),
            Axis("width", width, multiple_of=multiple, floor=multiple, ceiling=4 * 512, unit="pixels"),
        )

    # -- requests -----------------------------------------------------------------------
    def request(self, options: Mapping[str, Any], context: RequestContext) -> Request:
        from zoo.infra.media import check_frame_size, load_video

        options = self.with_defaults(options)
        if options.get("free_u"):
            raise InputError(
                "--free-u is not supported: FreeU rescales the backbone and skip features inside the UNet's up "
                "blocks, so it would have to be traced into the unet graph; this export was traced without it "
                "and the graph parity proved is the one without it"
            )
        steps = options["steps"]
        kwargs: dict[str, Any] = {
            "prompt": options["prompt"],
            "negative_prompt": options["negative_prompt"],
            "num_inference_steps": steps,
            "guidance_scale": options["guidance_scale"],
        }
        setup = {}
        if options.get("free_init") is not None:
            setup["enable_free_init"] = {
                "num_iters": options["free_init"],
                "use_fast_sampling": bool(options.get("free_init_fast")),
                "method": options["free_init_method"],
            }
        elif options.get("free_init_fast") or options["free_init_method"] != self.option_default("free_init_method"):
            raise InputError("--free-init-method and --free-init-fast need --free-init ITERS")
        height, width = options.get("height"), options.get("width")
        video = options.get("video")
        if video is None:
            for name in ("strength", "resize_video"):
                if options.get(name) and options[name] != self.option_default(name):
                    raise InputError(f"--{name.replace('_', '-')} applies to video-to-video: give --video")
            frames = options.get("frames")
            kwargs.update(
                num_frames=context.envelope["frames"].opt if frames is None else frames,
                height=context.envelope["height"].opt if height is None else height,
                width=context.envelope["width"].opt if width is None else width,
            )
            pipeline = T2V
        else:
            if "vae_encoder" not in context.components:
                raise InputError("--video needs the vae_encoder component, which this export lacks; re-export it")
            strength = options["strength"]
            if not 0 < strength <= 1:
                raise InputError(f"--strength {strength}: expected a number in (0, 1]")
            if int(steps * strength) < 1:
                raise InputError(
                    f"--strength {strength} with --steps {steps} leaves no denoising step "
                    f"(int(steps x strength) = 0): raise one of them"
                )
            clip = load_video(video, option="--video")
            if options.get("frames") is not None and options["frames"] != len(clip):
                raise InputError(
                    f"--frames {options['frames']}: video-to-video takes the frame count from --video "
                    f"{video} ({len(clip)} frames); drop --frames"
                )
            frame_w, frame_h = clip[0].size
            sources = {"num_frames": f"--video {video} frames"}
            if height is None:
                height, sources["height"] = frame_h, f"--video {video} height"
            if width is None:
                width, sources["width"] = frame_w, f"--video {video} width"
            clip = check_frame_size(
                clip,
                option="--video",
                height=height,
                width=width,
                path=video,
                resize=bool(options.get("resize_video")),
                resize_flag="--resize-video",
            )
            kwargs.update(video=[clip], height=height, width=width, strength=strength)
            pipeline = V2V
        return Request(
            pipeline,
            kwargs,
            setup=setup,
            scheduler=options.get("scheduler"),
            output_format="video",
            fps=options["fps"],
            shape_sources=sources if video is not None else {},
        )

    def parity_requests(self, context: RequestContext) -> list[tuple[str, Request]]:
        import numpy as np
        from PIL import Image

        base = {
            "prompt": "a red fox running in the snow",
            "negative_prompt": "blurry",
            "steps": 3,
            "guidance_scale": 7.5,
        }
        requests = [
            ("text-to-video", self.request(base, context)),
            ("free-init", self.request({**base, "steps": 2, "free_init": 2}, context)),
        ]
        if "vae_encoder" in context.components:  # a synthetic clip at the opt size: a ramp with noise
            env = context.envelope
            rng = np.random.default_rng(0)
            ramp = np.linspace(0, 255, env["width"].opt)[None, :, None]
            shape = (env["height"].opt, env["width"].opt, 3)
            clip = [
                Image.fromarray(np.clip(ramp + rng.normal(0, 30, shape) + 8 * i, 0, 255).astype("uint8"))
                for i in range(env["frames"].opt)
            ]
            kwargs = {k: v for k, v in requests[0][1].kwargs.items() if k != "num_frames"}
            kwargs.update(video=[clip], strength=0.6, num_inference_steps=4)
            requests.append(("video-to-video", Request(V2V, kwargs, output_format="video")))
        return requests

    def build_pipeline(self, request: Request, modules: Mapping[str, Any]) -> Any:
        import diffusers

        cls = getattr(diffusers, request.pipeline)
        names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
        return cls(**{k: modules[k] for k in names}, motion_adapter=None)

    def output(self, result: Any) -> Any:
        return result.frames

    def shapes_run(self, request: Request, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        kwargs = request.kwargs
        frames = len(kwargs["video"][0]) if "video" in kwargs else kwargs.get("num_frames")
        return {"height": kwargs.get("height"), "width": kwargs.get("width"), "num_frames": frames}

    # -- loading ------------------------------------------------------------------------
    def load_sources(self, sources: Sources) -> Reference:
        source = sources[0].path
        adapter = source_of(sources, "motion_adapter")
        loras = [s for s in sources if s.role == "lora"]
        index = require_folder(
            source, family=self.name, index_file="model_index.json", accepted=(T2V, V2V, *SD_PIPELINES)
        )
        is_sd = index["_class_name"] in SD_PIPELINES
        if is_sd and adapter is None:
            raise CheckpointError(
                f"{source} is a Stable Diffusion folder: AnimateDiff also needs --motion-adapter "
                f"MOTION_ADAPTER_FOLDER (a MotionAdapter saved by diffusers)"
            )
        if not is_sd and adapter is not None:
            raise CheckpointError(
                f"{source} is an {index['_class_name']} folder whose unet already holds motion "
                f"modules; --motion-adapter is for a Stable Diffusion folder"
            )
        if adapter is not None:
            require_folder(adapter.path, family=self.name, index_file="config.json", accepted=("MotionAdapter",))
        skip = ("unet", "motion_adapter", "feature_extractor", "image_encoder", "safety_checker")
        found = pipeline_modules(source, index, skip=skip)
        missing = sorted({"text_encoder", "tokenizer", "vae", "scheduler"} - set(found))
        if missing or not (source / "unet").is_dir():
            raise CheckpointError(
                f"{source} lacks {', '.join(missing + ['unet'] * (not (source / 'unet').is_dir()))}; "
                f"expected a complete {index['_class_name']} folder"
            )
        loaders = {k: v[0] for k, v in found.items()}
        configs = {k: v[1] for k, v in found.items() if v[1]}

        def unet() -> nn.Module:
            from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

            from zoo.infra.checkpoint import loading

            with loading("the motion UNet", source):
                if adapter is None:
                    return UNetMotionModel.from_pretrained(str(source), subfolder="unet", dtype=torch.float32)
                unet2d = UNet2DConditionModel.from_pretrained(str(source), subfolder="unet", dtype=torch.float32)
                motion = MotionAdapter.from_pretrained(str(adapter.path), dtype=torch.float32)
                if len(motion.config.block_out_channels) != len(unet2d.config.block_out_channels) or any(
                    a != b for a, b in zip(motion.config.block_out_channels, unet2d.config.block_out_channels)
                ):
                    raise CheckpointError(
                        f"motion adapter {adapter.path} has block channels {tuple(motion.config.block_out_channels)}, "
                        f"the UNet of {source} has {tuple(unet2d.config.block_out_channels)}: an adapter for another base model"
                    )
                return UNetMotionModel.from_unet2d(unet2d, motion).to(torch.float32)

        def unet_weightless() -> WeightlessModule:
            from accelerate import init_empty_weights
            from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

            if adapter is None:
                config = UNetMotionModel.load_config(str(source), subfolder="unet")
                return WeightlessModule(lambda: empty_module(UNetMotionModel, config), (source / "unet",))

            def build() -> nn.Module:
                # all on meta (buffers too: from_unet2d copies them); the adapter stores its own
                with init_empty_weights(include_buffers=True):
                    unet2d = UNet2DConditionModel.from_config(
                        UNet2DConditionModel.load_config(str(source), subfolder="unet")
                    )
                    motion = MotionAdapter.from_config(MotionAdapter.load_config(str(adapter.path)))
                    return UNetMotionModel.from_unet2d(unet2d, motion)

            return WeightlessModule(build, (source / "unet", adapter.path))

        loaders["unet"] = unet
        modules = Modules(loaders, configs, {k: v[2] for k, v in found.items() if v[2]} | {"unet": unet_weightless})
        if loras:
            modules = _with_loras(modules, loras)
        return Reference("default", tuple(sources), modules, pipeline=T2V)

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        """An ``AnimateDiffPipeline`` folder of random weights (tokenizer built locally)."""
        from diffusers import AnimateDiffPipeline

        variant = self.random_choice(variant, preset)
        pipe = AnimateDiffPipeline(**_random_parts(preset, seed))  # converts the UNet with the adapter
        pipe.save_pretrained(dest)
        write_random_marker(Path(dest), family=self.name, variant=variant, preset=preset, seed=seed)
        return Path(dest)

    def write_random_sources(self, dest: Path, *, preset: str = "tiny", seed: int = 0) -> tuple[Source, ...]:
        """Random sources in the documentation's layout: a Stable Diffusion folder, a MotionAdapter
        folder and a motion LoRA (what ``zoo random animatediff`` writes)."""
        from diffusers import StableDiffusionPipeline, UNetMotionModel

        from zoo.infra.lora import build_random_motion_lora

        dest = Path(dest)
        parts = _random_parts(preset, seed)
        adapter = parts.pop("motion_adapter")
        sd = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        sd.save_pretrained(dest / "stable-diffusion")
        write_random_marker(dest / "stable-diffusion", family=self.name, variant="default", preset=preset, seed=seed)
        adapter.save_pretrained(dest / "motion-adapter")
        unet = UNetMotionModel.from_unet2d(parts["unet"], adapter)
        lora = build_random_motion_lora(unet, dest / "motion-lora.safetensors", seed=seed + 1)
        return (
            Source("model", dest / "stable-diffusion"),
            Source("motion_adapter", dest / "motion-adapter"),
            Source("lora", lora, 1.0),
        )


def _with_loras(modules: Modules, loras: list[Source]) -> Modules:
    """The modules with the LoRAs fused by diffusers into the UNet (and text encoder) on first use."""
    from diffusers import AnimateDiffPipeline

    from zoo.infra.lora import LoraSpec, fuse_loras

    fused: dict[str, Any] = {}

    def load(key: str) -> Any:
        if not fused:
            pipe = AnimateDiffPipeline(
                vae=None,
                text_encoder=modules["text_encoder"],
                tokenizer=None,
                unet=modules["unet"],
                motion_adapter=None,
                scheduler=None,
            )
            fuse_loras(pipe, [LoraSpec(s.path, 1.0 if s.scale is None else s.scale) for s in loras])
            fused.update(unet=pipe.unet, text_encoder=pipe.text_encoder)
        return fused[key]

    loaders = {k: (lambda k=k: load(k)) if k in ("unet", "text_encoder") else (lambda k=k: modules[k]) for k in modules}
    return Modules(loaders, {k: (lambda k=k: modules.config(k)) for k in modules if k not in ("unet", "text_encoder")})


def _random_parts(preset: str, seed: int) -> dict[str, Any]:
    """Random-weight parts of an AnimateDiff model: tiny, or SD 1.5 channel widths at reduced
    depth (bench). The UNet is a plain ``UNet2DConditionModel`` and the motion modules a
    ``MotionAdapter``, as the documentation's checkpoints come."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from zoo.infra.tiny import build_clip_tokenizer

    bench = preset == "bench"
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        build_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    width = 768 if bench else 32
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=2,
            num_attention_heads=12 if bench else 4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    channels = (320, 640, 1280, 1280) if bench else (16, 32)
    down = ("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1)
    unet = UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=width,
        attention_head_dim=8 if bench else 4,
        norm_num_groups=32 if bench else 8,
        sample_size=64 if bench else 8,
        in_channels=4,
        out_channels=4,
    )
    adapter = MotionAdapter(
        block_out_channels=channels,
        motion_layers_per_block=1,
        motion_norm_num_groups=32 if bench else 8,
        motion_num_attention_heads=8 if bench else 2,
        motion_max_seq_length=32,
    )
    # a fresh adapter's output projections are zero (motion would be a no-op): give them weights
    with torch.no_grad():
        for p in adapter.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 64, 64) if bench else (8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )
    # the AnimateDiff documentation's scheduler settings
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        clip_sample=False,
        timestep_spacing="linspace",
        steps_offset=1,
    )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "motion_adapter": adapter,
        "scheduler": scheduler,
    }


FAMILY = AnimateDiff()

"""PixArt-alpha and PixArt-Sigma: T5 text encoder, PixArt transformer, SD VAE decoder.

References are the diffusers classes (``PixArtTransformer2DModel``, ``AutoencoderKL``,
``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline``) and transformers' ``T5EncoderModel``.

Variants:
- ``sigma``: PixArt-Sigma (text length 300, no size conditions);
- ``alpha-1024``: PixArt-alpha with ``use_additional_conditions`` (sample_size 128): the
  transformer also takes ``resolution (B,2)`` and ``aspect_ratio (B,1)``;
- ``alpha-512``: PixArt-alpha without them (sample_size 64).
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
    round_to,
    specs,
    token_ids,
)
from zoo.errors import CheckpointError
from zoo.infra.checkpoint import pipeline_modules, random_preset, require_folder, write_random_marker
from zoo.infra.patches import attention_mask_expand
from zoo.models.sd_vae import decoder_component, latent_dims, vae_dims, vae_scale, vae_slot

PIPELINES = {"sigma": "PixArtSigmaPipeline", "alpha-1024": "PixArtAlphaPipeline", "alpha-512": "PixArtAlphaPipeline"}
TEXT_LENGTH = {"PixArtSigmaPipeline": 300, "PixArtAlphaPipeline": 120}  # the pipelines' max_sequence_length
MAX_PATCHES = 256  # image tokens a side the envelope allows (a memory guard: see PixArt.axes)


# --------------------------------------------------------------------------------------
# Export wrappers
# --------------------------------------------------------------------------------------


class T5EncoderExport(nn.Module):
    """``T5EncoderModel`` with flat inputs and its last hidden state as the one output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class PixArtTransformerExport(nn.Module):
    """``PixArtTransformer2DModel.forward`` made exportable, computing the same function.

    Differences from the library forward (all value-preserving):
    1. the 2D sin-cos position embedding is computed in the graph for the actual (h, w)
       (the library recomputes it in Python when (h, w) differs from the config, which a
       trace bakes in), in float32 instead of float64 (TensorRT has no float64);
    2. the output is un-patchified with reshape + transpose instead of ``einsum``, and without
       the ``squeeze(1)`` that exports as an unconditional ONNX Squeeze;
    3. the attention mask arrives as float (1 keep, 0 discard) and becomes the -10000 bias here.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        pe = model.pos_embed
        half = pe.proj.out_channels // 2  # each of the two 1D embeddings gets half the width
        omega = torch.arange(half // 2, dtype=torch.float64) / (half / 2.0)
        # named under pos_embed: the precision policy keeps it fp32
        self.register_buffer("pos_embed_omega", (1.0 / 10000**omega).float(), persistent=False)  # (D/4,)
        self.base_size = pe.base_size
        self.interpolation_scale = pe.interpolation_scale

    def _sincos(self, pos: torch.Tensor) -> torch.Tensor:
        out = pos[:, None] * self.pos_embed_omega[None, :]  # (N, D/4)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (N, D/2)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """``get_2d_sincos_pos_embed(D, (h, w), base_size, interpolation_scale)`` in the graph."""
        dev = self.pos_embed_omega.device
        rows = torch.arange(h, device=dev, dtype=torch.float32) / (h / self.base_size) / self.interpolation_scale
        cols = torch.arange(w, device=dev, dtype=torch.float32) / (w / self.base_size) / self.interpolation_scale
        col = cols[None, :].expand(h, w).reshape(-1)  # (h*w,) x position of each patch
        row = rows[:, None].expand(h, w).reshape(-1)  # (h*w,) y position of each patch
        return torch.cat([self._sincos(col), self._sincos(row)], dim=1)  # (h*w, D)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, C_in, H, W) latents
        encoder_hidden_states: torch.Tensor,  # (B, L, caption_channels)
        encoder_attention_mask: torch.Tensor,  # (B, L) 1 keep / 0 discard
        timestep: torch.Tensor,  # (B,) float
        resolution: torch.Tensor | None = None,  # (B, 2) alpha-1024 only
        aspect_ratio: torch.Tensor | None = None,  # (B, 1) alpha-1024 only
    ) -> torch.Tensor:
        m = self.model
        p = m.config.patch_size
        batch, _, height, width = hidden_states.shape
        h, w = height // p, width // p

        # 1. mask -> additive bias (B, 1, L), as the library does for a 2D mask
        bias = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)

        # 2. patchify + position embedding
        x = m.pos_embed.proj(hidden_states)  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        if m.pos_embed.layer_norm:
            x = m.pos_embed.norm(x)
        x = (x + self.position_embedding(h, w)[None]).to(x.dtype)

        # 3. timestep (+ size) conditioning and caption projection
        added = {"resolution": resolution, "aspect_ratio": aspect_ratio}
        t, embedded_t = m.adaln_single(timestep, added, batch_size=batch, hidden_dtype=x.dtype)
        context = m.caption_projection(encoder_hidden_states)
        context = context.view(batch, -1, x.shape[-1])  # (B, L, D)

        # 4. transformer blocks
        for block in m.transformer_blocks:
            x = block(
                x,
                attention_mask=None,
                encoder_hidden_states=context,
                encoder_attention_mask=bias,
                timestep=t,
                cross_attention_kwargs=None,
                class_labels=None,
            )

        # 5. final modulation and projection
        shift, scale = (m.scale_shift_table[None] + embedded_t[:, None]).chunk(2, dim=1)
        x = m.norm_out(x)
        x = x * (1 + scale) + shift
        x = m.proj_out(x)  # (B, h*w, p*p*C_out)

        # 6. unpatchify: (B, h, w, p, q, C) -> (B, C, h, p, w, q) -> (B, C, H, W)
        c = m.out_channels
        x = x.reshape(batch, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(batch, c, h * p, w * p)


# --------------------------------------------------------------------------------------
# References called exactly as the pipeline calls them
# --------------------------------------------------------------------------------------


def _text_encoder_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = ref.module("text_encoder")(feeds["input_ids"], attention_mask=feeds["attention_mask"])
    return {"last_hidden_state": out[0]}


def _transformer_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    added = {"resolution": feeds.get("resolution"), "aspect_ratio": feeds.get("aspect_ratio")}
    out = ref.module("transformer")(
        feeds["hidden_states"],
        encoder_hidden_states=feeds["encoder_hidden_states"],
        timestep=feeds["timestep"],
        added_cond_kwargs=added,
        encoder_attention_mask=feeds["encoder_attention_mask"],
        return_dict=False,
    )[0]
    return {"sample": out}


# --------------------------------------------------------------------------------------
# Dims of each component, from the envelope (pixels, images) and the model config
# --------------------------------------------------------------------------------------


_static = Dim.static


def _text_encoder_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    cfg = ref.config("text_encoder")
    # the pipeline encodes prompts (one per prompt, then negatives), before repeating per image
    return {
        "batch": Dim("batch", 1, 1, env["batch"].max),
        "text_length": Dim.of_range("text_length", env["text_length"]),
        "hidden_size": _static("hidden_size", cfg.d_model),
    }


def _transformer_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    cfg = ref.config("transformer")
    b = env["batch"]
    return {
        # classifier-free guidance runs negative and positive as one 2B batch
        "cfg_batch": Dim("cfg_batch", b.min, 2 * b.opt, 2 * b.max),
        "text_length": Dim.of_range("text_length", env["text_length"]),
        **latent_dims(env, ref, cfg.patch_size),
        "in_channels": _static("in_channels", cfg.in_channels),
        "out_channels": _static("out_channels", _out_channels(cfg)),
        "caption_channels": _static("caption_channels", cfg.caption_channels),
    }


def _vae_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return vae_dims(Dim.of_range("batch", env["batch"]), env, ref)


def _out_channels(cfg: Any) -> int:
    """``PixArtTransformer2DModel.out_channels``: the config's, or the input channels."""
    return cfg.in_channels if cfg.out_channels is None else cfg.out_channels


def _uses_size_conditions(ref: Reference) -> bool:
    """``PixArtTransformer2DModel``'s rule: size conditions unless the config says, iff sample_size 128."""
    cfg = ref.config("transformer")
    flag = cfg.use_additional_conditions
    return bool(cfg.sample_size == 128 if flag is None else flag)


def _transformer_inputs(ref: Reference) -> tuple[TensorSpec, ...]:
    inputs = (
        TensorSpec("hidden_states", "float32", ("cfg_batch", "in_channels", "latent_height", "latent_width")),
        TensorSpec("encoder_hidden_states", "float32", ("cfg_batch", "text_length", "caption_channels")),
        TensorSpec("encoder_attention_mask", "float32", ("cfg_batch", "text_length"), sample="mask"),
        TensorSpec("timestep", "float32", ("cfg_batch",), sample="timestep"),
    )
    if _uses_size_conditions(ref):  # PixArt-alpha 1024: resolution and aspect-ratio conditions
        inputs += (
            TensorSpec("resolution", "float32", ("cfg_batch", 2), sample=_resolution),
            TensorSpec("aspect_ratio", "float32", ("cfg_batch", 1), sample="uniform"),
        )
    return inputs


def _resolution(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    return torch.randint(32, 2048, shape, generator=gen).float()


# --------------------------------------------------------------------------------------
# Pipeline slots: the pipeline's modules, replaced by exported components
# --------------------------------------------------------------------------------------


def _call_text_encoder(runners: Runners, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> Any:
    out = runners["text_encoder"]({"input_ids": input_ids, "attention_mask": attention_mask})
    return (out["last_hidden_state"],)


def _call_transformer(
    runners: Runners,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    added_cond_kwargs: Mapping[str, torch.Tensor | None] | None = None,
    cross_attention_kwargs: Mapping[str, Any] | None = None,
    attention_mask: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    return_dict: bool = True,
) -> Any:
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    batch = hidden_states.shape[0]
    feeds = {
        "hidden_states": hidden_states,
        "encoder_hidden_states": encoder_hidden_states,
        "encoder_attention_mask": encoder_attention_mask.float(),
        "timestep": timestep.float().reshape(-1).expand(batch),
    }
    # the pipeline sends size conditions whenever sample_size is 128; the library model reads
    # them only with use_additional_conditions, and the export declares them only then
    for key, value in (added_cond_kwargs or {}).items():
        if value is not None and key in runners["transformer"].input_names:
            feeds[key] = value.float()
    sample = runners["transformer"](feeds)["sample"]
    return Transformer2DModelOutput(sample=sample) if return_dict else (sample,)


# --------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------


# NVIDIA's diffusion recipes (Model Optimizer's diffusers examples, the TensorRT demo) keep the patch and
# caption embedders, the timestep embedding and the final projection in high precision and quantize the
# blocks' attention and feed-forward layers. Bounds: the tiny model's worst rows with margin (README).
QUANTIZE_TRANSFORMER = Quantization(
    keep=("pos_embed*", "adaln_single*", "caption_projection*", "proj_out*"),
    min_cosine={"int8": 0.99, "fp8": 0.99},
    min_psnr={"int8": 35.0, "fp8": 35.0},
    why="NVIDIA's DiT recipe: embedders, timestep embedding and final projection in high precision",
)


class PixArt(Family):
    name = "pixart"
    description = "PixArt-alpha / PixArt-Sigma text-to-image (T5 encoder, DiT, SD VAE decoder)"
    variants = ("sigma", "alpha-1024", "alpha-512")
    random_presets = ("tiny", "bench")

    components = (
        Component(
            name="text_encoder",
            tolerance="text_encoder",
            module="text_encoder",
            inputs=specs(
                TensorSpec("input_ids", "int64", ("batch", "text_length"), sample=token_ids),
                TensorSpec("attention_mask", "int64", ("batch", "text_length"), sample="mask"),
            ),
            outputs=specs(TensorSpec("last_hidden_state", "float32", ("batch", "text_length", "hidden_size"))),
            dims=_text_encoder_dims,
            wrapper=lambda ref: T5EncoderExport(ref.module("text_encoder")),
            reference=_text_encoder_reference,
            # T5 feed-forward overflows in fp16: keep wo in fp32, or run the encoder in bf16/fp32
            precision=Precision(keep_fp32=("DenseReluDense.wo",)),
        ),
        Component(
            name="transformer",
            tolerance="denoiser",
            module="transformer",
            inputs=_transformer_inputs,
            outputs=specs(
                TensorSpec("sample", "float32", ("cfg_batch", "out_channels", "latent_height", "latent_width"))
            ),
            dims=_transformer_dims,
            wrapper=lambda ref: PixArtTransformerExport(ref.module("transformer")),
            reference=_transformer_reference,
            export_patches=(attention_mask_expand,),
            precision=Precision(keep_fp32=("adaln_single", "norm", "pos_embed")),  # timestep embedding, norms
            quantize=QUANTIZE_TRANSFORMER,
        ),
        decoder_component("batch", _vae_dims),
    )

    pipeline_slots = (
        PipelineSlot("text_encoder", "text_encoder", {"forward": _call_text_encoder}, ("text_encoder",)),
        PipelineSlot("transformer", "transformer", {"forward": _call_transformer}, ("transformer",)),
        vae_slot(),
    )
    host_modules = ("tokenizer", "scheduler")
    axis_help = {
        "batch": "MIN:OPT:MAX images per prompt (the transformer sees 2x with CFG).",
        "height": "MIN:OPT:MAX image height in pixels.",
        "width": "MIN:OPT:MAX image width in pixels.",
        "text_length": "MIN:OPT:MAX T5 tokens.",
    }
    run_options = COMMON_RUN_OPTIONS[:3] + (
        Option("guidance_scale", "CFG scale (<= 1 disables CFG).", type="float", default=4.5),
        COMMON_RUN_OPTIONS[4],
        Option("height", "Pixels; default: the export's opt height.", type="int"),
        Option("width", "Pixels; default: the export's opt width.", type="int"),
        Option("batch", "Images per prompt; default: the export's opt batch.", type="int"),
        Option("max_sequence_length", "Text tokens; default: the export's opt text length.", type="int"),
        Option("resolution_binning", "Snap to the model's aspect-ratio bins, then resize back (opt-in).", type="flag"),
    )
    request_axes = {
        "height": "height",
        "width": "width",
        "num_images_per_prompt": "batch",
        "max_sequence_length": "text_length",
    }
    option_names = {**Family.option_names, "num_images_per_prompt": "--batch"}
    trajectory = ("transformer", "hidden_states")

    # -- shapes -------------------------------------------------------------------------
    def axes(self, ref: Reference) -> tuple[Axis, ...]:
        max_tokens = ref.module("tokenizer").model_max_length
        text_length = min(TEXT_LENGTH[ref.pipeline], max_tokens)
        scale = vae_scale(ref)
        cfg = ref.config("transformer")
        # the pipelines require multiples of 8; the transformer a whole number of patches
        patch = math.lcm(8, cfg.patch_size * scale)
        native = cfg.sample_size * scale
        if random_preset(ref.source) == "tiny":
            height = width = Range(32, 64, 96)
            batch = Range(1, 1, 2)
        else:
            height = width = Range(round_to(native / 2, patch), round_to(native, patch), round_to(native * 2, patch))
            batch = Range(1, 1, 4)
        text = Range(min(16, text_length), text_length, text_length)
        # Nothing in PixArt bounds the size: its sin-cos position embedding is computed for any grid
        # (no table) and no sequence length is capped. The ceiling guards memory instead: past
        # MAX_PATCHES patches a side, one head's attention scores alone outgrow 16 GiB in fp32.
        ceiling = MAX_PATCHES * cfg.patch_size * scale // patch * patch
        guard = (
            f"a guard, not a limit of PixArt: its position embedding is computed for any size, but past "
            f"{MAX_PATCHES} x {MAX_PATCHES} patches one head's attention scores alone take over 16 GiB in fp32"
        )
        return (
            Axis("batch", batch, ceiling=16),  # images per prompt (the transformer sees 2x with CFG)
            Axis("height", height, multiple_of=patch, floor=patch, ceiling=ceiling, unit="pixels", guard=guard),
            Axis("width", width, multiple_of=patch, floor=patch, ceiling=ceiling, unit="pixels", guard=guard),
            Axis("text_length", text, floor=2, ceiling=max_tokens, unit="tokens"),
        )

    # -- requests -----------------------------------------------------------------------
    def request(self, options: Mapping[str, Any], context: RequestContext) -> Request:
        options = self.with_defaults(options)

        def pick(option: str, axis: str) -> Any:
            value = options.get(option)
            return context.envelope[axis].opt if value is None else value

        kwargs = {
            "prompt": options["prompt"],
            "negative_prompt": options["negative_prompt"],
            "num_inference_steps": options["steps"],
            "guidance_scale": options["guidance_scale"],
            "height": pick("height", "height"),
            "width": pick("width", "width"),
            "num_images_per_prompt": pick("batch", "batch"),
            "max_sequence_length": pick("max_sequence_length", "text_length"),
            # exactly the requested size: the pipelines snap to aspect-ratio bins unless told not to
            "use_resolution_binning": bool(options.get("resolution_binning")),
        }
        return Request(context.pipeline, kwargs, scheduler=options.get("scheduler"), output_format="images")

    def parity_requests(self, context: RequestContext) -> list[tuple[str, Request]]:
        options = {
            "prompt": "a red fox in the snow, detailed photo",
            "negative_prompt": "blurry",
            "steps": 3,
            "guidance_scale": 4.5,
        }
        return [("text-to-image", self.request(options, context))]

    def shapes_run(self, request: Request, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        shapes = super().shapes_run(request, configs)
        if request.kwargs.get("use_resolution_binning") and shapes["height"] and shapes["width"]:
            from diffusers.image_processor import PixArtImageProcessor
            from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as bins

            table = {
                256: "ASPECT_RATIO_2048_BIN",
                128: "ASPECT_RATIO_1024_BIN",
                64: "ASPECT_RATIO_512_BIN",
                32: "ASPECT_RATIO_256_BIN",
            }.get(configs["transformer"]["sample_size"])
            if table is not None:  # (the pipeline itself rejects other sample sizes)
                shapes["height"], shapes["width"] = (
                    int(v)
                    for v in PixArtImageProcessor.classify_height_width_bin(
                        shapes["height"], shapes["width"], ratios=getattr(bins, table)
                    )
                )
        return shapes

    # -- loading ------------------------------------------------------------------------
    def load_sources(self, sources: Sources) -> Reference:
        source = sources[0].path
        index = require_folder(
            source, family=self.name, index_file="model_index.json", accepted=sorted(set(PIPELINES.values()))
        )
        pipeline = index["_class_name"]
        found = pipeline_modules(source, index)
        modules = Modules.from_found(found)
        missing = sorted({"text_encoder", "tokenizer", "transformer", "vae", "scheduler"} - set(modules))
        if missing:
            raise CheckpointError(
                f"{source / 'model_index.json'} names no {', '.join(missing)}; expected a complete {pipeline} folder"
            )
        ref = Reference("", tuple(sources), modules, pipeline=pipeline)
        if pipeline == "PixArtSigmaPipeline":
            ref.variant = "sigma"
        else:
            ref.variant = "alpha-1024" if _uses_size_conditions(ref) else "alpha-512"
        return ref

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        import diffusers
        from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
        from transformers import AutoTokenizer, T5Config, T5EncoderModel

        from zoo.infra.tiny import build_t5_tokenizer

        variant = self.random_choice(variant, preset)
        dest = Path(dest)
        pipeline = PIPELINES[variant]
        bench = preset == "bench"
        torch.manual_seed(seed)

        build_t5_tokenizer(dest / "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(dest / "tokenizer")
        d_model = 1024 if bench else 32
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=d_model,
                d_kv=64 if bench else 8,
                d_ff=2816 if bench else 64,
                num_layers=2,
                num_heads=16 if bench else 4,
                relative_attention_num_buckets=32 if bench else 8,
                relative_attention_max_distance=128 if bench else 16,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
            )
        )
        sample_size = {"sigma": 128, "alpha-1024": 128, "alpha-512": 64}[variant]
        transformer = PixArtTransformer2DModel(
            num_attention_heads=16 if bench else 2,
            attention_head_dim=72 if bench else 12,  # inner dim divisible by 3 (size conditions)
            in_channels=4,
            out_channels=8,
            num_layers=2,
            cross_attention_dim=1152 if bench else 24,
            caption_channels=d_model,
            sample_size=sample_size,
            patch_size=2,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            num_embeds_ada_norm=1000,
            activation_fn="gelu-approximate",
            attention_bias=True,
            use_additional_conditions=variant == "alpha-1024",
            interpolation_scale=None,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(32, 64, 64, 64) if bench else (8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        )
        scheduler = DPMSolverMultistepScheduler(
            beta_start=0.0001,
            beta_end=0.02,
            beta_schedule="linear",
            num_train_timesteps=1000,
            prediction_type="epsilon",
        )
        pipe = getattr(diffusers, pipeline)(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )
        pipe.save_pretrained(dest)
        write_random_marker(dest, family=self.name, variant=variant, preset=preset, seed=seed)
        return dest


FAMILY = PixArt()

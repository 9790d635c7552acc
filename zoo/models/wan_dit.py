"""Wan DiT pieces the Wan families share: the output head, the time embedding and the text / image
conditions of diffusers' ``WanTransformer3DModel`` (and ``WanAnimateTransformer3DModel``, which
writes them the same), the DiT's precision policy, the conditions' dims, and the random-weight Wan
parts the families' random models are built from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.contract import Dim, Precision, Reference
from zoo.models.wan_encoders import TEXT_LENGTH, image_tokens

# norms, modulation, timestep and RoPE embeddings in fp32 (diffusers' _keep_in_fp32_modules)
DIT_PRECISION = Precision(keep_fp32=("norm", "time_embedder", "scale_shift_table", "rope"))


def conditions(
    m: nn.Module, timestep: torch.Tensor, text: torch.Tensor, image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``temb``, the blocks' timestep projection ``(B, 6, D)`` and the context (image tokens, then
    text tokens) of ``condition_embedder``, as the Wan DiT forward computes them."""
    temb, timestep_proj, context, context_image = m.condition_embedder(timestep, text, image, timestep_seq_len=None)
    timestep_proj = timestep_proj.unflatten(1, (6, -1))
    context = torch.cat([context_image, context], dim=1)
    return temb, timestep_proj, context


def time_embedding(m: nn.Module, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``temb`` and ``t_mod`` (B, 6, D) of ``WanTimeTextImageEmbedding`` (its time half)."""
    ce = m.condition_embedder
    temb = ce.time_embedder(ce.timesteps_proj(timestep).to(torch.float32))
    return temb, ce.time_proj(ce.act_fn(temb)).unflatten(1, (6, -1))


def output_head(m: nn.Module, x: torch.Tensor, temb: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Output norm (fp32), projection, unpatchify: (B, N, p*C) -> (B, C, T, h, w), ``shape`` being
    the DiT input's (B, C, T, h, w)."""
    batch, _, frames, height, width = shape
    p_t, p_h, p_w = m.config.patch_size
    shift, scale = (m.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    x = (m.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
    x = m.proj_out(x)
    x = x.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def condition_dims(ref: Reference) -> dict[str, Dim]:
    """The text and image conditions' dims of the DiT (``encoder_hidden_states`` and ``encoder_hidden_states_image``)."""
    cfg = ref.config("transformer")
    return {
        "text_length": Dim.static("text_length", TEXT_LENGTH),
        "text_dim": Dim.static("text_dim", cfg.text_dim),
        "image_tokens": Dim.static("image_tokens", image_tokens(ref)),
        "image_dim": Dim.static("image_dim", cfg.image_dim),
    }


def random_dit_config(preset: str, *, z_dim: int, text_dim: int, image_dim: int) -> dict[str, Any]:
    """The Wan I2V DiT's config of the random models (``WanTransformer3DModel`` and
    ``WanAnimateTransformer3DModel`` alike): tiny, or the 14B models' widths at one block (bench)."""
    bench = preset == "bench"
    heads, head_dim = (40, 128) if bench else (2, 12)
    return dict(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=2 * z_dim + 4,
        out_channels=z_dim,
        text_dim=text_dim,
        freq_dim=256 if bench else 32,
        ffn_dim=13824 if bench else 32,
        num_layers=1 if bench else 2,
        cross_attn_norm=True,
        image_dim=image_dim,
        added_kv_proj_dim=heads * head_dim,
        rope_max_seq_len=1024 if bench else 32,
    )


def random_wan_parts(preset: str, seed: int) -> dict[str, Any]:
    """Random-weight ``WanAnimatePipeline`` modules: tiny, or Wan-Animate-14B's widths at one block
    (bench). The Wan families' random models start from these: wan-animate saves them as they are;
    unianimate-dit keeps the tokenizer, encoders, image processor and VAE and replaces the DiT and
    scheduler, building its own DiT after this one, from the same seeded stream of random numbers."""
    import tempfile

    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanAnimateTransformer3DModel
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    from zoo.infra.tiny import build_t5_tokenizer

    bench = preset == "bench"
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        build_t5_tokenizer(Path(tmp), model_max_length=TEXT_LENGTH)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    text_dim = 4096 if bench else 32
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_dim,
            d_kv=64 if bench else 8,
            d_ff=10240 if bench else 37,
            num_layers=1,
            num_heads=64 if bench else 4,
            relative_attention_num_buckets=32 if bench else 8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    image_dim = 1280 if bench else 16
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=image_dim,
            intermediate_size=5120 if bench else 32,
            num_hidden_layers=2,
            num_attention_heads=16 if bench else 2,
            image_size=224 if bench else 28,
            patch_size=14,
            projection_dim=16,
        )
    )
    crop = 224 if bench else 28
    image_processor = CLIPImageProcessor(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop})
    z = 16 if bench else 4
    vae = AutoencoderKLWan(
        base_dim=96 if bench else 8,
        z_dim=z,
        dim_mult=[1, 2, 4, 4] if bench else [1, 2, 2, 2],
        num_res_blocks=2 if bench else 1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1 * (i % 5) - 0.2 for i in range(z)],
        latents_std=[1.0 + 0.25 * (i % 4) for i in range(z)],
    )
    transformer = WanAnimateTransformer3DModel(
        **random_dit_config(preset, z_dim=z, text_dim=text_dim, image_dim=image_dim),
        latent_channels=z,
        **(
            {}
            if bench
            else dict(
                motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16},
                motion_encoder_size=16,
                motion_style_dim=16,
                motion_dim=4,
                motion_encoder_dim=16,
                face_encoder_hidden_dim=16,
                face_encoder_num_heads=2,
                motion_encoder_batch_size=4,
            )
        ),
        inject_face_latents_blocks=1 if bench else 2,
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": scheduler,
        "image_processor": image_processor,
        "image_encoder": image_encoder,
        "transformer": transformer,
    }

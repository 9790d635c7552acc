"""UniAnimate-DiT: pose-driven human animation on Wan2.1-I2V-14B (``../shared/design/UNIANIMATE.md``).

No library has it: the DiT is diffusers' ``WanTransformer3DModel`` (I2V) with UniAnimate's LoRA
merged the way the original merges it (``W += B @ A``, no alpha / rank factor), and the two pose
encoders are the original's ``nn.Sequential`` modules, built from the checkpoint. Sources: a
diffusers-format ``WanImageToVideoPipeline`` folder (``--model``) and UniAnimate's own checkpoint
(``--checkpoint``: the flat state dict the original saves with ``torch.save``, or the same keys
in a ``.safetensors`` file).

This release exports the components and proves them (every corner; the merged DiT against
diffusers' own Wan LoRA loader); the sampler (the original's own loop, long video, TeaCache)
comes next.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import wan_vae
from zoo.checkpoint import is_lfs_pointer, pipeline_modules, random_preset, require_folder, write_random_marker
from zoo.contract import (
    Axis,
    Component,
    Dim,
    Envelope,
    Family,
    Modules,
    Precision,
    Range,
    Reference,
    Source,
    SourceRole,
    Sources,
    TensorSpec,
    source_of,
    specs,
    token_ids,
)
from zoo.errors import CheckpointError
from zoo.wan_animate import TEXT_LENGTH, CLIPVisionExport, UMT5Export

PIPELINE = "WanImageToVideoPipeline"
RANDOM_CHECKPOINT = "unianimate.ckpt"
POSE_PREFIX = "dwpose_embedding."
REF_POSE_PREFIX = "randomref_embedding_pose."
# the original's LoRA targets (peft names in DiffSynth's WanModel) -> diffusers' WanTransformer3DModel
LORA_TARGETS = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v", "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
LORA_KEY = re.compile(r"^pipe\.dit\.blocks\.(\d+)\.(.+)\.lora_([AB])\.default\.weight$")
# strides of the pose guider's convolutions, by Sequential index (UNIANIMATE.md section 4.5)
POSE_STRIDES = {0: 1, 2: 1, 4: 1, 6: (1, 2, 2), 8: 2, 10: 2, 12: (1, 2, 2)}
REF_POSE_STRIDES = {0: 1, 2: 1, 4: 1, 6: 2, 8: 2, 10: 2}


# --------------------------------------------------------------------------------------
# The checkpoint: LoRA merged into the DiT, pose encoders built from it
# --------------------------------------------------------------------------------------


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """UniAnimate's flat state dict: ``torch.save`` format (loaded with ``weights_only=True``) or safetensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--checkpoint {path} does not exist; expected UniAnimate-DiT's checkpoint "
                              f"(a .ckpt / .pt state dict or a .safetensors file)")
    if path.stat().st_size == 0 or is_lfs_pointer(path):
        raise CheckpointError(f"--checkpoint {path} is empty or a git-LFS pointer, not the weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch / safetensors raise many types for a bad file
        raise CheckpointError(f"--checkpoint {path} is not a readable state dict ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--checkpoint {path} is not a flat {{name: tensor}} state dict")
    return state


def lora_pairs(state: Mapping[str, torch.Tensor], transformer: nn.Module, path: Path) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(diffusers weight name, A, B)`` for every LoRA pair, checked against the transformer:
    names, block indices, ranks and shapes; errors name the key."""
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    params = dict(transformer.named_parameters())
    for key, value in state.items():
        if key.startswith((POSE_PREFIX, REF_POSE_PREFIX)):
            continue
        m = LORA_KEY.match(key)
        if m is None or m.group(2) not in LORA_TARGETS:
            raise CheckpointError(f"--checkpoint {path}: key {key!r} is neither a UniAnimate LoRA key "
                                  f"(pipe.dit.blocks.N.<module>.lora_A/B.default.weight) nor a pose-encoder key")
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = value
    if not pairs:
        raise CheckpointError(f"--checkpoint {path} holds no LoRA keys (pipe.dit.blocks.N....lora_A.default.weight)")
    out = []
    for (block, module), ab in sorted(pairs.items()):
        key = f"pipe.dit.blocks.{block}.{module}.lora_{{A,B}}.default.weight"
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"--checkpoint {path}: {key} has lora_{''.join(ab)} without its pair")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"--checkpoint {path}: {key}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                                  f"have different ranks")
        name = f"blocks.{block}.{LORA_TARGETS[module]}.weight"
        if name not in params:
            raise CheckpointError(f"--checkpoint {path}: {key} names block {block}, which this transformer (with "
                                  f"{len(transformer.blocks)} blocks) lacks: a checkpoint for another base model")
        if params[name].shape != (b.shape[0], a.shape[1]):
            raise CheckpointError(f"--checkpoint {path}: {key} is a {b.shape[0]}x{a.shape[1]} update, the weight "
                                  f"{name} is {tuple(params[name].shape)}: a checkpoint for another base model")
        out.append((name, a, b))
    return out


def merge_lora(transformer: nn.Module, pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> None:
    """``W <- W + B @ A`` (the original's merge: alpha 1, no alpha / rank factor), in the weight's dtype."""
    params = dict(transformer.named_parameters())
    with torch.no_grad():
        for name, a, b in pairs:
            w = params[name]
            w.add_((b.to(torch.float32) @ a.to(torch.float32)).to(w.dtype))


def _pose_module(state: Mapping[str, torch.Tensor], prefix: str, strides: Mapping[int, Any], conv: type, path: Path) -> nn.Sequential:
    """The original's pose guider: convolutions at ``strides``' indices with SiLU between, their
    widths and kernels read from the checkpoint."""
    layers: list[nn.Module] = []
    last = max(strides)
    for index, stride in sorted(strides.items()):
        weight, bias = state.get(f"{prefix}{index}.weight"), state.get(f"{prefix}{index}.bias")
        if weight is None or bias is None:
            missing = f"{prefix}{index}.weight" if weight is None else f"{prefix}{index}.bias"
            raise CheckpointError(f"--checkpoint {path} lacks the pose-encoder key {missing!r}")
        kernel = tuple(weight.shape[2:])
        padding = 0 if index == last and conv is nn.Conv3d else tuple(k // 2 for k in kernel)
        layer = conv(weight.shape[1], weight.shape[0], kernel, stride=stride, padding=padding)
        layer.load_state_dict({"weight": weight, "bias": bias})
        layers.append(layer)
        if index != last:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers).float().eval().requires_grad_(False)


def pose_encoders(state: Mapping[str, torch.Tensor], path: Path) -> tuple[nn.Sequential, nn.Sequential]:
    """``dwpose_embedding`` (Conv3d guider) and ``randomref_embedding_pose`` (Conv2d) from the checkpoint."""
    return (_pose_module(state, POSE_PREFIX, POSE_STRIDES, nn.Conv3d, path),
            _pose_module(state, REF_POSE_PREFIX, REF_POSE_STRIDES, nn.Conv2d, path))


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


class UniAnimateTransformerExport(nn.Module):
    """``WanTransformer3DModel.forward`` (I2V) with the pose features added to the patch tokens
    right after patchify (the original's ``add_condition``); the CFG negative branch passes zeros.
    The timestep arrives as float32 ``(B,)``."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor, pose_features: torch.Tensor) -> torch.Tensor:
        m = self.transformer
        batch, _, frames, height, width = hidden_states.shape  # (B, 36, T, h, w)
        p_t, p_h, p_w = m.config.patch_size
        rotary_emb = m.rope(hidden_states)
        x = m.patch_embedding(hidden_states).flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + pose_features.flatten(2).transpose(1, 2)  # (B, D, T, h/2, w/2) -> (B, N, D)
        temb, timestep_proj, context, context_image = m.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=None)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        context = torch.cat([context_image, context], dim=1)
        for block in m.blocks:
            x = block(x, context, timestep_proj, rotary_emb)
        shift, scale = (m.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (m.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = m.proj_out(x)
        x = x.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def _text_encoder_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"last_hidden_state": ref.module("text_encoder")(feeds["input_ids"], feeds["attention_mask"]).last_hidden_state}


def _image_encoder_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = ref.module("image_encoder")(pixel_values=feeds["pixel_values"], output_hidden_states=True)
    return {"image_embeds": out.hidden_states[-2]}


def _pose_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original's lines: ``dwpose_embedding(cat([P[:,:,:1].repeat(1,1,3,1,1), P], 2) / 255).to(bf16)``."""
    p = feeds["pose_frames"]
    out = ref.module("pose_encoder")(torch.cat([p[:, :, :1].repeat(1, 1, 3, 1, 1), p], dim=2) / 255)
    return {"pose_features": out.to(torch.bfloat16).float()}


def _ref_pose_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"ref_pose_features": ref.module("ref_pose_encoder")(feeds["ref_pose"] / 255).to(torch.bfloat16).float()}


def _transformer_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' own forward, the pose tokens added by a hook on ``patch_embedding``."""
    m = ref.module("transformer")
    pose = feeds["pose_features"]
    handle = m.patch_embedding.register_forward_hook(lambda mod, args, out: out + pose)
    try:
        out = m(feeds["hidden_states"], feeds["timestep"], feeds["encoder_hidden_states"],
                encoder_hidden_states_image=feeds["encoder_hidden_states_image"], return_dict=False)[0]
    finally:
        handle.remove()
    return {"noise_pred": out}


# --------------------------------------------------------------------------------------
# Dims: the source dims are latent frames and the pose-token grid (H/16, W/16)
# --------------------------------------------------------------------------------------


def _grid(env: Envelope, ref: Reference) -> dict[str, Dim]:
    t = env["frames"]
    latent = Dim.of_range("latent_frames", Range(*((v - 1) // 4 + 1 for v in (t.min, t.opt, t.max))))
    gh = Dim.of_range("grid_height", env["height"].scaled(1, 16))
    gw = Dim.of_range("grid_width", env["width"].scaled(1, 16))
    return {
        "batch": Dim.static("batch", 1), "latent_frames": latent, "grid_height": gh, "grid_width": gw,
        "pose_frames": Dim.derived("pose_frames", latent, scale=4, offset=-3),
        "latent_height": Dim.derived("latent_height", gh, scale=2), "latent_width": Dim.derived("latent_width", gw, scale=2),
        "height": Dim.derived("height", gh, scale=16), "width": Dim.derived("width", gw, scale=16),
    }


def _pose_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return {**_grid(env, ref), "pose_dim": Dim.static("pose_dim", _pose_width(ref))}


def _ref_pose_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    channels = ref.module("ref_pose_encoder")[-1].out_channels  # the I2V conditioning: 4 mask + z latent channels
    return {**_grid(env, ref), "ref_pose_channels": Dim.static("ref_pose_channels", channels)}


def _transformer_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    cfg = ref.config("transformer")
    image = ref.config("image_encoder")
    return {
        **_grid(env, ref),
        "in_channels": Dim.static("in_channels", cfg.in_channels),
        "out_channels": Dim.static("out_channels", cfg.out_channels),
        "inner_dim": Dim.static("inner_dim", cfg.num_attention_heads * cfg.attention_head_dim),
        "text_length": Dim.static("text_length", TEXT_LENGTH), "text_dim": Dim.static("text_dim", cfg.text_dim),
        "image_tokens": Dim.static("image_tokens", (image.image_size // image.patch_size) ** 2 + 1),
        "image_dim": Dim.static("image_dim", cfg.image_dim),
    }


def _text_encoder_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return {"batch": Dim.static("batch", 1), "text_length": Dim.static("text_length", TEXT_LENGTH),
            "text_dim": Dim.static("text_dim", ref.config("text_encoder").d_model)}


def _image_encoder_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    cfg = ref.config("image_encoder")
    return {"batch": Dim.static("batch", 1), "image_size": Dim.static("image_size", cfg.image_size),
            "image_tokens": Dim.static("image_tokens", (cfg.image_size // cfg.patch_size) ** 2 + 1),
            "image_dim": Dim.static("image_dim", cfg.hidden_size)}


def _vae_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return wan_vae.vae_dims(Dim.static("batch", 1), env, ref)


def _pose_width(ref: Reference) -> int:
    return ref.module("pose_encoder")[-1].out_channels


def _pose_pixels(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=gen).float()  # rendered pose frames, 0..255


# --------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------


class UniAnimateDiT(Family):
    name = "unianimate-dit"
    description = "UniAnimate-DiT on Wan2.1-I2V (umT5, CLIP vision, pose encoders, merged DiT, Wan VAE chunks); sampler next release"
    variants = ("default",)
    random_presets = ("tiny",)
    source_roles = (SourceRole("checkpoint", "UniAnimate-DiT's checkpoint (.ckpt state dict or .safetensors): LoRA and pose encoders.",
                               kind="file"),)
    axis_help = {
        "height": "MIN:OPT:MAX video height in pixels (multiple of 16).",
        "width": "MIN:OPT:MAX video width in pixels (multiple of 16).",
        "frames": "MIN:OPT:MAX pixel frames per clip or long-video window, each 4k+1.",
    }

    components = (
        Component(
            name="text_encoder", kind="text_encoder", module="text_encoder",
            inputs=specs(TensorSpec("input_ids", "int64", ("batch", "text_length"), sample=token_ids),
                         TensorSpec("attention_mask", "int64", ("batch", "text_length"), sample="mask")),
            outputs=specs(TensorSpec("last_hidden_state", "float32", ("batch", "text_length", "text_dim"))),
            dims=_text_encoder_dims, wrapper=lambda ref: UMT5Export(ref.module("text_encoder")),
            reference=_text_encoder_reference,
            precision=Precision(keep_fp32=("DenseReluDense.wo", "layer_norm"), note="T5 feed-forward and norms in fp32"),
        ),
        Component(
            name="image_encoder", kind="image_encoder", module="image_encoder",
            inputs=specs(TensorSpec("pixel_values", "float32", ("batch", 3, "image_size", "image_size"))),
            outputs=specs(TensorSpec("image_embeds", "float32", ("batch", "image_tokens", "image_dim"))),
            dims=_image_encoder_dims, wrapper=lambda ref: CLIPVisionExport(ref.module("image_encoder")),
            reference=_image_encoder_reference, precision=Precision(keep_fp32=("*",), note="CLIP runs in fp32 (original)"),
        ),
        Component(
            name="pose_encoder", kind="image_encoder", module="pose_encoder",
            inputs=specs(TensorSpec("pose_frames", "float32", ("batch", 3, "pose_frames", "height", "width"), sample=_pose_pixels)),
            outputs=specs(TensorSpec("pose_features", "float32", ("batch", "pose_dim", "latent_frames", "grid_height", "grid_width"))),
            dims=_pose_dims, wrapper=lambda ref: PoseEncoderExport(ref.module("pose_encoder")),
            reference=_pose_reference, precision=Precision(keep_fp32=("*",), note="fp32 compute, bf16-rounded output (original)"),
        ),
        Component(
            name="ref_pose_encoder", kind="image_encoder", module="ref_pose_encoder",
            inputs=specs(TensorSpec("ref_pose", "float32", ("batch", 3, "height", "width"), sample=_pose_pixels)),
            outputs=specs(TensorSpec("ref_pose_features", "float32", ("batch", "ref_pose_channels", "latent_height", "latent_width"))),
            dims=_ref_pose_dims, wrapper=lambda ref: RefPoseEncoderExport(ref.module("ref_pose_encoder")),
            reference=_ref_pose_reference, precision=Precision(keep_fp32=("*",), note="fp32 compute, bf16-rounded output (original)"),
        ),
        Component(
            name="transformer", kind="denoiser", module="transformer",
            inputs=specs(
                TensorSpec("hidden_states", "float32", ("batch", "in_channels", "latent_frames", "latent_height", "latent_width")),
                TensorSpec("timestep", "float32", ("batch",), sample="timestep"),
                TensorSpec("encoder_hidden_states", "float32", ("batch", "text_length", "text_dim")),
                TensorSpec("encoder_hidden_states_image", "float32", ("batch", "image_tokens", "image_dim")),
                TensorSpec("pose_features", "float32", ("batch", "inner_dim", "latent_frames", "grid_height", "grid_width")),
            ),
            outputs=specs(TensorSpec("noise_pred", "float32", ("batch", "out_channels", "latent_frames", "latent_height", "latent_width"))),
            dims=_transformer_dims, wrapper=lambda ref: UniAnimateTransformerExport(ref.module("transformer")),
            reference=_transformer_reference,
            precision=Precision(keep_fp32=("norm", "condition_embedder", "scale_shift_table", "rope"),
                                note="norms, modulation, timestep and RoPE embeddings in fp32"),
        ),
        *wan_vae.chunk_components(_vae_dims),
    )

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
            raise CheckpointError(f"{source / 'model_index.json'} names no {', '.join(missing)}; expected a "
                                  f"Wan2.1-I2V {PIPELINE} folder")
        state = read_checkpoint(checkpoint.path)
        pose, ref_pose = pose_encoders(state, checkpoint.path)
        base = found["transformer"][0]

        def transformer() -> nn.Module:
            model = base()
            merge_lora(model, lora_pairs(state, model, checkpoint.path))
            return model

        loaders = {k: v[0] for k, v in found.items()}
        loaders.update(transformer=transformer, pose_encoder=lambda: pose, ref_pose_encoder=lambda: ref_pose)
        ref = Reference(self.name, "default", tuple(sources),
                        Modules(loaders, {k: v[1] for k, v in found.items() if v[1]}))
        wan_vae.check_vae(ref)
        if ref.config("transformer").image_dim is None:
            raise CheckpointError(f"{source / 'transformer'} is a text-to-video WanTransformer3DModel (no image_dim): "
                                  f"UniAnimate-DiT is built on Wan2.1-I2V")
        cfg = ref.config("transformer")
        if _pose_width(ref) != cfg.num_attention_heads * cfg.attention_head_dim:
            raise CheckpointError(f"--checkpoint {checkpoint.path}: the pose encoder outputs {_pose_width(ref)} channels, "
                                  f"the transformer is {cfg.num_attention_heads * cfg.attention_head_dim} wide: a "
                                  f"checkpoint for another base model")
        if ref_pose[-1].out_channels != 4 + ref.config("vae").z_dim:
            raise CheckpointError(f"--checkpoint {checkpoint.path}: the reference-pose encoder outputs "
                                  f"{ref_pose[-1].out_channels} channels, the I2V conditioning has {4 + ref.config('vae').z_dim}")
        return ref

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        """A random Wan2.1-I2V folder with a random UniAnimate checkpoint (original format) inside it."""
        from diffusers import WanImageToVideoPipeline

        variant = self.random_choice(variant, preset)
        parts = _random_parts(seed)
        WanImageToVideoPipeline(**parts).save_pretrained(dest)
        torch.save(random_checkpoint(parts["transformer"], z_dim=parts["vae"].config.z_dim, seed=seed + 1),
                   Path(dest) / RANDOM_CHECKPOINT)
        write_random_marker(Path(dest), family=self.name, variant=variant, preset=preset, seed=seed)
        return Path(dest)

    def write_random_sources(self, dest: Path, *, preset: str = "tiny", seed: int = 0) -> tuple[Source, ...]:
        """The documented layout: a random Wan2.1-I2V folder and, beside it, the UniAnimate checkpoint."""
        dest = Path(dest)
        model = self.build_random(dest / "wan-i2v", preset=preset, seed=seed)
        checkpoint = (model / RANDOM_CHECKPOINT).rename(dest / RANDOM_CHECKPOINT)
        return (Source("model", model), Source("checkpoint", checkpoint))


def random_checkpoint(transformer: nn.Module, *, z_dim: int, rank: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A UniAnimate checkpoint of random weights in the original's format for ``transformer``."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    params = dict(transformer.named_parameters())
    for block in range(len(transformer.blocks)):
        for original, ours in LORA_TARGETS.items():
            out_features, in_features = params[f"blocks.{block}.{ours}.weight"].shape
            prefix = f"pipe.dit.blocks.{block}.{original}"
            state[f"{prefix}.lora_A.default.weight"] = torch.randn(rank, in_features, generator=gen) * 0.1
            state[f"{prefix}.lora_B.default.weight"] = torch.randn(out_features, rank, generator=gen) * 0.1
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    shapes = {0: (16, 3, 3, 3, 3), 2: (16, 16, 3, 3, 3), 4: (16, 16, 3, 3, 3), 6: (16, 16, 3, 3, 3), 8: (16, 16, 3, 3, 3),
              10: (16, 16, 3, 3, 3), 12: (inner, 16, 1, 2, 2)}
    for index, shape in shapes.items():
        state[f"{POSE_PREFIX}{index}.weight"] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        state[f"{POSE_PREFIX}{index}.bias"] = torch.randn(shape[0], generator=gen) * 0.01
    for index in REF_POSE_STRIDES:
        shape = (4 + z_dim if index == 10 else 16, 3 if index == 0 else 16, 3, 3)  # 4 mask + z latent channels
        state[f"{REF_POSE_PREFIX}{index}.weight"] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        state[f"{REF_POSE_PREFIX}{index}.bias"] = torch.randn(shape[0], generator=gen) * 0.01
    return state


def _random_parts(seed: int) -> dict[str, Any]:
    """A tiny random Wan2.1-I2V pipeline (the Wan-Animate tiny parts, with an I2V DiT)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from zoo.wan_animate import _random_parts as wan_parts

    parts = wan_parts("tiny", seed)
    heads, head_dim, z = 2, 12, parts["vae"].config.z_dim
    parts["transformer"] = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=z + 20,
        out_channels=z, text_dim=parts["text_encoder"].config.d_model, freq_dim=32, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, image_dim=parts["image_encoder"].config.hidden_size, added_kv_proj_dim=heads * head_dim,
        rope_max_seq_len=32)
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=5.0)
    return parts


FAMILY = UniAnimateDiT()

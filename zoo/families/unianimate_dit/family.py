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
from collections.abc import Callable, Mapping
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
    Range,
    Reference,
    Request,
    RequestContext,
    Rounding,
    Source,
    SourceRole,
    Sources,
    TensorSpec,
    Transform,
    WeightlessModule,
    source_of,
    specs,
)
from zoo.errors import CheckpointError, InputError
from zoo.infra.checkpoint import is_lfs_pointer, pipeline_modules, random_preset, require_folder, write_random_marker
from zoo.models import wan_vae
from zoo.models.wan_dit import (
    DIT_PRECISION,
    condition_dims,
    conditions,
    output_head,
    random_wan_parts,
    time_embedding,
)
from zoo.models.wan_encoders import IMAGE_ENCODER, TEXT_ENCODER, TEXT_LENGTH

PIPELINE = "WanImageToVideoPipeline"
RANDOM_CHECKPOINT = "unianimate.ckpt"
POSE_PREFIX = "dwpose_embedding."
REF_POSE_PREFIX = "randomref_embedding_pose."
# the original's LoRA targets (peft names in DiffSynth's WanModel) -> diffusers' WanTransformer3DModel
LORA_TARGETS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
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
        raise CheckpointError(
            f"--checkpoint {path} does not exist; expected UniAnimate-DiT's checkpoint "
            f"(a .ckpt / .pt state dict or a .safetensors file)"
        )
    if path.stat().st_size == 0 or is_lfs_pointer(path):
        raise CheckpointError(f"--checkpoint {path} is empty or a git-LFS pointer, not the weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch / safetensors raise many types for a bad file
        raise CheckpointError(
            f"--checkpoint {path} is not a readable state dict ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--checkpoint {path} is not a flat {{name: tensor}} state dict")
    return state


def lora_pairs(
    state: Mapping[str, torch.Tensor], transformer: nn.Module, path: Path
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(diffusers weight name, A, B)`` for every LoRA pair, checked against the transformer:
    names, block indices, ranks and shapes; errors name the key."""
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    params = dict(transformer.named_parameters())
    for key, value in state.items():
        if key.startswith((POSE_PREFIX, REF_POSE_PREFIX)):
            continue
        m = LORA_KEY.match(key)
        if m is None or m.group(2) not in LORA_TARGETS:
            raise CheckpointError(
                f"--checkpoint {path}: key {key!r} is neither a UniAnimate LoRA key "
                f"(pipe.dit.blocks.N.<module>.lora_A/B.default.weight) nor a pose-encoder key"
            )
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
            raise CheckpointError(
                f"--checkpoint {path}: {key}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} have different ranks"
            )
        name = f"blocks.{block}.{LORA_TARGETS[module]}.weight"
        if name not in params:
            raise CheckpointError(
                f"--checkpoint {path}: {key} names block {block}, which this transformer (with "
                f"{len(transformer.blocks)} blocks) lacks: a checkpoint for another base model"
            )
        if params[name].shape != (b.shape[0], a.shape[1]):
            raise CheckpointError(
                f"--checkpoint {path}: {key} is a {b.shape[0]}x{a.shape[1]} update, the weight "
                f"{name} is {tuple(params[name].shape)}: a checkpoint for another base model"
            )
        out.append((name, a, b))
    return out


def lora_delta(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``B @ A`` in the weight's dtype: the original's merge (alpha 1, no alpha / rank factor)."""
    return (b.to(torch.float32) @ a.to(torch.float32)).to(weight.dtype)


def merge_lora(transformer: nn.Module, pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> None:
    """``W <- W + B @ A`` for every pair, in place."""
    params = dict(transformer.named_parameters())
    with torch.no_grad():
        for name, a, b in pairs:
            w = params[name]
            w.add_(lora_delta(w, a, b))


def merged_weights(base: WeightlessModule, state: Mapping[str, torch.Tensor], path: Path) -> WeightlessModule:
    """The weightless transformer with each LoRA-merged weight declared as computed, one at a
    time, from its stored tensor (for a weightless export)."""

    def merged(name: str, a: torch.Tensor, b: torch.Tensor) -> Transform:
        def fn(read: Any) -> torch.Tensor:
            w = read(name)
            return w + lora_delta(w, a, b)

        return Transform(f"{name} + B @ A (UniAnimate LoRA of {path.name})", fn)

    def build() -> nn.Module:
        return base.build()

    pairs = lora_pairs(state, base.build(), path)
    return WeightlessModule(build, base.folders, {name: merged(name, a, b) for name, a, b in pairs})


def _pose_module(
    state: Mapping[str, torch.Tensor], prefix: str, strides: Mapping[int, Any], conv: type, path: Path
) -> nn.Sequential:
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
    return (
        _pose_module(state, POSE_PREFIX, POSE_STRIDES, nn.Conv3d, path),
        _pose_module(state, REF_POSE_PREFIX, REF_POSE_STRIDES, nn.Conv2d, path),
    )


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


def _call_graph(runners, name: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return runners[name](feeds)


GRAPHS = PipelineSlot(
    "graphs",
    "vae",
    {
        "forward": _call_graph,
        "vae_encode": lambda runners, x: wan_vae.encode(runners, x),
        "vae_decode": lambda runners, z: wan_vae.decode(runners, z, clamp=False),
        "image_size": lambda runners: runners["image_encoder"].record.dims["image_size"].min,
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
            precision=Precision(keep_fp32=("*",), note="fp32 compute, bf16-rounded output (original)"),
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
            precision=Precision(keep_fp32=("*",), note="fp32 compute, bf16-rounded output (original)"),
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
        Option("pose_video", "Rendered pose frames (MP4, GIF or a folder of frames).", type="path", required=True),
        Option("ref_pose", "The reference image's rendered pose (an image).", type="path", required=True),
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
        poses = load_video(options["pose_video"], option="--pose-video")
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
                    f"use --long-video for longer ones"
                )
            kwargs["pose_video"] = poses
        return Request(
            "UniAnimateLoop",
            kwargs,
            output_format="video",
            fps=options["fps"],
            shape_sources={
                "frames": f"--pose-video {options['pose_video']} frames"
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
        ref = Reference(self.name, "default", tuple(sources), modules, pipeline="UniAnimateLoop")
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
    shapes = {
        0: (16, 3, 3, 3, 3),
        2: (16, 16, 3, 3, 3),
        4: (16, 16, 3, 3, 3),
        6: (16, 16, 3, 3, 3),
        8: (16, 16, 3, 3, 3),
        10: (16, 16, 3, 3, 3),
        12: (inner, 16, 1, 2, 2),
    }
    for index, shape in shapes.items():
        state[f"{POSE_PREFIX}{index}.weight"] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        state[f"{POSE_PREFIX}{index}.bias"] = torch.randn(shape[0], generator=gen) * 0.01
    for index in REF_POSE_STRIDES:
        shape = (4 + z_dim if index == 10 else 16, 3 if index == 0 else 16, 3, 3)  # 4 mask + z latent channels
        state[f"{REF_POSE_PREFIX}{index}.weight"] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        state[f"{REF_POSE_PREFIX}{index}.bias"] = torch.randn(shape[0], generator=gen) * 0.01
    return state


def _random_parts(preset: str, seed: int) -> dict[str, Any]:
    """A random Wan2.1-I2V pipeline: tiny, or Wan2.1-I2V-14B's widths at one block (bench); the
    encoders and VAE are the Wan random parts of the same preset (:func:`random_wan_parts`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    bench = preset == "bench"
    parts = random_wan_parts(preset, seed)
    heads, head_dim = (40, 128) if bench else (2, 12)
    z = parts["vae"].config.z_dim
    parts["transformer"] = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=2 * z + 4,
        out_channels=z,
        text_dim=parts["text_encoder"].config.d_model,
        freq_dim=256 if bench else 32,
        ffn_dim=13824 if bench else 32,
        num_layers=1 if bench else 2,
        cross_attn_norm=True,
        image_dim=parts["image_encoder"].config.hidden_size,
        added_kv_proj_dim=heads * head_dim,
        rope_max_seq_len=1024 if bench else 32,
    )
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=5.0)
    return parts


FAMILY = UniAnimateDiT()


# --------------------------------------------------------------------------------------
# The sampler: the original's loop (UNIANIMATE.md sections 4, 5, 7), written once for any backend
# --------------------------------------------------------------------------------------

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# TeaCache's rescaling polynomial for Wan2.1-I2V-14B-720P (the original's, highest power first)
TEACACHE_COEFFICIENTS = (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02)
TILE, TILE_STRIDE = (30, 52), (15, 26)  # the original's tiled decode, in latents


def clean_prompt(text: str) -> str:
    """The original's ``whitespace_clean(basic_clean(text))``: ftfy, double HTML unescape, one space."""
    import html

    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def flow_schedule(steps: int, shift: float = 5.0) -> torch.Tensor:
    """``FlowMatchScheduler(shift=5, sigma_min=0, extra_one_step=True)``: sigmas for each step, then 0."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return torch.cat([sigmas, torch.zeros(1)])


def flow_step(sample: torch.Tensor, velocity: torch.Tensor, sigmas: torch.Tensor, i: int) -> torch.Tensor:
    """The original's ``FlowMatchScheduler.step`` at step ``i``: ``x + v * (sigma_{i+1} - sigma_i)``
    (``sigmas`` from :func:`flow_schedule`, whose last entry is the final 0)."""
    return sample + velocity * (sigmas[i + 1] - sigmas[i])


def teacache_rescale(rel_l1: float) -> float:
    """TeaCache's polynomial (Wan2.1-I2V-14B-720P) applied to one rel-L1 distance of ``t_mod``."""
    import numpy as np

    return float(np.poly1d(TEACACHE_COEFFICIENTS)(rel_l1))


def teacache_distances(t_mods: list[torch.Tensor]) -> list[float]:
    """TeaCache's rescaled distance of each call from the previous one (none for the first):
    ``poly(mean|t_mod - prev| / mean|prev|)`` over the whole ``t_mod``, in its dtype."""
    return [
        teacache_rescale(float((cur - prev).abs().mean() / prev.abs().mean())) for prev, cur in zip(t_mods, t_mods[1:])
    ]


def teacache_plan(t_mods: list[torch.Tensor], threshold: float) -> list[bool]:
    """Which calls TeaCache computes (True) or skips: the first and last always compute; otherwise
    the distances accumulate, a call skips while the sum is below ``threshold`` and computes (and
    resets the sum) once it is not. They depend only on the timestep schedule, so the plan is made
    before sampling."""
    distances = teacache_distances(t_mods)
    plan, acc = [], 0.0
    for i in range(len(t_mods)):
        if i in (0, len(t_mods) - 1):
            compute, acc = True, 0.0
        else:
            acc += distances[i - 1]
            compute = acc >= threshold
            if compute:
                acc = 0.0
        plan.append(compute)
    return plan


def context_windows(latent_frames: int, size: int, overlap: int) -> list[list[int]]:
    """The original's windows (its context scheduler at step 0), the last one moved to the end."""
    if latent_frames < size:
        raise InputError(
            f"--long-video needs at least {size} latent frames ({4 * size - 3} pose frames) for one "
            f"window of --context-frames {size}; the pose video gives {latent_frames}"
        )
    windows = [
        [(j + e) % latent_frames for e in range(size)] for j in range(0, latent_frames - overlap, size - overlap)
    ]
    windows[-1] = list(range(latent_frames - size, latent_frames))
    return windows


def long_video_step(
    latents: torch.Tensor,
    windows: list[list[int]],
    first: list[torch.Tensor],
    step_window: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One step of the original's long-video loop: window ``k``'s latents with its first two latent
    frames replaced by its private state ``first[k]`` are stepped by ``step_window(k, x)``; the
    private state becomes the stepped first two frames (``first`` is updated in place); the new
    latents average the stepped windows frame by frame (window 0 with all its frames, the others
    without their first two)."""
    counter = torch.zeros(1, 1, latents.shape[2], 1, 1, dtype=latents.dtype)
    acc = torch.zeros_like(latents)
    for k, win in enumerate(windows):
        x = latents[:, :, win].clone()
        x[:, :, :2] = first[k]
        x_next = step_window(k, x)
        kept = win if k == 0 else win[2:]
        counter[:, :, kept] += 1
        acc[:, :, kept] += x_next if k == 0 else x_next[:, :, 2:]
        first[k] = x_next[:, :, :2]
    return acc / counter


def _tile_mask(length: int, start_border: bool, end_border: bool, ramp: int) -> torch.Tensor:
    """The original's ``build_1d_mask``: 1, with ramps ``(1..ramp)/ramp`` written over the first and
    (last, so it wins where they meet) the final ``ramp`` entries of an edge that is not the image's.
    A tile is never shorter than its ramp (``tiled_decode``'s origins guarantee it)."""
    mask = torch.ones(length)
    steps = torch.arange(1, ramp + 1, dtype=torch.float32) / ramp
    if not start_border:
        mask[:ramp] = steps
    if not end_border:
        mask[-ramp:] = steps.flip(0)
    return mask


def tiled_decode(
    decode: Any, z: torch.Tensor, scale: int, tile: tuple[int, int] = TILE, stride: tuple[int, int] = TILE_STRIDE
) -> torch.Tensor:
    """The original's tiled decode (``WanVideoVAE.tiled_decode``): tiles of ``tile`` latents every
    ``stride`` (the original's 30x52 every 15x26 by default), each decoded unclamped and blended with
    linear ramps on the edges that are not the image's, then clamped."""
    _, _, _, height, width = z.shape
    (th, tw), (sh, sw) = tile, stride
    rows = [h for h in range(0, height, sh) if not (h - sh >= 0 and h - sh + th >= height)]
    cols = [w for w in range(0, width, sw) if not (w - sw >= 0 and w - sw + tw >= width)]
    values = weight = None
    for h in rows:
        for w in cols:
            tile = decode(z[:, :, :, h : h + th, w : w + tw])
            hh, ww = tile.shape[3], tile.shape[4]
            mask = torch.minimum(
                _tile_mask(hh, h == 0, h + th >= height, (th - sh) * scale)[:, None],
                _tile_mask(ww, w == 0, w + tw >= width, (tw - sw) * scale)[None, :],
            )
            if values is None:
                values = tile.new_zeros(*tile.shape[:3], height * scale, width * scale)
                weight = values.new_zeros(1, 1, 1, height * scale, width * scale)
            values[:, :, :, h * scale : h * scale + hh, w * scale : w * scale + ww] += tile * mask
            weight[:, :, :, h * scale : h * scale + hh, w * scale : w * scale + ww] += mask
    return (values / weight).clamp(-1.0, 1.0)


class _Output:
    def __init__(self, frames: Any) -> None:
        self.frames = frames


class UniAnimateLoop:
    """UniAnimate-DiT's inference on exported components (``graphs(name, feeds)``), short video or
    long video in windows, with CFG and TeaCache; the same loop on the torch backend is the reference."""

    def __init__(self, graphs: Any, tokenizer: Any) -> None:
        self.graphs, self.tokenizer = graphs, tokenizer
        self.progress = True
        self.calls = {"transformer": 0, "transformer_skip": 0}

    def set_progress_bar_config(self, disable: bool = False, **_: Any) -> None:
        self.progress = not disable

    def progress_bar(self, iterable: Any = None, total: int | None = None) -> Any:
        """The denoising loop's bar, as a diffusers pipeline makes it (``zoo serve`` reports its steps)."""
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc="sampling", leave=False, disable=not self.progress)

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if name in self.calls:
            self.calls[name] += 1
        return self.graphs(name, feeds)

    # -- conditions -------------------------------------------------------------------
    def _text(self, prompt: str) -> torch.Tensor:
        enc = self.tokenizer(
            clean_prompt(prompt),
            padding="max_length",
            max_length=TEXT_LENGTH,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = enc.input_ids, enc.attention_mask
        emb = self._run("text_encoder", {"input_ids": ids, "attention_mask": mask})["last_hidden_state"].clone()
        emb[:, int(mask.sum()) :] = 0
        return emb

    def _reference(self, image: Any, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP feature and the 20-channel I2V conditioning y (4 mask + z latent channels)."""
        import numpy as np

        x = torch.from_numpy(np.array(image.resize((width, height)), dtype=np.float32) * (2 / 255) - 1)
        x = x.permute(2, 0, 1)[None]  # (1, 3, H, W)
        size = self.graphs.image_size()
        pixels = torch.nn.functional.interpolate(x, (size, size), mode="bicubic", align_corners=False) * 0.5 + 0.5
        mean, std = torch.tensor(CLIP_MEAN)[None, :, None, None], torch.tensor(CLIP_STD)[None, :, None, None]
        clip = self._run("image_encoder", {"pixel_values": (pixels - mean) / std})["image_embeds"]
        h, w = height // 8, width // 8
        msk = torch.ones(1, frames, h, w)
        msk[:, 1:] = 0
        msk = torch.cat([msk[:, 0:1].repeat(1, 4, 1, 1), msk[:, 1:]], dim=1)
        msk = msk.view(1, (frames + 3) // 4, 4, h, w).transpose(1, 2)  # (1, 4, T, h, w)
        video = torch.cat([x.transpose(0, 1), torch.zeros(3, frames - 1, height, width)], dim=1)[None]
        z = self.graphs.vae_encode(video)[:, : self.graphs.config.z_dim]  # the mean
        mean_z, inv_std = self._latent_stats()
        return clip, torch.cat([msk, (z - mean_z) * inv_std], dim=1)

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.graphs.config
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        return mean, 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def _pose(self, frames: torch.Tensor) -> torch.Tensor:
        return self._run("pose_encoder", {"pose_frames": frames})["pose_features"]

    # -- one denoiser call (with TeaCache) ------------------------------------------------
    def _dit(self, latents, t, text, clip, y, pose, key, compute, residuals):
        hidden = torch.cat([latents, y], dim=1)
        if compute or key not in residuals:
            out = self._run(
                "transformer",
                {
                    "hidden_states": hidden,
                    "timestep": t,
                    "encoder_hidden_states": text,
                    "encoder_hidden_states_image": clip,
                    "pose_features": pose,
                },
            )
            residuals[key] = out["residual"]
            return out["noise_pred"]
        return self._run(
            "transformer_skip",
            {"hidden_states": hidden, "timestep": t, "pose_features": pose, "residual": residuals[key]},
        )["noise_pred"]

    def _velocity(self, x, t, cond, key, compute, residuals):
        text_pos, text_neg, clip, y, pose, cfg = cond
        v_pos = self._dit(x, t, text_pos, clip, y, pose, ("pos", key), compute, residuals)
        if cfg == 1.0:
            return v_pos
        v_neg = self._dit(x, t, text_neg, clip, y, torch.zeros_like(pose), ("neg", key), compute, residuals)
        return v_neg + cfg * (v_pos - v_neg)

    # -- the whole run -------------------------------------------------------------------
    def __call__(
        self,
        *,
        image,
        pose_video,
        ref_pose,
        prompt="",
        negative_prompt="",
        height,
        width,
        num_inference_steps=50,
        guidance_scale=1.5,
        long_video=False,
        context_frames=21,
        context_overlap=4,
        teacache=None,
        tiled=True,
        generator=None,
        output_type="np",
    ) -> _Output:

        pose = torch.from_numpy(_stack(pose_video)).permute(3, 0, 1, 2)[None].float()  # (1, 3, F, H, W) 0..255
        frames = pose.shape[2]
        latent_frames = (frames - 1) // 4 + 1
        z_dim = self.graphs.config.z_dim
        noise = torch.randn(
            (1, z_dim, latent_frames, height // 8, width // 8), generator=generator, dtype=torch.float32
        )
        if long_video:
            windows = context_windows(latent_frames, context_frames, context_overlap)
            first = [torch.randn((1, z_dim, 2, height // 8, width // 8), generator=generator) for _ in windows]
            window_frames = 4 * context_frames - 3
        else:
            windows, first, window_frames = [list(range(latent_frames))], None, frames
        text_pos = self._text(prompt)
        text_neg = self._text(negative_prompt) if guidance_scale != 1.0 else None
        clip, y = self._reference(image, window_frames, height, width)
        ref = self._run(
            "ref_pose_encoder", {"ref_pose": torch.from_numpy(_stack([ref_pose])[0]).permute(2, 0, 1)[None].float()}
        )
        y = y + ref["ref_pose_features"][:, :, None]
        poses = [self._pose(pose[:, :, 4 * win[0] : 4 * win[-1] + 1]) for win in windows]

        sigmas = flow_schedule(num_inference_steps)
        timesteps = [sigmas[i : i + 1] * 1000 for i in range(num_inference_steps)]
        plan = [True] * num_inference_steps
        if teacache is not None:
            plan = teacache_plan([self._run("time_embedding", {"timestep": t})["t_mod"] for t in timesteps], teacache)
        residuals: dict = {}
        latents = noise
        for i in self.progress_bar(range(num_inference_steps)):
            t = timesteps[i]
            if not long_video:
                v = self._velocity(
                    latents, t, (text_pos, text_neg, clip, y, poses[0], guidance_scale), 0, plan[i], residuals
                )
                latents = flow_step(latents, v, sigmas, i)
                continue

            def step_window(k: int, x: torch.Tensor, i: int = i, t: torch.Tensor = t) -> torch.Tensor:
                v = self._velocity(x, t, (text_pos, text_neg, clip, y, poses[k], guidance_scale), k, plan[i], residuals)
                return flow_step(x, v, sigmas, i)

            latents = long_video_step(latents, windows, first, step_window)
        mean_z, inv_std = self._latent_stats()
        z = latents / inv_std + mean_z
        decode = lambda part: self.graphs.vae_decode(part)  # noqa: E731 (unclamped chunks)
        video = tiled_decode(decode, z, 8) if tiled else decode(z).clamp(-1.0, 1.0)
        frames_out = ((video + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)  # (1, F, H, W, 3)
        return _Output(frames_out.cpu().numpy())


def _stack(images: list) -> Any:
    import numpy as np

    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])


def _bilinear() -> Any:
    from PIL import Image

    return Image.BILINEAR

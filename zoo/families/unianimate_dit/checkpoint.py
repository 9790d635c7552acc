"""UniAnimate-DiT's own checkpoint (``../shared/design/UNIANIMATE.md`` section 4): the flat state dict
the original saves (``torch.save``, or the same keys in a ``.safetensors`` file), its LoRA merged into
diffusers' ``WanTransformer3DModel`` the way the original merges it (``W += B @ A``, no alpha / rank
factor), the two pose encoders built from it, and a random checkpoint in the same format."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.contract import Transform, WeightlessModule
from zoo.errors import CheckpointError
from zoo.infra.checkpoint import is_lfs_pointer

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

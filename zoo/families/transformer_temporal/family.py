"""TransformerTemporalModel: attention over frames (the motion module of video UNets).

The library takes ``hidden_states (B*F, C, H, W)`` and ``num_frames=F`` as a Python int, which
a trace bakes in. The export wrapper takes ``(B, C, F, H, W)`` and derives F from the shape,
so frames stay a dynamic axis.

Variants (random weights): ``default`` (GroupNorm with 4 groups), ``single-group``
(``norm_num_groups=1``, the 5-D GroupNorm case TensorRT has had bugs with) and ``sinusoidal``
(AnimateDiff-style sinusoidal frame positions, at most 32 frames).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

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
    Sources,
    TensorSpec,
    specs,
)
from zoo.errors import CheckpointError
from zoo.infra.checkpoint import loading, random_preset, require_folder, write_random_marker


def _frames_first(video: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, C, F, H, W) -> ((B*F), C, H, W), batch-major as the library expects, and F."""
    batch, channels, frames, height, width = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width), frames


def _channels_first(x: torch.Tensor, frames: int) -> torch.Tensor:
    """((B*F), C, H, W) -> (B, C, F, H, W)."""
    _, channels, height, width = x.shape
    return x.reshape(-1, frames, channels, height, width).permute(0, 2, 1, 3, 4)


class TemporalTransformerExport(nn.Module):
    """The library model on a (B, C, F, H, W) video, frames derived from the shape."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x, frames = _frames_first(hidden_states)
        y = self.model(x, num_frames=frames, return_dict=False)[0]
        return _channels_first(y, frames)


def _reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    x, frames = _frames_first(feeds["hidden_states"])
    y = ref.module("transformer").forward(x, num_frames=int(frames), return_dict=False)[0]
    return {"sample": _channels_first(y, frames)}


def _dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return {
        "batch": Dim.of_range("batch", env["batch"]),
        "channels": Dim.static("channels", ref.config("transformer").in_channels),
        "frames": Dim.of_range("frames", env["frames"]),
        "height": Dim.of_range("height", env["height"]),
        "width": Dim.of_range("width", env["width"]),
    }


VARIANTS = {
    "default": {"norm_num_groups": 4},
    "single-group": {"norm_num_groups": 1},
    "sinusoidal": {"norm_num_groups": 4, "positional_embeddings": "sinusoidal", "num_positional_embeddings": 32},
}


class TransformerTemporal(Family):
    name = "transformer-temporal"
    description = "diffusers TransformerTemporalModel, frames as a dynamic axis"
    variants = tuple(VARIANTS)
    random_presets = ("tiny", "bench")

    components = (
        Component(
            name="transformer",
            tolerance="denoiser",
            module="transformer",
            inputs=specs(TensorSpec("hidden_states", "float32", ("batch", "channels", "frames", "height", "width"))),
            outputs=specs(TensorSpec("sample", "float32", ("batch", "channels", "frames", "height", "width"))),
            dims=_dims,
            wrapper=lambda ref: TemporalTransformerExport(ref.module("transformer")),
            reference=_reference,
            precision=Precision(keep_fp32=("norm",)),  # GroupNorm / LayerNorm in fp32
        ),
    )

    axis_help = {
        "batch": "MIN:OPT:MAX videos per call.",
        "frames": "MIN:OPT:MAX frames.",
        "height": "MIN:OPT:MAX feature-map rows.",
        "width": "MIN:OPT:MAX feature-map columns.",
    }

    def axes(self, ref: Reference) -> tuple[Axis, ...]:
        cfg = ref.config("transformer")
        ceiling = cfg.num_positional_embeddings if cfg.positional_embeddings else None
        if random_preset(ref.source) == "tiny":
            batch, frames, size = Range(1, 2, 2), Range(2, 8, 16), Range(4, 8, 16)
        else:  # motion-module feature maps of a 512x512 video: 64, 32, 16, 8
            batch, frames, size = Range(1, 2, 4), Range(2, 16, 32), Range(8, 32, 64)
        if ceiling:
            frames = Range(*(min(v, ceiling) for v in (frames.min, frames.opt, frames.max)))
        return (
            Axis("batch", batch, ceiling=64),  # videos per call
            Axis("frames", frames, ceiling=ceiling or 256, unit="frames"),
            Axis("height", size, ceiling=256, unit="feature-map rows"),
            Axis("width", size, ceiling=256, unit="feature-map columns"),
        )

    def load_sources(self, sources: Sources) -> Reference:
        from diffusers import TransformerTemporalModel

        source = sources[0].path
        require_folder(source, family=self.name, index_file="config.json", accepted=("TransformerTemporalModel",))
        with loading("TransformerTemporalModel", source):
            model = TransformerTemporalModel.from_pretrained(str(source), dtype=torch.float32)
        model.eval().requires_grad_(False)
        cfg = model.config
        if cfg.cross_attention_dim is not None and not cfg.double_self_attention:
            raise CheckpointError(
                f"{source}: this TransformerTemporalModel cross-attends to encoder_hidden_states "
                f"(cross_attention_dim={cfg.cross_attention_dim}); the transformer-temporal family exports "
                f"self-attention motion modules only"
            )
        if cfg.positional_embeddings:
            variant = "sinusoidal"
        else:
            variant = "single-group" if cfg.norm_num_groups == 1 else "default"
        return Reference(variant, tuple(sources), Modules({"transformer": lambda: model}))

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        from diffusers import TransformerTemporalModel

        variant = self.random_choice(variant, preset)
        torch.manual_seed(seed)
        bench = preset == "bench"  # AnimateDiff's first motion module: 320 channels, 8 heads x 40
        extra = dict(VARIANTS[variant])
        if bench and extra["norm_num_groups"] > 1:
            extra["norm_num_groups"] = 32
        model = TransformerTemporalModel(
            num_attention_heads=8 if bench else 2,
            attention_head_dim=40 if bench else 8,
            in_channels=320 if bench else 16,
            num_layers=1,
            activation_fn="geglu",
            double_self_attention=True,
            norm_elementwise_affine=True,
            **extra,
        )
        model.save_pretrained(dest)
        write_random_marker(Path(dest), family=self.name, variant=variant, preset=preset, seed=seed)
        return Path(dest)


FAMILY = TransformerTemporal()

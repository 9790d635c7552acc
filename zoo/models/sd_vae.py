"""The Stable Diffusion VAE (diffusers ``AutoencoderKL``) as exported components, shared by the
families that use it (PixArt, AnimateDiff): export wrappers, reference calls, dims, and the
pipeline slot whose ``encode`` / ``decode`` run the exported graphs.

The encoder graph returns the latent distribution's parameters (mean and log-variance); the
host samples it with the pipeline's own generator, so sampling is the library's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from zoo.contract import (
    Component,
    Dim,
    DimsFn,
    Envelope,
    PipelineSlot,
    Precision,
    Reference,
    Runners,
    TensorSpec,
    specs,
)
from zoo.errors import ArtifactError

# the SD VAE runs in fp32 (it overflows in fp16: force_upcast)
PRECISION = Precision(keep_fp32=("*",))
IMAGE_RANGE = (-1.0, 1.0)  # decoded pixels, as the pipelines post-process them


def vae_scale(ref: Reference) -> int:
    """Pixels per latent, as the pipelines compute it: 2 ** (len(block_out_channels) - 1)."""
    return 2 ** (len(ref.config("vae").block_out_channels) - 1)


def latent_dims(env: Envelope, ref: Reference, multiple_of: int) -> dict[str, Dim]:
    """Latent height and width from the envelope's pixel height and width."""
    scale = vae_scale(ref)
    return {
        "latent_height": Dim.of_range("latent_height", env["height"].scaled(1, scale), multiple_of),
        "latent_width": Dim.of_range("latent_width", env["width"].scaled(1, scale), multiple_of),
    }


def vae_dims(batch: Dim, env: Envelope, ref: Reference) -> dict[str, Dim]:
    """The dims of both VAE halves: pixels are derived from latents (8 x for SD)."""
    latent = latent_dims(env, ref, 1)
    scale = vae_scale(ref)
    channels = ref.config("vae").latent_channels
    return {
        batch.name: batch,
        **latent,
        "latent_channels": Dim.static("latent_channels", channels),
        "latent_parameters": Dim.static("latent_parameters", 2 * channels),
        "height": Dim.derived("height", latent["latent_height"], scale=scale),
        "width": Dim.derived("width", latent["latent_width"], scale=scale),
    }


class VaeEncoderExport(nn.Module):
    """``AutoencoderKL.encode``: pixels in [-1, 1] in, the latent distribution's parameters out."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae._encode(sample)


class VaeDecoderExport(nn.Module):
    """``AutoencoderKL.decode``: latents (already divided by the scaling factor) in, pixels out."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


def _encoder_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"latent_parameters": ref.module("vae").encode(feeds["sample"]).latent_dist.parameters}


def _decoder_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"sample": ref.module("vae").decode(feeds["latent"], return_dict=False)[0]}


def encoder_component(batch: str, dims: DimsFn) -> Component:
    """``vae_encoder``: ``(batch, 3, height, width)`` pixels -> ``(batch, 2C, h, w)`` distribution parameters."""
    return Component(
        name="vae_encoder",
        tolerance="vae_encoder",
        module="vae",
        inputs=specs(TensorSpec("sample", "float32", (batch, 3, "height", "width"), sample="pixels")),
        outputs=specs(
            TensorSpec("latent_parameters", "float32", (batch, "latent_parameters", "latent_height", "latent_width"))
        ),
        dims=dims,
        wrapper=lambda ref: VaeEncoderExport(ref.module("vae")),
        reference=_encoder_reference,
        precision=PRECISION,
    )


def decoder_component(batch: str, dims: DimsFn) -> Component:
    """``vae_decoder``: ``(batch, C, h, w)`` latents -> ``(batch, 3, height, width)`` pixels."""
    return Component(
        name="vae_decoder",
        tolerance="vae_decoder",
        module="vae",
        inputs=specs(TensorSpec("latent", "float32", (batch, "latent_channels", "latent_height", "latent_width"))),
        outputs=specs(TensorSpec("sample", "float32", (batch, 3, "height", "width"), value_range=IMAGE_RANGE)),
        dims=dims,
        wrapper=lambda ref: VaeDecoderExport(ref.module("vae")),
        reference=_decoder_reference,
        precision=PRECISION,
    )


def _call_encode(runners: Runners, x: torch.Tensor, return_dict: bool = True) -> Any:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    if "vae_encoder" not in runners:
        raise ArtifactError("this export has no vae_encoder, which this request needs; re-export without --component")
    posterior = DiagonalGaussianDistribution(runners["vae_encoder"]({"sample": x})["latent_parameters"])
    return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)


def _call_decode(runners: Runners, z: torch.Tensor, return_dict: bool = True, **_: Any) -> Any:
    from diffusers.models.autoencoders.vae import DecoderOutput

    sample = runners["vae_decoder"]({"latent": z})["sample"]
    return DecoderOutput(sample=sample) if return_dict else (sample,)


def vae_slot() -> PipelineSlot:
    """The pipeline's ``vae``: ``decode`` runs ``vae_decoder``, ``encode`` runs ``vae_encoder``
    when the export has it (image- and video-to-video)."""
    return PipelineSlot("vae", "vae", {"decode": _call_decode, "encode": _call_encode}, ("vae_decoder",))

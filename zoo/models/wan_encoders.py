"""The Wan text encoder (transformers ``UMT5EncoderModel``) and image encoder (``CLIPVisionModel``,
the hidden state Wan's pipelines use) as exported components, shared by the Wan families."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from zoo.contract import Component, Dim, Envelope, Precision, Reference, TensorSpec, specs, token_ids

TEXT_LENGTH = 512  # Wan's max_sequence_length; its attention splits image and text tokens by it


class UMT5Export(nn.Module):
    """``UMT5EncoderModel(input_ids, attention_mask).last_hidden_state``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask).last_hidden_state


class CLIPVisionExport(nn.Module):
    """``CLIPVisionModel(pixel_values, output_hidden_states=True).hidden_states[-2]``: the output of
    all blocks but the last, without the post-norm (what Wan's pipelines and the originals use)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]


def _text_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        "last_hidden_state": ref.module("text_encoder")(feeds["input_ids"], feeds["attention_mask"]).last_hidden_state
    }


def _image_reference(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = ref.module("image_encoder")(pixel_values=feeds["pixel_values"], output_hidden_states=True)
    return {"image_embeds": out.hidden_states[-2]}


def _text_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    """Prompts are encoded one call each (negative prompts in their own call)."""
    batch = env.get("batch")
    return {
        "batch": Dim("batch", 1, 1, batch.max) if batch else Dim.static("batch", 1),
        "text_length": Dim.static("text_length", TEXT_LENGTH),
        "text_dim": Dim.static("text_dim", ref.config("text_encoder").d_model),
    }


def image_tokens(ref: Reference) -> int:
    cfg = ref.config("image_encoder")
    return (cfg.image_size // cfg.patch_size) ** 2 + 1


def _image_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    cfg = ref.config("image_encoder")
    return {
        "batch": Dim.static("batch", 1),
        "image_size": Dim.static("image_size", cfg.image_size),
        "image_tokens": Dim.static("image_tokens", image_tokens(ref)),
        "image_dim": Dim.static("image_dim", cfg.hidden_size),
    }


TEXT_ENCODER = Component(
    name="text_encoder",
    tolerance="text_encoder",
    module="text_encoder",
    inputs=specs(
        TensorSpec("input_ids", "int64", ("batch", "text_length"), sample=token_ids),
        TensorSpec("attention_mask", "int64", ("batch", "text_length"), sample="mask"),
    ),
    outputs=specs(TensorSpec("last_hidden_state", "float32", ("batch", "text_length", "text_dim"))),
    dims=_text_dims,
    wrapper=lambda ref: UMT5Export(ref.module("text_encoder")),
    reference=_text_reference,
    precision=Precision(keep_fp32=("DenseReluDense.wo", "layer_norm")),  # T5 feed-forward and norms in fp32
)

IMAGE_ENCODER = Component(
    name="image_encoder",
    tolerance="image_encoder",
    module="image_encoder",
    inputs=specs(TensorSpec("pixel_values", "float32", ("batch", 3, "image_size", "image_size"))),
    outputs=specs(TensorSpec("image_embeds", "float32", ("batch", "image_tokens", "image_dim"))),
    dims=_image_dims,
    wrapper=lambda ref: CLIPVisionExport(ref.module("image_encoder")),
    reference=_image_reference,
    precision=Precision(keep_fp32=("*",)),  # CLIP vision in fp32 (as UniAnimate's original runs it)
)

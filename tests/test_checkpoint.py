"""Checkpoint folders: clear errors for missing, empty, foreign and LFS-pointer folders; loading."""

from __future__ import annotations

import json
import shutil

import pytest

from zoo.checkpoint import content_hash
from zoo.errors import CheckpointError
from zoo.registry import get_family


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint folder .*nope does not exist; expected a diffusers-format folder of"):
        get_family("pixart").load(tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint folder .* is empty"):
        get_family("pixart").load(tmp_path)


def test_folder_without_index(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="has no model_index.json"):
        get_family("pixart").load(tmp_path)


def test_folder_of_another_model(tiny_checkpoint):
    temporal = tiny_checkpoint("transformer-temporal")
    with pytest.raises(CheckpointError, match="has no model_index.json"):
        get_family("pixart").load(temporal)
    pixart = tiny_checkpoint("pixart")
    with pytest.raises(CheckpointError, match=r"has no config.json; expected .*TransformerTemporalModel"):
        get_family("transformer-temporal").load(pixart)
    with pytest.raises(CheckpointError, match=r"holds a PixArtTransformer2DModel checkpoint; expected .*TransformerTemporalModel"):
        get_family("transformer-temporal").load(pixart / "transformer")


def test_other_pipeline_class(tmp_path, tiny_checkpoint):
    folder = tmp_path / "sd"
    shutil.copytree(tiny_checkpoint("pixart"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"holds a StableDiffusionPipeline checkpoint; expected .*PixArtSigmaPipeline"):
        get_family("pixart").load(folder)


def test_lfs_pointer_weights(tmp_path, tiny_checkpoint):
    folder = tmp_path / "lfs"
    shutil.copytree(tiny_checkpoint("transformer-temporal"), folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(CheckpointError, match="is a git-LFS pointer, not the weights; run `git lfs pull`"):
        get_family("transformer-temporal").load(folder)


def test_truncated_weights_are_a_checkpoint_error(tmp_path, tiny_checkpoint):
    folder = tmp_path / "cut"
    shutil.copytree(tiny_checkpoint("transformer-temporal"), folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="could not load TransformerTemporalModel"):
        get_family("transformer-temporal").load(folder)


@pytest.mark.parametrize("variant", ["sigma", "alpha-1024", "alpha-512"])
def test_pixart_variant_detected_from_checkpoint(tiny_checkpoint, variant):
    ref = get_family("pixart").load(tiny_checkpoint("pixart", variant))
    assert ref.variant == variant
    assert ref.pipeline == {"sigma": "PixArtSigmaPipeline"}.get(variant, "PixArtAlphaPipeline")
    assert set(ref.modules) >= {"text_encoder", "transformer", "vae", "tokenizer", "scheduler"}


def test_content_hash_is_stable_and_sensitive(tmp_path, tiny_checkpoint):
    folder = tmp_path / "c"
    shutil.copytree(tiny_checkpoint("transformer-temporal"), folder)
    first = content_hash(folder)
    assert content_hash(folder) == first
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"num_layers": 1', '"num_layers": 2'))
    assert content_hash(folder) != first


def test_temporal_with_cross_attention_is_refused(tmp_path):
    from diffusers import TransformerTemporalModel

    TransformerTemporalModel(num_attention_heads=2, attention_head_dim=8, in_channels=16, norm_num_groups=4,
                             cross_attention_dim=24, double_self_attention=False).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="cross-attends to encoder_hidden_states"):
        get_family("transformer-temporal").load(tmp_path)

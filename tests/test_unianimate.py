"""UniAnimate-DiT components: the original checkpoint format loaded, the LoRA merged as the
original merges it (and as diffusers' own Wan LoRA loader fuses it), the pose encoders built from
the checkpoint, every graph at every corner, and bad checkpoints refused naming the key."""

from __future__ import annotations

import re

import diffusers
import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_error, zoo
from exporters.manifest import load_manifest
from parity.compare import component_parity
from zoo.contract import Source
from zoo.errors import CheckpointError
from zoo.registry import get_family
from zoo.unianimate import LORA_TARGETS, RANDOM_CHECKPOINT, read_checkpoint


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    dest = tmp_path_factory.mktemp("unianimate")
    model, checkpoint = get_family("unianimate-dit").write_random_sources(dest, seed=1)
    return model.path, checkpoint.path


def test_merged_transformer_equals_diffusers_wan_lora_loader(parts):
    """The original's merge (W += B @ A, no alpha / rank factor) is what diffusers' Wan LoRA loader
    fuses from the same keys converted (pipe.dit. -> diffusion_model., .default dropped)."""
    model, checkpoint = parts
    ours = get_family("unianimate-dit").load((Source("model", model), Source("checkpoint", checkpoint)))
    merged = dict(ours.module("transformer").named_parameters())

    state = read_checkpoint(checkpoint)
    converted = {k.replace("pipe.dit.", "diffusion_model.").replace(".default", ""): v
                 for k, v in state.items() if k.startswith("pipe.dit.")}
    pipe = diffusers.WanImageToVideoPipeline.from_pretrained(model)
    base = {k: v.clone() for k, v in pipe.transformer.named_parameters()}
    pipe.load_lora_weights(converted, adapter_name="unianimate")
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    fused = dict(pipe.transformer.named_parameters())
    changed = 0
    for name, value in fused.items():
        torch.testing.assert_close(merged[name], value, atol=1e-6, rtol=0)
        changed += not torch.equal(value, base[name])
    assert changed == 2 * len(LORA_TARGETS)  # every targeted weight of both blocks, nothing else


def test_pose_encoders_are_built_from_the_checkpoint(parts):
    model, checkpoint = parts
    ref = get_family("unianimate-dit").load((Source("model", model), Source("checkpoint", checkpoint)))
    pose = ref.module("pose_encoder")
    assert [type(m).__name__ for m in pose] == ["Conv3d", "SiLU"] * 6 + ["Conv3d"]
    assert pose[-1].out_channels == 24 and pose[-1].stride == (1, 2, 2)
    frames = torch.zeros(1, 3, 4 * 3, 32, 48)  # the first frame repeated 3x: 4T frames in, T out
    assert pose(frames).shape == (1, 24, 3, 2, 3)
    assert ref.module("ref_pose_encoder")(torch.zeros(1, 3, 32, 48)).shape == (1, 8, 4, 6)


def test_export_and_component_parity(tmp_path, parts):
    model, checkpoint = parts
    out = tmp_path / "export"
    result = zoo("export", "unianimate-dit", "--model", model, "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    m = load_manifest(out)
    assert [s["role"] for s in m.sources] == ["model", "checkpoint"]
    assert {"pose_encoder", "ref_pose_encoder", "transformer", "vae_decoder_step"} <= set(m.components)
    rows = component_parity(out)
    failed = [r for r in rows if not r.ok]
    assert not failed, [(r.component, r.point, r.failures) for r in failed]
    assert {r.component for r in rows} >= {"pose_encoder", "ref_pose_encoder", "transformer"}


def test_tiny_random_folder_carries_its_checkpoint(tiny_checkpoint):
    folder = tiny_checkpoint("unianimate-dit")
    assert (folder / RANDOM_CHECKPOINT).is_file()
    assert get_family("unianimate-dit").load(folder).module("pose_encoder") is not None


def _write(state, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("dwpose_embedding.12.weight"), "lacks the pose-encoder key 'dwpose_embedding.12.weight'"),
        (lambda s: s.pop("randomref_embedding_pose.0.bias"), "lacks the pose-encoder key 'randomref_embedding_pose.0.bias'"),
        (lambda s: s.__setitem__("pipe.dit.blocks.0.self_attn.q.lora_A.default.weight", torch.zeros(3, 24)),
         "pipe.dit.blocks.0.self_attn.q.lora_{A,B}.default.weight: lora_A (3, 24) and lora_B (24, 2) have different ranks"),
        (lambda s: s.update({"pipe.dit.blocks.7.ffn.0.lora_A.default.weight": torch.zeros(2, 24),
                             "pipe.dit.blocks.7.ffn.0.lora_B.default.weight": torch.zeros(32, 2)}),
         "names block 7, which this transformer (with 2 blocks) lacks: a checkpoint for another base model"),
        (lambda s: s.update({"pipe.dit.blocks.0.cross_attn.k.lora_A.default.weight": torch.zeros(2, 40),
                             "pipe.dit.blocks.0.cross_attn.k.lora_B.default.weight": torch.zeros(24, 2)}),
         "is a 24x40 update, the weight blocks.0.attn2.to_k.weight is (24, 24): a checkpoint for another base model"),
        (lambda s: s.__setitem__("model.diffusion_model.x", torch.zeros(1)), "key 'model.diffusion_model.x' is neither"),
        (lambda s: s.pop("pipe.dit.blocks.1.ffn.2.lora_B.default.weight"), "has lora_A without its pair"),
    ],
)
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_bad_checkpoints_name_the_key(parts, tmp_path, edit, message, suffix):
    model, checkpoint = parts
    state = read_checkpoint(checkpoint)
    edit(state)
    bad = _write(state, tmp_path / f"bad{suffix}")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        get_family("unianimate-dit").load((Source("model", model), Source("checkpoint", bad))).module("transformer")


def test_unreadable_checkpoint_and_missing_checkpoint(parts, tmp_path):
    model, _ = parts
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    assert_error(zoo("export", "unianimate-dit", "--model", model, "--checkpoint", tmp_path / "junk.ckpt", "--out", out),
                 "is not a readable state dict")
    assert_error(zoo("export", "unianimate-dit", "--model", model, "--out", out),
                 "unianimate-dit needs --checkpoint UNIANIMATE_CKPT beside --model WAN_I2V_FOLDER")
    assert not out.exists()

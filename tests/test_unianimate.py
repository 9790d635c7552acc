"""UniAnimate-DiT components: the original checkpoint format loaded, the LoRA merged as the
original merges it (and as diffusers' own Wan LoRA loader fuses it), the pose encoders built from
the checkpoint, every graph at every corner, and bad checkpoints refused naming the key."""

from __future__ import annotations

import re

import diffusers
import pytest
import torch
from conftest import assert_error, zoo
from safetensors.torch import save_file

from exporters.manifest import load_manifest
from parity.compare import component_parity
from zoo.contract import Source
from zoo.errors import CheckpointError
from zoo.families.unianimate_dit.checkpoint import LORA_TARGETS, RANDOM_CHECKPOINT, read_checkpoint
from zoo.registry import get_family


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
    converted = {
        k.replace("pipe.dit.", "diffusion_model.").replace(".default", ""): v
        for k, v in state.items()
        if k.startswith("pipe.dit.")
    }
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


def test_export_from_the_original_checkpoint_and_component_parity(tmp_path, parts):
    """`--model WAN_I2V_FOLDER --checkpoint UNIANIMATE_CKPT`, the documented layout: both sources
    recorded, and the pose encoders read from that checkpoint file pass at every corner (an export
    of those two: the rest of the family, the LoRA-merged transformer included, loads the same
    checkpoint format the same way and is the cached export's, below and in the battery)."""
    model, checkpoint = parts
    out = tmp_path / "export"
    components = ("--component", "pose_encoder", "--component", "ref_pose_encoder")
    result = zoo("export", "unianimate-dit", "--model", model, "--checkpoint", checkpoint, *components, "--out", out)
    assert result.exit_code == 0, result.output
    m = load_manifest(out)
    assert [s["role"] for s in m.sources] == ["model", "checkpoint"]
    assert m.sources[1]["path"] == str(checkpoint.resolve())
    assert set(m.components) == {"pose_encoder", "ref_pose_encoder"}
    rows = component_parity(out)
    failed = [r for r in rows if not r.ok]
    assert not failed, [(r.component, r.point, r.failures) for r in failed]
    assert {r.component for r in rows} == {"pose_encoder", "ref_pose_encoder"}


def test_every_component_at_every_corner_and_the_wan_vae_chunk_loops(parity_report):
    """On the session's parity report of the cached export (the conformance battery's run): the
    whole family, the LoRA-merged transformer and the pose encoders among its components, and the
    host loops (the Wan VAE's chunked encode / decode) at the family's lengths."""
    _, report = parity_report("unianimate-dit")
    rows = report["rows"]
    failed = [r for r in rows if r["status"] != "pass"]
    assert not failed, [(r["level"], r["component"], r["point"], r["failures"]) for r in failed]
    components = {r["component"] for r in rows if r["level"] == "component"}
    assert {"pose_encoder", "ref_pose_encoder", "transformer", "vae_decoder_step"} <= components
    assert [r["point"] for r in rows if r["level"] == "loop"] == [
        f"{op} {n} {what}"
        for n, m in ((1, 1), (5, 2), (9, 3), (15, 4))
        for op, n, what in (("encode", n, "frames"), ("decode", m, "latent frames"))
    ]


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
        (
            lambda s: s.pop("randomref_embedding_pose.0.bias"),
            "lacks the pose-encoder key 'randomref_embedding_pose.0.bias'",
        ),
        (
            lambda s: s.__setitem__("pipe.dit.blocks.0.self_attn.q.lora_A.default.weight", torch.zeros(3, 24)),
            "pipe.dit.blocks.0.self_attn.q.lora_{A,B}.default.weight: lora_A (3, 24) and lora_B (24, 2) have different ranks",
        ),
        (
            lambda s: s.update(
                {
                    "pipe.dit.blocks.7.ffn.0.lora_A.default.weight": torch.zeros(2, 24),
                    "pipe.dit.blocks.7.ffn.0.lora_B.default.weight": torch.zeros(32, 2),
                }
            ),
            "names block 7, which this transformer (with 2 blocks) lacks: a checkpoint for another base model",
        ),
        (
            lambda s: s.update(
                {
                    "pipe.dit.blocks.0.cross_attn.k.lora_A.default.weight": torch.zeros(2, 40),
                    "pipe.dit.blocks.0.cross_attn.k.lora_B.default.weight": torch.zeros(24, 2),
                }
            ),
            "is a 24x40 update, the weight blocks.0.attn2.to_k.weight is (24, 24): a checkpoint for another base model",
        ),
        (
            lambda s: s.__setitem__("model.diffusion_model.x", torch.zeros(1)),
            "key 'model.diffusion_model.x' is neither",
        ),
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
    assert_error(
        zoo("export", "unianimate-dit", "--model", model, "--checkpoint", tmp_path / "junk.ckpt", "--out", out),
        "is not a readable state dict",
    )
    assert_error(
        zoo("export", "unianimate-dit", "--model", model, "--out", out),
        "unianimate-dit needs --checkpoint UNIANIMATE_CKPT beside --model WAN_I2V_FOLDER",
    )
    assert not out.exists()


# --------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from runtimes.sampler import Sampler, prepare_request  # noqa: E402
from zoo.families.unianimate_dit.sampler import context_windows, teacache_plan  # noqa: E402
from zoo.families.unianimate_dit.vae_tiling import tiled_decode  # noqa: E402


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("unianimate-media")
    rng = np.random.default_rng(3)

    def folder(name, n, size=(48, 32)):
        (root / name).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
                root / name / f"{i:04d}.jpg"
            )
        return root / name

    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "ref.png")
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "pose.png")
    return {
        "root": root,
        "image": root / "ref.png",
        "ref_pose": root / "pose.png",
        "poses9": folder("poses9", 9),
        "poses13": folder("poses13", 13),
        "poses8": folder("poses8", 8),
        "big": folder("big", 9, (64, 48)),
    }


def _args(export, media, poses, *extra):
    return [
        "run",
        export,
        "--image",
        media["image"],
        "--ref-pose",
        media["ref_pose"],
        "--pose-video",
        poses,
        "--steps",
        "3",
        "--height",
        "32",
        "--width",
        "48",
        "--seed",
        "5",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--long-video", "--context-frames", "3", "--context-overlap", "2"],
        ["--teacache", "1000000", "--steps", "6"],
        ["--guidance-scale", "1.0", "--untiled"],
    ],
)
def test_run_equals_the_same_loop_on_torch(tiny_export, media, tmp_path, extra):
    export = tiny_export("unianimate-dit")
    poses = media["poses13"] if "--long-video" in extra else media["poses9"]
    for backend in ("onnxruntime", "torch"):
        result = zoo(*_args(export, media, poses, *extra), "--backend", backend, "--out", tmp_path / f"{backend}.npy")
        assert result.exit_code == 0, result.output
    got, want = np.load(tmp_path / "onnxruntime.npy"), np.load(tmp_path / "torch.npy")
    assert got.shape == want.shape == (1, 13 if "--long-video" in extra else 9, 32, 48, 3)
    assert np.abs(got - want).max() <= 1e-3


def test_teacache_skips_whole_calls(tiny_export, media):
    export = tiny_export("unianimate-dit")
    manifest = load_manifest(export)
    base = {
        "image": media["image"],
        "ref_pose": media["ref_pose"],
        "pose_video": media["poses9"],
        "steps": 6,
        "guidance_scale": 1.5,
        "height": 32,
        "width": 48,
    }
    counts = {}
    for name, options in (("off", base), ("on", {**base, "teacache": 1e6})):
        with Sampler(export) as sampler:
            pipeline = sampler.pipeline(prepare_request(manifest, options), progress=False)
            from runtimes.sampler import run_pipeline

            out = run_pipeline(sampler.family, pipeline, prepare_request(manifest, options), 0)
            counts[name] = dict(pipeline.calls), out
    # 6 steps x 2 CFG branches; the rule always computes the first and the last step
    assert counts["off"][0] == {"transformer": 12, "transformer_skip": 0}
    assert counts["on"][0] == {"transformer": 4, "transformer_skip": 8}
    assert np.abs(counts["on"][1] - counts["off"][1]).max() > 0  # skipping changed the result


def test_long_video_is_reproducible_from_the_seed(tiny_export, media, tmp_path):
    args = _args(
        tiny_export("unianimate-dit"),
        media,
        media["poses13"],
        "--long-video",
        "--context-frames",
        "3",
        "--context-overlap",
        "2",
    )
    for name in ("a", "b"):
        assert zoo(*args, "--out", tmp_path / f"{name}.npy").exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert zoo(*args, "--out", tmp_path / "v.mp4").exit_code == 0


@pytest.mark.parametrize(
    "extra, poses, message",
    [
        ([], "poses8", "--pose-video has 8 frames: a short video needs 4k+1 pose frames"),
        (
            ["--long-video", "--context-frames", "5"],
            "poses13",
            "--long-video needs at least 5 latent frames (17 pose frames)",
        ),
        (
            ["--long-video", "--context-frames", "3", "--context-overlap", "1"],
            "poses13",
            "--context-overlap 1: expected at least 2",
        ),
        (
            ["--long-video", "--context-frames", "3", "--context-overlap", "3"],
            "poses13",
            "--context-overlap 3: expected at least 2 and fewer than --context-frames 3",
        ),
        (
            [],
            "big",
            "frames are 64x48 (WxH), expected 48x32; they were not resized: pass --resize-pose to resize them (bilinear)",
        ),
        (["--ref-pose", "{root}/poses9"], "poses9", "--ref-pose {root}/poses9: is a folder, not an image file"),
        (["--height", "80", "--resize-pose"], "poses9", "--height 80 is outside the exported profile"),
    ],
)
def test_run_bad_input(tiny_export, media, tmp_path, extra, poses, message):
    root = media["root"]
    args = _args(tiny_export("unianimate-dit"), media, media[poses], *[e.format(root=root) for e in extra])
    out = tmp_path / "o.mp4"
    assert_error(zoo(*args, "--out", out), message.format(root=root))
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc"])
def test_teacache_threshold_must_be_positive(tiny_export, media, tmp_path, value):
    result = zoo(
        *_args(tiny_export("unianimate-dit"), media, media["poses9"]), "--teacache", value, "--out", tmp_path / "o.npy"
    )
    assert result.exit_code == 2 and "Invalid value for '--teacache'" in result.output, result.output


def test_resize_pose_resizes(tiny_export, media, tmp_path):
    result = zoo(
        *_args(tiny_export("unianimate-dit"), media, media["big"]), "--resize-pose", "--out", tmp_path / "o.npy"
    )
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "o.npy").shape == (1, 9, 32, 48, 3)


def test_context_windows_are_the_originals():
    """UNIANIMATE.md section 7.2's examples."""
    assert context_windows(25, 21, 4) == [list(range(0, 21)), list(range(4, 25))]
    assert context_windows(38, 21, 4) == [list(range(0, 21)), list(range(17, 38))]
    assert context_windows(39, 21, 4) == [list(range(0, 21)), list(range(17, 38)), list(range(18, 39))]
    assert context_windows(21, 21, 4) == [list(range(21))]
    with pytest.raises(Exception, match="needs at least 21 latent frames"):
        context_windows(20, 21, 4)


def test_teacache_plan_follows_the_rule():
    t = [torch.full((1, 6, 4), v) for v in (1.0, 1.0, 1.0, 2.0, 2.0, 2.0)]
    # no change -> the polynomial at 0 is negative: skipped until the accumulated value passes the threshold
    assert teacache_plan(t, 0.3) == [True, False, False, True, False, True]
    assert teacache_plan(t, 1e9) == [True, False, False, False, False, True]


def test_tiled_decode_blends_to_the_untiled_result_for_a_linear_decoder():
    """Tiles, strides and ramps: for a linear decode the blend equals the untiled decode exactly."""
    z = torch.randn(1, 2, 3, 40, 70)
    up = lambda x: x.repeat_interleave(8, -1).repeat_interleave(8, -2) * 0.1  # noqa: E731
    torch.testing.assert_close(tiled_decode(up, z, 8), up(z).clamp(-1, 1), atol=1e-6, rtol=0)

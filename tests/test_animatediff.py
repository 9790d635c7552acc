"""AnimateDiff end to end: an SD folder + MotionAdapter + motion LoRA exported, proven at every
corner, and generating the very video diffusers generates (text-to-video, video-to-video,
FreeInit), as .npy, MP4 and GIF; and every bad input as one clear error."""

from __future__ import annotations

import av
import diffusers
import numpy as np
import pytest
import torch
from conftest import assert_error, zoo
from PIL import Image
from safetensors.torch import save_file

from exporters.manifest import load_manifest
from runtimes.backends import load_reference
from zoo.contract import Range, Source
from zoo.errors import CheckpointError, EnvelopeError
from zoo.infra.checkpoint import content_hash
from zoo.registry import get_family

LORA_SCALE = 0.8


@pytest.fixture(scope="session")
def parts(tmp_path_factory):
    """A Stable Diffusion folder, a MotionAdapter folder and a motion LoRA, as `zoo random` writes them."""
    dest = tmp_path_factory.mktemp("animatediff-parts")
    sources = get_family("animatediff").write_random_sources(dest, seed=3)
    return {s.role: s.path for s in sources}


@pytest.fixture(scope="session")
def lora_export(tmp_path_factory, parts):
    """The documentation's way: SD folder + adapter + a motion LoRA at scale 0.8, exported (not carried)."""
    out = tmp_path_factory.mktemp("animatediff-lora") / "export"
    result = zoo(
        "export",
        "animatediff",
        "--model",
        parts["model"],
        "--motion-adapter",
        parts["motion_adapter"],
        "--lora",
        f"{parts['lora']}:{LORA_SCALE}",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "in all)" in result.output
    return out


def diffusers_pipeline(parts, cls=diffusers.AnimateDiffPipeline, lora: bool = True):
    """The reference exactly as the AnimateDiff documentation builds it, LoRA fused by diffusers."""
    adapter = diffusers.MotionAdapter.from_pretrained(parts["motion_adapter"])
    pipe = cls.from_pretrained(parts["model"], motion_adapter=adapter)
    if lora:
        pipe.load_lora_weights(str(parts["lora"]), adapter_name="motion")
        pipe.set_adapters(["motion"], adapter_weights=[LORA_SCALE])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_manifest_records_every_source_with_its_hash(lora_export, parts):
    m = load_manifest(lora_export)
    assert [s["role"] for s in m.sources] == ["model", "motion_adapter", "lora"]
    by_role = {s["role"]: s for s in m.sources}
    assert by_role["lora"]["scale"] == LORA_SCALE
    for role, path in parts.items():
        assert by_role[role]["hash"] == content_hash(path)
    assert set(m.components) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    unet = m.components["unet"]
    assert [t.name for t in unet.inputs] == ["sample", "timestep", "encoder_hidden_states"]
    assert (unet.dims["frames"].min, unet.dims["frames"].max) == (4, 16)
    decoder = m.components["vae_decoder"]
    assert decoder.dims["height"].of == "latent_height" and decoder.dims["height"].scale == 8


def test_torch_side_rebuilds_the_same_lora(lora_export, parts):
    """The torch reference of parity is the LoRA-fused model, the same as diffusers' own (a LoRA must
    not vanish from the torch side)."""
    ref = load_reference(load_manifest(lora_export))
    pipe = diffusers_pipeline(parts)
    plain = diffusers_pipeline(parts, lora=False)
    sample = torch.randn(2, 4, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    context = torch.randn(8, 77, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(500)
    with torch.no_grad():
        ours = ref.module("unet")(sample, t, encoder_hidden_states=context).sample
        theirs = pipe.unet(sample, t, encoder_hidden_states=context).sample
        base = plain.unet(sample, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert (ours - base).abs().max() > 1e-3  # the LoRA really changes the model


def test_parity_at_every_corner_with_lora_and_free_init(lora_export):
    """A motion LoRA changes the UNet only: the UNet at every corner, and the sampler against the
    diffusers pipeline on every parity request (text-to-video, FreeInit, video-to-video), on the
    LoRA export. Every component of an AnimateDiff export at every corner (the text encoder and the
    VAE, which no motion LoRA touches) is the conformance battery's, on the cached export."""
    from parity.compare import component_parity, end_to_end_parity, loop_parity, weights_parity

    lora = {s["role"]: s for s in load_manifest(lora_export).sources}["lora"]
    assert lora["scale"] == LORA_SCALE
    rows = (
        weights_parity(lora_export)
        + component_parity(lora_export, components=("unet",))
        + loop_parity(lora_export)
        + end_to_end_parity(lora_export)
    )
    failed = [r for r in rows if not r.ok]
    assert not failed, [(r.component, r.point, r.failures) for r in failed]
    labels = {(r.level, r.component, r.point) for r in rows}
    # frames min and max, both latent sizes at both ends, CFG on and off
    unet_shapes = {r.shape for r in rows if r.level == "component" and r.component == "unet"}
    for frames in (4, 16):
        for side in (4, 8):
            for cfg in (1, 2):
                assert f"cfg_batch={cfg} frames={frames} latent_height={side} latent_width={side}" in unet_shapes
    for label in ("text-to-video", "free-init", "video-to-video"):
        assert ("end_to_end", "sampler", label) in labels
        assert any(level == "trajectory" and point.startswith(label) for level, _, point in labels)


def test_run_writes_the_video_diffusers_writes(lora_export, parts, tmp_path):
    args = [
        "run",
        lora_export,
        "--prompt",
        "a fox running",
        "--negative-prompt",
        "blurry",
        "--frames",
        "6",
        "--height",
        "32",
        "--width",
        "64",
        "--steps",
        "3",
        "--guidance-scale",
        "6.0",
        "--seed",
        "5",
    ]
    result = zoo(*args, "--out", tmp_path / "fox.npy")
    assert result.exit_code == 0, result.output
    got = np.load(tmp_path / "fox.npy")
    want = diffusers_pipeline(parts)(
        prompt="a fox running",
        negative_prompt="blurry",
        num_frames=6,
        height=32,
        width=64,
        num_inference_steps=3,
        guidance_scale=6.0,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(5),
    ).frames
    assert got.shape == want.shape == (1, 6, 32, 64, 3)
    assert np.abs(got - want).max() <= 1e-3

    assert zoo(*args, "--out", tmp_path / "fox.mp4").exit_code == 0
    with av.open(str(tmp_path / "fox.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 6 and frames[0].shape == (32, 64, 3)
    expected_uint8 = (want[0] * 255).round()
    assert np.abs(np.stack(frames).astype(float) - expected_uint8).mean() < 12  # H.264 is lossy

    assert zoo(*args, "--out", tmp_path / "fox.gif").exit_code == 0
    with Image.open(tmp_path / "fox.gif") as gif:
        assert gif.size == (64, 32) and gif.n_frames == 6


def _write_gif(path, frames: int, size: tuple[int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert("P") for _ in range(frames)
    ]
    images[0].save(path, save_all=True, append_images=images[1:], duration=125, loop=0)
    return path


def test_video_to_video_and_free_init_match_diffusers(lora_export, parts, tmp_path):
    clip = _write_gif(tmp_path / "in.gif", 5, (48, 32))
    result = zoo(
        "run",
        lora_export,
        "--prompt",
        "a fox",
        "--video",
        clip,
        "--strength",
        "0.6",
        "--steps",
        "4",
        "--free-init",
        "2",
        "--free-init-method",
        "gaussian",
        "--seed",
        "2",
        "--out",
        tmp_path / "v2v.npy",
    )
    assert result.exit_code == 0, result.output
    got = np.load(tmp_path / "v2v.npy")

    pipe = diffusers_pipeline(parts, diffusers.AnimateDiffVideoToVideoPipeline)
    pipe.enable_free_init(num_iters=2, use_fast_sampling=False, method="gaussian")
    video = diffusers.utils.load_video(str(clip), convert_method=lambda frames: [f.convert("RGB") for f in frames])
    want = pipe(
        video=[video],
        prompt="a fox",
        negative_prompt="",
        strength=0.6,
        num_inference_steps=4,
        height=32,
        width=48,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(2),
    ).frames
    assert got.shape == want.shape == (1, 5, 32, 48, 3)
    assert np.abs(got - want).max() <= 1e-3


def test_tiny_export_from_an_animatediff_folder_runs(tiny_export, tmp_path):
    out = tiny_export("animatediff")
    m = load_manifest(out)
    assert m.sources[0]["path"] == "reference/model" and m.preset == "tiny"
    result = zoo(
        "run",
        out,
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--scheduler",
        "EulerDiscreteScheduler",
        "--out",
        tmp_path / "frames",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "frames").iterdir())[:2] == ["frame-0000.png", "frame-0001.png"]


# --------------------------------------------------------------------------------------
# Bad input: one error line, exit 2, nothing written
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (["--frames", "20"], "--frames 20 is outside the exported profile: frames must be in [4, 16] frames"),
        (["--height", "40"], "--height 40: height must be a multiple of 16 pixels"),
        (["--video", "{tmp}/missing.mp4"], "--video {tmp}/missing.mp4: does not exist"),
        (["--video", "{tmp}/text.mp4"], "--video {tmp}/text.mp4: not a video"),
        (["--video", "{tmp}/empty"], "--video {tmp}/empty: empty video"),
        (
            ["--video", "{tmp}/big.gif", "--height", "32", "--width", "32"],
            "frames are 48x48 (WxH), expected 32x32; they were not resized",
        ),
        (
            ["--video", "{tmp}/big.gif", "--frames", "4"],
            "--frames 4: video-to-video takes the frame count from --video",
        ),
        (["--video", "{tmp}/long.gif"], "--video {tmp}/long.gif frames 20 is outside the exported profile"),
        (["--video", "{tmp}/odd.gif"], "--video {tmp}/odd.gif height 40: height must be a multiple of 16 pixels"),
        (["--strength", "0.5"], "--strength applies to video-to-video: give --video"),
        (["--video", "{tmp}/big.gif", "--strength", "0.2", "--steps", "2"], "leaves no denoising step"),
        (["--free-u"], "--free-u is not supported: FreeU rescales the backbone and skip features"),
        (["--free-init-fast"], "--free-init-method and --free-init-fast need --free-init ITERS"),
        (["--scheduler", "UNet2DModel"], "--scheduler 'UNet2DModel' is not a diffusers scheduler class"),
    ],
)
def test_run_bad_input(tiny_export, tmp_path, options, message):
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    _write_gif(tmp_path / "big.gif", 6, (48, 48))
    _write_gif(tmp_path / "long.gif", 20, (48, 48))
    _write_gif(tmp_path / "odd.gif", 6, (48, 40))
    out = tmp_path / "out.mp4"
    result = zoo(
        "run",
        tiny_export("animatediff"),
        "--prompt",
        "x",
        "--steps",
        "3",
        "--out",
        out,
        *[o.format(tmp=tmp_path) for o in options],
    )
    assert_error(result, message.format(tmp=tmp_path))
    assert not out.exists()


@pytest.mark.parametrize("strength", ["0", "1.5", "nan"])
def test_strength_outside_the_unit_interval_is_a_usage_error(tiny_export, tmp_path, strength):
    result = zoo(
        "run",
        tiny_export("animatediff"),
        "--prompt",
        "x",
        "--video",
        tmp_path,
        "--strength",
        strength,
        "--out",
        tmp_path / "o.mp4",
    )
    assert result.exit_code == 2 and "Invalid value for '--strength'" in result.output, result.output


def test_resize_video_resizes(tiny_export, tmp_path):
    clip = _write_gif(tmp_path / "big.gif", 4, (48, 48))
    result = zoo(
        "run",
        tiny_export("animatediff"),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--video",
        clip,
        "--height",
        "32",
        "--width",
        "32",
        "--resize-video",
        "--out",
        tmp_path / "o.npy",
    )
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "o.npy").shape == (1, 4, 32, 32, 3)


def test_export_bad_sources(parts, tmp_path):
    out = tmp_path / "out"
    assert_error(
        zoo("export", "animatediff", "--model", parts["model"], "--out", out),
        "is a Stable Diffusion folder: AnimateDiff also needs --motion-adapter",
    )
    assert_error(
        zoo(
            "export", "animatediff", "--model", parts["model"], "--motion-adapter", parts["model"] / "vae", "--out", out
        ),
        "holds a AutoencoderKL checkpoint; expected a diffusers-format folder of MotionAdapter",
    )
    assert_error(
        zoo("export", "animatediff", "--tiny", "--frames", "8:16:64", "--out", out),
        "--frames 8:16:64: frames can be at most 32 frames",
    )
    assert_error(
        zoo("export", "animatediff", "--tiny", "--height", "32:64:65536", "--out", out),
        "height can be at most 2048 pixels",
    )
    # a LoRA whose keys name nothing in this model, and one of another base model (other shapes)
    save_file(
        {"lora_unet_foo.lora_down.weight": torch.zeros(2, 4), "lora_unet_foo.lora_up.weight": torch.zeros(4, 2)},
        str(tmp_path / "nothing.safetensors"),
    )
    key = "unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"
    save_file(
        {f"{key}.lora_A.weight": torch.zeros(2, 320), f"{key}.lora_B.weight": torch.zeros(320, 2)},
        str(tmp_path / "other.safetensors"),
    )
    common = [
        "export",
        "animatediff",
        "--model",
        parts["model"],
        "--motion-adapter",
        parts["motion_adapter"],
        "--out",
        out,
    ]
    result = zoo(*common, "--lora", tmp_path / "nothing.safetensors")
    assert_error(result, "nothing.safetensors")
    assert "does not match this model" in result.output
    result = zoo(*common, "--lora", tmp_path / "other.safetensors:0.5")
    assert_error(result, "is for another base model")
    assert_error(zoo(*common, "--lora", tmp_path / "missing.safetensors"), "missing.safetensors does not exist")
    assert not out.exists()


def test_adapter_for_another_base_model(parts, tmp_path):
    adapter = diffusers.MotionAdapter(
        block_out_channels=(8, 16, 32),
        motion_layers_per_block=1,
        motion_norm_num_groups=4,
        motion_num_attention_heads=2,
    )
    adapter.save_pretrained(tmp_path / "adapter")
    ref = get_family("animatediff").load(
        (Source("model", parts["model"]), Source("motion_adapter", tmp_path / "adapter"))
    )
    with pytest.raises(CheckpointError, match=r"has block channels \(8, 16, 32\), the UNet of .* has \(16, 32\)"):
        ref.module("unet")


def test_envelope_frames_bounded_by_the_motion_table(tiny_checkpoint):
    fam = get_family("animatediff")
    ref = fam.load(tiny_checkpoint("animatediff"))
    with pytest.raises(EnvelopeError, match="frames can be at most 32 frames"):
        fam.envelope(ref, {"frames": Range(8, 16, 33)})
    assert fam.envelope(ref)["frames"] == Range(4, 8, 16)


def test_derived_input_dims_are_checked_through_their_source(tiny_export):
    from runtimes.backends import OnnxRuntimeBackend
    from zoo.errors import InputError

    backend = OnnxRuntimeBackend(load_manifest(tiny_export("animatediff")), "vae_encoder")
    with pytest.raises(InputError, match=r"input 'sample': dim 2 \(height\) is 50, expected 8 x latent_height"):
        backend({"sample": torch.zeros(1, 3, 50, 48)})
    out = backend({"sample": torch.zeros(2, 3, 48, 32)})["latent_parameters"]
    assert out.shape == (2, 8, 6, 4)


def test_zoo_random_writes_the_documented_layout(tmp_path):
    result = zoo("random", "animatediff", "--out", tmp_path / "ckpt", "--seed", "2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ckpt" / "stable-diffusion" / "model_index.json").is_file()
    assert (tmp_path / "ckpt" / "motion-adapter" / "config.json").is_file()
    assert (tmp_path / "ckpt" / "motion-lora.safetensors").is_file()
    assert f"zoo export animatediff --model {tmp_path / 'ckpt' / 'stable-diffusion'} --motion-adapter" in result.output
    assert_error(zoo("random", "animatediff", "--out", tmp_path / "ckpt"), "exists and is not empty")
    assert_error(
        zoo("random", "animatediff", "--preset", "huge", "--out", tmp_path / "other"),
        "animatediff has no preset 'huge'",
    )
    assert not (tmp_path / "other").exists()

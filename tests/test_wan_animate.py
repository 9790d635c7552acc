"""Wan-Animate end to end on a tiny random model: graphs and state pairs computed from the config,
the chunked VAE against encode / decode, parity at every corner and in both modes, the video
WanAnimatePipeline writes, the face encoder once per segment, and every bad input as one error."""

from __future__ import annotations

import re

import diffusers
import numpy as np
import pytest
import torch
from conftest import assert_error, zoo
from PIL import Image

from exporters.manifest import load_manifest
from runtimes.sampler import Sampler, prepare_request
from zoo.contract import Range
from zoo.errors import EnvelopeError
from zoo.models.wan_vae import cache_slots
from zoo.registry import get_family


def _frames(folder, n, size, seed=0, mode="RGB"):
    """A folder of PNG frames (lossless: the pipeline gets exactly these pixels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if mode == "L":
            array = ((rng.random((size[1], size[0])) > 0.5) * 255).astype(np.uint8)
        else:
            array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(array, mode).save(folder / f"frame-{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-media")
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "ref.png")
    return {
        "image": root / "ref.png",
        "pose": _frames(root / "pose", 13, (48, 32), 1),
        "face": _frames(root / "face", 13, (16, 16), 2),
        "face_big": _frames(root / "face_big", 13, (24, 20), 3),
        "background": _frames(root / "background", 13, (48, 32), 4),
        "mask": _frames(root / "mask", 13, (48, 32), 5, mode="L"),
        "mask_short": _frames(root / "mask_short", 9, (48, 32), 5, mode="L"),
        "pose_short": _frames(root / "pose_short", 9, (48, 32), 1),
        "pose21": _frames(root / "pose21", 21, (48, 32), 6),
        "face21": _frames(root / "face21", 21, (16, 16), 7),
        "root": root,
    }


def _pipeline(export):
    pipe = diffusers.WanAnimatePipeline.from_pretrained(load_manifest(export).source_paths()[0].path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load(folder):
    return [Image.open(p).convert("RGB") for p in sorted(folder.iterdir())]


def test_graphs_and_state_pairs_follow_the_config(tiny_export):
    out = tiny_export("wan-animate")
    m = load_manifest(out)
    assert set(m.components) == {
        "text_encoder",
        "image_encoder",
        "face_encoder",
        "transformer",
        "vae_encoder_first",
        "vae_encoder_step",
        "vae_decoder_first",
        "vae_decoder_step",
    }
    ref = get_family("wan-animate").load(m.source_paths())
    for part in ("encoder", "decoder"):
        slots = cache_slots(ref, part)
        step = m.component(f"vae_{part}_step")
        assert step.state == {f"cache_out_{j}": f"cache_{j}" for j in range(len(slots))} and len(slots) > 10
        assert not m.component(f"vae_{part}_first").state
    dims = m.component("face_encoder").dims
    assert (dims["face_frames"].min, dims["face_frames"].max) == (5, 13)  # 4(T-1)+1 of latent frames 2..4
    assert dims["segment_latent_frames"].of == "latent_frames" and dims["segment_latent_frames"].offset == 1
    assert [t.name for t in m.component("transformer").inputs][-1] == "motion_vec"


def test_parity_components_loops_and_both_modes(parity_report):
    """On the session's parity report of the cached export (the conformance battery's run): what
    only Wan-Animate has, its VAE chunk loops and its two modes."""
    _, report = parity_report("wan-animate")
    rows = report["rows"]
    failed = [r for r in rows if r["status"] != "pass"]
    assert not failed, [(r["level"], r["component"], r["point"], r["failures"]) for r in failed]
    labels = {(r["level"], r["point"]) for r in rows}
    for frames in (1, 5, 9, 15):
        assert ("loop", f"encode {frames} frames") in labels
    assert ("end_to_end", "animate") in labels and ("end_to_end", "replace") in labels
    shapes = {r["shape"] for r in rows if r["component"] == "transformer" and r["level"] == "component"}
    assert (
        "latent_frames=2 latent_height=4 latent_width=4" in shapes
        and "latent_frames=4 latent_height=6 latent_width=8" in shapes
    )


@pytest.mark.parametrize("mode, prev, guidance", [("animate", "5", 2.0), ("replace", "1", 1.0)])
def test_run_writes_the_video_the_pipeline_writes(tiny_export, media, tmp_path, mode, prev, guidance):
    """Two segments each: 21 frames in segments of 13 with 5 conditioning frames; 13 in segments of 9 with 1."""
    out = tiny_export("wan-animate")
    pose, face, segment = (media["pose21"], media["face21"], 13) if prev == "5" else (media["pose"], media["face"], 9)
    args = [
        "run",
        out,
        "--image",
        media["image"],
        "--pose-video",
        pose,
        "--face-video",
        face,
        "--mode",
        mode,
        "--prompt",
        "a person dancing",
        "--steps",
        "2",
        "--guidance-scale",
        str(guidance),
        "--segment-frames",
        str(segment),
        "--prev-frames",
        prev,
        "--height",
        "32",
        "--width",
        "48",
        "--seed",
        "4",
    ]
    if mode == "replace":
        args += ["--background-video", media["background"], "--mask-video", media["mask"]]
    result = zoo(*args, "--out", tmp_path / "v.npy")
    assert result.exit_code == 0, result.output
    got = np.load(tmp_path / "v.npy")

    extra = {}
    if mode == "replace":
        extra = {
            "background_video": _load(media["background"]),
            "mask_video": [Image.open(p) for p in sorted(media["mask"].iterdir())],
        }
    want = _pipeline(out)(
        image=Image.open(media["image"]).convert("RGB"),
        pose_video=_load(pose),
        face_video=_load(face),
        mode=mode,
        prompt="a person dancing",
        negative_prompt="",
        num_inference_steps=2,
        guidance_scale=guidance,
        segment_frame_length=segment,
        prev_segment_conditioning_frames=int(prev),
        height=32,
        width=48,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(4),
        **extra,
    ).frames
    assert got.shape == want.shape == (1, len(_load(pose)), 32, 48, 3)
    assert np.abs(got - want).max() <= 1e-3
    assert zoo(*args, "--out", tmp_path / "v.mp4").exit_code == 0 and (tmp_path / "v.mp4").stat().st_size > 0


def test_face_encoder_runs_once_per_segment_and_branch(tiny_export, media):
    out = tiny_export("wan-animate")
    manifest = load_manifest(out)
    request = prepare_request(
        manifest,
        {
            "image": media["image"],
            "pose_video": media["pose"],
            "face_video": media["face"],
            "steps": 3,
            "guidance_scale": 2.0,
            "segment_frames": 9,
        },
    )
    with Sampler(out) as sampler:
        calls = {"face_encoder": 0, "transformer": 0}
        for name in calls:
            backend = sampler.backends[name]
            infer = backend.infer

            def counting(feeds, _infer=infer, _name=name):
                calls[_name] += 1
                return _infer(feeds)

            backend.infer = counting
        sampler(request, 0, progress=False)
    # 13 frames, segments of 9 with 1 conditioning frame: 2 segments; 3 steps, CFG: 12 DiT calls.
    # The face encoder: each segment's face clip once, and the all -1 unconditional face once.
    assert calls == {"face_encoder": 3, "transformer": 12}


@pytest.mark.parametrize(
    "options, message",
    [
        (["--pose-video", "{pose_short}"], "--face-video has 13 frames, --pose-video 9: they must be the same length"),
        (
            ["--face-video", "{face_big}"],
            "frames are 24x20 (WxH), expected 16x16; they were not resized: pass --resize-face",
        ),
        (["--mode", "replace", "--mask-video", "{mask}"], "--mode replace needs --background-video"),
        (["--mode", "replace", "--background-video", "{background}"], "--mode replace needs --mask-video"),
        (
            ["--mode", "replace", "--background-video", "{background}", "--mask-video", "{mask_short}"],
            "--mask-video has 9 frames, --pose-video 13: they must be the same length",
        ),
        (["--background-video", "{background}"], "--background-video is for --mode replace"),
        (["--pose-video", "{root}/nothing.mp4"], "--pose-video {root}/nothing.mp4: does not exist"),
        (["--face-video", "{root}/empty"], "--face-video {root}/empty: empty video"),
        (["--image", "{root}/notes.txt"], "--image {root}/notes.txt: not an image"),
        (["--segment-frames", "8"], "--segment-frames 8: pixel frames per segment must be 4k+1"),
        (
            ["--segment-frames", "9", "--prev-frames", "5"],
            "WanAnimatePipeline cannot segment them with --segment-frames 9 and --prev-frames 5",
        ),
        (["--segment-frames", "17"], "--segment-frames 17 is outside the exported profile"),
        (["--height", "80"], "--height 80 is outside the exported profile: height must be in [32, 48] pixels"),
    ],
)
def test_run_bad_input(tiny_export, media, tmp_path, options, message):
    root = media["root"]
    (root / "empty").mkdir(exist_ok=True)
    (root / "notes.txt").write_text("not an image")
    paths = {k: v for k, v in media.items()}
    base = {"--image": media["image"], "--pose-video": media["pose"], "--face-video": media["face"]}
    given = dict(zip(options[::2], options[1::2]))
    args = []
    for flag, value in {**base, **given}.items():
        args += [flag, str(value).format(**paths)]
    out = tmp_path / "o.mp4"
    assert_error(zoo("run", tiny_export("wan-animate"), *args, "--steps", "1", "--out", out), message.format(**paths))
    assert not out.exists()


def test_resize_face_is_the_pipelines_own_resize(tiny_export, media, tmp_path):
    out = tiny_export("wan-animate")
    result = zoo(
        "run",
        out,
        "--image",
        media["image"],
        "--pose-video",
        media["pose"],
        "--face-video",
        media["face_big"],
        "--steps",
        "1",
        "--segment-frames",
        "13",
        "--resize-face",
        "--out",
        tmp_path / "o.npy",
    )
    assert result.exit_code == 0, result.output
    want = _pipeline(out)(
        image=Image.open(media["image"]).convert("RGB"),
        pose_video=_load(media["pose"]),
        face_video=_load(media["face_big"]),
        prompt="",
        negative_prompt="",
        num_inference_steps=1,
        guidance_scale=1.0,
        segment_frame_length=13,
        height=32,
        width=48,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(0),
    ).frames
    assert np.abs(np.load(tmp_path / "o.npy") - want).max() <= 1e-3


def _variant_folder(tiny_checkpoint, tmp_path, **vae_changes):
    """The tiny checkpoint with another VAE config (random weights of that config)."""
    import shutil

    folder = tmp_path / "variant"
    shutil.copytree(tiny_checkpoint("wan-animate"), folder)
    vae = diffusers.AutoencoderKLWan.from_pretrained(folder / "vae")
    config = {**{k: v for k, v in vae.config.items() if not k.startswith("_")}, **vae_changes}
    diffusers.AutoencoderKLWan(**config).save_pretrained(folder / "vae")
    return folder


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(attn_scales=[0.5]), "has attention at scales [0.5]: diffusers' own chunked encode fails on it"),
        (
            dict(temperal_downsample=[False, False, True], scale_factor_temporal=2),
            "packs 2 frames per latent frame; WanAnimatePipeline assumes 4",
        ),
        (dict(scale_factor_spatial=16), "scale factors (spatial 16, temporal 4) disagree with its layers"),
    ],
)
def test_vae_configs_the_chunk_graphs_cannot_run_are_refused(tiny_checkpoint, tmp_path, changes, message):
    from zoo.errors import CheckpointError

    folder = _variant_folder(tiny_checkpoint, tmp_path, **changes)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        get_family("wan-animate").load(folder)


def test_sizes_follow_the_pipelines_multiple_of_16(tiny_checkpoint, tmp_path):
    """A VAE with spatial factor 4 (patches of 8 px) still needs multiples of 16 (the pipeline's check)."""
    folder = _variant_folder(
        tiny_checkpoint, tmp_path, dim_mult=[1, 2, 2], temperal_downsample=[True, True], scale_factor_spatial=4
    )
    fam = get_family("wan-animate")
    axes = {a.name: a for a in fam.axes(fam.load(folder))}
    assert axes["height"].multiple_of == 16 and axes["height"].ceiling == 32 * 8 // 16 * 16


def test_too_few_frames_for_one_segment(tiny_export, media, tmp_path):
    root = media["root"]
    one = _frames(root / "one", 1, (48, 32), 1)
    face = _frames(root / "one_face", 1, (16, 16), 2)
    assert_error(
        zoo(
            "run",
            tiny_export("wan-animate"),
            "--image",
            media["image"],
            "--pose-video",
            one,
            "--face-video",
            face,
            "--out",
            tmp_path / "o.npy",
        ),
        "--pose-video has 1 frames: WanAnimatePipeline needs more than --prev-frames 1",
    )


def test_segment_frames_envelope_is_4k_plus_1(tiny_checkpoint):
    fam = get_family("wan-animate")
    ref = fam.load(tiny_checkpoint("wan-animate"))
    with pytest.raises(EnvelopeError, match=r"--segment-frames 5:8:13: segment_frames must be 4k\+1 frames, got 8"):
        fam.envelope(ref, {"segment_frames": Range(5, 8, 13)})

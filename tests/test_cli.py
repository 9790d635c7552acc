"""The zoo command line: the main job end to end, and every bad input as a clear, typed error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from conftest import assert_error, perturb_graph, zoo
from PIL import Image

from exporters.manifest import load_manifest
from zoo.cli import main
from zoo.registry import get_family


def test_families_lists_both():
    result = zoo("families")
    assert result.exit_code == 0
    assert "pixart: " in result.output and "transformer-temporal: " in result.output
    assert "variants:   sigma, alpha-1024, alpha-512" in result.output


def test_export_temporal_with_envelope(tmp_path):
    out = tmp_path / "tt"
    result = zoo(
        "export",
        "transformer-temporal",
        "--tiny",
        "--variant",
        "single-group",
        "--out",
        out,
        "--frames",
        "4:8:24",
        "--height",
        "4:6:8",
        "--width",
        "8",
        "--batch",
        "1:2:3",
    )
    assert result.exit_code == 0, result.output
    m = load_manifest(out)
    assert m.variant == "single-group"
    dims = m.components["transformer"].dims
    assert (dims["frames"].min, dims["frames"].opt, dims["frames"].max) == (4, 8, 24)
    assert (dims["width"].min, dims["width"].max) == (8, 8)
    parity = zoo("parity", out, "--json", tmp_path / "p.json")
    assert parity.exit_code == 0, parity.output
    assert parity.output.strip().splitlines()[-1].endswith(" passed, 0 failed")
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["failed"] == 0 and report["passed"] > 0 and (out / "parity.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["export", "nope", "--tiny", "--out", "{out}"],
            "unknown family 'nope'; known families: animatediff, pixart, transformer-temporal, unianimate-dit, unianimate-pose, wan-animate, wan-animate-pose",
        ),
        (
            ["export", "pixart", "--model", "{tmp}/missing", "--out", "{out}"],
            "does not exist; expected a diffusers-format folder",
        ),
        (["export", "pixart", "--model", "{tmp}", "--out", "{out}"], "is empty; expected a diffusers-format folder"),
        (
            ["export", "pixart", "--tiny", "--height", "32:72:96", "--out", "{out}"],
            "--height 32:72:96: height must be a multiple of 16 pixels, got 72",
        ),
        (
            ["export", "pixart", "--tiny", "--height", "96:64:32", "--out", "{out}"],
            "--height 96:64:32: expected MIN <= OPT <= MAX",
        ),
        (
            [
                "export",
                "transformer-temporal",
                "--tiny",
                "--variant",
                "sinusoidal",
                "--frames",
                "8:16:64",
                "--out",
                "{out}",
            ],
            "frames can be at most 32 frames",
        ),
        (["export", "pixart", "--out", "{out}"], "give exactly one of --model PATH"),
        (
            ["export", "pixart", "--tiny", "--variant", "beta", "--out", "{out}"],
            "family 'pixart' has no variant 'beta'",
        ),
        (["export", "pixart", "--tiny", "--component", "unet", "--out", "{out}"], "has no component 'unet'"),
    ],
)
def test_export_bad_input(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    result = zoo(*[a.format(tmp=empty, out=out) for a in args])
    assert_error(result, message)
    assert not out.exists()


def assert_usage(result, message: str):
    """click's own usage error: exit 2, its 'Error:' line, no traceback, no internal error."""
    assert result.exit_code == 2, result.output
    assert "Error: " in result.output and message in result.output, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["run", "{export}", "--prompt", "x", "--steps", "0", "--out", "{out}"],
            "Invalid value for '--steps': 0 is not in the range x>=1",
        ),
        (
            ["run", "{export}", "--prompt", "x", "--seed", "-5", "--out", "{out}"],
            "Invalid value for '--seed': -5 is not in the range",
        ),
        (["run", "{export}", "--out", "{out}"], "Missing option '--prompt'"),
        (
            ["run", "{export}", "--prompt", "x", "--guidance-scale", "nan", "--out", "{out}"],
            "'nan' is not a finite number",
        ),
        (
            ["run", "{export}", "--prompt", "x", "--guidance-scale", "inf", "--out", "{out}"],
            "'inf' is not a finite number",
        ),
        (["run", "{export}", "--prompt", "x", "--bogus", "1", "--out", "{out}"], "No such option '--bogus'"),
        (["export", "pixart", "--tiny", "--frames", "8", "--out", "{out}"], "No such option '--frames'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_clicks_own(tiny_export, tmp_path, args, message):
    out = tmp_path / "x.png"
    result = zoo(*[a.format(export=tiny_export("pixart", "sigma"), out=out) for a in args])
    assert_usage(result, message)
    assert not out.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command", [[], ["families"], ["export"], ["export", "pixart"], ["run"], ["run", "{export}"], ["parity"], ["bench"]]
)
def test_help_exits_zero(tiny_export, command):
    result = zoo(*[a.format(export=tiny_export("pixart", "sigma")) for a in command], "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "error" not in result.output.lower()
    if command == ["run", "{export}"]:
        assert "--negative-prompt" in result.output and "--resolution-binning" in result.output
    if command == ["export", "pixart"]:
        assert "--text-length" in result.output


def test_export_folder_of_another_model(tmp_path, tiny_checkpoint):
    result = zoo("export", "pixart", "--model", tiny_checkpoint("transformer-temporal"), "--out", tmp_path / "out")
    assert_error(result, "has no model_index.json; expected a diffusers-format folder of")
    result = zoo(
        "export", "transformer-temporal", "--model", tiny_checkpoint("pixart") / "vae", "--out", tmp_path / "out"
    )
    assert_error(
        result, "holds a AutoencoderKL checkpoint; expected a diffusers-format folder of TransformerTemporalModel"
    )
    assert not (tmp_path / "out").exists()


def test_export_from_local_checkpoint_records_source(tmp_path, tiny_checkpoint):
    ckpt = tiny_checkpoint("transformer-temporal")
    result = zoo("export", "transformer-temporal", "--model", ckpt, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    m = load_manifest(tmp_path / "out")
    assert m.sources[0]["path"] == str(ckpt.resolve()) and not (tmp_path / "out" / "reference").exists()


def test_run_writes_the_diffusers_image(tiny_export, tmp_path):
    out = tiny_export("pixart", "sigma")
    args = [
        "run",
        out,
        "--prompt",
        "a fox at night",
        "--negative-prompt",
        "blurry",
        "--steps",
        "3",
        "--guidance-scale",
        "4.0",
        "--height",
        "32",
        "--width",
        "64",
        "--seed",
        "11",
    ]
    result = zoo(*args, "--out", tmp_path / "fox.npy")
    assert result.exit_code == 0, result.output
    got = np.load(tmp_path / "fox.npy")

    pipe = diffusers.PixArtSigmaPipeline.from_pretrained(load_manifest(out).source_paths()[0].path)
    want = pipe(
        prompt="a fox at night",
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=4.0,
        height=32,
        width=64,
        use_resolution_binning=False,
        generator=torch.Generator("cpu").manual_seed(11),
        output_type="np",
    ).images
    assert got.shape == want.shape == (1, 32, 64, 3)
    assert np.abs(got - want).max() <= 1e-3

    result = zoo(*args, "--out", tmp_path / "fox.png")
    assert result.exit_code == 0, result.output
    png = np.asarray(Image.open(tmp_path / "fox.png"))
    assert png.shape == (32, 64, 3) and png.dtype == np.uint8
    assert np.abs(png.astype(int) - (want[0] * 255).round().astype(int)).max() <= 1


def test_run_batch_writes_one_png_per_image(tiny_export, tmp_path):
    result = zoo(
        "run",
        tiny_export("pixart", "sigma"),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--batch",
        "2",
        "--out",
        tmp_path / "b.png",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-0.png", "b-1.png"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--height", "72"], "--height 72: height must be a multiple of 16 pixels"),
        (["--height", "68"], "--height 68: height must be a multiple of 16 pixels"),
        (["--width", "128"], "--width 128 is outside the exported profile: width must be in [32, 96] pixels"),
        (["--batch", "3"], "--batch 3 is outside the exported profile: batch must be in [1, 2]"),
        (["--batch", "0"], "--batch 0 is outside the exported profile"),
        (["--backend", "tensorrt"], "the tensorrt backend is not available here"),
    ],
)
def test_run_bad_request(tiny_export, tmp_path, extra, message):
    if extra == ["--backend", "tensorrt"]:
        from exporters.tensorrt import unavailable as tensorrt_unavailable

        if tensorrt_unavailable() is None:
            pytest.skip("TensorRT and a GPU are present: this checks their absence")
    result = zoo(
        "run", tiny_export("pixart", "sigma"), "--prompt", "x", "--steps", "1", *extra, "--out", tmp_path / "x.png"
    )
    assert_error(result, message)
    assert list(tmp_path.iterdir()) == []


def test_run_bad_paths(tiny_export, tmp_path):
    assert_error(
        zoo("run", tmp_path / "nope", "--prompt", "x", "--out", tmp_path / "x.png"),
        "does not exist; create it with `zoo export`",
    )
    assert_error(
        zoo("run", tiny_export("pixart", "sigma"), "--prompt", "x", "--out", tmp_path / "x.jpg"),
        "expected a .png or .npy file",
    )
    assert_error(
        zoo("run", tiny_export("transformer-temporal", "default"), "--prompt", "x", "--out", tmp_path / "x.png"),
        "family 'transformer-temporal' has no sampler",
    )


def test_run_truncated_model(tiny_export, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_export("pixart", "sigma"), export)
    model = export / "transformer" / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    result = zoo("run", export, "--prompt", "x", "--steps", "1", "--out", tmp_path / "x.png")
    assert_error(result, "transformer/model.onnx is")
    assert "truncated or replaced; re-export" in result.output
    assert not (tmp_path / "x.png").exists()


def test_parity_failure_exits_non_zero(tiny_export, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_export("transformer-temporal", "default"), export)
    perturb_graph(export, "transformer", lambda w: w * 1.5)
    result = zoo("parity", export)
    assert_error(result, "parity failed:")
    assert "FAIL component transformer sample at" in result.output
    assert json.loads((export / "parity.json").read_text())["failed"] > 0


def test_bench_reports_both_runtimes(tiny_export, tmp_path):
    result = zoo(
        "bench",
        tiny_export("transformer-temporal", "default"),
        "--iterations",
        "2",
        "--warmup",
        "0",
        "--json",
        tmp_path / "b.json",
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["component"] for r in rows] == ["transformer"]
    assert rows[0]["torch_ms"] > 0 and rows[0]["backend_ms"] > 0
    assert rows[0]["speedup"] == pytest.approx(rows[0]["torch_ms"] / rows[0]["backend_ms"])


def test_console_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.cli", "export", "nope", "--tiny", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: unknown family 'nope'; known families: animatediff, pixart, transformer-temporal, unianimate-dit, unianimate-pose, wan-animate, wan-animate-pose"
    )


def test_missing_external_data_is_a_clear_error(tmp_path, external_data_export):
    out = tmp_path / "tt"
    shutil.copytree(external_data_export[0], out)
    (out / "transformer" / "model.onnx.data").unlink()
    for command in ("parity", "bench"):
        assert_error(zoo(command, out), "model.onnx.data of")


def test_export_into_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = zoo("export", "transformer-temporal", "--tiny", "--out", tmp_path)
    assert_error(result, "exists and is not a zoo export folder")
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_custom_pixart_checkpoint_end_to_end(tmp_path):
    """A PixArt checkpoint unlike the built-in tiny ones (VAE scale 4, patch 1, 64-token
    tokenizer, 3 layers, an alpha pipeline with sample_size 128 whose transformer takes no size
    conditions although the pipeline sends them) goes through --model export, parity and run."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from zoo.infra.tiny import build_t5_tokenizer

    ckpt = tmp_path / "custom"
    torch.manual_seed(1)
    build_t5_tokenizer(ckpt / "tokenizer", model_max_length=64)
    tokenizer = AutoTokenizer.from_pretrained(ckpt / "tokenizer")
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=16,
            d_kv=4,
            d_ff=32,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
        )
    )
    transformer = PixArtTransformer2DModel(
        num_attention_heads=3,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=3,
        cross_attention_dim=24,
        caption_channels=16,
        sample_size=128,
        patch_size=1,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        num_embeds_ada_norm=1000,
        use_additional_conditions=False,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
    )
    PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    ).save_pretrained(ckpt)

    out = tmp_path / "out"
    result = zoo("export", "pixart", "--model", ckpt, "--out", out, "--height", "32:64:80", "--width", "48:64:64")
    assert result.exit_code == 0, result.output
    m = load_manifest(out)
    assert m.variant == "alpha-512" and m.pipeline == "PixArtAlphaPipeline"
    assert m.envelope["text_length"].max == 64 and m.axes["height"].multiple_of == 8
    assert m.components["transformer"].dims["latent_height"].to_json() == {
        "min": 8,
        "opt": 16,
        "max": 20,
        "multiple_of": 1,
    }
    result = zoo("parity", out)
    assert result.exit_code == 0, result.output
    result = zoo(
        "run", out, "--prompt", "a cat", "--steps", "2", "--height", "72", "--width", "56", "--out", tmp_path / "c.npy"
    )
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "c.npy").shape == (1, 72, 56, 3)
    assert_error(
        zoo("run", out, "--prompt", "a cat", "--height", "68", "--out", tmp_path / "d.npy"),
        "--height 68: height must be a multiple of 8 pixels",
    )


def test_batch_envelope_without_single_image(tmp_path):
    """--batch 2:2:2: the text encoder still sees one prompt at a time, as in the pipeline."""
    out = tmp_path / "b2"
    assert zoo("export", "pixart", "--tiny", "--batch", "2:2:2", "--out", out).exit_code == 0
    assert load_manifest(out).components["text_encoder"].dims["batch"].to_json() == {
        "min": 1,
        "opt": 1,
        "max": 2,
        "multiple_of": 1,
    }
    result = zoo("run", out, "--prompt", "a fox", "--steps", "2", "--out", tmp_path / "b.npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "b.npy").shape == (2, 64, 64, 3)
    assert zoo("parity", out).exit_code == 0


def test_export_over_a_foreign_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text('{"manifest_version": 3}')
    (tmp_path / "background.js").write_text("precious")
    assert_error(zoo("export", "transformer-temporal", "--tiny", "--out", tmp_path), "is not a zoo export folder")
    assert (tmp_path / "background.js").read_text() == "precious"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "foo"], "--device 'foo': expected cpu, cuda or cuda:N"),
        (["--resolution-binning"], "--height 64 (binned by the pipeline to) 1024 is outside the exported profile"),
    ],
)
def test_run_more_bad_requests(tiny_export, tmp_path, extra, message):
    result = zoo(
        "run", tiny_export("pixart", "sigma"), "--prompt", "x", "--steps", "1", *extra, "--out", tmp_path / "x.png"
    )
    assert_error(result, message)
    assert list(tmp_path.iterdir()) == []


def test_run_out_is_a_folder(tiny_export, tmp_path):
    (tmp_path / "a.png").mkdir()
    assert_error(
        zoo("run", tiny_export("pixart", "sigma"), "--prompt", "x", "--out", tmp_path / "a.png"),
        "expected a file path in a folder",
    )


def test_pipeline_rejection_is_one_line(tiny_export, tmp_path):
    # PixArtAlphaPipeline indexes scheduler.step(...)[1] at one step, which DPM-Solver lacks
    result = zoo(
        "run", tiny_export("pixart", "alpha-512"), "--prompt", "x", "--steps", "1", "--out", tmp_path / "x.png"
    )
    assert_error(result, "PixArtAlphaPipeline rejected the request (IndexError")


@pytest.mark.parametrize(
    "family, args, message",
    [
        (
            "animatediff",
            ["--prompt", "x", "--free-init", "0"],
            "Invalid value for '--free-init': 0 is not in the range x>=1",
        ),
        (
            "animatediff",
            ["--prompt", "x", "--free-init", "2", "--free-init-method", "box"],
            "Invalid value for '--free-init-method'",
        ),
        ("animatediff", ["--prompt", "x", "--fps", "0"], "Invalid value for '--fps': 0 is not in the range x>=1"),
        (
            "wan-animate",
            ["--image", "x", "--pose-video", "x", "--face-video", "x", "--mode", "dance"],
            "Invalid value for '--mode'",
        ),
        (
            "wan-animate",
            ["--image", "x", "--pose-video", "x", "--face-video", "x", "--prev-frames", "3"],
            "Invalid value for '--prev-frames'",
        ),
        (
            "unianimate-dit",
            ["--image", "x", "--pose-video", "x", "--ref-pose", "x", "--context-frames", "0"],
            "Invalid value for '--context-frames'",
        ),
        ("unianimate-dit", ["--pose-video", "x", "--ref-pose", "x"], "Missing option '--image'"),
    ],
)
def test_family_run_options_are_checked_by_click(tiny_export, tmp_path, family, args, message):
    out = tmp_path / "o.mp4"
    result = zoo("run", tiny_export(family), *args, "--out", out)
    assert_usage(result, message)
    assert not out.exists()


def test_bench_unknown_component(tiny_export):
    assert_error(
        zoo("bench", tiny_export("transformer-temporal"), "--component", "unet"),
        "has no component 'unet'; it has transformer",
    )


def test_bench_against_another_export(tiny_export, tmp_path):
    """--against: the other export's same component timed on the same feeds, and both sizes."""
    export = tiny_export("transformer-temporal")
    result = zoo(
        "bench", export, "--against", export, "--iterations", "1", "--warmup", "0", "--json", tmp_path / "b.json"
    )
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["against_ms"] > 0 and row["size"] == row["against_size"] > 0
    assert row["against_speedup"] == pytest.approx(row["against_ms"] / row["backend_ms"])


def test_bench_against_bad_exports(tiny_export, tmp_path):
    """--against an export of another family, or a folder that is no export: one error line, exit
    2, no JSON written."""
    export, out = tiny_export("transformer-temporal"), tmp_path / "b.json"
    result = zoo("bench", export, "--against", tiny_export("pixart"), "--json", out)
    assert_error(result, "an export of pixart, not of transformer-temporal")
    assert_error(zoo("bench", export, "--against", tmp_path, "--json", out), "has no manifest.json")
    assert not out.exists()


# --------------------------------------------------------------------------------------
# Start-up, help text, and faults a newcomer probe found (issue 21)
# --------------------------------------------------------------------------------------

HEAVY = ("torch", "diffusers", "transformers", "onnx", "onnxruntime")


@pytest.mark.parametrize("command", [[], ["export"], ["run"], ["random"], ["parity"], ["bench"], ["build"]])
def test_help_imports_no_heavy_library(command):
    """`zoo --help` and a command's help start in a fraction of a second: no torch, no diffusers."""
    code = (
        "import sys\nfrom zoo.cli import main\ntry:\n    main(sys.argv[1:], prog_name='zoo')\nexcept SystemExit as e:\n"
        f"    assert e.code == 0, e.code\nprint('imported:', *sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code, *command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    assert done.stdout.splitlines()[-1] == "imported:", (
        f"`zoo {' '.join(command)} --help`: {done.stdout.splitlines()[-1]}"
    )


def test_every_family_option_help_shows_its_range_or_none():
    """An unbounded integer option shows no range (click wrote `[x<=None]`); a bounded one shows it."""
    import click

    from zoo.infra.options import click_option
    from zoo.registry import family_names, get_family

    ctx = click.Context(main)
    seen = 0
    for name in family_names():
        for option in get_family(name).run_options:
            record = click_option(option).get_help_record(ctx)
            text = record[1] if record else ""
            assert "None" not in text, f"{name} {option.flag}: {text}"
            if option.type == "int" and option.low is not None:
                seen += 1
                assert f"x>={int(option.low)}" in text, f"{name} {option.flag}: {text}"
    assert seen


def test_families_says_what_each_sampler_is():
    result = zoo("families")
    assert result.exit_code == 0, result.output
    assert "next release" not in result.output
    assert "unianimate-dit: " in result.output


def test_run_out_under_a_file_is_refused_before_sampling(tiny_export, tmp_path, monkeypatch):
    from runtimes import sampler

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started before --out was checked")

    monkeypatch.setattr(sampler.Sampler, "__init__", no_sampling)
    (tmp_path / "ro").write_text("a file where a folder should be")
    result = zoo(
        "run",
        tiny_export("pixart", "sigma"),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        tmp_path / "ro" / "sub" / "x.png",
    )
    assert_error(result, f"--out {tmp_path / 'ro' / 'sub' / 'x.png'}: {tmp_path / 'ro'} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]


def test_run_out_in_a_folder_without_permission(tiny_export, tmp_path):
    """`zoo run` by a user who may not write in the --out folder: the cause is named before anything
    samples. Root may write anywhere, so as root (these tests, here) the run happens in a forked
    child that has become nobody (the interpreter, under /root, could not be started as nobody)."""
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="zoo-test-perm-"))
    try:
        export = shared / "export"
        shutil.copytree(tiny_export("pixart", "sigma"), export)
        readonly = shared / "ro"
        readonly.mkdir()
        for p in [shared, readonly, export, *export.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: become nobody, run, report
            code = 1
            try:
                os.close(read)
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                result = zoo("run", export, "--prompt", "x", "--steps", "1", "--out", readonly / "x.png")
                os.write(write, result.output.encode())
                code = result.exit_code
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            output = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 2, output
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert errors == [f"error: --out {readonly / 'x.png'}: cannot write in {readonly}: permission denied"], output
        assert list(readonly.iterdir()) == []
    finally:
        for p in [shared, *shared.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(shared)


def test_steps_beyond_the_scheduler_are_refused_before_sampling(tiny_export, tmp_path, monkeypatch):
    """DPM-Solver repeats a timestep at 1000 steps of 1000 and divides by zero: refused, naming --steps."""
    from runtimes import sampler

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started before --steps was checked")

    monkeypatch.setattr(sampler.Sampler, "__init__", no_sampling)
    export = tiny_export("pixart", "sigma")
    out = tmp_path / "x.png"
    assert_error(
        zoo("run", export, "--prompt", "x", "--steps", "1000", "--out", out),
        "--steps 1000: DPMSolverMultistepScheduler cannot take that many steps on this export's scheduler "
        "config (its schedule degenerates (it repeats timesteps): step 500 of 1000 gives NaN); it takes at most "
        "999 steps here",
    )
    assert_error(
        zoo("run", export, "--prompt", "x", "--steps", "1001", "--out", out),
        "--steps 1001: DPMSolverMultistepScheduler of this export has 1000 training timesteps "
        "(num_train_timesteps), so it takes at most 1000 steps",
    )
    assert_error(
        zoo("run", export, "--prompt", "x", "--steps", "1001", "--scheduler", "DDIMScheduler", "--out", out),
        "--steps 1001: DDIMScheduler of this export has 1000 training timesteps",
    )
    assert list(tmp_path.iterdir()) == []
    # what the scheduler can take is taken: DPM-Solver at 999, DDIM at all 1000 timesteps
    manifest = load_manifest(export)
    sampler.prepare_request(manifest, {"prompt": "x", "steps": 999})
    sampler.prepare_request(manifest, {"prompt": "x", "steps": 1000, "scheduler": "DDIMScheduler"})


def test_steps_check_simulates_each_scheduler_config_and_step_count_once(tiny_export, monkeypatch):
    """A request checked again (parity checks it, then samples it twice) is not simulated again:
    once per (scheduler class, config, steps) in a process, refusals included."""
    from runtimes import sampler
    from zoo.errors import InputError

    monkeypatch.setattr(sampler, "_STEP_PROBLEMS", {})
    simulated = []
    real = sampler._schedule_problem
    monkeypatch.setattr(
        sampler, "_schedule_problem", lambda s, n: simulated.append((type(s).__name__, n)) or real(s, n)
    )
    manifest = load_manifest(tiny_export("pixart", "sigma"))
    for _ in range(3):
        sampler.prepare_request(manifest, {"prompt": "x", "steps": 3})
    assert simulated == [("DPMSolverMultistepScheduler", 3)]
    sampler.prepare_request(manifest, {"prompt": "x", "steps": 4})
    sampler.prepare_request(manifest, {"prompt": "x", "steps": 3, "scheduler": "DDIMScheduler"})
    assert simulated[1:] == [("DPMSolverMultistepScheduler", 4), ("DDIMScheduler", 3)]
    messages = []
    for _ in range(2):
        with pytest.raises(InputError, match="it takes at most 999 steps here") as refused:
            sampler.prepare_request(manifest, {"prompt": "x", "steps": 1000})
        messages.append(str(refused.value))
        if len(messages) == 1:
            assert len(simulated) > 4  # the refusal and the bisection for the most it takes
            done = len(simulated)
    assert messages[0] == messages[1] and len(simulated) == done
    monkeypatch.setattr(sampler, "_STEP_PROBLEMS_KEPT", 2)  # the least recently used are forgotten
    sampler.prepare_request(manifest, {"prompt": "x", "steps": 3})  # remembered, now the most recent
    sampler.prepare_request(manifest, {"prompt": "x", "steps": 5})
    assert len(simulated) == done + 1 and [k[2] for k in sampler._STEP_PROBLEMS] == [3, 5]
    sampler.prepare_request(manifest, {"prompt": "x", "steps": 4})
    assert len(simulated) == done + 2 and [k[2] for k in sampler._STEP_PROBLEMS] == [5, 4]


def test_steps_check_runs_the_schedulers_own_arithmetic():
    """Second-order schedulers repeat timesteps on purpose (Heun, KDPM2): no refusal for them."""
    from runtimes.sampler import _schedule_problem

    dpm = diffusers.DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    assert _schedule_problem(dpm, 999) is None and "gives NaN" in _schedule_problem(dpm, 1000)
    for name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "PNDMScheduler", "EulerDiscreteScheduler"):
        assert _schedule_problem(getattr(diffusers, name).from_config(dpm.config), 1000) is None, name
    lcm = diffusers.LCMScheduler.from_config(dpm.config)
    assert "original_steps" in _schedule_problem(lcm, 100)


def test_a_killed_exports_scratch_folder_is_removed_by_the_next(tmp_path):
    """`zoo export --tiny` builds its random model in /tmp/zoo-FAMILY-PID-*; a kill -9 leaves it,
    and the next export of the family removes it (its process is gone), never a live one's."""
    import tempfile

    from exporters.onnx import random_reference

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = Path(tempfile.gettempdir())
    stale = root / f"zoo-transformer-temporal-{dead.pid}-killed"
    live = root / f"zoo-transformer-temporal-{os.getpid()}-alive"
    for folder in (stale, live):
        (folder / "model").mkdir(parents=True)
    try:
        fam = get_family("transformer-temporal")
        with random_reference(fam, variant=None, preset="tiny") as ref:
            own = [p for p in root.glob(f"zoo-transformer-temporal-{os.getpid()}-*") if p != live]
            assert not stale.exists() and live.is_dir() and len(own) == 1
            assert Path(ref.source).is_relative_to(own[0])
        assert not own[0].exists() and live.is_dir()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


def _diffusers_pixart_sigma_test_config(dest):
    """diffusers' own PixArt-Sigma pipeline test components (tests/pipelines/pixart_sigma): sample_size
    8, a one-block VAE (factor 1), DDIM; the T5 is a local tiny one (no hub here)."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from zoo.infra.tiny import build_t5_tokenizer

    torch.manual_seed(0)
    build_t5_tokenizer(dest / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(dest / "tokenizer")
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
    )
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    pipe = diffusers.PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=diffusers.AutoencoderKL(),
        transformer=transformer,
        scheduler=diffusers.DDIMScheduler(),
    )
    pipe.save_pretrained(dest)
    return pipe


def test_pixart_size_ceiling_is_a_guard_that_says_so(tmp_path, monkeypatch):
    """PixArt computes its position embedding for any size: diffusers' own test configuration
    (8 latents, VAE factor 1) exports and generates 48 px; the ceiling is a memory guard whose
    message says so and how to lift it."""
    from zoo.contract import GUARD_OVERRIDE, Range
    from zoo.errors import EnvelopeError

    pipe = _diffusers_pixart_sigma_test_config(tmp_path / "ckpt")
    fam = get_family("pixart")
    ref = fam.load(tmp_path / "ckpt")
    monkeypatch.delenv(GUARD_OVERRIDE, raising=False)
    assert fam.envelope(ref, {"height": Range(48, 48, 48), "width": Range(48, 48, 48)})["height"] == Range(48, 48, 48)
    with pytest.raises(
        EnvelopeError,
        match=r"--height 48:48:1024: height can be at most 512 pixels \(a guard, not a "
        r"limit of PixArt: .* set ZOO_NO_SIZE_GUARD=1 to export beyond it\)",
    ):
        fam.envelope(ref, {"height": Range(48, 48, 1024)})
    monkeypatch.setenv(GUARD_OVERRIDE, "1")
    assert fam.envelope(ref, {"height": Range(48, 48, 1024)})["height"].max == 1024
    monkeypatch.delenv(GUARD_OVERRIDE)

    out = tmp_path / "export"
    result = zoo(
        "export",
        "pixart",
        "--model",
        tmp_path / "ckpt",
        "--out",
        out,
        "--height",
        "48",
        "--width",
        "48",
        "--batch",
        "1",
        "--text-length",
        "16",
    )
    assert result.exit_code == 0, result.output
    result = zoo("run", out, "--prompt", "a fox", "--steps", "2", "--seed", "3", "--out", tmp_path / "fox.npy")
    assert result.exit_code == 0, result.output
    want = pipe(
        prompt="a fox",
        num_inference_steps=2,
        height=48,
        width=48,
        max_sequence_length=16,
        use_resolution_binning=False,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).images
    got = np.load(tmp_path / "fox.npy")
    assert got.shape == want.shape == (1, 48, 48, 3) and np.abs(got - want).max() <= 1e-3


def test_export_takes_the_folder_zoo_random_wrote(tmp_path):
    """`zoo random pixart --out DIR` writes DIR/model; `--model DIR` is that model (an envelope error
    after loading shows it was found)."""
    assert zoo("random", "pixart", "--out", tmp_path / "px").exit_code == 0
    result = zoo("export", "pixart", "--model", tmp_path / "px", "--height", "72", "--out", tmp_path / "out")
    assert_error(result, "--height 72:72:72: height must be a multiple of 16 pixels")
    assert f"using {tmp_path / 'px' / 'model'}, the model folder `zoo random` wrote" in result.output
    assert not (tmp_path / "out").exists()


def test_random_loads_the_model_only_for_a_family_with_media(tmp_path, monkeypatch):
    """`zoo random` loads what it wrote only to ask for sample media: not for PixArt or AnimateDiff,
    whose requests take none."""
    from zoo.registry import family_names

    assert {n for n in family_names() if get_family(n).has_sample_media} == {
        "wan-animate",
        "unianimate-dit",
        "wan-animate-pose",
    }
    for name in ("pixart", "animatediff"):
        fam = get_family(name)
        monkeypatch.setattr(type(fam), "load", lambda self, *a, **k: pytest.fail("the model was loaded"))
        result = zoo("random", name, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert not (tmp_path / name / "media").exists() and "wrote media" not in result.output


def test_random_writes_media_the_tiny_export_takes(tiny_export, tmp_path):
    """`zoo random wan-animate` writes the media the README's `zoo run` lines take: the face video at
    the model's face size, frames that both documented segmentings accept."""
    from runtimes.sampler import prepare_request

    assert zoo("random", "wan-animate", "--out", tmp_path / "wan").exit_code == 0
    media = tmp_path / "wan" / "media"
    export = tiny_export("wan-animate")
    manifest = load_manifest(export)
    face = load_video_frames(media / "face.mp4")
    size = manifest.configs["transformer"]["motion_encoder_size"]
    assert face[0].size == (size, size) and len(face) == 17
    common = {"image": media / "ref.png", "pose_video": media / "pose.mp4", "face_video": media / "face.mp4"}
    prepare_request(manifest, common)
    prepare_request(
        manifest,
        {
            **common,
            "mode": "replace",
            "background_video": media / "bg.mp4",
            "mask_video": media / "mask.mp4",
            "prev_frames": "5",
            "segment_frames": 13,
        },
    )


def load_video_frames(path):
    from zoo.infra.media import load_video

    return load_video(path, option="--video")


def test_parity_json_on_stdout_keeps_the_verdict_line_on_stderr(tiny_export):
    """`zoo parity --json -`: stdout is the report alone (parseable), the verdict is still the last
    line a user sees, on stderr, on a full pass too."""
    result = zoo("parity", tiny_export("wan-animate-pose"), "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["exit_status"] == 0
    assert result.stderr.strip().splitlines()[-1] == f"{len(report['rows'])} passed, 0 failed"

"""TensorRT engines: build specs and trtexec lines, the engine cache (keys, sidecars, corrupt
entries, locking, refit), the backend's refusals, all through a builder passed in as a function
so they run without TensorRT; and, marked ``tensorrt``, real engines where TensorRT and a GPU are."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import assert_error, perturb_graph, zoo

from exporters import tensorrt as engines
from exporters.manifest import load_manifest
from exporters.profiles import input_shapes
from zoo.contract import Range
from zoo.errors import ArtifactError, EnvelopeError, ExportError
from zoo.registry import family_names

FAMILIES = family_names()  # every family declared
HERE = engines.Target("10.8.0.43", "9.0", "NVIDIA H200")
REPO = Path(__file__).resolve().parent.parent


def fake_builder(calls: list | None = None, delay: float = 0.0):
    """A builder that writes a plan naming what it built (and counts its calls)."""

    def build(spec: engines.BuildSpec, path: Path) -> engines.BuildResult:
        if calls is not None:
            calls.append(spec.component)
        time.sleep(delay)
        path.write_bytes(b"PLAN " + json.dumps(spec.shapes(), sort_keys=True).encode())
        return engines.BuildResult(device_memory=1 << 20)

    return build


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def spec_of(export: Path, component: str = "transformer", **options) -> engines.BuildSpec:
    manifest = load_manifest(export)
    spec = engines.build_specs(manifest, (component,), options=engines.BuildOptions(**options))[0]
    return engines.with_content(spec, manifest)


# --------------------------------------------------------------------------------------
# zoo build --dry-run: profiles and trtexec lines
# --------------------------------------------------------------------------------------


def test_dim_narrows_a_source_dim_and_its_derived_dims_follow(tiny_export):
    export = tiny_export("animatediff")
    decoder = load_manifest(export).component("vae_decoder")
    latent = decoder.dims["latent_height"]
    result = zoo(
        "build",
        export,
        "--component",
        "vae_decoder",
        "--dim",
        f"latent_height={latent.min}:{latent.min}:{latent.opt}",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    cmd = shlex.split(result.output.splitlines()[-1])
    flags = dict(c.split("=", 1) for c in cmd[1:] if "=" in c)
    name = decoder.inputs[0].name
    heights = [int(flags[f].split(":")[1].split("x")[2]) for f in ("--minShapes", "--optShapes", "--maxShapes")]
    assert heights == [latent.min, latent.min, latent.opt]  # the latent input's own dim
    spec = engines.build_specs(
        load_manifest(export), ("vae_decoder",), dims={"latent_height": Range(latent.min, latent.min, latent.opt)}
    )[0]
    pixels = spec.dims["height"]  # derived: 8 x latent_height
    assert (pixels.min, pixels.max) == (
        decoder.dims["height"].value_from(latent.min),
        decoder.dims["height"].value_from(latent.opt),
    )
    assert name in flags["--minShapes"]


def test_a_profile_narrowed_to_one_point_still_bounds_the_graphs_dynamic_inputs(tiny_export, copied_export):
    """`--dim frames_chunk=16 --dim latent_height=8 --dim latent_width=8` (every dynamic dim at one
    value) leaves the graph's inputs symbolic: trtexec needs --min/--opt/--maxShapes for them (all
    three the same shape), and the sidecar's line, which is the same function's, carries them too."""
    export = tiny_export("animatediff")
    decoder = load_manifest(export).component("vae_decoder")
    point = {d: dim.max for d, dim in decoder.dims.items() if dim.is_dynamic and not dim.is_derived}
    assert len(point) == 3
    result = zoo(
        "build",
        export,
        "--component",
        "vae_decoder",
        *[a for d, v in point.items() for a in ("--dim", f"{d}={v}")],
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    assert "static shapes" not in result.output
    assert all(f"{d} {v}:{v}:{v}" in result.output for d, v in point.items()), result.output
    flags = dict(c.split("=", 1) for c in shlex.split(result.output.splitlines()[-1])[1:] if "=" in c)
    spec = engines.build_specs(
        load_manifest(export), ("vae_decoder",), dims={d: Range(v, v, v) for d, v in point.items()}
    )[0]
    want = {n: "x".join(map(str, s)) for n, s in input_shapes(decoder, "max", spec.dims).items()}
    for flag in ("--minShapes", "--optShapes", "--maxShapes"):
        assert dict(item.split(":") for item in flags[flag].split(",")) == want
    # a transformer engine built for one frames value: its sidecar's trtexec line bounds the input too
    full = spec_of(copied_export)
    frames = full.dims["frames"]
    entry, _ = engines.get_or_build(
        replace(full, dims={**full.dims, "frames": replace(frames, min=frames.opt, max=frames.opt)}),
        HERE,
        fake_builder(),
    )
    assert "--minShapes=" in entry.sidecar["trtexec"] and "--maxShapes=" in entry.sidecar["trtexec"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weight-streaming", "100000000000000000000000G"], "is more device memory than any GPU has"),
        (["--timing-cache", "{tmp}/nowhere/cache.bin"], "does not exist; create it"),
        (
            ["--device", "cuda:abc"],
            "--device 'cuda:abc': TensorRT engines are built on a CUDA device; expected cuda or cuda:N",
        ),
        (["--device", "cpu"], "expected cuda or cuda:N"),
        (["--component", "transformer", "--component", "transformer"], "--component transformer is given 2 times"),
        ("truncate", "is 10 bytes, the manifest says"),
        ("corrupt", "does not match the sha256 in the manifest"),
    ],
)
def test_a_dry_run_checks_what_a_build_checks(copied_export, tmp_path, args, message):
    """Each is one `error:` line and exit 2 with or without --dry-run, and nothing is written."""
    graph = copied_export / "transformer" / "model.onnx"
    if args == "truncate":
        graph.write_bytes(graph.read_bytes()[:10])
        args = []
    elif args == "corrupt":
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
        args = []
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(p.relative_to(copied_export) for p in copied_export.rglob("*"))
    for dry in (["--dry-run"], []):
        assert_error(zoo("build", copied_export, *args, *dry), message)
    assert sorted(p.relative_to(copied_export) for p in copied_export.rglob("*")) == before
    assert list(tmp_path.iterdir()) == [copied_export]


@pytest.mark.parametrize(
    "dim, message",
    [
        ("latent_height=2:6:8", "outside the exported profile: latent_height must be in [4, 8]"),
        ("height=32:48:64", "height is derived (height = 8 x latent_height): give --dim latent_height=... instead"),
        ("latent_height=8:6:4", "expected MIN <= OPT <= MAX"),
        ("bogus=1", "no component being built has a dim 'bogus'"),
        ("latent_height", "expected NAME=MIN:OPT:MAX or NAME=N"),
    ],
)
def test_dim_outside_the_envelope_is_refused(tiny_export, dim, message):
    assert_error(
        zoo("build", tiny_export("animatediff"), "--component", "vae_decoder", "--dim", dim, "--dry-run"), message
    )


def test_component_or_precision_the_export_lacks_is_refused(tiny_export):
    export = tiny_export("animatediff")
    assert_error(zoo("build", export, "--component", "controlnet", "--dry-run"), "has no component 'controlnet'")
    assert_error(zoo("build", export, "--precision", "fp16", "--dry-run"), "no component of")
    assert_error(
        zoo("build", export, "--component", "unet", "--precision", "bf16", "--dry-run"),
        "--precision bf16: the export has no bfloat16 graph of unet is float32",
    )


def test_bad_build_options_are_usage_errors(tiny_export, tmp_path):
    export = tiny_export("transformer-temporal", "default")
    for args in (
        ["--weight-streaming", "lots"],
        ["--weight-streaming", "120%"],
        ["--workspace", "0"],
        ["--workspace", "nan"],
        ["--timing-cache", tmp_path],
    ):
        result = zoo("build", export, *args, "--dry-run")
        assert result.exit_code == 2 and "Invalid value for" in result.output
    assert_error(zoo("build", export, "--refit-from", tmp_path / "nowhere", "--dry-run"), "does not exist")
    assert list(tmp_path.iterdir()) == [] and not (export / "engines").exists(), result.output


def test_build_without_tensorrt_says_what_is_missing(tiny_export, tmp_path):
    if engines.unavailable() is None:
        pytest.skip("TensorRT and a GPU are present: this checks their absence")
    export = tiny_export("transformer-temporal", "default")
    assert_error(zoo("build", export), "zoo build needs TensorRT and an NVIDIA GPU")
    assert not (export / "engines").exists()


def test_weight_streaming_budget():
    assert [engines.parse_budget(b) for b in ("auto", "50%", "8g", "1024")] == ["auto", "50%", "8G", "1024"]
    assert engines.budget_bytes("50%", 1000, lambda: 7) == 500
    assert engines.budget_bytes("2M", 0, lambda: 7) == 2 << 20  # streamable weights not known
    assert engines.budget_bytes("auto", 1000, lambda: 7) == 7
    with pytest.raises(EnvelopeError, match="more than the engine's 1048576 bytes of streamable weights"):
        engines.budget_bytes("2M", 1 << 20, lambda: 7)
    engines.check_budget("1048576G")  # 1 PiB: the largest accepted
    with pytest.raises(EnvelopeError, match="more device memory than any GPU has"):
        engines.check_budget("1048577G")
    with pytest.raises(EnvelopeError, match="expected auto, a percentage"):
        engines.parse_budget("-1")


# --------------------------------------------------------------------------------------
# Cache keys
# --------------------------------------------------------------------------------------


def test_key_is_the_same_in_another_process(copied_export):
    key = spec_of(copied_export).key(HERE)
    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_tensorrt import spec_of, HERE; from pathlib import Path; "
        f"print(spec_of(Path({str(copied_export)!r})).key(HERE))"
    )
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.stdout.strip() == key


def test_key_changes_with_each_ingredient_and_only_with_them(copied_export, tmp_path):
    base = spec_of(copied_export)
    key = base.key(HERE)
    frames = base.record.dims["frames"]
    changed = {
        "target tensorrt": base.key(replace(HERE, tensorrt="10.3.0")),
        "target compute capability": base.key(replace(HERE, compute_capability="8.7")),
        "precision": replace(base, record=replace(base.record, precision="float16")).key(HERE),
        "profile": replace(base, dims={**base.dims, "frames": replace(frames, max=frames.min)}).key(HERE),
        "refittable": replace(base, options=engines.BuildOptions(refittable=True)).key(HERE),
        "weight streaming": replace(base, options=engines.BuildOptions(weight_streaming=True)).key(HERE),
        "workspace": replace(base, options=engines.BuildOptions(workspace_gib=2)).key(HERE),
        "component": replace(base, record=replace(base.record, name="other")).key(HERE),
    }
    assert all(k != key for k in changed.values()), changed
    assert len(set(changed.values())) == len(changed)
    same = [  # not part of the plan: a timing cache, the streaming budget (run time), the GPU's name
        replace(base, options=engines.BuildOptions(timing_cache=tmp_path / "t.cache")).key(HERE),
        base.key(replace(HERE, gpu="NVIDIA H100")),
    ]
    assert same == [key, key]
    perturb_graph(copied_export, "transformer", lambda w: w + 1)  # other weights
    assert spec_of(copied_export).key(HERE) != key


def test_content_digest_covers_the_sources_lora_scale(copied_export):
    manifest = load_manifest(copied_export)
    record = manifest.component("transformer")
    digest = engines.content_digest(manifest, record)
    manifest.sources = [dict(s, scale=0.5) for s in manifest.sources]
    assert engines.content_digest(manifest, record) != digest


# --------------------------------------------------------------------------------------
# The cache through a builder function
# --------------------------------------------------------------------------------------


def test_builds_once_then_uses_the_cache(copied_export):
    calls: list = []
    spec = spec_of(copied_export)
    entry, built = engines.get_or_build(spec, HERE, fake_builder(calls))
    assert built and calls == ["transformer"]
    assert entry.folder == copied_export / "engines" / spec.key(HERE)
    sidecar = json.loads((entry.folder / "engine.json").read_text())
    assert sidecar["key"] == spec.key(HERE) and sidecar["component"] == "transformer"
    assert sidecar["target"] == HERE.to_json() and sidecar["precision"] == "float32"
    assert sidecar["plan"]["size"] == entry.plan.stat().st_size and sidecar["build"]["device_memory_bytes"] == 1 << 20
    assert sidecar["profile"] == spec.shapes() and sidecar["trtexec"].startswith("trtexec --onnx=")
    assert f"--saveEngine=engines/{spec.key(HERE)}/engine.plan" in sidecar["trtexec"]
    again, built = engines.get_or_build(spec_of(copied_export), HERE, fake_builder(calls))
    assert not built and calls == ["transformer"] and again.folder == entry.folder
    assert sorted(p.name for p in (copied_export / "engines").iterdir()) == [f".{entry.key}.lock", entry.key]


@pytest.mark.parametrize(
    "damage, what",
    [
        (lambda e: e.plan.write_bytes(b""), "is empty"),
        (lambda e: e.plan.write_bytes(e.plan.read_bytes()[:7]), "is truncated"),
        (lambda e: e.plan.write_bytes(e.plan.read_bytes()[::-1]), "does not match the sha256"),
        (lambda e: e.plan.unlink(), "engine.plan is missing"),
        (lambda e: (e.folder / "engine.json").unlink(), "engine.json is missing"),
        (lambda e: (e.folder / "engine.json").write_text("{not json"), "is not readable JSON"),
        (
            lambda e: (e.folder / "engine.json").write_text(
                (e.folder / "engine.json").read_text().replace('"precision": "float32"', '"precision": "float16"')
            ),
            "do not hash to its key",
        ),
    ],
)
def test_a_damaged_entry_is_rebuilt_never_used(copied_export, caplog, damage, what):
    calls: list = []
    spec = spec_of(copied_export)
    entry, _ = engines.get_or_build(spec, HERE, fake_builder(calls))
    good = entry.plan.read_bytes()
    damage(entry)
    with caplog.at_level("WARNING"):
        again, built = engines.get_or_build(spec, HERE, fake_builder(calls))
    assert built and calls == ["transformer", "transformer"]
    assert what in caplog.text and "rebuilding it" in caplog.text
    assert again.plan.read_bytes() == good and again.read_plan() == again.plan


def test_a_failed_build_leaves_nothing_half_written(copied_export):
    spec = spec_of(copied_export)

    def broken(spec, path):
        path.write_bytes(b"half a plan")
        raise ExportError("TensorRT could not build component 'transformer': out of memory")

    with pytest.raises(ExportError, match="out of memory"):
        engines.get_or_build(spec, HERE, broken)
    with pytest.raises(ExportError, match="wrote no plan"):
        engines.get_or_build(spec, HERE, lambda spec, path: engines.BuildResult())
    assert [p.name for p in (copied_export / "engines").iterdir()] == [f".{spec.key(HERE)}.lock"]


def _build_in_child(export: str, log: str) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    calls: list = []
    engines.get_or_build(spec_of(Path(export)), HERE, fake_builder(calls, delay=1.0))
    with open(log, "a") as f:
        f.write("built\n" if calls else "cached\n")


def test_a_dry_run_needs_no_posix_only_module(copied_export):
    """Windows has no fcntl (a TensorRT platform): the command line and the engine cache import
    without it, and a dry run works; the build lock picks its mechanism when it is taken."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "from click.testing import CliRunner\nfrom zoo.cli import main\n"
        f"r = CliRunner().invoke(main, ['build', {str(copied_export)!r}, '--dry-run'], catch_exceptions=False)\n"
        "print(r.output); sys.exit(r.exit_code)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0 and "trtexec --onnx=" in out.stdout, out.stdout + out.stderr


def test_two_builders_of_one_key_build_once(copied_export, tmp_path):
    import multiprocessing

    log = tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_build_in_child, args=(str(copied_export), str(log))) for _ in range(2)]
    for c in children:
        c.start()
    for c in children:
        c.join(60)
        assert c.exitcode == 0
    assert sorted(log.read_text().split()) == ["built", "cached"]
    engines.check_entry(copied_export / "engines" / spec_of(copied_export).key(HERE), HERE)


def test_the_streaming_budget_is_recorded_without_a_rebuild(copied_export):
    calls: list = []
    first, _ = engines.get_or_build(
        spec_of(copied_export, weight_streaming=True, weight_streaming_budget="auto"), HERE, fake_builder(calls)
    )
    second, built = engines.get_or_build(
        spec_of(copied_export, weight_streaming=True, weight_streaming_budget="40%"), HERE, fake_builder(calls)
    )
    assert not built and calls == ["transformer"] and second.folder == first.folder
    assert json.loads((first.folder / "engine.json").read_text())["weight_streaming_budget"] == "40%"
    assert "--weightStreaming --weightStreamingBudget=-1" in first.sidecar["trtexec"]


# --------------------------------------------------------------------------------------
# Finding the engine to run, and its refusals (also through `zoo run --backend tensorrt`)
# --------------------------------------------------------------------------------------


def test_find_engine_prefers_the_widest_profile_and_refuses_other_targets(copied_export):
    manifest = load_manifest(copied_export)
    record = manifest.component("transformer")
    with pytest.raises(ArtifactError, match="no TensorRT engine for component 'transformer'"):
        engines.find_engine(manifest, record, HERE)
    full = spec_of(copied_export)
    frames = full.dims["frames"]
    narrow = replace(full, dims={**full.dims, "frames": replace(frames, max=frames.opt)})
    engines.get_or_build(narrow, HERE, fake_builder())
    wide, _ = engines.get_or_build(full, HERE, fake_builder())
    assert engines.find_engine(manifest, record, HERE).folder == wide.folder
    with pytest.raises(
        engines.EngineTargetError,
        match=r"was built for TensorRT 10\.8\.0\.43 on compute capability 9\.0 "
        r"\(NVIDIA H200\); this machine has TensorRT 10\.3\.0 on compute capability 8\.7",
    ):
        engines.find_engine(manifest, record, engines.Target("10.3.0", "8.7", "Orin"))


def test_find_engine_refuses_engines_of_another_export(copied_export):
    engines.get_or_build(spec_of(copied_export), HERE, fake_builder())
    perturb_graph(copied_export, "transformer", lambda w: w * 2)
    manifest = load_manifest(copied_export)
    with pytest.raises(ArtifactError, match="were built from another export of it"):
        engines.find_engine(manifest, manifest.component("transformer"), HERE)


@pytest.fixture
def tensorrt_here(monkeypatch):
    """This process believes it has TensorRT on ``HERE`` (nothing past the engine lookup runs)."""
    monkeypatch.setattr(engines, "current_target", lambda device="cuda": HERE)


@pytest.mark.parametrize(
    "damage, message",
    [
        (None, "no TensorRT engine for component 'text_encoder'"),
        (
            "other target",
            "was built for TensorRT 10.3.0 on compute capability 8.7 (Orin); this machine has TensorRT 10.8.0.43",
        ),
        ("truncate", "is truncated"),
        ("corrupt", "does not match the sha256 in its sidecar: corrupted: rebuild it with `zoo build"),
        ("no sidecar", "engine.json is missing"),
        ("not json", "is not readable JSON"),
    ],
)
def test_the_backend_refuses_a_bad_engine_folder_before_deserializing(
    tiny_export, tmp_path, tensorrt_here, damage, message
):
    """What `zoo run / parity / bench --backend tensorrt` meet first (an ArtifactError: one
    `error:` line, exit 2). The sampler and parity put their tensors on the GPU before the first
    engine loads, which a CPU-only torch cannot, so the refusal is checked at the backend here."""
    from runtimes.backends import load_backend

    export = _copy(tiny_export("pixart", "sigma"), tmp_path / "pixart")
    if damage is not None:
        target = engines.Target("10.3.0", "8.7", "Orin") if damage == "other target" else HERE
        entry, _ = engines.get_or_build(spec_of(export, "text_encoder"), target, fake_builder())
        if damage == "truncate":
            entry.plan.write_bytes(entry.plan.read_bytes()[:5])
        elif damage == "corrupt":
            entry.plan.write_bytes(entry.plan.read_bytes()[::-1])
        elif damage == "no sidecar":
            (entry.folder / "engine.json").unlink()
        elif damage == "not json":
            (entry.folder / "engine.json").write_text("]")
    with pytest.raises(ArtifactError, match=re.escape(message)):
        load_backend("tensorrt", load_manifest(export), "text_encoder", "cuda")


def test_refit_from_engines_of_another_gpu_is_one_error(
    copied_export, other_weights, tmp_path, tensorrt_here, monkeypatch
):
    other = _copy(other_weights, tmp_path / "other")
    engines.get_or_build(spec_of(other, refittable=True), engines.Target("10.3.0", "8.7", "Orin"), fake_builder())
    monkeypatch.setattr(engines, "unavailable", lambda device="cuda": None)
    assert_error(
        zoo("build", copied_export, "--refit-from", other),
        "was built for TensorRT 10.3.0 on compute capability 8.7 (Orin)",
    )
    assert not (copied_export / "engines").exists() or not any((copied_export / "engines").glob("*/engine.plan"))


def test_build_rebuilds_a_corrupted_plan_through_the_command(copied_export, tensorrt_here, monkeypatch):
    calls: list = []
    monkeypatch.setattr(engines, "unavailable", lambda device="cuda": None)
    monkeypatch.setattr(engines, "build_plan", lambda spec, path, device: fake_builder(calls)(spec, path))
    result = zoo("build", copied_export)
    assert result.exit_code == 0, result.output
    assert "transformer: " in result.output and "built in" in result.output and calls == ["transformer"]
    result = zoo("build", copied_export)
    assert "cached" in result.output and calls == ["transformer"]
    plan = next((copied_export / "engines").glob("*/engine.plan"))
    plan.write_bytes(plan.read_bytes()[:3])
    result = zoo("build", copied_export)
    assert "built in" in result.output and calls == ["transformer"] * 2
    engines.check_entry(plan.parent, HERE)


# --------------------------------------------------------------------------------------
# Refit
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """The tiny transformer-temporal model with other random weights: same graph, new weights."""
    out = tmp_path_factory.mktemp("refit") / "seed1"
    result = zoo("export", "transformer-temporal", "--tiny", "--seed", "1", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_refit_from_an_export_of_another_model_is_refused(copied_export, tiny_export, other_weights, tmp_path):
    assert_error(
        zoo("build", copied_export, "--refit-from", tiny_export("pixart", "sigma"), "--dry-run"),
        "it is a pixart export",
    )
    assert_error(
        zoo("build", copied_export, "--refit-from", tiny_export("transformer-temporal", "single-group"), "--dry-run"),
        "component 'transformer' is another graph there",
    )
    result = zoo("build", copied_export, "--refit-from", other_weights, "--dry-run")
    assert result.exit_code == 0, result.output
    result = zoo("build", copied_export, "--refit-from", other_weights, "--refittable")
    assert result.exit_code == 2 and "--refit-from keeps the flags" in result.output


def test_refit_keeps_the_source_engine_profile_and_flags(copied_export, other_weights, tmp_path):
    other_weights = _copy(other_weights, tmp_path / "other")
    theirs = spec_of(other_weights, refittable=True, workspace_gib=1)
    frames = theirs.dims["frames"]
    theirs = replace(theirs, dims={**theirs.dims, "frames": replace(frames, max=frames.opt)})
    source, _ = engines.get_or_build(theirs, HERE, fake_builder())
    refits = []

    def refitter(plan: Path, onnx: Path, path: Path) -> engines.BuildResult:
        refits.append((plan, onnx))
        path.write_bytes(plan.read_bytes() + b" refitted")
        return engines.BuildResult()

    manifest, other = load_manifest(copied_export), load_manifest(other_weights)
    structure = engines.check_refit_source(manifest, other, ["transformer"])["transformer"]
    entry, made = engines.refit_entry(spec_of(copied_export), other, HERE, refitter, structure)
    assert made and refits == [(source.plan, copied_export / "transformer" / "model.onnx")]
    assert entry.sidecar["refit_from"] == {"export": str(other_weights.resolve()), "key": source.key}
    assert entry.sidecar["flags"] == source.sidecar["flags"] and entry.sidecar["profile"] == source.sidecar["profile"]
    assert entry.sidecar["content"] == engines.content_digest(manifest, manifest.component("transformer"))
    assert engines.find_engine(manifest, manifest.component("transformer"), HERE).folder == entry.folder
    with pytest.raises(engines.EngineTargetError, match="was built for TensorRT 10.8.0.43"):
        engines.refit_entry(spec_of(copied_export), other, engines.Target("10.9.0", "9.0", "H200"), refitter, structure)


def test_refit_needs_a_refittable_engine(copied_export, other_weights, tmp_path):
    other_weights = _copy(other_weights, tmp_path / "other")
    engines.get_or_build(spec_of(other_weights), HERE, fake_builder())  # not refittable
    manifest, other = load_manifest(copied_export), load_manifest(other_weights)
    structure = engines.check_refit_source(manifest, other, ["transformer"])["transformer"]
    with pytest.raises(ArtifactError, match="no refittable engine of component 'transformer' there"):
        engines.refit_entry(spec_of(copied_export), other, HERE, lambda *a: engines.BuildResult(), structure)


# --------------------------------------------------------------------------------------
# Real engines: where TensorRT and a GPU are
# --------------------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.parametrize("family", FAMILIES)
def test_tensorrt_engines_pass_parity_at_every_corner(tiny_export, tmp_path, family):
    export = _copy(tiny_export(family), tmp_path / family)
    result = zoo("build", export)
    assert result.exit_code == 0, result.output
    assert len(list((export / "engines").glob("*/engine.plan"))) == len(load_manifest(export).components)
    result = zoo("parity", export, "--backend", "tensorrt", "--json", tmp_path / "parity.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["backend"] == "tensorrt" and report["rows"] and all(r["status"] == "pass" for r in report["rows"])
    result = zoo("bench", export, "--backend", "tensorrt", "--iterations", "3")
    assert result.exit_code == 0, result.output
    assert "cached" in zoo("build", export).output


@pytest.mark.tensorrt
def test_tensorrt_engine_computes_the_reference_and_a_wrong_engine_fails(tmp_path, tiny_export):
    import torch

    from runtimes.backends import TorchBackend, load_backend, load_reference
    from zoo.registry import get_family

    export = _copy(tiny_export("transformer-temporal", "default"), tmp_path / "tt")
    assert zoo("build", export).exit_code == 0
    manifest = load_manifest(export)
    feeds = (
        get_family(manifest.family)
        .component("transformer")
        .sample_inputs(load_reference(manifest), manifest.component("transformer").point())
    )
    with TorchBackend(manifest, "transformer", "cuda") as ref:
        want = ref(feeds)
    got = load_backend("tensorrt", manifest, "transformer", "cuda")(feeds)
    for k in want:
        torch.testing.assert_close(got[k].float(), want[k].float(), rtol=1e-3, atol=1e-4)
    perturb_graph(export, "transformer", lambda w: w * 0)  # another graph: its engine is stale, then rebuilt wrong
    assert zoo("build", export).exit_code == 0
    assert zoo("parity", export, "--backend", "tensorrt", "--no-end-to-end").exit_code == 2  # parity fails


@pytest.mark.tensorrt
def test_tensorrt_refit_and_weight_streaming(tmp_path, other_weights, tiny_export):
    export = _copy(tiny_export("transformer-temporal", "default"), tmp_path / "tt")
    other = _copy(other_weights, tmp_path / "other")
    assert zoo("build", other, "--refittable").exit_code == 0
    result = zoo("build", export, "--refit-from", other)
    assert result.exit_code == 0 and "refitted from" in result.output, result.output
    assert zoo("parity", export, "--backend", "tensorrt").exit_code == 0
    streamed = _copy(tiny_export("transformer-temporal", "default"), tmp_path / "ws")
    assert zoo("build", streamed, "--weight-streaming", "50%").exit_code == 0
    assert zoo("parity", streamed, "--backend", "tensorrt").exit_code == 0


# --------------------------------------------------------------------------------------
# The backend against a recording fake of TensorRT (no GPU: torch's CUDA calls faked too)
# --------------------------------------------------------------------------------------


class FakeStream:
    def __init__(self, log: list, handle: int) -> None:
        self.log, self.cuda_stream = log, handle

    def wait_stream(self, other: FakeStream) -> None:
        self.log.append(("wait", self.cuda_stream, other.cuda_stream))


class FakeContext:
    """Records every call; refuses what real TensorRT refuses (misaligned addresses) and what
    the test asks it to; "computes" each output as the call's number."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.shapes, self.addresses, self.memory = engine, {}, {}, None

    def set_input_shape(self, name, shape):
        self.engine.log.append(("shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return name not in self.engine.refuse

    def get_tensor_shape(self, name):
        shape = self.shapes[self.engine.like[name]]
        return (-1, *shape[1:]) if self.engine.data_dependent else shape

    def update_device_memory_size_for_shapes(self):
        return 1000 + sum(math.prod(s) for s in self.shapes.values())  # grows with the shapes

    def set_device_memory(self, ptr, size):
        self.memory = (ptr, size)
        self.engine.log.append(("memory", ptr % 256, size))

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        self.engine.log.append(("address", name, ptr % 256))
        return ptr % 256 == 0 and name not in self.engine.refuse

    def execute_async_v3(self, stream):
        import ctypes

        self.engine.log.append(("execute", stream))
        self.engine.calls += 1
        for name in self.engine.outputs:
            n = math.prod(self.shapes[self.engine.like[name]])
            array = (ctypes.c_float * n).from_address(self.addresses[name])  # float32 outputs in this test
            array[:] = [float(self.engine.calls)] * n
        return "execute" not in self.engine.refuse


class FakeEngine:
    _NAMES = {
        "float32": "DataType.FLOAT",
        "float16": "DataType.HALF",
        "bfloat16": "DataType.BF16",
        "int64": "DataType.INT64",
        "int32": "DataType.INT32",
        "bool": "DataType.BOOL",
    }

    def __init__(self, record, log: list) -> None:
        self.record, self.log, self.calls = record, log, 0
        self.names = [t.name for t in (*record.inputs, *record.outputs)]
        self.outputs = {t.name: t.dtype for t in record.outputs}
        # each output takes the shape of the input of the same symbolic shape (or the first input)
        self.like = {t.name: t.name for t in record.inputs}
        for o in record.outputs:
            self.like[o.name] = next((i.name for i in record.inputs if i.shape == o.shape), record.inputs[0].name)
        self.refuse: set[str] = set()
        self.data_dependent = False
        self.host_shape_tensors: set[str] = set()
        self.num_io_tensors = len(self.names)
        self.streamable_weights_size = 10_000
        self._budget = 0

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name in {t.name for t in self.record.inputs} else "OUTPUT"

    def get_tensor_dtype(self, name):
        return self._NAMES[next(t.dtype for t in (*self.record.inputs, *self.record.outputs) if t.name == name)]

    def is_shape_inference_io(self, name):
        return name in self.host_shape_tensors

    def create_execution_context(self, strategy):
        self.log.append(("context", strategy))
        return FakeContext(self)

    @property
    def weight_streaming_budget_v2(self):
        return self._budget

    @weight_streaming_budget_v2.setter
    def weight_streaming_budget_v2(self, value):
        self._budget = value // 256 * 256  # TensorRT may round what it is given: the backend reads it back

    def get_weight_streaming_automatic_budget(self):
        return 7777


@pytest.fixture
def fake_tensorrt(copied_export, monkeypatch):
    """A TensorRT backend of the transformer-temporal transformer on a recording fake of TensorRT,
    with torch's CUDA stream and device calls faked so that it runs on the CPU."""
    import contextlib
    import types

    import torch

    from runtimes.backends import TensorRTBackend

    log: list = []
    fake_trt = types.SimpleNamespace(
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED="USER_MANAGED"),
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(engines, "current_target", lambda device="cuda": HERE)
    default = FakeStream(log, 0)  # the legacy default stream's handle is 0
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: default)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream(log, 0x5EED))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    loaded: list = []

    def deserialize(plan):
        loaded.append(plan)
        engine = FakeEngine(load_manifest(copied_export).component("transformer"), log)
        setup(engine)
        return engine

    setup = lambda engine: None  # noqa: E731
    monkeypatch.setattr(engines, "deserialize", deserialize)

    def make(configure=lambda engine: None, builder=None, **options):
        nonlocal setup
        setup = configure
        engines.get_or_build(spec_of(copied_export, **options), HERE, builder or fake_builder())
        backend = TensorRTBackend(load_manifest(copied_export), "transformer", "cpu")  # CPU tensors, faked CUDA calls
        return backend, log, loaded

    return make


def _feeds(record, which="opt", **dims):
    import torch

    from zoo.contract import DTYPES

    shapes = input_shapes(
        record, which, {**record.dims, **{k: replace(record.dims[k], min=v, opt=v, max=v) for k, v in dims.items()}}
    )
    return {t.name: torch.zeros(shapes[t.name], dtype=DTYPES[t.dtype]) for t in record.inputs}


def test_the_backend_runs_on_its_own_stream_with_aligned_addresses_and_memory_sized_per_call(fake_tensorrt):
    import torch

    backend, log, loaded = fake_tensorrt()
    record = backend.record
    feeds = _feeds(record)
    name = next(t.name for t in record.inputs if t.dtype == "float32")
    base = torch.zeros(feeds[name].numel() + 1)
    feeds[name] = base[1:].view(feeds[name].shape)  # a view with an offset: 4 bytes past an aligned block at best
    assert feeds[name].data_ptr() % 256 != 0
    outputs = backend(feeds)
    assert loaded == [backend.entry.plan]  # deserialized from the checked file, not from bytes in memory
    assert ("context", "USER_MANAGED") in log  # no activation memory reserved at load
    execute = log.index(("execute", 0x5EED))  # the backend's own stream, not the default (0)
    assert log[execute - 1] == ("wait", 0x5EED, 0) and log[execute + 1] == ("wait", 0, 0x5EED)
    addresses = [e for e in log if e[0] == "address"]
    assert {e[1] for e in addresses} == {*feeds, *outputs} and all(e[2] == 0 for e in addresses)  # all aligned
    assert backend.context.addresses[name] != feeds[name].data_ptr()  # the misaligned view was copied
    memory = [e for e in log if e[0] == "memory"]
    first = 1000 + sum(math.prod(t.shape) for t in feeds.values())
    assert memory == [("memory", 0, first)]
    assert all(float(v.flatten()[0]) == 1.0 for v in outputs.values())
    smaller = _feeds(record, "min")
    backend(smaller)
    memory = [e for e in log if e[0] == "memory"]
    assert memory[1] == ("memory", 0, 1000 + sum(math.prod(t.shape) for t in smaller.values())) and memory[1][2] < first


def test_the_backend_keeps_state_outputs_on_the_device_between_calls(fake_tensorrt, copied_export):
    backend, log, _ = fake_tensorrt()
    record = backend.record
    output = record.outputs[0]
    state_input = next(t.name for t in record.inputs if t.shape == output.shape and t.dtype == output.dtype)
    backend.record = replace(record, state={output.name: state_input})  # as a VAE's cache pair
    first = backend(_feeds(record))
    kept = backend.state[state_input]
    assert kept is first[output.name]
    second = backend({k: v for k, v in _feeds(record).items() if k != state_input})
    assert backend.context.addresses[state_input] == kept.data_ptr()  # bound where it is, no copy, no host trip
    assert float(second[output.name].flatten()[0]) == 2.0


@pytest.mark.parametrize(
    "refuse, error, message",
    [
        ("address", ArtifactError, "TensorRT refused the address of"),
        ("shape", "InputError", "TensorRT refused the shape"),
        ("execute", "OutputError", "TensorRT's execute_async_v3 failed"),
        ("data-dependent", ArtifactError, "depends on the data (still unknown once every input shape is set)"),
    ],
)
def test_every_tensorrt_refusal_is_an_error_naming_the_tensor(fake_tensorrt, refuse, error, message):
    from zoo import errors

    record_names = {}

    def configure(engine):
        if refuse == "address":
            engine.refuse.add(engine.record.outputs[0].name)
        elif refuse == "shape":
            engine.refuse.add(engine.record.inputs[0].name)
        elif refuse == "execute":
            engine.refuse.add("execute")
        else:
            engine.data_dependent = True
        record_names.update(input=engine.record.inputs[0].name, output=engine.record.outputs[0].name)

    backend, log, _ = fake_tensorrt(configure)
    error = getattr(errors, error) if isinstance(error, str) else error
    with pytest.raises(error, match=re.escape(message)) as raised:
        backend(_feeds(backend.record))
    named = record_names["input"] if refuse == "shape" else record_names["output"]
    assert refuse == "execute" or repr(named) in str(raised.value)
    assert backend.state == {}


def test_host_shape_tensors_are_refused_at_load_naming_the_tensor(fake_tensorrt):
    from runtimes.backends import TensorRTBackend  # noqa: F401

    backend, _, _ = fake_tensorrt(lambda engine: engine.host_shape_tensors.add(engine.record.inputs[-1].name))
    with pytest.raises(
        ArtifactError, match=f"shape tensor\\(s\\) {backend.record.inputs[-1].name} that TensorRT reads on the host"
    ):
        backend.activate()


def test_finiteness_is_one_fused_check_per_call_and_still_names_the_tensor(fake_tensorrt, monkeypatch):
    import torch

    from runtimes.backends import Backend, TensorRTBackend
    from zoo.errors import InputError

    assert TensorRTBackend.check_finite_after_run and not Backend.check_finite_after_run
    assert "__call__" not in vars(TensorRTBackend)  # Backend.__call__, reading the class attribute
    backend, _, _ = fake_tensorrt()
    syncs = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: syncs.append(1) or item(self))
    feeds = _feeds(backend.record)
    backend(feeds)
    assert len(syncs) == 1  # inputs and outputs together
    name = next(t.name for t in backend.record.inputs if t.dtype.startswith(("float", "bfloat")))
    feeds[name] = feeds[name].clone()
    feeds[name].view(-1)[3] = float("nan")
    with pytest.raises(InputError, match=f"input {name!r}: contains 1 NaN and 0 Inf values"):
        backend(feeds)
    assert len(syncs) == 2  # one fused check for the failing call too (the NaN counts are for its message)
    assert backend.state == {}


def test_the_streaming_budget_is_read_back_and_auto_budgets_are_shared(fake_tensorrt):
    backend, _, _ = fake_tensorrt(weight_streaming=True, weight_streaming_budget="50%")
    backend.activate()
    assert backend.streaming_budget == 5000 // 256 * 256  # what TensorRT took, not what was asked
    mib = 1 << 20
    budgets = engines.auto_budgets(
        {
            "transformer": {"streamable": 600 * mib, "device_memory": 100 * mib, "budget": "auto"},
            "text_encoder": {"streamable": 200 * mib, "device_memory": 50 * mib, "budget": "auto"},
            "vae": {"device_memory": 200 * mib, "weights": 150 * mib, "budget": None},
            "fixed": {"streamable": 100 * mib, "device_memory": 0, "budget": "50%"},
        },
        free=1000 * mib,
        margin=0.0,
    )
    left = 1000 - 100 - 50 - 200 - 150 - 50  # MiB for the two auto engines, shared 3:1
    assert budgets == {"transformer": left * mib * 600 // 800, "text_encoder": left * mib * 200 // 800}
    assert engines.auto_budgets({"a": {"streamable": mib, "budget": "auto"}}, free=1 << 40) == {"a": mib}  # at most all


# --------------------------------------------------------------------------------------
# Opsets: what each TensorRT version's parser documents (MODELS.md), checked at export and build
# --------------------------------------------------------------------------------------


def test_documented_opset_ranges_per_tensorrt_version():
    assert [engines.parser_opsets(v) for v in ("10.1.0", "10.3.0.26", "10.13.3", "10.14.1", "11.1.0", "11.5.0")] == [
        (9, 20),
        (9, 20),
        (9, 20),
        (9, 24),
        (9, 24),
        (9, 25),
    ]
    assert [engines.minimum_tensorrt(o) for o in (18, 20, 22, 24, 25)] == ["10.1", "10.1", "10.14", "10.14", "11.5"]
    with pytest.raises(engines.EngineTargetError, match="TensorRT 10.0.1 is older than this zoo supports"):
        engines.parser_opsets("10.0.1")
    with pytest.raises(ExportError, match="ONNX opset 26: no TensorRT release documents it"):
        engines.minimum_tensorrt(26)


@pytest.mark.parametrize(
    "axes_from, opset, message",
    [
        ("initializer", 18, None),
        ("constant node", 18, None),
        (
            "graph input",
            18,
            "needs these inputs as initializers, and the graph computes them: Unsqueeze 'u': axes from 'axes'",
        ),
        ("computed", 18, "Unsqueeze 'u': axes from 'axes'"),
        ("initializer", 26, "ONNX opset 26: no TensorRT release documents it"),
    ],
)
def test_the_export_lint_checks_the_parsers_opsets_and_initializer_only_inputs(tmp_path, axes_from, opset, message):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from exporters.onnx import check_graph

    nodes, inputs, inits = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])], []
    if axes_from == "initializer":
        inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"))
    elif axes_from == "constant node":
        nodes.append(
            helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], dtype=np.int64)))
        )
    elif axes_from == "graph input":
        inputs.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [1]))
    else:  # computed from the data: Shape -> Slice
        inits += [numpy_helper.from_array(np.array([v], dtype=np.int64), n) for n, v in (("s0", 0), ("s1", 1))]
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Slice", ["shape", "s0", "s1"], ["axes"]),
        ]
    nodes.append(helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="u"))
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    if message is None:
        check_graph(path, "c")
        assert engines.check_parser_support(model, "c") == opset
    else:  # at export (check_graph), past the ONNX checker; a future opset is refused by the lint itself
        with pytest.raises(ExportError, match=re.escape(message)):
            (check_graph(path, "c") if opset <= 20 else engines.check_parser_support(model, "c"))


def test_build_refuses_a_graph_whose_opset_the_target_tensorrt_does_not_document(copied_export, monkeypatch):
    calls: list = []
    orin = engines.Target("10.3.0.26", "8.7", "Orin")
    monkeypatch.setattr(engines, "current_target", lambda device="cuda": orin)
    monkeypatch.setattr(engines, "unavailable", lambda device="cuda": None)
    monkeypatch.setattr(engines, "build_plan", lambda spec, path, device: fake_builder(calls)(spec, path))
    result = zoo("build", copied_export, "--dry-run")
    assert "(float32, opset 18: TensorRT 10.1+)" in result.output, result.output
    manifest = json.loads((copied_export / "manifest.json").read_text())
    manifest["components"]["transformer"].update(opset=22, precision="bfloat16")  # as a bf16 export records it
    (copied_export / "manifest.json").write_text(json.dumps(manifest))
    assert_error(
        zoo("build", copied_export),
        "component 'transformer' is an ONNX opset-22 graph (bfloat16); TensorRT "
        "10.3.0.26 documents opsets 9-20, so it needs TensorRT 10.14 or newer: or re-export with",
    )
    assert calls == [] and not (copied_export / "engines").exists()
    manifest["components"]["transformer"].update(opset=18, precision="float32")
    (copied_export / "manifest.json").write_text(json.dumps(manifest))
    result = zoo("build", copied_export)  # an opset-18 graph builds on JetPack 6's TensorRT
    assert result.exit_code == 0 and calls == ["transformer"], result.output


@pytest.mark.parametrize("api", ["IStreamReaderV2", "IStreamReader", None])
def test_a_plan_is_streamed_to_tensorrt_in_chunks(tmp_path, monkeypatch, api):
    """The reader TensorRT pulls a plan through (10.x IStreamReader: read(size); 11.x
    IStreamReaderV2: read(num_bytes, stream) in chunks, seek with a SeekPosition)."""
    import enum
    import types

    class SeekPosition(enum.Enum):
        SET, CUR, END = 0, 1, 2

    class Base:
        def __init__(self) -> None:
            pass

    fake = types.SimpleNamespace(SeekPosition=SeekPosition, **({api: Base} if api else {}))
    plan = tmp_path / "engine.plan"
    data = os.urandom(10_000)
    plan.write_bytes(data)
    monkeypatch.setattr(engines, "READ_CHUNK", 4096)
    reader = engines.plan_reader(fake, plan)
    if api is None:
        assert reader is None  # deserialize falls back to the plan's bytes
        return
    if api == "IStreamReaderV2":
        assert reader.seek(-16, SeekPosition.END) and reader.read(100, 0) == data[-16:]
        assert reader.seek(0, SeekPosition.SET)
        chunks = [reader.read(len(data), 0) for _ in range(3)]
        assert [len(c) for c in chunks] == [4096, 4096, 10_000 - 8192] and b"".join(chunks) == data
    else:
        assert reader.read(len(data)) == data
    reader.close()


def test_a_plan_is_hashed_once_per_version_of_the_file(copied_export, monkeypatch):
    """Loading an engine hashes its plan (streamed) once per version of the file, not at every
    load; a plan changed in place (same size) is hashed again and refused."""
    from zoo.infra import hashing

    monkeypatch.setattr(hashing, "SETTLE_NS", 0)  # the test's plan was just written
    monkeypatch.setattr(hashing, "CACHE_ABOVE", 0)  # and is small
    reads = []
    read = hashing._read_digest
    monkeypatch.setattr(hashing, "_read_digest", lambda path, *a, **k: reads.append(path) or read(path, *a, **k))
    entry, _ = engines.get_or_build(spec_of(copied_export), HERE, fake_builder())
    reads.clear()
    assert entry.read_plan() == entry.plan and entry.read_plan() == entry.plan
    assert len(reads) <= 1  # the build's own digest may already be remembered
    again = len(reads)
    assert engines.check_entry(entry.folder, HERE).plan == entry.plan and len(reads) == again
    data = bytearray(entry.plan.read_bytes())
    data[0] ^= 0xFF
    entry.plan.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256 in its sidecar: corrupted"):
        entry.read_plan()
    assert len(reads) == again + 1


def test_auto_budgets_are_resolved_once_for_the_engines_of_a_pipeline(fake_tensorrt, copied_export, monkeypatch):
    import torch

    from runtimes.backends import Runners

    def builder(spec, path):
        fake_builder()(spec, path)
        return engines.BuildResult(device_memory=1 << 20, streamable_weights=10 << 20)

    fake_tensorrt(builder=builder, weight_streaming=True, weight_streaming_budget="auto")
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: asked.append(device) or (3 << 20, 8 << 20))
    runners = Runners("tensorrt", load_manifest(copied_export), "cpu")
    backend = runners["transformer"]
    assert backend.budgets is not None and all(b.budgets is backend.budgets for b in runners.values())
    backend.activate()
    want = int((3 << 20) * 0.9) - (1 << 20)  # free memory less the margin and the engine's activations
    assert backend.budgets.resolved == {"transformer": want} and len(asked) == 1
    assert backend.streaming_budget == want // 256 * 256  # read back from TensorRT
    runners.close()

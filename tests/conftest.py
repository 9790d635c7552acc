"""Shared fixtures: tiny random models and their ONNX exports, built once per test session."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from exporters.onnx import export_family  # noqa: E402
from zoo.registry import get_family  # noqa: E402

_CHECKPOINTS: dict[tuple[str, str], Path] = {}
_EXPORTS: dict[Path, Path] = {}
_PARITY: dict[Path, tuple] = {}


@pytest.fixture(autouse=True, scope="session")
def _private_hash_cache(tmp_path_factory):
    """File digests remembered during the tests go to a folder of this session, not ~/.cache/zoo."""
    os.environ["ZOO_CACHE_DIR"] = str(tmp_path_factory.mktemp("zoo-cache"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(family, variant)`` -> a random-weight checkpoint folder (diffusers format)."""

    def make(family: str, variant: str | None = None) -> Path:
        fam = get_family(family)
        key = (family, variant or fam.variants[0])
        if key not in _CHECKPOINTS:
            path = tmp_path_factory.mktemp(f"ckpt-{family}-{key[1]}") / "checkpoint"
            fam.build_random(path, variant=key[1], preset="tiny")
            _CHECKPOINTS[key] = path
        return _CHECKPOINTS[key]

    return make


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_checkpoint):
    """``tiny_export(family, variant)`` -> an export folder of that tiny checkpoint, made once per session."""

    def make(family: str, variant: str | None = None) -> Path:
        checkpoint = tiny_checkpoint(family, variant)
        if checkpoint not in _EXPORTS:
            fam = get_family(family)
            ref = fam.load(checkpoint)
            out = tmp_path_factory.mktemp(f"export-{family}-{ref.variant}") / "export"
            export_family(fam, ref, fam.envelope(ref), out, carry_reference=True, progress=False)
            _EXPORTS[checkpoint] = out
        return _EXPORTS[checkpoint]

    return make


@pytest.fixture(scope="session")
def parity_report(tmp_path_factory, tiny_export):
    """``parity_report(family, variant)`` -> ``(result, report)``: `zoo parity EXPORT --json` on a
    linked copy of that cached export (parity.json is written beside its manifest), run once per
    session: the conformance battery asserts what every family must pass, a family's own tests
    what only it has, on the same rows."""

    def make(family: str, variant: str | None = None):
        import json
        import shutil

        export = tiny_export(family, variant)
        if export not in _PARITY:
            copy = tmp_path_factory.mktemp(f"parity-{family}") / "export"
            shutil.copytree(export, copy, copy_function=os.link)
            result = zoo("parity", copy, "--json")
            report = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
            _PARITY[export] = (result, report)
        return _PARITY[export]

    return make


@pytest.fixture(scope="session")
def external_data_export(tmp_path_factory):
    """``(folder, what zoo export printed)``: the tiny transformer-temporal exported by `zoo export
    --tiny` with its weights beside the graph (model.onnx.data), once per session; a test that
    breaks it copies it first."""
    import exporters.onnx as onnx_export

    out = tmp_path_factory.mktemp("external-data") / "export"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)  # every initializer beside the graph
        result = zoo("export", "transformer-temporal", "--tiny", "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture
def copied_export(tiny_export, tmp_path):
    """A copy of the tiny transformer-temporal export that a test may break."""
    import shutil

    dst = tmp_path / "export"
    shutil.copytree(tiny_export("transformer-temporal", "default"), dst)
    return dst


def zoo(*args):
    """Run the command line in process, as a user would (exceptions are not caught for us)."""
    from click.testing import CliRunner

    from zoo.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_error(result, message: str) -> None:
    """A user error: exit 2, exactly one `error:` line containing ``message``, no traceback."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


def perturb_graph(export: Path, component: str, change, pick=None) -> None:
    """Apply ``change(values) -> values`` to the largest weight of ``component``'s graph (or the
    first initializer whose values ``pick(values)`` accepts) and update the manifest (a wrong
    graph with a consistent manifest, as a broken exporter makes)."""
    import json

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from zoo.infra.hashing import file_sha256

    path = export / component / "model.onnx"
    model = onnx.load(str(path))
    if pick is None:
        weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    else:
        weight = next(t for t in model.graph.initializer if pick(numpy_helper.to_array(t)))
    weight.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(weight).copy()), weight.name))
    onnx.save(model, str(path))
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["components"][component].update(size=path.stat().st_size, sha256=file_sha256(path))
    (export / "manifest.json").write_text(json.dumps(manifest))


#: What makes a test slow (seconds to minutes each on 2 cores): building, exporting or sampling a model.
_SLOW_FIXTURES = {"tiny_export", "tiny_checkpoint", "copied_export", "external_data_export", "parity_report"}
_SLOW_CALLS = re.compile(
    r'zoo\(\s*"(export|random|parity|run|bench)"|export_family|build_random|random_reference'
    r"|write_random_sources|from_pretrained|Pipeline\("
)


def _is_slow(item) -> bool:
    """A test is slow if it, or a fixture it uses, builds, exports or loads a model."""
    if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    return any(_SLOW_CALLS.search(source) for source in _sources(item))


#: Serving tests: tests/test_serving.py, and a test anywhere that serves, writes a model repository or
#: sends a request over the wire.
_SERVE_FILES = {"test_serving.py"}
_SERVE_CALLS = re.compile(r'zoo\(\s*"(serve|triton|request)"|stream_request\(|start_server\(')
TIERS = ("unit", "family", "serve")


def _sources(item) -> list[str]:
    """The source of a test and of the fixtures it uses (pytest's own fixtures are not ours to judge)."""
    names = set(getattr(item, "fixturenames", ()))
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    functions = [item.function] + [d.func for name in names for d in definitions.get(name, ()) if name != "request"]
    sources = []
    for function in functions:
        try:
            sources.append(inspect.getsource(function))
        except (OSError, TypeError):
            continue
    return sources


def tier(item) -> str:
    """The one tier of a test: ``serve`` (a server, a model repository or a request over the wire),
    else ``family`` (it uses a cached export, or builds, exports or samples a model), else ``unit``
    (pure functions: seconds, no export)."""
    if Path(str(item.fspath)).name in _SERVE_FILES or any(_SERVE_CALLS.search(s) for s in _sources(item)):
        return "serve"
    return "family" if _is_slow(item) else "unit"


def pytest_collection_modifyitems(config, items):
    """TensorRT / CUDA tests run where the hardware is, and are skipped with the reason elsewhere.
    Every test gets exactly one tier marker (``unit``, ``family``, ``serve``): ``-m unit`` is the
    fast tier. Tests that build or export a model are also marked ``slow`` (``-m "not slow"``)."""
    from exporters.tensorrt import unavailable as tensorrt_unavailable

    trt_reason = None
    cuda_reason = None
    for item in items:
        if any(item.get_closest_marker(t) for t in TIERS):
            raise pytest.UsageError(f"{item.nodeid}: tiers are given by conftest.py, not by hand")
        item.add_marker(getattr(pytest.mark, tier(item)))
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
        if "tensorrt" in item.keywords:
            trt_reason = trt_reason or tensorrt_unavailable() or ""
            if trt_reason:
                item.add_marker(pytest.mark.skip(reason=f"needs TensorRT and an NVIDIA GPU: {trt_reason}"))
        if "cuda" in item.keywords:
            import torch

            cuda_reason = (
                cuda_reason if cuda_reason is not None else ("" if torch.cuda.is_available() else "no CUDA GPU")
            )
            if cuda_reason:
                item.add_marker(pytest.mark.skip(reason=f"needs a CUDA GPU: {cuda_reason}"))

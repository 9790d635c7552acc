"""The family conformance battery: every family declared in the registry, on its one cached tiny
export, passes the same checks, so a new family gets these tests by being declared:

- parity at every profile corner of every component, its host loops, and its sampler against
  its pipeline (``zoo parity``: the end-to-end rows run the sampler and the family's pipeline on
  the same parity requests and compare every denoiser step and the frames);
- bad feeds (a wrong dtype, a wrong rank, a shape outside the profile) for every component: the
  typed error naming the component and the tensor, before any runtime runs;
- ``zoo build --dry-run``: one trtexec line per component, bounded by the manifest's profile.

Family-specific checks (golden outputs of an original, a VAE's chunking, media options) stay in
the family's own test file."""

from __future__ import annotations

import re
import shlex

import pytest
import torch
from conftest import zoo

from exporters.manifest import load_manifest
from exporters.profiles import dynamic_inputs, input_shapes, trtexec_command
from parity.points import describe, profile_points
from runtimes.backends import OnnxRuntimeBackend, load_reference
from runtimes.feeds import validate_feeds
from runtimes.sampler import request_context
from zoo.contract import DTYPES
from zoo.errors import InputError
from zoo.registry import family_names, get_family

FAMILIES = family_names()


def test_the_battery_covers_every_declared_family():
    """The parametrization is the registry's list: a family declared is a family tested."""
    assert FAMILIES and len(set(FAMILIES)) == len(FAMILIES)
    for name in FAMILIES:
        family = get_family(name)
        assert family.components and family.variants, name


# --------------------------------------------------------------------------------------
# Parity: every component at every corner, the host loops, the sampler against its pipeline
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_at_every_corner_loops_and_sampler_against_its_pipeline(parity_report, tiny_export, family):
    """`zoo parity EXPORT --json` (the report on stdout; run once per session by conftest.py's
    parity_report): no row fails, exit 0. The documented exit 3 (nothing failed, some check could
    not run here) is accepted only when every row not run is a reduced-precision component's, which
    this CPU cannot run; the tiny exports are float32, so for them every check runs and exits 0."""
    result, report = parity_report(family)
    manifest = load_manifest(tiny_export(family))
    fam = get_family(family)
    rows = report["rows"]
    not_run = [r for r in rows if r["status"] == "not run"]
    reduced = {n for n, r in manifest.components.items() if r.precision not in (None, "float32")}
    assert all(r["component"] in reduced for r in not_run), not_run  # only what this CPU cannot run
    assert result.exit_code == (3 if not_run else 0), result.output
    failed = [r for r in rows if r["status"] == "fail"]
    assert not failed and report["failed"] == 0, failed
    assert report["family"] == family and report["passed"] == len(rows) - len(not_run) > 0
    assert report["exit_status"] == result.exit_code and report["complete"] == (not not_run)
    if not_run:  # the verdict is the last line (on stderr: stdout holds the JSON)
        assert result.output.strip().splitlines()[-1] == report["verdict"]
    else:
        assert report["verdict"] == f"{len(rows)} passed, 0 failed"

    # every declared component exported, and checked at every point of its profile, every output
    assert set(manifest.components) == {c.name for c in fam.components}
    component_rows = [r for r in rows if r["level"] == "component"]
    assert {r["component"] for r in component_rows} == set(manifest.components)
    for name, record in manifest.components.items():
        want = {(label, describe(point, record.dims)) for label, point in profile_points(record.dims)}
        for output in record.outputs:
            got = {
                (r["point"], r["shape"])
                for r in component_rows
                if r["component"] == name and r["output"] == output.name
            }
            assert got == want, (name, output.name)
        points = {label for label, _ in want}
        dynamic = [d for d in record.dims.values() if d.is_dynamic and not d.is_derived]
        assert "opt" in points and (not dynamic or {"all-min", "all-max"} <= points), (name, points)

    # the host loops over components (a chunked VAE's encode / decode) against the library call
    loops = [r for r in rows if r["level"] == "loop"]
    if fam.host_loop is None:
        assert loops == []
    else:
        assert loops and {r["component"] for r in loops} <= set(fam.host_loop.components)

    # the sampler against the family's pipeline, on each of the family's parity requests: every
    # denoiser call (the trajectory) and the frames (end to end)
    ends = [r for r in rows if r["level"] == "end_to_end"]
    trajectory = [r for r in rows if r["level"] == "trajectory"]
    if not fam.has_sampler:
        assert ends == [] and trajectory == []
        return
    labels = [label for label, _ in fam.parity_requests(request_context(manifest))]
    assert labels and [r["point"] for r in ends] == labels and {r["component"] for r in ends} == {"sampler"}
    for label in labels:
        steps = [r for r in trajectory if re.fullmatch(rf"{re.escape(label)} step \d+", r["point"])]
        assert steps and all(r["component"] == fam.trajectory[0] for r in steps), label


# --------------------------------------------------------------------------------------
# Bad feeds: the typed error naming the tensor, before any runtime runs
# --------------------------------------------------------------------------------------


def _out_of_profile(record, spec):
    """(axis, size, message part) of a size outside the profile for one of ``spec``'s dims, or None."""
    for axis, want in enumerate(spec.shape):
        if isinstance(want, str) and record.dims[want].is_dynamic:
            dim = record.dims[want]
            size = dim.max + max(dim.multiple_of, 1) * (dim.scale if dim.is_derived else 1)
            problem = dim.problem(size)
            assert problem, (record.name, spec.name, want, size)
            return axis, size, f"dim {axis} ({want}) is {size}, {problem} (exported profile)"
    for axis, want in enumerate(spec.shape):
        if isinstance(want, int):
            return axis, want + 1, f"dim {axis} is {want + 1}, expected {want}"
        if not record.dims[want].is_dynamic:  # a named dim fixed by the export
            size = record.dims[want].min + 1
            return axis, size, f"dim {axis} ({want}) is {size},"
    return None


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_feeds_name_the_tensor_before_any_runtime_runs(tiny_export, monkeypatch, family):
    export = tiny_export(family)
    manifest = load_manifest(export)
    fam = get_family(family)
    ref = load_reference(manifest)
    checked = 0
    for name, record in manifest.components.items():
        feeds = fam.component(name).sample_inputs(ref, record.point("opt"))
        validate_feeds(record, feeds)  # the valid feeds pass: what breaks them below is the one change
        backend = OnnxRuntimeBackend(manifest, name)
        monkeypatch.setattr(backend, "_run", lambda feeds: pytest.fail("the runtime was touched"))
        where = f"component {name!r} input "
        for spec in record.inputs:
            valid = feeds[spec.name]
            wrong_dtype = torch.int64 if valid.is_floating_point() else torch.float32
            got = str(wrong_dtype).replace("torch.", "")
            cases = [
                (valid.to(wrong_dtype), f"{where}{spec.name!r}: dtype {got}, expected {spec.dtype}"),
                (
                    valid.unsqueeze(0),
                    f"{where}{spec.name!r}: rank {valid.dim() + 1} (shape {tuple(valid.unsqueeze(0).shape)}), "
                    f"expected rank {valid.dim()}",
                ),
            ]
            bad = _out_of_profile(record, spec)
            if bad is not None:
                axis, size, message = bad
                shape = list(valid.shape)
                shape[axis] = size
                cases.append((torch.zeros(shape, dtype=DTYPES[spec.dtype]), f"{where}{spec.name!r}: {message}"))
            for value, message in cases:
                with pytest.raises(InputError) as error:
                    backend({**feeds, spec.name: value})
                assert str(error.value).startswith(message), (str(error.value), message)
                checked += 1
    assert checked >= 2 * sum(len(r.inputs) for r in manifest.components.values())


# --------------------------------------------------------------------------------------
# zoo build --dry-run: a trtexec line per component, bounded by the manifest
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_dry_run_prints_a_trtexec_line_per_component_bounded_by_the_manifest(tiny_export, family):
    """The trtexec line of every component: one --min/--opt/--maxShapes entry per dynamic input,
    each shape the manifest's dims at that end of the profile (derived dims too); the dry run
    prints it with the workspace asked for and writes nothing."""
    export = tiny_export(family)
    manifest = load_manifest(export)
    result = zoo("build", export, "--dry-run", "--workspace", "1.5")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("trtexec ")]
    assert len(lines) == len(manifest.components)
    assert not (export / "engines").exists()  # a dry run writes nothing
    for line, (name, record) in zip(lines, manifest.components.items()):
        cmd = shlex.split(line)
        assert cmd[1:3] == [f"--onnx={export / record.file}", f"--saveEngine={export / 'engines' / (name + '.plan')}"]
        assert "--noTF32" in cmd and "--stronglyTyped" in cmd and "--memPoolSize=workspace:1536M" in cmd
        flags = dict(c.split("=", 1) for c in cmd[1:] if "=" in c)
        for flag, which in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            want = {
                k: v
                for k, v in input_shapes(record, which).items()
                if input_shapes(record, "min")[k] != input_shapes(record, "max")[k]
            }
            got = dict(item.split(":") for item in flags[flag].split(",")) if flag in flags else {}
            assert {k: tuple(int(d) for d in v.split("x")) for k, v in got.items()} == want

        # the same function's line, relative paths: every dynamic input bounded, each size in its dim
        cmd = trtexec_command(record, f"{name}/model.onnx", f"engines/{name}.plan", workspace_gib=2)
        assert cmd[:3] == ["trtexec", f"--onnx={name}/model.onnx", f"--saveEngine=engines/{name}.plan"]
        assert "--memPoolSize=workspace:2048M" in cmd and "--stronglyTyped" in cmd and "--noTF32" in cmd
        flags = dict(c.split("=", 1) for c in cmd[1:] if "=" in c)
        dynamic = dynamic_inputs(record)
        for flag, which in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            if not dynamic:
                assert flag not in flags
                continue
            got = dict(item.split(":") for item in flags[flag].split(","))
            want = input_shapes(record, which)
            assert set(got) == set(dynamic)
            for tensor, dims in got.items():
                assert tuple(int(d) for d in dims.split("x")) == want[tensor]
                spec = next(t for t in record.inputs if t.name == tensor)
                for size, d in zip(want[tensor], spec.shape):
                    if isinstance(d, str):
                        dim = record.dims[d]
                        assert size == getattr(dim, which) and dim.problem(size) is None
        assert shlex.split(shlex.join(cmd)) == cmd

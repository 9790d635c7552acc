"""Component, trajectory and end-to-end parity of an export folder against its PyTorch reference."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from numpy.typing import NDArray

from exporters.manifest import Manifest, load_manifest
from exporters.precision import precision_of
from parity.metrics import Metrics, compare
from parity.points import describe, profile_points
from parity.reduced import TorchInDtype, runtime_refusal, structure_check
from parity.report import Row
from parity.tolerances import Tolerance, quantized_tolerance, rounding_tolerance, tolerance
from runtimes.backends import Backend, Runners, backend_for, load_reference, parse_device, reference_backend
from runtimes.sampler import Sampler, check_request, configure_pipeline, request_context, run_pipeline
from zoo.contract import Component, Family, Reference, Request, Rounding, bind_argument
from zoo.errors import ArtifactError, ZooError
from zoo.registry import get_family

# what a sampler's runner is called as (its other members, zoo.contract.Runner's, are passed through)
RunnerCall = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


def scale_of(manifest: Manifest) -> str:
    """``tiny`` rows for random-weight exports, ``full`` for real checkpoints."""
    return "tiny" if manifest.preset else "full"


def value_ranges(component: Component, ref: Reference) -> dict[str, float | None]:
    """Each output's declared value span (:attr:`TensorSpec.value_range`: a decoded image's
    [-1, 1] spans 2), None where it declares none: read from the family's declaration, so an
    export's manifest needs no field for it."""
    return {spec.name: spec.data_range for spec in component.output_specs(ref)}


def _rows_for(
    level: str,
    component: str,
    label: str,
    shape: str,
    candidate: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    tol: Tolerance,
    data_ranges: Mapping[str, float | None] | None = None,
    *,
    precision: str = "float32",
    own: Mapping[str, torch.Tensor] | None = None,
    problems: list[str] | None = None,
    roundings: Mapping[str, Rounding] | None = None,
) -> list[Row]:
    """One row per reference output. For a reduced ``precision``, ``own`` is PyTorch itself in
    that dtype (its error is shown, and a bound holds within twice it) and ``problems`` are the
    graph's dtype-structure failures. An output in ``roundings`` (one the family rounds on purpose)
    is held to the rounding-aware bound instead of ``tol``. PSNR is over the output's span in
    ``data_ranges`` (its declared value range), else over the reference's own span."""
    rows = []
    for name, ref in reference.items():
        cand = candidate[name]
        if cand.shape != ref.shape or cand.dtype != ref.dtype:
            failure = f"shape/dtype {tuple(cand.shape)} {cand.dtype} vs reference {tuple(ref.shape)} {ref.dtype}"
            rows.append(Row(level, component, label, shape, name, None, tol, [failure], precision))
            continue
        if roundings and name in roundings:
            rows.append(
                _rounding_row(
                    level, component, label, shape, name, cand, ref, roundings[name], tol, precision, problems
                )
            )
            continue
        data_range = (data_ranges or {}).get(name)
        m = compare(cand, ref, rtol=tol.rtol, data_range=data_range)
        m_own = _own_error(own, name, ref, tol, data_range)
        rows.append(
            Row(
                level,
                component,
                label,
                shape,
                name,
                m,
                tol,
                tol.failures(m, m_own, precision) + list(problems or ()),
                precision,
                m_own,
                tol.held_by_torch(m, m_own, precision),
            )
        )
    return rows


def _rounding_row(
    level: str,
    component: str,
    label: str,
    shape: str,
    name: str,
    candidate: torch.Tensor,
    reference: torch.Tensor,
    rounding: Rounding,
    row: Tolerance,
    precision: str,
    problems: list[str] | None,
) -> Row:
    """A tensor the family rounds on purpose, compared there: the component's ``row`` plus one ulp
    of the rounded dtype elementwise, the elements that flipped counted (in the row's value and a note)."""
    tol = rounding_tolerance(row, rounding.dtype)
    m = compare(candidate, reference, rtol=tol.rtol, rounded_to=rounding.dtype)
    out = Row(level, component, label, shape, name, m, tol, tol.failures(m) + list(problems or ()), precision)
    if m.flipped:
        out.notes.append(
            f"rounded to {rounding.dtype} on purpose ({rounding.why or 'declared by the family'}): "
            f"{m.flipped} of {m.elements} elements one ulp apart, a difference below the rounding "
            f"crossing its boundary"
            + (" (the candidate continues from the reference's value)" if level == "trajectory" else "")
        )
    return out


def _own_error(
    own: Mapping[str, torch.Tensor] | None, name: str, ref: torch.Tensor, tol: Tolerance, data_range: float | None
) -> Metrics | None:
    """PyTorch-in-dtype's metrics against the fp32 reference (None without it or on a shape mismatch)."""
    if own is None or name not in own or own[name].shape != ref.shape:
        return None
    return compare(own[name].to(ref.dtype), ref, rtol=tol.rtol, data_range=data_range)


def _not_run_rows(
    level: str,
    component: str,
    label: str,
    shape: str,
    reference: Mapping[str, torch.Tensor],
    tol: Tolerance,
    data_ranges: Mapping[str, float | None] | None,
    *,
    precision: str,
    reason: str,
    own: Mapping[str, torch.Tensor] | None,
    own_problem: str | None,
    structure: str,
    problems: list[str],
) -> list[Row]:
    """Rows for a candidate that could not run here: ``not run`` with ``reason``, and what is
    checked instead (PyTorch in ``precision`` with the policy against the same row, and the
    graph's dtype structure). A failure of those checks still fails the row."""
    rows = []
    for name, ref in reference.items():
        m_own = _own_error(own, name, ref, tol, (data_ranges or {}).get(name))
        instead, failures = [], list(problems)
        if m_own is not None:
            metric = Row(level, component, label, shape, name, m_own, tol).headline()
            broken = tol.failures(m_own)
            instead.append(
                f"PyTorch in {precision} with the precision policy vs the fp32 reference, against the "
                f"{precision} row ({tol}): {metric[0]} {metric[1]:.7g}, " + ("out of tolerance" if broken else "within")
            )
            failures += [f"PyTorch in {precision} with the precision policy (checked instead): {f}" for f in broken]
        else:
            instead.append(f"PyTorch in {precision} could not be compared: {own_problem or 'no output ' + name}")
        instead.append(structure + ("" if not problems else " (" + "; ".join(problems) + ")"))
        rows.append(
            Row(
                level,
                component,
                label,
                shape,
                name,
                None,
                tol,
                failures,
                precision,
                m_own,
                not_run=reason,
                checked_instead=instead,
            )
        )
    return rows


def _activate(candidate: Backend, precision: str) -> str | None:
    """Activate ``candidate``; the reason it cannot run a ``precision`` graph here, if the
    runtime refuses one (anything else raises)."""
    try:
        candidate.activate()
    except Exception as e:  # the backend's ArtifactError, or the runtime's own error should it pass it through
        reason = runtime_refusal(e, precision)
        if reason is None:
            raise
        return f"{reason} [{candidate.name} on {candidate.device}]"
    return None


def component_parity(
    export_dir: str | Path,
    backend: str = "onnxruntime",
    device: str = "cpu",
    components: tuple[str, ...] | None = None,
    seed: int = 0,
) -> list[Row]:
    """Each component's backend against the reference module at every profile point.

    A reduced-precision component (its record's ``precision`` float16 / bfloat16) is held to
    that dtype's row, PyTorch itself in that dtype is measured beside it (a bound also holds
    within twice its error), and its graph must compute in that dtype; when the backend cannot
    run such a graph here, its rows are ``not run`` with what was checked instead.

    The reference is what the component's declaration says it is (:attr:`Component.reference_kind`):
    its reference call in torch, or, for an imported graph, the given file on ONNX Runtime CPU; the
    copy on ONNX Runtime CPU is then held to the kind's same-runtime row (identical outputs)."""
    from tqdm.auto import tqdm

    manifest = load_manifest(export_dir)
    family = get_family(manifest.family)
    ref = load_reference(manifest)
    rows: list[Row] = []
    names = components or tuple(manifest.components)
    for name in names:
        record = manifest.component(name)
        component = family.component(name)
        if record.quantization is not None:
            rows += quantized_parity(manifest, ref, component, backend, device, seed)
            continue
        precision = precision_of(component.precision, record.precision)
        imported = component.graph is not None
        same_runtime = imported and backend == "onnxruntime" and parse_device(device, backend).type == "cpu"
        tol = tolerance(record.kind, precision, scale_of(manifest), same_runtime=same_runtime)
        data_ranges = value_ranges(component, ref)
        reduced = precision != "float32" and not imported  # an imported graph computes in its own dtypes
        roundings = {r.output: r for r in family.roundings if r.component == name}
        with reference_backend(manifest, name, device) as reference:
            own_runner: TorchInDtype | None = None
            own_problem: str | None = None
            structure, problems = "", list[str]()
            if reduced:
                structure, problems = structure_check(manifest.root / record.file, precision)
                try:
                    own_runner = TorchInDtype(load_reference(manifest, device), component, precision, device)
                except RuntimeError as e:  # a cast torch cannot make here
                    own_problem = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            candidate = backend_for(backend, manifest, name, device)
            refused = _activate(candidate, precision)
            points = profile_points(record.dims if refused else candidate.profile_dims)  # an engine's may be narrower
            try:
                for label, point in tqdm(points, desc=f"parity {name}", unit="shape", leave=False):
                    feeds = component.sample_inputs(ref, point, seed=seed)
                    expected = reference(feeds)
                    own = None
                    if own_runner is not None:
                        try:
                            own = own_runner(feeds)
                        except RuntimeError as e:  # e.g. an op without a kernel in that dtype on this device
                            own_problem = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                    where = describe(point, record.dims)
                    if refused:
                        rows += _not_run_rows(
                            "component",
                            name,
                            label,
                            where,
                            expected,
                            tol,
                            data_ranges,
                            precision=precision,
                            reason=refused,
                            own=own,
                            own_problem=own_problem,
                            structure=structure,
                            problems=problems,
                        )
                    else:
                        compared = _rows_for(
                            "component",
                            name,
                            label,
                            where,
                            candidate(feeds),
                            expected,
                            tol,
                            data_ranges,
                            precision=precision,
                            own=own,
                            problems=problems,
                            roundings=roundings,
                        )
                        if imported and compared and label == points[0][0]:  # said once per component
                            compared[0].notes.append(f"reference: the given graph ({component.reference_kind})")
                        rows += compared
            finally:
                candidate.deactivate()
    return rows


def quantized_parity(
    manifest: Manifest, ref: Reference, component: Component, backend: str, device: str, seed: int
) -> list[Row]:
    """A quantized component at every profile point, two rows per output: the Q/DQ graph against
    the same quantizers simulated in torch (the exported scales on the reference module: proves the
    export of the quantization, held tight), and against the fp32 reference (the quantization's
    own error, held to the family's declared cosine; max error in the table). Where the backend
    cannot run the graph here, the rows are ``not run`` and the simulation against fp32 is what is
    checked instead."""
    from tqdm.auto import tqdm

    from exporters.quantize import simulation

    record = manifest.component(component.name)
    quant = record.quantization
    assert quant is not None and component.quantize is not None
    fmt = quant["format"]
    simulated = simulation(ref, component, manifest.root, quant)
    _, call = component.traced()
    sim_tol = quantized_tolerance(component.quantize, fmt, "simulation")
    fp32_tol = quantized_tolerance(component.quantize, fmt, "fp32")
    data_ranges = value_ranges(component, ref)
    rows: list[Row] = []
    with reference_backend(manifest, component.name, device) as reference:
        candidate = backend_for(backend, manifest, component.name, device)
        refused = _activate(candidate, fmt)
        points = profile_points(record.dims if refused else candidate.profile_dims)
        try:
            for label, point in tqdm(points, desc=f"parity {component.name} ({fmt})", unit="shape", leave=False):
                feeds = component.sample_inputs(ref, point, seed=seed)
                expected = reference(feeds)
                with torch.no_grad():
                    own = {k: v.to(expected[k].device) for k, v in call(simulated, dict(feeds)).items()}
                    spread = {k: v.to(expected[k].device) for k, v in call(simulated, _nudged(feeds, seed)).items()}
                where = describe(point, record.dims)
                if refused:
                    rows += _not_run_rows(
                        "component",
                        component.name,
                        label,
                        where,
                        expected,
                        fp32_tol,
                        data_ranges,
                        precision=f"{fmt} vs fp32",
                        reason=refused,
                        own=own,
                        own_problem=None,
                        structure="the graph's Q/DQ pairs passed the ONNX checker and the TensorRT-parser lint at export",
                        problems=[],
                    )
                    continue
                got = candidate(feeds)
                for against, reference_out, tol, yardstick in (
                    ("simulation", own, sim_tol, spread),
                    ("fp32", expected, fp32_tol, None),
                ):
                    rows += _rows_for(
                        "component",
                        component.name,
                        label,
                        where,
                        got,
                        reference_out,
                        tol,
                        data_ranges,
                        precision=f"{fmt} vs {against}",
                        own=yardstick,
                    )
        finally:
            candidate.deactivate()
    return rows


# A quantized network is discontinuous: a difference of ~1e-5 anywhere (what two fp32 runtimes differ
# by) can move an activation across a rounding boundary, and in a small random model one such flip can
# move the output by percents. The simulation row's 'torch' column is the simulation itself on its
# inputs nudged by this much (relative, seeded): the graph's error also holds within twice that spread.
NUDGE = 1e-5


def _nudged(feeds: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    return {
        k: v * (1 + NUDGE * torch.randn(v.shape, generator=gen, dtype=v.dtype)) if v.is_floating_point() else v
        for k, v in feeds.items()
    }


def _lowest_precision(manifest: Manifest, components: set[str] | list[str]) -> str:
    """The coarsest dtype among ``components`` (their loops and trajectories are held to its rows)."""
    family = get_family(manifest.family)
    found = {
        precision_of(family.component(c).precision, manifest.component(c).precision)
        for c in components
        if c in manifest.components
    }
    return next((p for p in ("bfloat16", "float16") if p in found), "float32")


def _refused(e: ArtifactError, manifest: Manifest, components: set[str] | list[str]) -> str | None:
    """The runtime's refusal of a reduced-precision graph among ``components``, if ``e`` is one."""
    precision = _lowest_precision(manifest, components)
    return runtime_refusal(e, precision) or (runtime_refusal(e, "float16") if precision == "bfloat16" else None)


def loop_parity(export_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu", seed: int = 0) -> list[Row]:
    """Host loops over components (a chunked VAE's encode / decode) against the library call
    they replace, at the family's own list of lengths."""
    manifest = load_manifest(export_dir)
    family = get_family(manifest.family)
    if family.host_loop is None:
        return []
    missing = sorted(set(family.host_loop.components) - set(manifest.components))
    if missing:
        return [_partial_not_run("loop", "loops", missing)]
    ref = load_reference(manifest)
    runners = Runners(backend, manifest, device)
    rows: list[Row] = []
    try:
        for check in family.host_loop.checks(ref, runners, manifest.envelope, seed):
            record = manifest.component(check.component)
            precision = _lowest_precision(manifest, [check.component])
            tol = tolerance(record.kind, precision, scale_of(manifest))
            data_range = value_ranges(family.component(check.component), ref).get(check.output)
            shape = "x".join(map(str, check.reference.shape))
            rows += _rows_for(
                "loop",
                check.component,
                check.label,
                shape,
                {check.output: check.candidate},
                {check.output: check.reference},
                tol,
                {check.output: data_range},
                precision=precision,
            )
    except ArtifactError as e:
        reason = _refused(e, manifest, list(manifest.components))
        if reason is None:
            raise
        precision = _lowest_precision(manifest, list(manifest.components))
        rows.append(
            _sampler_not_run(
                "loop",
                "loops",
                "-",
                f"{reason} [{backend} on {device}]",
                tolerance("end_to_end", precision, scale_of(manifest)),
                precision,
            )
        )
    finally:
        runners.close()
    return rows


def _partial_not_run(level: str, component: str, missing: list[str]) -> Row:
    """The host-loop or end-to-end checks of a partial export (``zoo export --component``): one
    ``not run`` row naming what the export lacks."""
    return Row(
        level,
        component,
        "-",
        "-",
        "-",
        None,
        Tolerance(),
        not_run=(
            f"the export lacks {', '.join(missing)} (a partial export, zoo export --component): re-export with them "
            f"to run these checks"
        ),
        checked_instead=["the exported components on their own (component rows above)"],
    )


def _sampler_not_run(level: str, component: str, label: str, reason: str, tol: Tolerance, precision: str) -> Row:
    """A host-loop or sampler run that could not happen here: one ``not run`` row."""
    return Row(
        level,
        component,
        label,
        "-",
        "-",
        None,
        tol,
        precision=precision,
        not_run=reason,
        checked_instead=[
            "each reduced-precision component on its own: PyTorch in its dtype with its precision "
            "policy against the fp32 reference, and its graph's dtypes (component rows above)"
        ],
    )


def end_to_end_parity(
    export_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu", seed: int = 0
) -> list[Row]:
    """The sampler against the family's pipeline on the reference modules, for each of the
    family's parity requests: the denoiser's latents at every step, then the decoded frames."""
    manifest = load_manifest(export_dir)
    family = get_family(manifest.family)
    if not family.has_sampler:
        return []
    needed = {c for slot in family.pipeline_slots for c in slot.components}
    if not needed <= set(manifest.components):
        return [_partial_not_run("end_to_end", "sampler", sorted(needed - set(manifest.components)))]
    scale = scale_of(manifest)
    precision = _lowest_precision(manifest, needed)
    assert family.trajectory is not None, f"family {family.name!r} has a sampler: it declares its trajectory"
    component, feed = family.trajectory
    # rounding points are met in the family's own loop only (a library pipeline runs no component)
    roundings = [r for r in family.roundings if r.component in needed] if family.reference_backend else []
    quantized = _quantized_bounds(manifest, family, needed)
    rows: list[Row] = []
    with Sampler(export_dir, backend=backend, device=device) as sampler:
        for label, request in family.parity_requests(request_context(manifest)):
            check_request(manifest, request)
            rounded: dict[str, RoundingPoint] = {}
            if family.reference_backend:  # the family's own loop, on the reference backend
                with Sampler(export_dir, backend=family.reference_backend) as reference:
                    reference_steps = reference.record_inputs(component, feed)
                    rounded = RoundingPoint.install(reference, roundings)
                    expected = reference(request, seed, progress=False)
            else:
                expected, reference_steps = _library_run(manifest, family, request, component, feed, seed)
            sampler.runners = dict(sampler.backends)
            candidate_steps = sampler.record_inputs(component, feed)
            candidate_rounded = RoundingPoint.install(sampler, roundings, rounded)
            try:
                got = sampler(request, seed, progress=False)
            except ArtifactError as e:
                reason = _refused(e, manifest, needed)
                if reason is None:
                    raise
                rows.append(
                    _sampler_not_run(
                        "end_to_end",
                        "sampler",
                        label,
                        f"{reason} [{backend} on {device}]",
                        tolerance("end_to_end", precision, scale),
                        precision,
                    )
                )
                continue
            for name, point in candidate_rounded.items():  # held to the component's own row, plus one ulp
                own = _lowest_precision(manifest, [name])
                rows += point.rows(label, rounded[name], tolerance(manifest.component(name).kind, own, scale), own)
            rows += _request_rows(
                label, component, feed, candidate_steps, reference_steps, got, expected, scale, precision, quantized
            )
    return rows


def _quantized_bounds(manifest: Manifest, family: Family, needed: set[str]) -> tuple[str, Tolerance, Tolerance] | None:
    """For a sampler whose components include a quantized one: its format, and the trajectory and
    frame rows its declaration gives (the quantization's error against the fp32 pipeline)."""
    for name in sorted(needed):
        quant = manifest.component(name).quantization
        declaration = family.component(name).quantize
        if quant is not None and declaration is not None:
            fmt = quant["format"]
            return (
                f"{fmt} vs fp32",
                quantized_tolerance(declaration, fmt, "trajectory"),
                quantized_tolerance(declaration, fmt, "end_to_end"),
            )
    return None


class RoundingPoint:
    """A sampler's runner of a component whose outputs the family rounds on purpose: it keeps
    those outputs of every call and, given the reference run's, continues with the reference's
    value of the same call, so that the rows after the rounding compare the loop and not a
    one-ulp flip that a 1e-7 difference before the rounding can cause."""

    def __init__(
        self,
        runner: RunnerCall,
        component: str,
        roundings: Mapping[str, Rounding],
        reference: RoundingPoint | None = None,
    ) -> None:
        self.runner, self.component, self.roundings, self.reference = runner, component, dict(roundings), reference
        self.calls: list[dict[str, torch.Tensor]] = []

    @classmethod
    def install(
        cls, sampler: Sampler, roundings: list[Rounding], reference: Mapping[str, RoundingPoint] | None = None
    ) -> dict[str, RoundingPoint]:
        """Wrap ``sampler``'s runner of every rounding component; with ``reference`` (the same
        points of the reference run), the candidate continues from the reference's values."""
        points = {}
        for name in dict.fromkeys(r.component for r in roundings):
            outputs = {r.output: r for r in roundings if r.component == name}
            points[name] = cls(sampler.runners[name], name, outputs, (reference or {}).get(name))
            sampler.runners[name] = points[name]
        return points

    # the backend's record, input names, state calls (zoo.contract.Runner's other members): Any, as
    # the runner's own attribute is whatever it is
    def __getattr__(self, name: str) -> Any:
        if name == "runner":
            raise AttributeError(name)
        return getattr(self.runner, name)

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(self.runner(feeds))
        i = len(self.calls)
        self.calls.append({k: out[k].detach().clone() for k in self.roundings})
        theirs = self.reference.calls[i] if self.reference is not None and i < len(self.reference.calls) else None
        for k in self.roundings:
            if theirs is not None and theirs[k].shape == out[k].shape:
                out[k] = theirs[k].to(out[k].device, out[k].dtype).clone()
        return out

    def rows(self, label: str, reference: RoundingPoint, row: Tolerance, precision: str) -> list[Row]:
        """One row per call and rounded output: the candidate's value against the reference's,
        held to the component's ``row`` plus one ulp of the rounded dtype."""
        rows: list[Row] = []
        if len(self.calls) != len(reference.calls):
            rows.append(
                Row(
                    "trajectory",
                    self.component,
                    f"{label} calls",
                    "-",
                    ", ".join(self.roundings),
                    None,
                    row,
                    [f"{len(self.calls)} calls vs {len(reference.calls)} in the reference run"],
                    precision,
                )
            )
        for i, (mine, theirs) in enumerate(zip(self.calls, reference.calls)):
            for name, rounding in self.roundings.items():
                c, r = mine[name], theirs[name]
                where = f"{label} call {i}"
                if c.shape != r.shape:
                    rows.append(
                        Row(
                            "trajectory",
                            self.component,
                            where,
                            "x".join(map(str, r.shape)),
                            name,
                            None,
                            row,
                            [f"shape {tuple(c.shape)} vs reference {tuple(r.shape)}"],
                            precision,
                        )
                    )
                    continue
                rows.append(
                    _rounding_row(
                        "trajectory",
                        self.component,
                        where,
                        "x".join(map(str, r.shape)),
                        name,
                        c,
                        r,
                        rounding,
                        row,
                        precision,
                        None,
                    )
                )
        return rows


def _library_run(
    manifest: Manifest, family: Family, request: Request, component: str, feed: str, seed: int
) -> tuple[NDArray[Any], list[torch.Tensor]]:
    """The family's pipeline on the library modules, the denoiser's latents recorded by a hook."""
    ref = load_reference(manifest)
    module = ref.module(family.component(component).module)
    pipeline = configure_pipeline(family.build_pipeline(request, dict(ref.modules)), request, progress=False)
    steps: list[torch.Tensor] = []

    def hook(mod: torch.nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        steps.append(bind_argument(mod.forward, feed, args, kw).detach().clone())

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            expected = run_pipeline(family, pipeline, request, seed)
    finally:
        handle.remove()
    return expected, steps


def _request_rows(
    label: str,
    component: str,
    feed: str,
    candidate_steps: list[torch.Tensor],
    reference_steps: list[torch.Tensor],
    got: NDArray[Any],
    expected: NDArray[Any],
    scale: str,
    precision: str = "float32",
    quantized: tuple[str, Tolerance, Tolerance] | None = None,
) -> list[Row]:
    """Trajectory and frame rows, held to the rows of the coarsest dtype among the sampler's
    components, or, with a quantized one, to its declared bounds against the fp32 pipeline."""
    rows: list[Row] = []
    tol = tolerance("trajectory", precision, scale)
    frames_tol = tolerance("end_to_end", precision, scale)
    if quantized is not None:
        precision, tol, frames_tol = quantized
    if len(candidate_steps) != len(reference_steps):
        rows.append(
            Row(
                "trajectory",
                component,
                f"{label} steps",
                "-",
                feed,
                None,
                tol,
                [f"{len(candidate_steps)} denoiser calls vs {len(reference_steps)} in the pipeline"],
                precision,
            )
        )
    for i, (c, r) in enumerate(zip(candidate_steps, reference_steps)):
        rows += _rows_for(
            "trajectory",
            component,
            f"{label} step {i}",
            "x".join(map(str, r.shape)),
            {feed: c},
            {feed: r},
            tol,
            precision=precision,
        )
    tol = frames_tol
    shape = "x".join(map(str, expected.shape))
    # frames compared in [-1, 1], as the pipeline's decoder produced them
    rows += _rows_for(
        "end_to_end",
        "sampler",
        label,
        shape,
        {"frames": torch.from_numpy(got).double() * 2 - 1},
        {"frames": torch.from_numpy(expected).double() * 2 - 1},
        tol,
        {"frames": 2.0},
        precision=precision,
    )
    return rows


def run_parity(
    export_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu", end_to_end: bool = True
) -> list[Row]:
    """All levels: components at every profile point, then trajectory and end to end."""
    if backend == "torch":
        raise ZooError(
            "parity compares a backend against the torch reference: choose --backend onnxruntime or tensorrt"
        )
    parse_device(device, backend)  # a backend that cannot run here says so before any reference loads
    rows = weights_parity(export_dir)
    rows += component_parity(export_dir, backend, device)
    rows += loop_parity(export_dir, backend, device)
    if end_to_end:
        rows += end_to_end_parity(export_dir, backend, device)
    elif get_family(load_manifest(export_dir).family).has_sampler:
        rows.append(
            Row(
                "end_to_end",
                "sampler",
                "-",
                "-",
                "-",
                None,
                Tolerance(),
                not_run="skipped by --no-end-to-end",
                checked_instead=["the components on their own (rows above)"],
            )
        )
    return rows


def weights_only_row() -> Row:
    """``zoo parity --weights-only``: the numeric checks did not run (one ``not run`` row)."""
    return Row(
        "component",
        "all",
        "-",
        "-",
        "-",
        None,
        Tolerance(),
        not_run="skipped by --weights-only: only the initializer check ran (no weights were loaded)",
        checked_instead=["every initializer's bytes and transformations (weights rows above)"],
    )


def weights_parity(export_dir: str | Path) -> list[Row]:
    """The initializer check of every weightless component (see :func:`exporters.onnx.verify_weights`):
    one row each, saying how many initializers were proven which way. Needs no weights in memory:
    the reference's weightless build is on the meta device, and only computed tensors are
    recomputed, one at a time."""
    from exporters.onnx import verify_weights

    manifest = load_manifest(export_dir)
    records = [r for r in manifest.components.values() if r.weight_map]
    if not records:
        return []
    family = get_family(manifest.family)
    ref = load_reference(manifest)
    rows = []
    for record in records:
        counts = verify_weights(manifest.root, record, ref, family.component(record.name))
        total = sum(counts.values())
        said = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        rows.append(
            Row(
                "weights",
                record.name,
                "-",
                "-",
                f"{total} initializers: {said}",
                None,
                Tolerance(),
                precision=record.precision,
            )
        )
    return rows

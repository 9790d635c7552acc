"""Engine optimization profiles from a component's recorded dims, as Polygraphy's ``Profile``.

One profile per component: every input's min / opt / max shape, each symbolic dim taken at its
own min / opt / max (a derived dim's profile already follows from its source's, so the three
shapes are consistent across inputs). ``zoo build`` may narrow a source dim inside the exported
envelope (a smaller engine for the sizes a deployment serves); derived dims follow it.
``zoo build`` and the trtexec lines read the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporters.manifest import ComponentRecord
from zoo.contract import Dim, Range
from zoo.errors import EnvelopeError

Dims = Mapping[str, Dim]


def input_shapes(record: ComponentRecord, which: str, dims: Dims | None = None) -> dict[str, tuple[int, ...]]:
    """Every input's shape at the profile's ``min``, ``opt`` or ``max`` (of ``dims``, by default
    the exported ones)."""
    dims = record.dims if dims is None else dims
    return {t.name: tuple(d if isinstance(d, int) else getattr(dims[d], which) for d in t.shape) for t in record.inputs}


def shape_profile(record: ComponentRecord, dims: Dims | None = None) -> Any:
    """A Polygraphy ``Profile`` (min / opt / max shape per input) for ``record``; Polygraphy
    imports TensorRT lazily, so this works where TensorRT is absent."""
    from polygraphy.backend.trt import Profile

    lo, opt, hi = (input_shapes(record, w, dims) for w in ("min", "opt", "max"))
    profile = Profile()
    for name in lo:
        profile.add(name, min=lo[name], opt=opt[name], max=hi[name])
    return profile


def dynamic_inputs(record: ComponentRecord) -> list[str]:
    """Inputs the exported graph leaves dynamic: a named dim whose exported min and max differ
    (derived dims follow their source). A profile must bound each of them, however narrow it is:
    ``zoo build --dim batch=1`` still builds a graph whose batch is symbolic."""
    return [t.name for t in record.inputs if any(isinstance(d, str) and record.dims[d].is_dynamic for d in t.shape)]


def narrow_dims(record: ComponentRecord, ranges: Mapping[str, Range]) -> dict[str, Dim]:
    """The component's dims with the named source dims narrowed to ``ranges`` (derived dims
    follow their source). Each range must lie inside the exported profile and keep the dim's
    multiple; a derived or unknown dim is refused with the names that can be given."""
    dims = dict(record.dims)
    for name, r in ranges.items():
        dim = dims.get(name)
        where = f"--dim {name}={r} (component {record.name!r})"
        if dim is None:
            raise EnvelopeError(f"{where}: the component has no dim {name!r}; its dims are {', '.join(record.dims)}")
        if dim.is_derived:
            raise EnvelopeError(
                f"{where}: {name} is derived ({name} = {dim.formula()}): give --dim {dim.of}=... instead"
            )
        if not r.min <= r.opt <= r.max:
            raise EnvelopeError(f"{where}: expected MIN <= OPT <= MAX")
        if r.min < dim.min or r.max > dim.max:
            raise EnvelopeError(
                f"{where}: outside the exported profile: {name} must be in [{dim.min}, {dim.max}] "
                f"(re-export with a wider envelope)"
            )
        bad = [v for v in (r.min, r.opt, r.max) if v % dim.multiple_of]
        if bad:
            raise EnvelopeError(
                f"{where}: {name} must be a multiple of {dim.multiple_of}, got {', '.join(map(str, bad))}"
            )
        dims[name] = Dim(name, r.min, r.opt, r.max, dim.multiple_of)
    for name, dim in dims.items():
        if dim.of is not None:  # derived
            dims[name] = Dim.derived(name, dims[dim.of], scale=dim.scale, offset=dim.offset)
    return dims


def trtexec_command(
    record: ComponentRecord,
    onnx_path: str,
    engine_path: str,
    *,
    dims: Dims | None = None,
    workspace_gib: float | None = None,
    timing_cache: str | None = None,
    refittable: bool = False,
    weight_streaming: bool = False,
    weight_streaming_budget: str | None = None,
) -> list[str]:
    """NVIDIA's ``trtexec`` line that builds this component's engine: its ONNX, one optimization
    profile with ``--minShapes/--optShapes/--maxShapes`` for every input the graph leaves dynamic
    (their shapes from ``dims``, by default the manifest's; derived dims following their source;
    a profile narrowed to one point still gives all three), strongly typed: every tensor in
    the dtype the graph (TensorRT 11 builds nothing else; 10.x needs the flag), and without TF32 (fp32 stays
    fp32, as parity checked it)."""
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    names = dynamic_inputs(record)
    if names:
        for flag, which in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            shapes = input_shapes(record, which, dims)
            cmd.append(f"{flag}=" + ",".join(f"{n}:{'x'.join(map(str, shapes[n]))}" for n in names))
    cmd += ["--stronglyTyped", "--noTF32"]
    if workspace_gib is not None:
        cmd.append(f"--memPoolSize=workspace:{max(1, round(workspace_gib * 1024))}M")
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if refittable:
        cmd.append("--refit")
    if weight_streaming:
        cmd.append("--weightStreaming")
        if weight_streaming_budget:
            cmd.append(
                f"--weightStreamingBudget={'-1' if weight_streaming_budget == 'auto' else weight_streaming_budget}"
            )
    return cmd

"""Engine optimization profiles from a component's recorded dims, as Polygraphy's ``Profile``.

One profile per component: every input's min / opt / max shape, each symbolic dim taken at its
own min / opt / max (a derived dim's profile already follows from its source's, so the three
shapes are consistent across inputs). ``zoo build`` and the trtexec lines read it.
"""

from __future__ import annotations

from typing import Any

from exporters.manifest import ComponentRecord


def input_shapes(record: ComponentRecord, which: str) -> dict[str, tuple[int, ...]]:
    """Every input's shape at the profile's ``min``, ``opt`` or ``max``."""
    return {t.name: tuple(d if isinstance(d, int) else getattr(record.dims[d], which) for d in t.shape)
            for t in record.inputs}


def shape_profile(record: ComponentRecord) -> Any:
    """A Polygraphy ``Profile`` (min / opt / max shape per input) for ``record``; Polygraphy
    imports TensorRT lazily, so this works where TensorRT is absent."""
    from polygraphy.backend.trt import Profile

    lo, opt, hi = (input_shapes(record, w) for w in ("min", "opt", "max"))
    profile = Profile()
    for name in lo:
        profile.add(name, min=lo[name], opt=opt[name], max=hi[name])
    return profile


def dynamic_inputs(record: ComponentRecord) -> list[str]:
    """Inputs with at least one dim whose min and max differ (the ones a profile must bound)."""
    lo, hi = input_shapes(record, "min"), input_shapes(record, "max")
    return [name for name in lo if lo[name] != hi[name]]


def trtexec_command(record: ComponentRecord, onnx_path: str, engine_path: str, *, workspace_gib: float | None = None,
                    timing_cache: str | None = None, refittable: bool = False,
                    weight_streaming: bool = False) -> list[str]:
    """NVIDIA's ``trtexec`` line that builds this component's engine: its ONNX, one optimization
    profile with ``--minShapes/--optShapes/--maxShapes`` for every dynamic input (the manifest's
    dims, derived dims following their source), strongly typed where the graph carries a reduced
    precision (its fp32 islands are Casts in the graph, which a strongly typed build keeps)."""
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    names = dynamic_inputs(record)
    if names:
        for flag, which in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            shapes = input_shapes(record, which)
            cmd.append(f"{flag}=" + ",".join(f"{n}:{'x'.join(map(str, shapes[n]))}" for n in names))
    if record.precision != "float32":
        cmd.append("--stronglyTyped")
    if workspace_gib is not None:
        cmd.append(f"--memPoolSize=workspace:{int(workspace_gib * 1024)}M")
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if refittable:
        cmd.append("--refit")
    if weight_streaming:
        cmd.append("--weightStreaming")
    return cmd

"""Feed and output validation against an exported component's contract.

Runs before any runtime is touched: a wrong name, dtype, rank, a dim outside its profile or
breaking its constraint, a batch of 0, or NaN / Inf values give an :class:`InputError` that
names the input, the dim, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch

from exporters.manifest import ComponentRecord, TensorRecord
from zoo.contract import DTYPES
from zoo.errors import InputError, OutputError


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise InputError(f"input {name!r}: expected a torch.Tensor or numpy array, got {type(value).__name__}")


def _nonfinite(t: torch.Tensor) -> tuple[int, int]:
    if not t.is_floating_point():
        return 0, 0
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


Key = TypeVar("Key", bound=Hashable)


def first_nonfinite(tensors: Mapping[Key, torch.Tensor]) -> Key | None:
    """The name of the first tensor holding a NaN or Inf, or None: one fused reduction per device
    (``isfinite(t).all()`` of every floating tensor stacked, one ``.item()``), so a GPU call costs
    one host sync, not one per tensor; which tensor it was is found only on the failing path."""
    floats = [(name, t) for name, t in tensors.items() if t.is_floating_point() and t.numel()]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for _, t in floats:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    if all(bool(torch.stack(flags).all().item()) for flags in by_device.values()):
        return None
    return next(name for name, t in floats if any(_nonfinite(t)))


def check_finite(
    record: ComponentRecord, feeds: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]
) -> None:
    """Inputs and outputs finite, checked together with one host sync (:class:`InputError` naming
    the input, else :class:`OutputError` naming the output, with their NaN and Inf counts)."""
    named = {**{("in", k): v for k, v in feeds.items()}, **{("out", k): v for k, v in outputs.items()}}
    bad = first_nonfinite(named)
    if bad is None:
        return
    kind, name = bad
    t = named[bad]
    nan, inf = _nonfinite(t)
    if kind == "in":
        raise InputError(f"component {record.name!r} input {name!r}: contains {nan} NaN and {inf} Inf values")
    raise OutputError(
        f"component {record.name!r} output {name!r}: {nan} NaN and {inf} Inf values "
        f"(shape {tuple(t.shape)}); nothing written"
    )


def validate_feeds(
    record: ComponentRecord, feeds: Mapping[str, Any], *, finite: bool = True
) -> dict[str, torch.Tensor]:
    """The feeds as tensors, checked against ``record``; raises :class:`InputError`. ``finite``:
    also refuse NaN / Inf values here (else the caller checks them with :func:`check_finite`)."""
    expected = [t.name for t in record.inputs]
    missing = [n for n in expected if n not in feeds]
    extra = sorted(set(feeds) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected input(s) {', '.join(extra)}")
        raise InputError(f"component {record.name!r}: {'; '.join(parts)}; expected exactly {', '.join(expected)}")

    out: dict[str, torch.Tensor] = {}
    seen: dict[str, tuple[int, str]] = {}  # source dim -> (value, where it was seen)
    for spec in record.inputs:
        t = _as_tensor(spec.name, feeds[spec.name])
        where = f"component {record.name!r} input {spec.name!r}"
        if t.dtype != DTYPES[spec.dtype]:
            got = str(t.dtype).replace("torch.", "")
            raise InputError(f"{where}: dtype {got}, expected {spec.dtype}")
        if t.dim() != len(spec.shape):
            raise InputError(
                f"{where}: rank {t.dim()} (shape {tuple(t.shape)}), expected rank {len(spec.shape)} {_fmt(spec)}"
            )
        for axis, (size, want) in enumerate(zip(t.shape, spec.shape)):
            if isinstance(want, int):
                if size != want:
                    raise InputError(f"{where}: dim {axis} is {size}, expected {want} {_fmt(spec)}")
                continue
            dim = record.dims[want]
            problem = dim.problem(size)
            if problem:
                raise InputError(f"{where}: dim {axis} ({want}) is {size}, {problem} (exported profile)")
            name, value = want, size
            if dim.of is not None:  # derived: check it through its source dim
                source = dim.source_value(size)
                if source is None:
                    raise InputError(f"{where}: dim {axis} ({want}) is {size}, expected {dim.formula()}")
                name, value = dim.of, source
            if name in seen and seen[name][0] != value:
                so = f", so {name} = {value}" if dim.is_derived else ""
                raise InputError(
                    f"{where}: dim {axis} ({want}) is {size}{so}, but {seen[name][1]} has {name} = {seen[name][0]}"
                )
            seen.setdefault(name, (value, f"input {spec.name!r}"))
        out[spec.name] = t
    if finite:
        check_finite(record, out, {})
    return out


def check_profile(
    record: ComponentRecord, dims: Mapping[str, Any], feeds: Mapping[str, torch.Tensor], what: str
) -> None:
    """Feeds already valid for the export must also lie inside ``dims`` (a narrower profile, such
    as an engine's built with ``zoo build --dim``); :class:`InputError` naming ``what`` otherwise."""
    for spec in record.inputs:
        for axis, (size, want) in enumerate(zip(feeds[spec.name].shape, spec.shape)):
            if isinstance(want, str) and want in dims and record.dims[want] != dims[want]:
                problem = dims[want].problem(size)
                if problem:
                    raise InputError(
                        f"component {record.name!r} input {spec.name!r}: dim {axis} ({want}) is {size}, "
                        f"{problem} ({what}; build one covering it with `zoo build --dim`)"
                    )


def _point(record: ComponentRecord, feeds: Mapping[str, torch.Tensor]) -> dict[str, int | None]:
    """Every dim's value that the feeds determine (derived dims through their sources; None for a
    source no integer gives)."""
    point: dict[str, int | None] = {}
    for spec in record.inputs:
        for size, want in zip(feeds[spec.name].shape, spec.shape):
            if isinstance(want, str):
                dim = record.dims[want]
                if dim.of is not None:  # derived
                    point[dim.of] = dim.source_value(size)
                else:
                    point[want] = size
    for name, dim in record.dims.items():
        if not dim.is_dynamic:
            point.setdefault(name, dim.min)
        if dim.of is not None and (source := point.get(dim.of)) is not None:  # derived, its source known
            point[name] = dim.value_from(source)
    return point


def check_outputs(
    record: ComponentRecord, feeds: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]
) -> None:
    """Outputs must be all there, of the contract's rank and every dim (derived ones included)
    (:class:`OutputError`); whether they are finite is :func:`check_finite`'s to say."""
    point = _point(record, feeds)
    for spec in record.outputs:
        where = f"component {record.name!r} output {spec.name!r}"
        if spec.name not in outputs:
            raise OutputError(f"{where} is missing; the backend returned {', '.join(outputs)}")
        t = outputs[spec.name]
        if t.dim() != len(spec.shape):
            raise OutputError(f"{where}: rank {t.dim()}, expected {len(spec.shape)} {_fmt(spec)}")
        for axis, (size, want) in enumerate(zip(t.shape, spec.shape)):
            expected = want if isinstance(want, int) else point.get(want)
            if expected is not None:
                if size != expected:
                    raise OutputError(f"{where}: dim {axis} is {size}, expected {expected} {_fmt(spec)}")
            elif isinstance(want, str):  # a dim the feeds do not determine: its own range
                problem = record.dims[want].problem(size)
                if problem:
                    raise OutputError(f"{where}: dim {axis} ({want}) is {size}, {problem}")


def _fmt(spec: TensorRecord) -> str:
    return "(" + ", ".join(str(d) for d in spec.shape) + ")"

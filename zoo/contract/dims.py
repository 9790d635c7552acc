"""Shapes: the user's envelope (user units: frames, pixels) and the symbolic dims of tensors
(model units), with their min / opt / max and constraints."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zoo.errors import EnvelopeError


@dataclass(frozen=True)
class Range:
    """A ``min:opt:max`` triple, as the user writes it and TensorRT profiles use it."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str, *, what: str) -> Range:
        """Parse ``MIN:OPT:MAX`` or a single ``N`` (static); errors name ``what``."""
        parts = str(text).strip().split(":")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            raise EnvelopeError(f"{what}: expected MIN:OPT:MAX or N, got {text!r}")
        try:
            lo, opt, hi = (int(p) for p in parts)
        except ValueError:
            raise EnvelopeError(f"{what}: expected integers in MIN:OPT:MAX, got {text!r}") from None
        return cls(lo, opt, hi)

    def scaled(self, numerator: int, denominator: int = 1) -> Range:
        """The range in other units, e.g. pixels -> latents (``scaled(1, 8)``)."""
        return Range(*(v * numerator // denominator for v in (self.min, self.opt, self.max)))

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


GUARD_OVERRIDE = "ZOO_NO_SIZE_GUARD"  # lifts the ceilings that are guards (Axis.guard), never a model's limits


@dataclass(frozen=True)
class Axis:
    """One axis of the export envelope, in the user's units (pixels, frames, images)."""

    name: str
    default: Range
    multiple_of: int = 1
    floor: int = 1
    ceiling: int | None = None
    unit: str = ""
    remainder: int = 0  # values are multiple_of * k + remainder (pixel frames 4k+1)
    # why the ceiling is there when it is a guard, not something the model cannot do (a guard is
    # lifted with ZOO_NO_SIZE_GUARD=1; a limit of the model never is)
    guard: str = ""

    def breaks_step(self, value: int) -> bool:
        return (value - self.remainder) % self.multiple_of != 0

    @property
    def step_text(self) -> str:
        if self.remainder:
            return f"{self.multiple_of}k+{self.remainder}"
        return f"a multiple of {self.multiple_of}"

    def check(self, r: Range) -> None:
        """Raise :class:`EnvelopeError` naming the axis unless ``r`` is a valid profile."""
        label = f"--{self.name.replace('_', '-')} {r}"
        if not r.min <= r.opt <= r.max:
            raise EnvelopeError(f"{label}: expected MIN <= OPT <= MAX")
        if r.min < self.floor:
            raise EnvelopeError(f"{label}: {self.name} must be at least {self.floor}{self.unit_suffix}")
        if self.ceiling is not None and r.max > self.ceiling and not (self.guard and os.environ.get(GUARD_OVERRIDE)):
            why = f" ({self.guard}; set {GUARD_OVERRIDE}=1 to export beyond it)" if self.guard else ""
            raise EnvelopeError(f"{label}: {self.name} can be at most {self.ceiling}{self.unit_suffix}{why}")
        bad = [v for v in (r.min, r.opt, r.max) if self.breaks_step(v)]
        if bad:
            raise EnvelopeError(
                f"{label}: {self.name} must be {self.step_text}{self.unit_suffix}, got {', '.join(map(str, bad))}"
            )

    def check_value(self, value: int, allowed: Range, option: str) -> None:
        """Raise unless ``value`` lies inside the exported ``allowed`` range and constraints."""
        if not allowed.min <= value <= allowed.max:
            raise EnvelopeError(
                f"{option} {value} is outside the exported profile: {self.name} must be in "
                f"[{allowed.min}, {allowed.max}]{self.unit_suffix} (re-export with a wider "
                f"--{self.name.replace('_', '-')})"
            )
        if self.breaks_step(value):
            raise EnvelopeError(f"{option} {value}: {self.name} must be {self.step_text}{self.unit_suffix}")

    @property
    def unit_suffix(self) -> str:
        return f" {self.unit}" if self.unit else ""


Envelope = dict[str, Range]


@dataclass(frozen=True)
class Dim:
    """A symbolic tensor dim with its profile (what a TensorRT optimization profile holds).

    A *derived* dim is defined from another dim of the same component, ``scale * of + offset``
    (pixels = 8 x latents, pixel frames = 4 x (latent frames - 1) + 1): its profile follows from
    its source's, every value of it is checked against the source's, and engine profiles and
    sample shapes are computed from the source alone.
    """

    name: str
    min: int
    opt: int
    max: int
    multiple_of: int = 1
    of: str | None = None  # the source dim of a derived dim
    scale: int = 1
    offset: int = 0

    @classmethod
    def of_range(cls, name: str, r: Range, multiple_of: int = 1) -> Dim:
        return cls(name, r.min, r.opt, r.max, multiple_of)

    @classmethod
    def static(cls, name: str, value: int) -> Dim:
        return cls(name, value, value, value)

    @classmethod
    def derived(cls, name: str, source: Dim, *, scale: int = 1, offset: int = 0) -> Dim:
        """``scale * source + offset`` (``scale`` > 0), with the profile that follows."""
        if scale <= 0:
            raise ValueError(f"derived dim {name}: scale must be positive, got {scale}")

        def f(v: int) -> int:
            return scale * v + offset

        return cls(name, f(source.min), f(source.opt), f(source.max), 1, source.name, scale, offset)

    @property
    def is_derived(self) -> bool:
        return self.of is not None

    @property
    def is_dynamic(self) -> bool:
        return self.min != self.max

    def value_from(self, source_value: int) -> int:
        return self.scale * source_value + self.offset

    def source_value(self, value: int) -> int | None:
        """The source dim's value that gives ``value``, or None if no integer does."""
        q, r = divmod(value - self.offset, self.scale)
        return None if r else q

    def formula(self) -> str:
        text = f"{self.scale} x {self.of}" if self.scale != 1 else str(self.of)
        return text + (f" + {self.offset}" if self.offset > 0 else f" - {-self.offset}" if self.offset < 0 else "")

    def problem(self, value: int) -> str | None:
        """Why ``value`` is not allowed for this dim (range and multiple-of), or None."""
        if self.min == self.max and value != self.min:
            return f"expected {self.min}"
        if not self.min <= value <= self.max:
            return f"must be in [{self.min}, {self.max}]"
        if value % self.multiple_of:
            return f"must be a multiple of {self.multiple_of}"
        return None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"min": self.min, "opt": self.opt, "max": self.max, "multiple_of": self.multiple_of}
        if self.of is not None:
            d.update(of=self.of, scale=self.scale, offset=self.offset)
        return d

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, Any]) -> Dim:
        of = d.get("of")
        return cls(
            name,
            _int(d["min"]),
            _int(d["opt"]),
            _int(d["max"]),
            _int(d.get("multiple_of", 1)),
            None if of is None else str(of),
            _int(d.get("scale", 1)),
            _int(d.get("offset", 0)),
        )


def _int(value: Any) -> int:
    """An integer from JSON (a float like 2.5, a bool or a string is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def resolve_point(dims: Mapping[str, Dim], base: Mapping[str, int]) -> dict[str, int]:
    """Every dim's value at a point given by its source (non-derived) dims."""
    point = {n: int(base[n]) for n, d in dims.items() if not d.is_derived}
    for n, d in dims.items():
        if d.of is not None:
            point[n] = d.value_from(point[d.of])
    return point


def check_dims(dims: Mapping[str, Dim]) -> None:
    """A derived dim must name a non-derived dim of the same component."""
    for n, d in dims.items():
        if d.of is not None and (d.of not in dims or dims[d.of].is_derived):
            raise ValueError(f"dim {n} is derived from {d.of!r}, which is not a source dim of this component")


def round_to(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple``, at least ``multiple``."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)

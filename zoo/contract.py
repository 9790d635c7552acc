"""The declarative contract every family fills in.

A family says, per component: how to load its reference, its export wrapper, its inputs and
outputs (dtype and dims, each dim a number or a named symbolic dim with min / opt / max and
constraints), a sample-input factory, its precision policy and its tolerance row. Everything
generic (export, checks, profiles, backends, parity) reads only this contract.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from zoo.errors import EnvelopeError, UnknownFamilyError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


# --------------------------------------------------------------------------------------
# Shapes: the user's envelope (user units) and the symbolic dims of tensors (model units)
# --------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Axis:
    """One axis of the export envelope, in the user's units (pixels, frames, images)."""

    name: str
    default: Range
    multiple_of: int = 1
    floor: int = 1
    ceiling: int | None = None
    unit: str = ""
    help: str = ""

    def check(self, r: Range) -> None:
        """Raise :class:`EnvelopeError` naming the axis unless ``r`` is a valid profile."""
        label = f"--{self.name.replace('_', '-')} {r}"
        if not r.min <= r.opt <= r.max:
            raise EnvelopeError(f"{label}: expected MIN <= OPT <= MAX")
        if r.min < self.floor:
            raise EnvelopeError(f"{label}: {self.name} must be at least {self.floor}{self.unit_suffix}")
        if self.ceiling is not None and r.max > self.ceiling:
            raise EnvelopeError(f"{label}: {self.name} can be at most {self.ceiling}{self.unit_suffix}")
        bad = [v for v in (r.min, r.opt, r.max) if v % self.multiple_of]
        if bad:
            raise EnvelopeError(
                f"{label}: {self.name} must be a multiple of {self.multiple_of}{self.unit_suffix}, "
                f"got {', '.join(map(str, bad))}"
            )

    def check_value(self, value: int, allowed: Range, option: str) -> None:
        """Raise unless ``value`` lies inside the exported ``allowed`` range and constraints."""
        if not allowed.min <= value <= allowed.max:
            raise EnvelopeError(
                f"{option} {value} is outside the exported profile: {self.name} must be in "
                f"[{allowed.min}, {allowed.max}]{self.unit_suffix} (re-export with a wider "
                f"--{self.name.replace('_', '-')})"
            )
        if value % self.multiple_of:
            raise EnvelopeError(
                f"{option} {value}: {self.name} must be a multiple of {self.multiple_of}{self.unit_suffix}"
            )

    @property
    def unit_suffix(self) -> str:
        return f" {self.unit}" if self.unit else ""


Envelope = dict[str, Range]


@dataclass(frozen=True)
class Dim:
    """A symbolic tensor dim with its profile (what a TensorRT optimization profile holds)."""

    name: str
    min: int
    opt: int
    max: int
    multiple_of: int = 1

    @classmethod
    def of(cls, name: str, r: Range, multiple_of: int = 1) -> Dim:
        return cls(name, r.min, r.opt, r.max, multiple_of)

    def problem(self, value: int) -> str | None:
        """Why ``value`` is not allowed for this dim, or None."""
        if self.min == self.max and value != self.min:
            return f"expected {self.min}"
        if not self.min <= value <= self.max:
            return f"must be in [{self.min}, {self.max}]"
        if value % self.multiple_of:
            return f"must be a multiple of {self.multiple_of}"
        return None

    def to_json(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max, "multiple_of": self.multiple_of}

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, int]) -> Dim:
        return cls(name, int(d["min"]), int(d["opt"]), int(d["max"]), int(d.get("multiple_of", 1)))


# --------------------------------------------------------------------------------------
# Tensors and components
# --------------------------------------------------------------------------------------

SampleFn = Callable[[tuple[int, ...], torch.Generator, "Reference"], torch.Tensor]


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output: dtype and shape, each dim an int or a symbolic dim name.

    ``sample`` says how the sample-input factory fills it: ``"normal"`` (standard normal),
    ``"mask"`` (1 then trailing 0 padding per row, like a tokenizer mask), ``"timestep"``
    (integer-valued timesteps in [0, 1000)), ``"uniform"`` ([0, 1)), or a callable.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    sample: str | SampleFn = "normal"

    def resolve(self, point: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(point[d]) for d in self.shape)


def make_sample(spec: TensorSpec, shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    """One sample tensor for ``spec`` at concrete ``shape`` (seeded by ``gen``)."""
    dtype = DTYPES[spec.dtype]
    if callable(spec.sample):
        return spec.sample(shape, gen, ref).to(dtype)
    if spec.sample == "normal":
        return torch.randn(shape, generator=gen).to(dtype)
    if spec.sample == "uniform":
        return torch.rand(shape, generator=gen).to(dtype)
    if spec.sample == "timestep":
        return torch.randint(0, 1000, shape, generator=gen).to(dtype)
    if spec.sample == "mask":
        # rows of 1s followed by 0 padding; every row keeps at least one token
        length = shape[-1]
        keep = torch.randint(1, length + 1, shape[:-1] + (1,), generator=gen)
        return (torch.arange(length).expand(shape) < keep).to(dtype)
    raise ValueError(f"{spec.name}: unknown sample kind {spec.sample!r}")


@dataclass(frozen=True)
class Precision:
    """Precision policy of a component: the export dtype, and what must stay fp32."""

    dtype: str = "float32"
    keep_fp32: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Component:
    """One exportable part of a family (an encoder, a denoiser, a VAE half)."""

    name: str
    kind: str  # tolerance row: text_encoder | image_encoder | denoiser | vae_encoder | vae_decoder
    module: str  # key of the reference module in Reference.modules
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Callable[[Envelope, Reference], dict[str, Dim]]
    wrapper: Callable[[Reference], torch.nn.Module]
    reference: Callable[[Reference, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    precision: Precision = Precision()
    export_patches: tuple[Callable[[], contextlib.AbstractContextManager], ...] = ()

    def input_specs(self, ref: Reference) -> tuple[TensorSpec, ...]:
        """The inputs this reference takes (some are variant-specific, see ``TensorSpec``)."""
        return tuple(s for s in self.inputs if _spec_active(s, ref))

    def sample_inputs(self, ref: Reference, point: Mapping[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
        """Sample feeds at a concrete ``point`` (dim name -> size)."""
        gen = torch.Generator("cpu").manual_seed(seed)
        return {s.name: make_sample(s, s.resolve(point), gen, ref) for s in self.input_specs(ref)}


@dataclass(frozen=True)
class ConditionalSpec(TensorSpec):
    """A TensorSpec present only when ``when(ref)`` is true (e.g. PixArt-alpha size conditions)."""

    when: Callable[[Reference], bool] = field(default=lambda ref: True, compare=False)


def _spec_active(spec: TensorSpec, ref: Reference) -> bool:
    return not isinstance(spec, ConditionalSpec) or spec.when(ref)


# --------------------------------------------------------------------------------------
# The loaded reference and the pipeline a sampler rebuilds around backends
# --------------------------------------------------------------------------------------


@dataclass
class Reference:
    """A loaded PyTorch reference: library modules, host-side parts, and where they came from."""

    family: str
    variant: str
    source: Path
    modules: dict[str, Any]
    pipeline: str | None = None  # diffusers pipeline class name, if the family has one

    def module(self, key: str) -> Any:
        return self.modules[key]


SlotCall = Callable[..., Any]


@dataclass(frozen=True)
class PipelineSlot:
    """A module of the diffusers pipeline that a sampler replaces with exported components.

    ``calls`` maps the module's methods (``forward``, ``decode``) to functions
    ``fn(runners, *args, **kwargs)`` that turn the pipeline's call into component feeds,
    run them through ``runners[component]`` and return what the library module returns.
    """

    attribute: str
    module: str
    calls: Mapping[str, SlotCall]
    components: tuple[str, ...] = ()  # the exported components its calls run


class Family:
    """Base of the family declarations. Subclasses fill in the class attributes and loaders."""

    name: ClassVar[str]
    description: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    components: ClassVar[tuple[Component, ...]]
    random_presets: ClassVar[tuple[str, ...]] = ("tiny",)
    # sampler declaration (empty: the family has no sampler, only components)
    pipeline_slots: ClassVar[tuple[PipelineSlot, ...]] = ()
    host_modules: ClassVar[tuple[str, ...]] = ()  # tokenizer, scheduler: copied into exports
    request_axes: ClassVar[Mapping[str, str]] = {}  # pipeline kwarg -> envelope axis
    request_defaults: ClassVar[Mapping[str, Any]] = {}  # pipeline kwargs the sampler sets unless asked
    trajectory: ClassVar[tuple[str, str] | None] = None  # (component, latent input name)

    # -- loading ------------------------------------------------------------------------
    def load(self, source: Path) -> Reference:
        """Load the reference from a local checkpoint folder with the library's ``from_pretrained``."""
        raise NotImplementedError

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        """Write a random-weight checkpoint folder (tokenizer included) that :meth:`load` reads."""
        raise NotImplementedError

    def random_choice(self, variant: str | None, preset: str) -> str:
        """The variant to build (default: the first), after checking variant and preset exist."""
        variant = variant or self.variants[0]
        if variant not in self.variants:
            raise UnknownFamilyError(f"{self.name} has no variant {variant!r}; its variants are {', '.join(self.variants)}")
        if preset not in self.random_presets:
            raise UnknownFamilyError(
                f"{self.name} has no preset {preset!r}; its presets are {', '.join(self.random_presets)}"
            )
        return variant

    # -- shapes -------------------------------------------------------------------------
    def axes(self, ref: Reference) -> tuple[Axis, ...]:
        """The envelope axes and their defaults for this reference."""
        raise NotImplementedError

    def envelope(self, ref: Reference, overrides: Mapping[str, Range] | None = None) -> Envelope:
        """Defaults merged with ``overrides``, every axis checked before anything is traced."""
        overrides = dict(overrides or {})
        axes = {a.name: a for a in self.axes(ref)}
        unknown = sorted(set(overrides) - set(axes))
        if unknown:
            raise EnvelopeError(
                f"family {self.name!r} has no axis {', '.join(unknown)}; its axes are {', '.join(axes)}"
            )
        env = {name: overrides.get(name, axis.default) for name, axis in axes.items()}
        for name, r in env.items():
            axes[name].check(r)
        return env

    # -- lookup -------------------------------------------------------------------------
    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise UnknownFamilyError(
            f"family {self.name!r} has no component {name!r}; its components are "
            f"{', '.join(c.name for c in self.components)}"
        )

    def parity_request(self) -> dict[str, Any]:
        """Pipeline kwargs for the end-to-end parity run (families with a sampler); shape
        options left out are taken at the export's opt point."""
        return {}

    def shapes_run(self, request: Mapping[str, Any], configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The shape options the pipeline will really run at for ``request`` (a pipeline that
        snaps sizes to bins runs at the bin); checked against the envelope before running."""
        return {option: request.get(option) for option in self.request_axes}


def bind_argument(fn: Callable[..., Any], name: str, args: tuple, kwargs: Mapping[str, Any]) -> Any:
    """The value ``fn(*args, **kwargs)`` receives for parameter ``name`` (None if absent)."""
    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    return bound.arguments.get(name)


def round_to(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple``, at least ``multiple``."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)

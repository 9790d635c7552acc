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
import os
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
    help: str = ""
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
                f"{label}: {self.name} must be {self.step_text}{self.unit_suffix}, "
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
        f = lambda v: scale * v + offset  # noqa: E731
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
        return cls(name, _int(d["min"]), _int(d["opt"]), _int(d["max"]), _int(d.get("multiple_of", 1)),
                   None if of is None else str(of), _int(d.get("scale", 1)), _int(d.get("offset", 0)))


def _int(value: Any) -> int:
    """An integer from JSON (a float like 2.5, a bool or a string is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def resolve_point(dims: Mapping[str, Dim], base: Mapping[str, int]) -> dict[str, int]:
    """Every dim's value at a point given by its source (non-derived) dims."""
    point = {n: int(base[n]) for n, d in dims.items() if not d.is_derived}
    for n, d in dims.items():
        if d.is_derived:
            point[n] = d.value_from(point[d.of])
    return point


def check_dims(dims: Mapping[str, Dim]) -> None:
    """A derived dim must name a non-derived dim of the same component."""
    for n, d in dims.items():
        if d.is_derived and (d.of not in dims or dims[d.of].is_derived):
            raise ValueError(f"dim {n} is derived from {d.of!r}, which is not a source dim of this component")


# --------------------------------------------------------------------------------------
# Tensors and components
# --------------------------------------------------------------------------------------

SampleFn = Callable[[tuple[int, ...], torch.Generator, "Reference"], torch.Tensor]


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output: dtype and shape, each dim an int or a symbolic dim name.

    ``sample`` says how the sample-input factory fills it: ``"normal"`` (standard normal),
    ``"mask"`` (1 then trailing 0 padding per row, like a tokenizer mask), ``"timestep"``
    (integer-valued timesteps in [0, 1000)), ``"uniform"`` ([0, 1)), ``"pixels"`` ([-1, 1), images as
    the pipelines feed them), or a callable.
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
    if spec.sample == "pixels":
        return (torch.rand(shape, generator=gen) * 2 - 1).to(dtype)
    if spec.sample == "timestep":
        return torch.randint(0, 1000, shape, generator=gen).to(dtype)
    if spec.sample == "mask":
        # rows of 1s followed by 0 padding; every row keeps at least one token
        length = shape[-1]
        keep = torch.randint(1, length + 1, shape[:-1] + (1,), generator=gen)
        return (torch.arange(length).expand(shape) < keep).to(dtype)
    raise ValueError(f"{spec.name}: unknown sample kind {spec.sample!r}")


def token_ids(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    """Sample token ids for a text encoder (the reference's ``text_encoder`` vocabulary)."""
    return torch.randint(0, ref.config("text_encoder").vocab_size, shape, generator=gen)


@dataclass(frozen=True)
class Precision:
    """Precision policy of a component: the export dtype, and what must stay fp32."""

    dtype: str = "float32"
    keep_fp32: tuple[str, ...] = ()
    note: str = ""


Specs = tuple[TensorSpec, ...]
SpecsFn = Callable[["Reference"], Specs]


@dataclass(frozen=True)
class Transform:
    """A weight the graph holds that the checkpoint does not store as such (a fused LoRA, a QR
    basis): ``fn(read)`` computes it from stored tensors, ``read(key)`` reading one at a time by the
    module's state-dict key."""

    what: str  # shown in the weight map, e.g. "W + 0.8 * B @ A (LoRA motion.safetensors)"
    fn: Callable[[Callable[[str], torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class WeightlessModule:
    """How to build a module without its weights: ``build()`` makes it with parameters on the
    meta device and buffers computed from the config (accelerate's ``init_empty_weights``);
    its state-dict keys are the keys of the safetensors files in ``folders``, except the
    ``transforms`` (state-dict key -> how the value is computed from stored tensors)."""

    build: Callable[[], torch.nn.Module]
    folders: tuple[Path, ...]
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    # stored keys -> {module key: stored key}, where the library renames keys at load time
    # (transformers 5's conversion mapping); None: the stored keys are the module's
    rename: Callable[[torch.nn.Module, list[str]], dict[str, str]] | None = None


@dataclass(frozen=True)
class Component:
    """One exportable part of a family (an encoder, a denoiser, a VAE half).

    ``inputs`` / ``outputs`` are computed from the loaded reference (a function of it), as
    optimum's ``inputs`` property: optional conditions exist or not by config, and a causal
    VAE has one cache tensor per causal conv. ``state`` pairs an output with the input it
    feeds on the next call (a cache): the manifest records the pairs and backends keep those
    tensors on the device between calls.
    """

    name: str
    kind: str  # tolerance row: text_encoder | image_encoder | denoiser | vae_encoder | vae_decoder
    module: str  # key of the reference module in Reference.modules
    inputs: SpecsFn
    outputs: SpecsFn
    dims: Callable[[Envelope, Reference], dict[str, Dim]]
    wrapper: Callable[[Reference], torch.nn.Module]
    reference: Callable[[Reference, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    precision: Precision = Precision()
    export_patches: tuple[Callable[[], contextlib.AbstractContextManager], ...] = ()
    state: Callable[[Reference], Mapping[str, str]] = lambda ref: {}  # output -> input it feeds next call
    # tensors of the wrapper itself computed from the module's weights (wrapper name -> how),
    # for a weightless export: e.g. a QR basis the wrapper precomputes
    derived: Callable[[Reference], Mapping[str, Transform]] = lambda ref: {}

    def input_specs(self, ref: Reference) -> Specs:
        return tuple(self.inputs(ref))

    def output_specs(self, ref: Reference) -> Specs:
        return tuple(self.outputs(ref))

    def state_pairs(self, ref: Reference) -> dict[str, str]:
        pairs = dict(self.state(ref))
        ins, outs = {s.name for s in self.input_specs(ref)}, {s.name for s in self.output_specs(ref)}
        bad = [f"{o} -> {i}" for o, i in pairs.items() if o not in outs or i not in ins]
        if bad:
            raise ValueError(f"component {self.name}: state pairs name no such output / input: {', '.join(bad)}")
        return pairs

    def sample_inputs(self, ref: Reference, point: Mapping[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
        """Sample feeds at a concrete ``point`` (dim name -> size, derived dims included)."""
        gen = torch.Generator("cpu").manual_seed(seed)
        return {s.name: make_sample(s, s.resolve(point), gen, ref) for s in self.input_specs(ref)}


def specs(*items: TensorSpec) -> SpecsFn:
    """Inputs or outputs that do not depend on the config."""
    return lambda ref: items


# --------------------------------------------------------------------------------------
# Where a reference comes from: its sources, and the loaded reference
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input of a reference: the model folder, an adapter folder, a LoRA file with its scale."""

    role: str  # "model" or one of the family's source roles
    path: Path
    scale: float | None = None  # LoRA strength (like set_adapters' adapter_weights)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "path": str(self.path)}
        if self.scale is not None:
            d["scale"] = self.scale
        return d


Sources = tuple[Source, ...]


@dataclass(frozen=True)
class SourceRole:
    """A source a family loads beside ``--model``: ``--motion-adapter DIR``, ``--lora PATH[:SCALE]``."""

    name: str
    help: str
    kind: str = "folder"  # folder | lora (a file or folder with an optional :SCALE)
    multiple: bool = False


def source_of(sources: Sources, role: str) -> Source | None:
    found = [s for s in sources if s.role == role]
    return found[0] if found else None


class Modules(Mapping[str, Any]):
    """The reference's modules, each loaded on first use (an export of one component loads one).

    ``loaders`` give the module, ``config_loaders`` its config without its weights (what shapes
    and manifests need)."""

    def __init__(self, loaders: Mapping[str, Callable[[], Any]],
                 config_loaders: Mapping[str, Callable[[], Any]] | None = None,
                 weightless: Mapping[str, Callable[[], WeightlessModule]] | None = None) -> None:
        self._loaders = dict(loaders)
        self._configs = dict(config_loaders or {})
        self._weightless = dict(weightless or {})
        self._loaded: dict[str, Any] = {}

    @classmethod
    def from_found(cls, found: Mapping[str, tuple[Callable[[], Any], Any, Any]],
                   weightless: Mapping[str, Callable[[], WeightlessModule]] | None = None,
                   **override: Callable[[], Any]) -> Modules:
        """From :func:`zoo.infra.checkpoint.pipeline_modules`' (loader, config loader, weightless)
        triples, with some loaders replaced: a module whose loading the family changes loses
        its weightless build unless ``weightless`` declares its own."""
        loaders = {k: v[0] for k, v in found.items()} | override
        builds = {k: v[2] for k, v in found.items() if v[2] and k not in override} | dict(weightless or {})
        return cls(loaders, {k: v[1] for k, v in found.items() if v[1]}, builds)

    def weightless(self, key: str) -> WeightlessModule | None:
        """The module's weightless build, if it has one."""
        return self._weightless[key]() if key in self._weightless else None

    def with_module(self, key: str, module: Any) -> Modules:
        """The same modules with ``key`` replaced by ``module`` (a weightless build to trace)."""
        out = Modules(self._loaders, self._configs, self._weightless)
        out._loaded = dict(self._loaded)
        out._loaded[key] = module
        return out

    def __getitem__(self, key: str) -> Any:
        if key not in self._loaded:
            if key not in self._loaders:
                raise KeyError(key)
            module = self._loaders[key]()
            if isinstance(module, torch.nn.Module):
                module.eval().requires_grad_(False)
            self._loaded[key] = module
        return self._loaded[key]

    def __iter__(self):
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def loaded(self) -> dict[str, Any]:
        return dict(self._loaded)

    def config(self, key: str) -> Any:
        if key in self._loaded or key not in self._configs:
            return self[key].config
        return self._configs[key]()


@dataclass
class Reference:
    """A loaded PyTorch reference: library modules (loaded when used), and where they came from."""

    family: str
    variant: str
    sources: Sources
    modules: Modules
    pipeline: str | None = None  # the pipeline class the family builds (a diffusers class name)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the torch backend runs it

    def module(self, key: str) -> Any:
        return self.modules[key]

    def config(self, key: str) -> Any:
        """A module's config, without loading its weights when it is not loaded yet."""
        return self.modules.config(key)

    @property
    def source(self) -> Path:
        """The model folder (the first source)."""
        return self.sources[0].path


# --------------------------------------------------------------------------------------
# The family's pipeline: how it is built from modules, its request options, its output
# --------------------------------------------------------------------------------------

SlotCall = Callable[..., Any]


@dataclass(frozen=True)
class PipelineSlot:
    """A module of the pipeline that a sampler replaces with exported components.

    ``calls`` maps the module's methods (``forward``, ``encode``, ``decode``) to functions
    ``fn(runners, *args, **kwargs)`` that turn the pipeline's call into component feeds,
    run them through ``runners[component]`` and return what the library module returns.
    """

    attribute: str
    module: str
    calls: Mapping[str, SlotCall]
    components: tuple[str, ...] = ()  # the exported components its calls run


@dataclass(frozen=True)
class Option:
    """A request option of ``zoo run`` (or a source option of ``zoo export``), declared by the
    family; the command line turns it into a click option and parses it, nothing more.

    ``type``: ``text``, ``int``, ``float`` (finite; ``low`` / ``high`` bounds, ``low_open``
    for an open lower bound), ``path``, ``choice``, ``flag``."""

    name: str  # python name: free_init_method -> --free-init-method
    help: str
    type: str = "text"
    default: Any = None
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    required: bool = False
    multiple: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass
class Request:
    """What one generation asks of the pipeline: the class, the call's kwargs, and the set-up
    calls made on the pipeline before it runs (``{"enable_free_init": {...}}``)."""

    pipeline: str
    kwargs: dict[str, Any]
    setup: dict[str, dict[str, Any]] = field(default_factory=dict)
    scheduler: str | None = None  # a diffusers scheduler class built on the checkpoint's scheduler config
    output_format: str = "images"  # images (N,H,W,3) | video (B,F,H,W,3)
    fps: int = 8
    shape_sources: dict[str, str] = field(default_factory=dict)  # shape kwarg -> what set it, for messages


COMMON_RUN_OPTIONS: tuple[Option, ...] = (
    Option("prompt", "What to generate.", required=True),
    Option("negative_prompt", "What to steer away from (classifier-free guidance).", default=""),
    Option("steps", "Denoising steps.", type="int", default=20, low=1),
    Option("guidance_scale", "CFG scale (<= 1 disables CFG).", type="float", default=7.5),
    Option("scheduler", "Swap the scheduler class (a diffusers scheduler, e.g. DDIMScheduler) on the checkpoint's scheduler config."),
)


class Family:
    """Base of the family declarations. Subclasses fill in the class attributes and loaders."""

    name: ClassVar[str]
    description: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    components: ClassVar[tuple[Component, ...]]
    random_presets: ClassVar[tuple[str, ...]] = ("tiny",)
    source_roles: ClassVar[tuple[SourceRole, ...]] = ()  # beside --model
    axis_help: ClassVar[Mapping[str, str]] = {}  # envelope axis -> help of its MIN:OPT:MAX option
    # sampler declaration (empty: the family has no sampler, only components)
    pipeline_slots: ClassVar[tuple[PipelineSlot, ...]] = ()
    host_modules: ClassVar[tuple[str, ...]] = ()  # tokenizer, scheduler: copied into exports
    host_loop: ClassVar[HostLoop | None] = None  # a host loop over components and its parity checks
    # tensors the family rounds to a coarser dtype, as its original does (parity compares them to one ulp)
    roundings: ClassVar[tuple[Rounding, ...]] = ()
    run_options: ClassVar[tuple[Option, ...]] = ()
    request_axes: ClassVar[Mapping[str, str]] = {}  # pipeline kwarg -> envelope axis
    # pipeline kwarg -> the zoo run option that sets it, where the names differ (for messages)
    option_names: ClassVar[Mapping[str, str]] = {"num_inference_steps": "--steps"}

    def option_name(self, kwarg: str) -> str:
        """How ``zoo run`` spells a pipeline kwarg."""
        return self.option_names.get(kwarg, "--" + kwarg.replace("_", "-"))
    trajectory: ClassVar[tuple[str, str] | None] = None  # (component, latent input name)
    # end-to-end parity's reference: None = the family's pipeline on the library modules; a backend
    # name = the family's own loop on that backend (families no library has a pipeline for)
    reference_backend: ClassVar[str | None] = None

    # -- loading ------------------------------------------------------------------------
    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A family's declarations that can be checked without a reference are checked as it is
        declared: a host loop and a rounding name components the family has, and a host loop is
        declared whole (the pre-``HostLoop`` attributes are refused)."""
        super().__init_subclass__(**kwargs)
        halves = sorted({"loop_components", "loop_checks"} & set(vars(cls)))
        if halves:
            raise TypeError(f"{cls.__name__} declares {', '.join(halves)}: declare a host loop whole, as "
                            f"host_loop = HostLoop(components=..., checks=...)")
        names = {c.name for c in getattr(cls, "components", ())}
        declared = [("host loop", c) for c in (cls.host_loop.components if cls.host_loop else ())]
        declared += [("rounding", r.component) for r in cls.roundings]
        unknown = [f"{what} component {c!r}" for what, c in declared if c not in names]
        if unknown and names:
            raise TypeError(f"{cls.__name__}: {', '.join(unknown)} is not one of its components ({', '.join(sorted(names))})")

    def load(self, sources: Sources | str | Path) -> Reference:
        """Load the reference from local sources (or one model folder) with the library's
        ``from_pretrained``; LoRAs are applied as the family applies them."""
        if isinstance(sources, (str, Path)):
            sources = (Source("model", Path(sources)),)
        sources = tuple(sources)
        if not sources or sources[0].role != "model":
            raise ValueError("the first source must be the model folder")
        roles = {r.name: r for r in self.source_roles}
        for s in sources[1:]:
            if s.role not in roles:
                raise UnknownFamilyError(f"family {self.name!r} takes no {s.role} source; it takes "
                                         f"{', '.join(roles) or 'only --model'}")
        return self.load_sources(sources)

    def load_sources(self, sources: Sources) -> Reference:
        raise NotImplementedError

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        """Write a random-weight checkpoint folder (tokenizer included) that :meth:`load` reads."""
        raise NotImplementedError

    def write_random_sources(self, dest: Path, *, preset: str = "tiny", seed: int = 0) -> Sources:
        """Random-weight sources in the layout real checkpoints come in (``zoo random``): by
        default one model folder; a family loaded from several sources writes them all."""
        return (Source("model", self.build_random(Path(dest) / "model", preset=preset, seed=seed)),)

    def sample_media(self, ref: Reference) -> dict[str, Any]:
        """Media that ``zoo run`` takes with an export of ``ref`` at its default envelope, for
        ``zoo random`` to write beside the checkpoint: file name -> a PIL image, or a list of them
        (a video: ``NAME.mp4``, or ``NAME/`` a folder of PNG frames). Families whose requests
        take no media have none."""
        return {}

    @property
    def has_sample_media(self) -> bool:
        """Whether :meth:`sample_media` is the family's own (else it has none, and ``zoo random``
        need not load the model it wrote to ask)."""
        return type(self).sample_media is not Family.sample_media

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

    # -- the pipeline ---------------------------------------------------------------------
    @property
    def has_sampler(self) -> bool:
        return bool(self.pipeline_slots)

    def request(self, options: Mapping[str, Any], context: RequestContext) -> Request:
        """Turn ``zoo run``'s parsed options into a :class:`Request`, checking every value
        (media read and checked too) before any backend is loaded. Omitted options take their
        :class:`Option` defaults (:meth:`with_defaults`), never a default of its own."""
        raise NotImplementedError

    def with_defaults(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` with every omitted (absent or None) run option at its declared default: the
        one place a default lives, whether ``zoo run`` parsed the options (click fills the same
        defaults) or a server, a parity request or a test omitted them."""
        declared = {o.name: o.default for o in self.run_options if o.default is not None}
        return declared | {k: v for k, v in options.items() if v is not None}

    def option_default(self, name: str) -> Any:
        """The declared default of run option ``name``."""
        return next(o.default for o in self.run_options if o.name == name)

    def parity_requests(self, context: RequestContext) -> list[tuple[str, Request]]:
        """Labelled requests for end-to-end parity (shape options at the export's opt point)."""
        return []

    def build_pipeline(self, request: Request, modules: Mapping[str, Any]) -> Any:
        """The pipeline object for ``request`` from modules (library modules for the reference,
        backend modules for the sampler). Default: the diffusers class the request names."""
        import diffusers

        cls = getattr(diffusers, request.pipeline)
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        return cls(**{k: v for k, v in modules.items() if k in names})

    def output(self, result: Any) -> Any:
        """The float array the pipeline returned with ``output_type="np"``."""
        return result.images

    def shapes_run(self, request: Request, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The shape options the pipeline will really run at (a pipeline that snaps sizes to
        bins runs at the bin); checked against the envelope before running."""
        return {option: request.kwargs.get(option) for option in self.request_axes}


@dataclass(frozen=True)
class HostLoop:
    """A loop the host runs over exported components (a chunked VAE's encode / decode) in place
    of one library call, declared whole: the ``components`` it runs and the ``checks`` that run
    it against the library call, ``checks(ref, runners, envelope, seed) -> [LoopCheck]``. Parity
    runs the checks when the export has every component, and reports them not run otherwise."""

    components: tuple[str, ...]
    checks: Callable[..., list[LoopCheck]]

    def __post_init__(self) -> None:
        if not self.components or not all(isinstance(c, str) and c for c in self.components):
            raise TypeError(f"HostLoop.components: expected component names, got {self.components!r}")
        if not callable(self.checks):
            raise TypeError(f"HostLoop.checks: expected a function (ref, runners, envelope, seed) -> [LoopCheck], "
                            f"got {self.checks!r}")


@dataclass(frozen=True)
class Rounding:
    """A tensor the family rounds to a coarser ``dtype`` on purpose, as its original does (the
    original's hard-coded ``.to(torch.bfloat16)`` of a pose feature): ``output`` of ``component``.

    Two correct implementations that differ by 1e-7 before the rounding can land one ulp of
    ``dtype`` apart after it. Parity compares the tensor there with a rounding-aware bound (at
    most one ulp of ``dtype`` elementwise, the flipped elements counted) and, in a sampler run,
    lets the candidate continue from the reference's rounded value, so that the rows after it
    compare the loop and not the flip."""

    component: str
    output: str
    dtype: str  # bfloat16 | float16
    why: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in ("bfloat16", "float16"):
            raise TypeError(f"Rounding of {self.component}.{self.output}: dtype must be bfloat16 or float16, "
                            f"got {self.dtype!r}")


@dataclass
class LoopCheck:
    """One host loop's result beside the library's (``zoo parity``'s loop level)."""

    component: str  # the component whose tolerance row applies
    label: str
    output: str
    candidate: torch.Tensor
    reference: torch.Tensor


@dataclass
class RequestContext:
    """What a family needs to know of an export to build and check a request."""

    envelope: Mapping[str, Range]
    axes: Mapping[str, Axis]
    configs: Mapping[str, Mapping[str, Any]]
    components: tuple[str, ...]
    pipeline: str | None


def bind_argument(fn: Callable[..., Any], name: str, args: tuple, kwargs: Mapping[str, Any]) -> Any:
    """The value ``fn(*args, **kwargs)`` receives for parameter ``name`` (None if absent)."""
    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    return bound.arguments.get(name)


def round_to(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple``, at least ``multiple``."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)

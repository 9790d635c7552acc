"""The family declaration: components, sampler slots, host loops and the hooks a family fills in."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

import torch

from zoo.contract.dims import Axis, Envelope, Range
from zoo.contract.hooks import HostModules, LoopChecks, PipelineLike, PoseStep, SlotCall
from zoo.contract.requests import Option, Request, RequestContext
from zoo.contract.sources import Reference, Source, SourceRole, Sources
from zoo.contract.tensors import Component, Rounding
from zoo.errors import EnvelopeError, UnknownFamilyError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from PIL.Image import Image

# what ``zoo random`` writes beside a checkpoint: a PIL image, or a video as a list of them
Media = Union["Image", list["Image"]]


@dataclass(frozen=True)
class PipelineSlot:
    """A module of the pipeline that a sampler replaces with exported components.

    ``calls`` maps the module's methods (``forward``, ``encode``, ``decode``) to functions
    ``fn(runners, *args, **kwargs)`` (:class:`~zoo.contract.hooks.SlotCall`) that turn the pipeline's call into component feeds,
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
    source_roles: ClassVar[tuple[SourceRole, ...]] = ()  # beside --model
    # False: the source roles alone make a reference, without --model (imported graphs given file
    # by file: --detector FILE --pose-model FILE)
    model_required: ClassVar[bool] = True
    axis_help: ClassVar[Mapping[str, str]] = {}  # envelope axis -> help of its MIN:OPT:MAX option
    # sampler declaration (empty: the family has no sampler, only components)
    pipeline_slots: ClassVar[tuple[PipelineSlot, ...]] = ()
    host_modules: ClassVar[tuple[str, ...]] = ()  # tokenizer, scheduler: copied into exports
    # host modules copied into an export only when the reference has them (a model given with an
    # optional source: --sam2 FOLDER)
    optional_host_modules: ClassVar[tuple[str, ...]] = ()
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

    # ``zoo pose``'s options of the family (its inputs: --image, --video, ...); see :meth:`pose_step`
    pose_options: ClassVar[tuple[Option, ...]] = ()

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
            raise TypeError(
                f"{cls.__name__} declares {', '.join(halves)}: declare a host loop whole, as "
                f"host_loop = HostLoop(components=..., checks=...)"
            )
        names = {c.name for c in getattr(cls, "components", ())}
        declared = [("host loop", c) for c in (cls.host_loop.components if cls.host_loop else ())]
        declared += [("rounding", r.component) for r in cls.roundings]
        unknown = [f"{what} component {c!r}" for what, c in declared if c not in names]
        if unknown and names:
            raise TypeError(
                f"{cls.__name__}: {', '.join(unknown)} is not one of its components ({', '.join(sorted(names))})"
            )

    def exported_host_modules(self, ref: Reference) -> tuple[str, ...]:
        """The host modules an export of ``ref`` carries: every declared one, and the optional
        ones the reference has."""
        return self.host_modules + tuple(n for n in self.optional_host_modules if n in ref.modules)

    def load(self, sources: Sources | str | Path) -> Reference:
        """Load the reference from local sources (or one model folder) with the library's
        ``from_pretrained``; LoRAs are applied as the family applies them."""
        if isinstance(sources, (str, Path)):
            sources = (Source("model", Path(sources)),)
        sources = tuple(sources)
        if not sources or (sources[0].role != "model" and self.model_required):
            raise ValueError("the first source must be the model folder")
        roles = {r.name: r for r in self.source_roles}
        for s in sources[1:] if sources[0].role == "model" else sources:
            if s.role not in roles:
                raise UnknownFamilyError(
                    f"family {self.name!r} takes no {s.role} source; it takes {', '.join(roles) or 'only --model'}"
                )
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

    def sample_media(self, ref: Reference) -> dict[str, Media]:
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
            raise UnknownFamilyError(
                f"{self.name} has no variant {variant!r}; its variants are {', '.join(self.variants)}"
            )
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

    # A run option's value is what its Option's type parses to (text, number, path, flag, a list
    # of them for a multiple option), or what a server or a test passes: Any, by nature.
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

    def option_default(self, name: str) -> Any:  # Option.default: a value of the option's type
        """The declared default of run option ``name``."""
        return next(o.default for o in self.run_options if o.name == name)

    def parity_requests(self, context: RequestContext) -> list[tuple[str, Request]]:
        """Labelled requests for end-to-end parity (shape options at the export's opt point)."""
        return []

    # ``modules`` are the pipeline's modules by name: library modules (an nn.Module, a tokenizer, a
    # scheduler) or the sampler's backend modules in their place, so Any.
    def build_pipeline(self, request: Request, modules: Mapping[str, Any]) -> PipelineLike:
        """The pipeline object for ``request`` from modules (library modules for the reference,
        backend modules for the sampler). Default: the diffusers class the request names."""
        import diffusers

        cls = getattr(diffusers, request.pipeline)
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        pipeline: PipelineLike = cls(**{k: v for k, v in modules.items() if k in names})
        return pipeline

    # ``result`` is the pipeline's output class (diffusers' ImagePipelineOutput, a family's own):
    # Any, by nature.
    def output(self, result: Any) -> ArrayLike:
        """The float array the pipeline returned with ``output_type="np"``."""
        images: ArrayLike = result.images
        return images

    # configs: the modules' JSON configs (any JSON value); the shapes are ints, None where unset
    def shapes_run(self, request: Request, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, int | None]:
        """The shape options the pipeline will really run at (a pipeline that snaps sizes to
        bins runs at the bin); checked against the envelope before running."""
        return {option: request.kwargs.get(option) for option in self.request_axes}

    # -- the pose step (``zoo pose``) ----------------------------------------------------
    # the options are what click parsed from :attr:`pose_options` (paths, text, numbers): Any
    def pose_step(self, options: Mapping[str, Any], host: HostModules) -> PoseStep:
        """``zoo pose``'s work for parsed :attr:`pose_options`: every input read and checked here
        (an :class:`~zoo.errors.InputError` naming the file and what was expected), before any
        runner exists; the returned step runs on the export's runners. ``host``: the export's
        host modules, loaded (on the run's device) only when the step calls a loader. Families
        without one have no pose step."""
        raise NotImplementedError

    def is_pose_output(self, folder: Path) -> bool:
        """Whether ``folder`` (an existing, non-empty folder) is what this family's pose step
        writes, so that ``zoo pose`` may replace it whole; anything else is refused untouched."""
        return False

    @property
    def has_pose_step(self) -> bool:
        """Whether the family declares a pose step (``zoo pose`` refuses the others)."""
        return type(self).pose_step is not Family.pose_step


@dataclass(frozen=True)
class PoseRun:
    """What a pose step wrote and found: the file names written in its folder (in order), one
    line per warning (a fallback where the original would crash or draw nonsense), and the record
    ``zoo pose --keypoints FILE.json`` writes (plain JSON values)."""

    files: tuple[str, ...]
    warnings: tuple[str, ...]
    keypoints: Mapping[str, Any]


@dataclass(frozen=True)
class HostLoop:
    """A loop the host runs over exported components (a chunked VAE's encode / decode) in place
    of one library call, declared whole: the ``components`` it runs and the ``checks`` that run
    it against the library call, ``checks(ref, runners, envelope, seed) -> [LoopCheck]``
    (:class:`~zoo.contract.hooks.LoopChecks`). Parity runs the checks when the export has every
    component, and reports them not run otherwise."""

    components: tuple[str, ...]
    checks: LoopChecks

    def __post_init__(self) -> None:
        if not self.components or not all(isinstance(c, str) and c for c in self.components):
            raise TypeError(f"HostLoop.components: expected component names, got {self.components!r}")
        if not callable(self.checks):
            raise TypeError(
                f"HostLoop.checks: expected a function (ref, runners, envelope, seed) -> [LoopCheck], "
                f"got {self.checks!r}"
            )


@dataclass
class LoopCheck:
    """One host loop's result beside the library's (``zoo parity``'s loop level)."""

    component: str  # the component whose tolerance row applies
    label: str
    output: str
    candidate: torch.Tensor
    reference: torch.Tensor

"""The sampler: the family's own pipeline, its modules replaced by backends.

Re-implemented pipelines that drift from the reference are what breaks video output in public
attempts. So the sampler does not re-implement the loop: the family builds the very diffusers
pipeline class the request needs (same scheduler class and config, same CFG arithmetic, same latent
preparation and decoding) and gives it :class:`BackendModule` s whose calls run exported
components. What differs from diffusers is only where each module's arithmetic runs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from exporters.manifest import ComponentRecord, Manifest, load_manifest
from runtimes.backends import Backend, Runners, parse_device
from zoo.contract import Family, PipelineSlot, Request, RequestContext, Runner
from zoo.errors import ArtifactError, InputError, ZooError
from zoo.registry import get_family

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

log = logging.getLogger(__name__)

HOST_LIBRARIES = ("diffusers", "transformers")  # where tokenizers and schedulers come from


class BackendModule(torch.nn.Module):
    """Stands where the pipeline expects a library module: same ``config``, ``device``,
    ``dtype`` and call signature, its methods running exported components."""

    def __init__(
        self, slot: PipelineSlot, config: Mapping[str, Any], runners: Mapping[str, Runner], device: torch.device
    ) -> None:
        from diffusers.configuration_utils import FrozenDict

        super().__init__()
        self.slot = slot
        self.config = FrozenDict(config)
        self._runners = runners
        self._device = device
        for method, fn in slot.calls.items():
            if method != "forward":
                object.__setattr__(self, method, lambda *a, _fn=fn, **k: _fn(self._runners, *a, **k))

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @contextlib.contextmanager
    def cache_context(self, name: str) -> Iterator[None]:
        """diffusers' CacheMixin API (pipelines wrap denoiser calls in it): nothing to cache here."""
        yield

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if "forward" not in self.slot.calls:
            raise ZooError(f"pipeline module {self.slot.attribute!r} is not called directly by this family")
        return self.slot.calls["forward"](self._runners, *args, **kwargs)


def host_loaders(manifest: Manifest, device: str = "cpu") -> dict[str, Callable[[], Any]]:
    """The export's host modules, each loaded when first called (a torch module onto ``device``)
    and kept: what a pose step is given (:class:`~zoo.contract.HostModules`)."""

    def loader(name: str, info: Mapping[str, str]) -> Callable[[], Any]:
        loaded: list[Any] = []
        lock = threading.Lock()

        def load() -> Any:  # once: a service's requests share the module
            with lock:
                if not loaded:
                    module = _load_host_module(manifest.root / name, info)
                    loaded.append(module.to(device) if isinstance(module, torch.nn.Module) else module)
                return loaded[0]

        return load

    return {name: loader(name, info) for name, info in manifest.host_modules.items()}


def _load_host_module(path: Path, info: Mapping[str, str]) -> Any:
    """Tokenizers, schedulers (and a pose step's torch models) saved beside the graphs, loaded
    with their own classes."""
    if not path.exists():
        raise ArtifactError(f"{path} is missing from the export; re-export")
    if info.get("library") not in HOST_LIBRARIES:
        raise ArtifactError(
            f"{path}: host module library {info.get('library')!r} is not one of {', '.join(HOST_LIBRARIES)}"
        )
    cls = getattr(importlib.import_module(info["library"]), info["class"], None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ArtifactError(f"{path}: {info['library']} has no loadable class {info['class']!r}")
    return cls.from_pretrained(str(path))


def request_context(manifest: Manifest) -> RequestContext:
    return RequestContext(
        envelope=manifest.envelope,
        axes=manifest.axes,
        configs=manifest.configs,
        components=tuple(manifest.components),
        pipeline=manifest.pipeline,
    )


def sampler_family(manifest: Manifest) -> Family:
    """The export's family, if it has a sampler; :class:`ZooError` saying what to use instead if not."""
    family = get_family(manifest.family)
    if not family.has_sampler or not manifest.pipeline:
        raise ZooError(
            f"family {family.name!r} has no sampler: its components are checked with "
            f"`zoo parity` and timed with `zoo bench`"
        )
    return family


def prepare_request(manifest: Manifest, options: Mapping[str, Any]) -> Request:
    """``zoo run``'s options as a checked :class:`Request`: the family reads them (and any media
    they name), then every shape is checked against the export's envelope, the scheduler class
    and every number too, before any backend is loaded."""
    family = sampler_family(manifest)
    for name, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"--{name.replace('_', '-')} {value}: expected a finite number")
    request = family.request(options, request_context(manifest))
    check_request(manifest, request)
    return request


def check_request(manifest: Manifest, request: Request) -> None:
    """Shapes inside the envelope (range and multiple-of, after any binning the pipeline does),
    finite numbers, a known scheduler class; raises :class:`InputError` / :class:`EnvelopeError`."""
    family = get_family(manifest.family)
    for key, value in request.kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{family.option_name(key)} {value}: expected a finite number")
    for option, value in family.shapes_run(request, manifest.configs).items():
        axis_name = family.request_axes[option]
        label = request.shape_sources.get(option) or family.option_name(option)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{label} must be an integer, got {value!r}")
        asked = request.kwargs.get(option)
        if asked is not None and value != asked:
            label = f"{label} {asked} (binned by the pipeline to)"
        manifest.axes[axis_name].check_value(value, manifest.envelope[axis_name], option=label)
    if request.scheduler is not None:
        scheduler_class(request.scheduler)
    check_steps(manifest, request)


def check_steps(manifest: Manifest, request: Request) -> None:
    """The request's step count is one the scheduler can take: not more than the timesteps its
    config was trained on, and one whose schedule does not degenerate (DPM-Solver at as many steps
    as training timesteps repeats one and divides by zero). The scheduler is the export's (or
    ``--scheduler``'s class on its config), its own arithmetic run on a tiny stand-in sample.
    :class:`InputError` naming the option before any backend loads. Each (scheduler class, config,
    steps) is simulated once per process (:func:`_steps_problem`)."""
    steps = request.kwargs.get("num_inference_steps")
    if not isinstance(steps, int) or isinstance(steps, bool):
        return
    family = get_family(manifest.family)
    for name, info in manifest.host_modules.items():
        if not _is_scheduler(info):
            continue
        scheduler = _load_host_module(manifest.root / name, info)
        if request.scheduler is not None:
            # diffusers leaves ConfigMixin.from_config unannotated
            scheduler = scheduler_class(request.scheduler).from_config(scheduler.config)
        problem = _steps_problem(scheduler, steps)
        if problem:
            raise InputError(f"{family.option_name('num_inference_steps')} {steps}: {problem}")


_STEP_PROBLEMS: dict[tuple[type, str, int], str | None] = {}  # the most recently used last
_STEP_PROBLEMS_KEPT = 256
_STEP_PROBLEMS_LOCK = threading.Lock()


def _steps_problem(scheduler: Any, steps: int) -> str | None:
    """Why ``scheduler`` cannot take ``steps`` steps (the message after the option), or None;
    remembered by (class, config JSON, steps), the last :data:`_STEP_PROBLEMS_KEPT` of them, so a
    request checked again (parity checks each one, then samples it twice) is not simulated again."""
    key = (type(scheduler), scheduler.to_json_string(), steps)
    with _STEP_PROBLEMS_LOCK:
        if key in _STEP_PROBLEMS:
            _STEP_PROBLEMS[key] = _STEP_PROBLEMS.pop(key)
            return _STEP_PROBLEMS[key]
    problem = None
    trained = scheduler.config.get("num_train_timesteps")
    if isinstance(trained, int) and steps > trained:
        problem = (
            f"{type(scheduler).__name__} of this export has {trained} training timesteps "
            f"(num_train_timesteps), so it takes at most {trained} steps"
        )
    elif simulated := _schedule_problem(scheduler, steps):
        most = _most_steps(scheduler, steps)
        at_most = f"; it takes at most {most} steps here" if most else ""
        problem = (
            f"{type(scheduler).__name__} cannot take that many steps on this export's "
            f"scheduler config ({simulated}){at_most}"
        )
    with _STEP_PROBLEMS_LOCK:
        _STEP_PROBLEMS[key] = problem
        while len(_STEP_PROBLEMS) > _STEP_PROBLEMS_KEPT:
            del _STEP_PROBLEMS[next(iter(_STEP_PROBLEMS))]
    return problem


def _is_scheduler(info: Mapping[str, str]) -> bool:
    if info.get("library") != "diffusers":
        return False
    import diffusers

    cls = getattr(diffusers, info.get("class", ""), None)
    return isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)


def _schedule_problem(scheduler: Any, steps: int) -> str | None:
    """What goes wrong when ``scheduler`` (a fresh copy of it) samples in ``steps`` steps, or None:
    its own ``set_timesteps`` refusal, an error or a non-finite sample from its ``step``
    (fed a seeded random model output, as the pipelines call it)."""
    import inspect

    s = type(scheduler).from_config(scheduler.config)
    try:
        s.set_timesteps(steps)
    except (ValueError, TypeError, IndexError, ZeroDivisionError) as e:
        return f"{type(e).__name__}: {e}"
    gen = torch.Generator("cpu").manual_seed(0)
    extra = {"generator": gen} if "generator" in inspect.signature(s.step).parameters else {}
    sample = torch.randn(1, 4, 2, 2, generator=gen) * float(getattr(s, "init_noise_sigma", 1.0))
    for i, t in enumerate(s.timesteps):
        try:
            if hasattr(type(s), "scale_model_input"):  # (flow-matching schedulers have none)
                s.scale_model_input(sample, t)
            sample = s.step(torch.randn(sample.shape, generator=gen), t, sample, return_dict=False, **extra)[0]
        except (ValueError, TypeError, IndexError, ZeroDivisionError, RuntimeError, AssertionError) as e:
            return f"step {i} of its schedule fails: {type(e).__name__}: {e}"
        if not torch.isfinite(sample).all():
            repeats = " (it repeats timesteps)" if len(set(s.timesteps.tolist())) < len(s.timesteps) else ""
            return f"its schedule degenerates{repeats}: step {i} of {steps} gives NaN"
    return None


def _most_steps(scheduler: Any, steps: int) -> int | None:
    """The largest step count below ``steps`` that samples cleanly (bisected), None if none does."""
    lo, hi = 0, steps - 1  # lo samples cleanly (0: none known yet); every count above hi fails
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _schedule_problem(scheduler, mid) is None:
            lo = mid
        else:
            hi = mid - 1
    return lo or None


def scheduler_class(name: str) -> type[SchedulerMixin]:
    """A diffusers scheduler class by name; :class:`InputError` lists a few when it is not one."""
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))
        raise InputError(
            f"--scheduler {name!r} is not a diffusers scheduler class; for example {', '.join(known[:8])}, ..."
        )
    return cls


def configure_pipeline(
    pipeline: Any, request: Request, *, progress: bool = True, on_step: Callable[[dict[str, int]], None] | None = None
) -> Any:
    """The request's set-up on a pipeline: the scheduler class swapped on the checkpoint's own
    scheduler config, then the set-up calls (``enable_free_init`` ...), then the progress bar.
    ``on_step`` is told of every step of every progress bar the pipeline opens (a FreeInit pass
    or a video segment each opens one): ``{"bar": n, "step": k, "total": t}``."""
    if request.scheduler is not None:
        # diffusers leaves ConfigMixin.from_config unannotated
        pipeline.scheduler = scheduler_class(request.scheduler).from_config(pipeline.scheduler.config)
    for method, kwargs in request.setup.items():
        getattr(pipeline, method)(**kwargs)
    pipeline.set_progress_bar_config(desc="sampling", leave=False, disable=not progress)
    if on_step is not None:
        bars = pipeline.progress_bar
        count = [0]

        def progress_bar(iterable: Any = None, total: int | None = None) -> _StepEvents:
            count[0] += 1
            return _StepEvents(bars(iterable=iterable, total=total), on_step, count[0])

        pipeline.progress_bar = progress_bar
    return pipeline


class _StepEvents:
    """A pipeline's progress bar that also reports each step (used as an iterable or with
    ``update``, as diffusers pipelines use theirs)."""

    def __init__(self, bar: Any, on_step: Callable[[dict[str, int]], None], number: int) -> None:
        self.bar, self.on_step, self.number, self.done = bar, on_step, number, 0

    def _report(self, n: int) -> None:
        self.done += n
        self.on_step({"bar": self.number, "step": self.done, "total": int(self.bar.total or 0)})

    def __iter__(self) -> Iterator[Any]:
        for item in self.bar:
            yield item
            self._report(1)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self._report(n)

    def __enter__(self) -> _StepEvents:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bar, name)


def run_pipeline(family: Any, pipeline: Any, request: Request, seed: int) -> NDArray[Any]:
    """Call the pipeline as ``zoo run`` does (``generator=torch.Generator("cpu").manual_seed(seed)``,
    ``output_type="np"``) and read its output the family's way."""
    try:
        result = pipeline(generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **request.kwargs)
    except ZooError:
        raise
    except (ValueError, TypeError, IndexError) as e:  # the pipeline's own argument checks
        raise InputError(f"{request.pipeline} rejected the request ({type(e).__name__}: {e})") from None
    return np.asarray(family.output(result))


class Sampler:
    """Generates with an export folder through a backend (``onnxruntime``, ``torch``, ``tensorrt``).

    The pipeline is the family's own (a diffusers class, built by the family), with
    :class:`BackendModule` s in place of its modules; backends load when first called.
    """

    def __init__(self, export_dir: str | Path | Manifest, backend: str = "onnxruntime", device: str = "cpu") -> None:
        # a manifest in memory: an export being written (calibration runs the sampler on its stage)
        self.manifest: Manifest = export_dir if isinstance(export_dir, Manifest) else load_manifest(export_dir)
        self.family = sampler_family(self.manifest)
        missing = sorted({c for s in self.family.pipeline_slots for c in s.components} - set(self.manifest.components))
        if missing:
            raise ArtifactError(
                f"export {self.manifest.root} lacks component(s) {', '.join(missing)} that the sampler runs; "
                f"re-export without --component"
            )
        self.device = parse_device(device, backend)
        self.backends = Runners(backend, self.manifest, device)
        self.runners: dict[str, Runner] = dict(self.backends)
        self.host = {
            name: _load_host_module(self.manifest.root / name, info)
            for name, info in self.manifest.host_modules.items()
        }

    def pipeline(
        self, request: Request, *, progress: bool = True, on_step: Callable[[dict[str, int]], None] | None = None
    ) -> Any:
        """The family's pipeline for ``request`` on backend modules, configured."""
        modules: dict[str, Any] = dict(self.host)
        for slot in self.family.pipeline_slots:  # every slot's components are there (checked in __init__)
            modules[slot.attribute] = BackendModule(slot, self.manifest.configs[slot.module], self.runners, self.device)
        return configure_pipeline(
            self.family.build_pipeline(request, modules), request, progress=progress, on_step=on_step
        )

    def __call__(
        self,
        request: Request,
        seed: int = 0,
        *,
        progress: bool = True,
        on_step: Callable[[dict[str, int]], None] | None = None,
    ) -> NDArray[Any]:
        """Generate: the float array of ``output_type="np"`` ((N,H,W,3) images or (B,F,H,W,3) videos);
        ``on_step`` hears of each denoising step (see :func:`configure_pipeline`)."""
        check_request(self.manifest, request)
        return run_pipeline(self.family, self.pipeline(request, progress=progress, on_step=on_step), request, seed)

    def record_inputs(self, component: str, feed: str) -> list[torch.Tensor]:
        """Record ``feed`` of every call to ``component`` (the denoiser's latents: the trajectory)."""
        calls: list[torch.Tensor] = []
        self.runners[component] = _Recording(self.backends[component], feed, calls)
        return calls

    def close(self) -> None:
        self.backends.close()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Recording:
    """A backend that also keeps a copy of one feed of every call (a :class:`~zoo.contract.Runner`:
    the rest is the backend's)."""

    def __init__(self, backend: Backend, feed: str, calls: list[torch.Tensor]) -> None:
        self.backend, self.feed, self.calls = backend, feed, calls
        self.input_names = backend.input_names

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        self.calls.append(feeds[self.feed].detach().clone())
        return self.backend(feeds)

    @property
    def record(self) -> ComponentRecord:
        return self.backend.record

    def call_cached(self, feeds: Mapping[str, Any], keep: int = 2) -> dict[str, torch.Tensor]:
        self.calls.append(feeds[self.feed].detach().clone())
        return self.backend.call_cached(feeds, keep)

    def set_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.backend.set_state(tensors)

    def reset_state(self) -> None:
        self.backend.reset_state()

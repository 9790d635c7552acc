"""The sampler: the family's own diffusers pipeline, its modules replaced by backends.

Re-implemented pipelines that drift from the reference are what breaks video output in public
attempts. So the sampler does not re-implement the loop: it builds the very diffusers pipeline
class the checkpoint names (same scheduler class and config, same CFG arithmetic, same latent
preparation and decoding) and gives it :class:`BackendModule` s whose calls run exported
components. What differs from diffusers is only where each module's arithmetic runs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from exporters.manifest import Manifest, load_manifest
from runtimes.backends import Backend, load_backends
from zoo.contract import PipelineSlot
from zoo.errors import ArtifactError, InputError, ZooError
from zoo.registry import get_family

log = logging.getLogger(__name__)

HOST_LIBRARIES = ("diffusers", "transformers")  # where tokenizers and schedulers come from


class BackendModule(torch.nn.Module):
    """Stands where the pipeline expects a library module: same ``config``, ``device``,
    ``dtype`` and call signature, its methods running exported components."""

    def __init__(self, slot: PipelineSlot, config: Mapping[str, Any], runners: Mapping[str, Callable], device: torch.device) -> None:
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

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if "forward" not in self.slot.calls:
            raise ZooError(f"pipeline module {self.slot.attribute!r} is not called directly by this family")
        return self.slot.calls["forward"](self._runners, *args, **kwargs)


def _load_host_module(path: Path, info: Mapping[str, str]) -> Any:
    """Tokenizers and schedulers saved beside the graphs, loaded with their own classes."""
    if not path.exists():
        raise ArtifactError(f"{path} is missing from the export; re-export")
    if info.get("library") not in HOST_LIBRARIES:
        raise ArtifactError(f"{path}: host module library {info.get('library')!r} is not one of {', '.join(HOST_LIBRARIES)}")
    cls = getattr(importlib.import_module(info["library"]), info["class"], None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ArtifactError(f"{path}: {info['library']} has no loadable class {info['class']!r}")
    return cls.from_pretrained(str(path))


def check_request(manifest: Manifest, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline kwargs: the family's request defaults, shape options filled from the export's
    opt point, each checked against its envelope (range and multiple-of) before any backend loads."""
    family = get_family(manifest.family)
    kwargs = {**family.request_defaults, **{k: v for k, v in kwargs.items() if v is not None}}
    for option, axis_name in family.request_axes.items():
        if kwargs.get(option) is None:
            kwargs[option] = manifest.envelope[axis_name].opt
        value = kwargs[option]
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{_option_name(option)} must be an integer, got {value!r}")
    for option, value in family.shapes_run(kwargs, manifest.configs).items():
        axis_name = family.request_axes[option]
        label = _option_name(option)
        if value != kwargs[option]:
            label = f"{label} {kwargs[option]} (binned by the pipeline to)"
        manifest.axes[axis_name].check_value(value, manifest.envelope[axis_name], option=label)
    return kwargs


def _option_name(kwarg: str) -> str:
    """How the command line spells a pipeline kwarg."""
    return {"num_images_per_prompt": "--batch"}.get(kwarg, "--" + kwarg.replace("_", "-"))


class Sampler:
    """Generates with an export folder through a backend (``onnxruntime``, ``torch``, ``tensorrt``)."""

    def __init__(self, export_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu") -> None:
        import diffusers

        self.manifest: Manifest = load_manifest(export_dir)
        self.family = get_family(self.manifest.family)
        if not self.family.pipeline_slots or not self.manifest.pipeline:
            raise ZooError(
                f"family {self.family.name!r} has no sampler: its components are checked with "
                f"`zoo parity` and timed with `zoo bench`"
            )
        slots = self.family.pipeline_slots
        missing = sorted({c for s in slots for c in s.components} - set(self.manifest.components))
        if missing:
            raise ArtifactError(
                f"export {self.manifest.root} lacks component(s) {', '.join(missing)} that the sampler runs; "
                f"re-export without --component"
            )
        self.backends: dict[str, Backend] = load_backends(backend, self.manifest, device)
        self.device = torch.device(device)
        self.runners: dict[str, Callable] = dict(self.backends)
        modules: dict[str, Any] = {
            slot.attribute: BackendModule(slot, self.manifest.configs[slot.module], self.runners, self.device)
            for slot in self.family.pipeline_slots
        }
        for name, info in self.manifest.host_modules.items():
            modules[name] = _load_host_module(self.manifest.root / name, info)
        self.pipeline = getattr(diffusers, self.manifest.pipeline)(**modules)
        self.pipeline.set_progress_bar_config(desc="sampling", leave=False)

    def __call__(self, **kwargs: Any) -> Any:
        request = check_request(self.manifest, kwargs)
        try:
            return self.pipeline(**request)
        except ZooError:
            raise
        except (ValueError, TypeError, IndexError) as e:  # the pipeline's own argument checks
            raise InputError(f"{self.manifest.pipeline} rejected the request ({type(e).__name__}: {e})") from None

    def record_inputs(self, component: str, feed: str) -> list[torch.Tensor]:
        """Record ``feed`` of every call to ``component`` (the denoiser's latents: the trajectory)."""
        calls: list[torch.Tensor] = []
        self.runners[component] = _Recording(self.backends[component], feed, calls)
        return calls


class _Recording:
    """A backend that also keeps a copy of one feed of every call."""

    def __init__(self, backend: Backend, feed: str, calls: list[torch.Tensor]) -> None:
        self.backend, self.feed, self.calls = backend, feed, calls
        self.input_names = backend.input_names

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        self.calls.append(feeds[self.feed].detach().clone())
        return self.backend(feeds)

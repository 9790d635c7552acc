"""Where a reference comes from: its sources (model folder, adapters, LoRAs) and the loaded
reference with its lazily loaded modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo.contract.tensors import WeightlessModule


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
    and manifests need).

    A module is whatever the library loads under that key (an ``nn.Module``, a tokenizer, a
    scheduler) and a config is the library's config object, read by attribute: both are ``Any``,
    by nature (the families read what their library defines)."""

    def __init__(
        self,
        loaders: Mapping[str, Callable[[], Any]],
        config_loaders: Mapping[str, Callable[[], Any]] | None = None,
        weightless: Mapping[str, Callable[[], WeightlessModule]] | None = None,
    ) -> None:
        self._loaders = dict(loaders)
        self._configs = dict(config_loaders or {})
        self._weightless = dict(weightless or {})
        self._loaded: dict[str, Any] = {}

    @classmethod
    def from_found(
        cls,
        found: Mapping[str, tuple[Callable[[], Any], Any, Any]],
        weightless: Mapping[str, Callable[[], WeightlessModule]] | None = None,
        **override: Callable[[], Any],
    ) -> Modules:
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

    def __iter__(self) -> Iterator[str]:
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

"""One backend interface: load an exported component, validate feeds, run, return named outputs.

``torch`` runs the library reference module (CPU or CUDA); ``onnxruntime`` runs the exported
graph through Polygraphy's ONNX Runtime runner (CPU, or CUDA where onnxruntime-gpu is
installed); ``tensorrt`` needs TensorRT and an NVIDIA GPU and says so clearly where they are
absent. Heavy runtimes are imported only when a backend of that kind is created.
"""

from __future__ import annotations

import importlib.util
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from exporters.manifest import ComponentRecord, Manifest
from runtimes.feeds import check_outputs, validate_feeds
from zoo.contract import Reference
from zoo.errors import ArtifactError, BackendUnavailableError, InputError, UnknownFamilyError
from zoo.registry import get_family

log = logging.getLogger(__name__)


class Backend(ABC):
    """Runs one exported component. Subclasses implement ``_load`` and ``_run`` only."""

    name: ClassVar[str]

    def __init__(self, manifest: Manifest, component: str, device: str = "cpu") -> None:
        self.manifest = manifest
        self.record: ComponentRecord = manifest.component(component)
        self.device = torch.device(device)
        self._load()

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.record.inputs)

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        checked = validate_feeds(self.record, feeds)
        outputs = self._run(checked)
        check_outputs(self.record, checked, outputs)
        return outputs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.manifest.family}/{self.record.name}, {self.device})"


_REFERENCES: dict[tuple[str, str, str], Reference] = {}


def load_reference(manifest: Manifest, device: str | torch.device = "cpu") -> Reference:
    """The manifest's reference on ``device``, loaded once per process and device with the
    family's real loader."""
    source = manifest.source_path
    key = (manifest.family, str(source.resolve()), str(torch.device(device)))
    if key not in _REFERENCES:
        if not source.exists():
            raise ArtifactError(
                f"the torch backend needs the reference checkpoint {source}, recorded in "
                f"{manifest.root / 'manifest.json'}, and it is not on this machine"
            )
        ref = get_family(manifest.family).load(source)
        for module in ref.modules.values():
            if isinstance(module, torch.nn.Module):
                module.to(device)
        _REFERENCES[key] = ref
    return _REFERENCES[key]


class TorchBackend(Backend):
    """The library reference module, called the way the diffusers pipeline calls it."""

    name = "torch"

    def _load(self) -> None:
        self.reference = load_reference(self.manifest, self.device)
        self.component = get_family(self.manifest.family).component(self.record.name)

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            on_device = {k: v.to(self.device) for k, v in feeds.items()}
            return dict(self.component.reference(self.reference, on_device))


class OnnxRuntimeBackend(Backend):
    """The exported ONNX graph in ONNX Runtime, through Polygraphy's runner."""

    name = "onnxruntime"

    def _load(self) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise BackendUnavailableError("the onnxruntime backend needs onnxruntime: pip install onnxruntime")
        import onnxruntime as ort
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        from exporters.onnx import check_artifact

        path = check_artifact(self.manifest.root, self.record)
        available = ort.get_available_providers()
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailableError(
                    f"onnxruntime on device cuda needs onnxruntime-gpu (CUDAExecutionProvider); "
                    f"this onnxruntime has {', '.join(available)}"
                )
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=providers))
            self.runner.activate()
        except Exception as e:  # ORT raises its own Fail / InvalidGraph types
            raise ArtifactError(f"onnxruntime could not load {path}: {str(e).splitlines()[0]}") from None

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {k: v.detach().cpu().contiguous() for k, v in feeds.items()}
        outputs = self.runner.infer(arrays, check_inputs=False)
        return {k: v.to(self.device) for k, v in outputs.items()}

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None and runner.is_active:
            runner.deactivate()


class TensorRTBackend(Backend):
    """TensorRT engines: needs the TensorRT libraries and an NVIDIA GPU."""

    name = "tensorrt"

    def _load(self) -> None:
        problem = tensorrt_unavailable()
        if problem:
            raise BackendUnavailableError(f"the tensorrt backend is not available here: {problem}")
        engines = self.manifest.root / "engines"
        raise ArtifactError(
            f"no TensorRT engine for component {self.record.name!r} under {engines}: engines are built "
            f"with `zoo build`, which this version does not have yet"
        )

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot run here, or None."""
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # the PyPI stub raises on import when its libraries are missing
        return f"TensorRT is not installed ({type(e).__name__}); install it with `pip install 'zoo[gpu]'` on a machine with an NVIDIA GPU"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TorchBackend, OnnxRuntimeBackend, TensorRTBackend)}


def load_backend(name: str, manifest: Manifest, component: str, device: str = "cpu") -> Backend:
    """A backend of kind ``name`` for ``component``; errors name the choices."""
    if name not in BACKENDS:
        raise UnknownFamilyError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available() and name == "torch":
        raise BackendUnavailableError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return BACKENDS[name](manifest, component, device)


def load_backends(name: str, manifest: Manifest, device: str = "cpu") -> dict[str, Backend]:
    """One backend per exported component."""
    return {c: load_backend(name, manifest, c, device) for c in manifest.components}

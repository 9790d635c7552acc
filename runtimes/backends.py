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
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch

from exporters.manifest import ComponentRecord, Manifest
from runtimes.feeds import check_finite, check_outputs, check_profile, validate_feeds
from zoo.contract import DTYPES, Reference
from zoo.errors import ArtifactError, BackendUnavailableError, InputError, OutputError, UnknownFamilyError
from zoo.infra.checkpoint import changed_files, content_hash
from zoo.registry import get_family

log = logging.getLogger(__name__)


class Backend(ABC):
    """Runs one exported component. Subclasses implement ``_load`` and ``_run`` (and ``_unload``
    if they hold a runtime). The lifecycle is explicit, as Polygraphy's runners: ``activate``
    loads the runtime, ``deactivate`` frees it; ``with backend:`` does both; a call on an
    inactive backend activates it (components load when first used).

    State pairs (an output that is the input of the next call, e.g. a VAE chunk cache) are kept
    on the backend's device between calls: a call may leave those inputs out, and they are
    taken from the previous call's outputs (or from :meth:`set_state`)."""

    name: ClassVar[str]
    # Check inputs and outputs finite together after the run, with one host synchronisation
    # (:func:`runtimes.feeds.check_finite`), rather than the inputs before it and the outputs after
    # it (two): for a GPU runtime that should not wait for the host between its calls.
    check_finite_after_run: ClassVar[bool] = False

    def __init__(self, manifest: Manifest, component: str, device: str = "cpu") -> None:
        self.manifest = manifest
        self.record: ComponentRecord = manifest.component(component)
        self.device = torch.device(device)
        self.is_active = False
        self.state: dict[str, torch.Tensor] = {}
        self._memo: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` here (a sentence), or None. Checked when a
        backend is made, before any model or reference is loaded."""
        if device.type == "cuda" and not torch.cuda.is_available():
            return f"device {str(device)!r} asked for, but torch sees no CUDA GPU"
        return None

    @abstractmethod
    def _load(self) -> None: ...

    def _unload(self) -> None:
        return None

    @abstractmethod
    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def activate(self) -> Backend:
        if not self.is_active:
            self._load()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._unload()
            self.is_active = False
        self.state.clear()
        self._memo.clear()

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @property
    def profile_dims(self) -> Mapping[str, Any]:
        """The dims this backend runs (an engine may be built for a narrower profile than the export's)."""
        return self.record.dims

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.record.inputs)

    def set_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Set the state inputs (by input name) the next call uses when its feeds leave them out."""
        unknown = sorted(set(tensors) - set(self.record.state.values()))
        if unknown:
            raise InputError(
                f"component {self.record.name!r}: {', '.join(unknown)} are not state inputs; "
                f"its state inputs are {', '.join(self.record.state.values()) or 'none'}"
            )
        self.state.update({k: v.to(self.device) for k, v in tensors.items()})

    def reset_state(self) -> None:
        self.state.clear()

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Validate ``feeds`` against the contract, run, check the outputs, keep the state. NaN
        and Inf are refused (an :class:`InputError` naming the input, an :class:`OutputError` naming
        the output), the inputs before the run unless :attr:`check_finite_after_run`; then no state
        is kept either."""
        after = self.check_finite_after_run
        feeds = {**{k: v for k, v in self.state.items() if k not in feeds}, **feeds}
        checked = validate_feeds(self.record, feeds, finite=not after)
        outputs = self.infer(checked)
        check_outputs(self.record, checked, outputs)
        check_finite(self.record, checked if after else {}, {t.name: outputs[t.name] for t in self.record.outputs})
        for output, state_input in self.record.state.items():
            self.state[state_input] = outputs[output]
        return outputs

    def call_cached(self, feeds: Mapping[str, Any], keep: int = 2) -> dict[str, torch.Tensor]:
        """``self(feeds)``, reusing the outputs of one of the last ``keep`` calls whose feeds were
        equal (a condition encoded once per segment, not once per denoising step)."""
        for key, outputs in self._memo:
            if key.keys() == feeds.keys() and all(
                key[k].shape == feeds[k].shape and torch.equal(key[k], torch.as_tensor(feeds[k])) for k in key
            ):
                return outputs
        outputs = self(feeds)
        self._memo.insert(0, ({k: torch.as_tensor(v).clone() for k, v in feeds.items()}, outputs))
        del self._memo[keep:]
        return outputs

    def infer(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run already-validated feeds (what ``zoo bench`` times)."""
        self.activate()
        return self._run(feeds)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.manifest.family}/{self.record.name}, {self.device})"


_REFERENCES: dict[tuple[Any, ...], Reference] = {}


def load_reference(manifest: Manifest, device: str | torch.device = "cpu") -> Reference:
    """The manifest's reference on ``device``, rebuilt from exactly the recorded sources (model,
    adapters, LoRAs with their scales) with the family's real loader, once per process and
    device. A source that is missing or whose content hash changed since the export is refused."""
    sources = manifest.source_paths()
    key = (manifest.family, tuple((s.role, str(s.path.resolve()), s.scale) for s in sources), str(torch.device(device)))
    if key not in _REFERENCES:
        for source, record in zip(sources, manifest.sources):
            if not source.path.exists():
                raise ArtifactError(
                    f"the torch reference needs the {source.role} source {source.path}, recorded in "
                    f"{manifest.root / 'manifest.json'}, and it is not on this machine"
                )
            if content_hash(source.path) != record["hash"]:
                changed = changed_files(source.path, record.get("files", {}))
                which = f" ({', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} changed)" if changed else ""
                raise ArtifactError(
                    f"the {source.role} source {source.path} changed since the export{which}: its content hash differs "
                    f"from {manifest.root / 'manifest.json'}, so the reference would not be the exported model; re-export"
                )
        ref = get_family(manifest.family).load(tuple(sources))
        ref.device = torch.device(device)
        _REFERENCES[key] = ref
    return _REFERENCES[key]


def reference_module(ref: Reference, key: str) -> Any:
    """A reference module, moved to the reference's device on first use."""
    module = ref.module(key)
    if isinstance(module, torch.nn.Module) and next(module.parameters(), torch.empty(0)).device != ref.device:
        module.to(ref.device)
    return module


class TorchBackend(Backend):
    """The library reference module, called the way the diffusers pipeline calls it."""

    name = "torch"
    given: Reference | None = None  # a reference handed in (use_reference) instead of the manifest's

    def use_reference(self, ref: Reference) -> None:
        """Run on ``ref`` (the manifest's reference with a module being calibrated) instead of
        loading the manifest's sources."""
        self.given = ref
        if self.is_active:
            self.reference = ref

    def _load(self) -> None:
        component = get_family(self.manifest.family).component(self.record.name)
        if component.graph is not None:
            raise BackendUnavailableError(
                f"component {self.record.name!r} is an imported ONNX graph: it has no torch reference (its "
                f"reference is the given graph itself on ONNX Runtime CPU); run it with --backend onnxruntime"
            )
        self.reference = self.given or load_reference(self.manifest, self.device)
        self.component = component
        _, self.call = component.traced()
        reference_module(self.reference, self.component.module)

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            on_device = {k: v.to(self.device) for k, v in feeds.items()}
            return dict(self.call(self.reference, on_device))


class SourceGraphBackend(Backend):
    """An imported component's reference: the graph the user gave (the loaded reference's source
    file, its content hash checked against the manifest), as given, on ONNX Runtime CPU, whatever
    the device the candidate runs on (outputs are handed back there).

    Where the export made the batch dim symbolic and the given graph fixes it to 1, a batch is run
    item by item through the given graph and the outputs stacked: the export made it symbolic only
    because that gave exactly the batch's outputs."""

    name = "source graph"

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        return OnnxRuntimeBackend.unavailable(torch.device("cpu"))

    def _load(self) -> None:
        problem = self.unavailable(self.device)
        if problem:
            raise BackendUnavailableError(problem)
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        component = get_family(self.manifest.family).component(self.record.name)
        if component.graph is None:
            raise ArtifactError(f"component {self.record.name!r} is traced: its reference is the torch backend")
        path = component.graph.path(load_reference(self.manifest))
        try:
            self.runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]))
            self.runner.activate()
        except Exception as e:  # ORT raises its own Fail / InvalidGraph types
            raise ArtifactError(f"onnxruntime could not load {path}: {str(e).splitlines()[0]}") from None
        # the given graph's own input and output names, by position (a positional graph's differ)
        self.feed_names = dict(zip((t.name for t in self.record.inputs), self.runner.get_input_metadata()))
        session_outputs = [o.name for o in self.runner.sess.get_outputs()]
        self.output_names = dict(zip(session_outputs, (t.name for t in self.record.outputs)))
        # the axis of the batch dim in each input and output, where the given graph fixes it to 1
        self.split: dict[str, int] = {}
        batch = component.graph.batch
        if batch is not None and batch in self.record.dims and self.record.dims[batch].is_dynamic:
            given = {name: meta.shape for name, meta in self.runner.get_input_metadata().items()}
            given = {t.name: given[self.feed_names[t.name]] for t in self.record.inputs if t.name in self.feed_names}
            for t in self.record.inputs:
                if batch in t.shape and given.get(t.name) is not None:
                    axis = t.shape.index(batch)
                    if given[t.name][axis] == 1:
                        self.split[t.name] = axis
        self.out_axes = {
            t.name: t.shape.index(batch) for t in self.record.outputs if batch is not None and batch in t.shape
        }

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {k: v.detach().cpu().contiguous() for k, v in feeds.items()}
        size = next((arrays[k].shape[a] for k, a in self.split.items()), 1)

        def infer(item: dict[str, torch.Tensor]) -> dict[str, Any]:
            given = {self.feed_names.get(k, k): v for k, v in item.items()}
            return {self.output_names.get(k, k): v for k, v in self.runner.infer(given, check_inputs=False).items()}

        if size == 1:
            outputs = infer(arrays)
        else:
            parts = []
            for i in range(size):
                parts.append(
                    infer({k: v.narrow(self.split[k], i, 1) if k in self.split else v for k, v in arrays.items()})
                )
            outputs = {k: torch.cat([torch.as_tensor(p[k]) for p in parts], dim=self.out_axes[k]) for k in parts[0]}
        return {k: torch.as_tensor(v).to(self.device) for k, v in outputs.items()}

    def _unload(self) -> None:
        if self.runner.is_active:
            self.runner.deactivate()
        del self.runner


def reference_backend(manifest: Manifest, component: str, device: str = "cpu") -> Backend:
    """What a component is compared with (parity) and timed against (bench), by the kind of reference
    its declaration says it has: the reference call in torch on ``device``, or, for an imported
    graph, the given graph on ONNX Runtime CPU. Not yet activated."""
    declared = get_family(manifest.family).component(component)
    if declared.graph is not None:
        return SourceGraphBackend(manifest, component, device)
    return TorchBackend(manifest, component, device)


class OnnxRuntimeBackend(Backend):
    """The exported ONNX graph in ONNX Runtime, through Polygraphy's runner."""

    name = "onnxruntime"

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "the onnxruntime backend needs onnxruntime: pip install onnxruntime"
        import onnxruntime as ort

        available = ort.get_available_providers()
        if device.type == "cuda" and "CUDAExecutionProvider" not in available:
            return (
                f"onnxruntime on device cuda needs onnxruntime-gpu (CUDAExecutionProvider); "
                f"this onnxruntime has {', '.join(available)}"
            )
        return super().unavailable(device)

    def _load(self) -> None:
        problem = self.unavailable(self.device)
        if problem:
            raise BackendUnavailableError(problem)
        from polygraphy.backend.onnxrt import OnnxrtRunner

        from exporters.onnx import check_artifact

        path = check_artifact(self.manifest.root, self.record)
        if self.device.type == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.runner = OnnxrtRunner(self._session(str(path), providers))
            self.runner.activate()
        except Exception as e:  # ORT raises its own Fail / InvalidGraph types
            raise ArtifactError(f"onnxruntime could not load {path}: {str(e).splitlines()[0]}") from None

    def _session(self, path: str, providers: list[Any]) -> Any:
        """The session (a Polygraphy loader). For a quantized graph two of ONNX Runtime's fusions
        are off, as they keep it from its integer kernels (MatMulIntegerToFloat): the
        common-subexpression pass would merge again the quantize / dequantize pairs the export
        gives each MatMul (a DequantizeLinear is fused only where it has one consumer), and
        MatMul + Add -> Gemm, which it applies first on static shapes, leaves a DequantizeLinear
        before a Gemm that no QDQ rule takes (a 14B-wide DiT block at one static shape ran 1.6x slower than
        fp32, dequantizing its weights at every call). The results are the same; the speed is not."""
        from polygraphy.backend.onnxrt import SessionFromOnnx

        if self.record.quantization is None:
            return SessionFromOnnx(path, providers=providers)
        import onnxruntime as ort

        return lambda: ort.InferenceSession(
            path, providers=providers, disabled_optimizers=["CommonSubexpressionElimination", "MatMulAddFusion"]
        )

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {k: v.detach().cpu().contiguous() for k, v in feeds.items()}
        outputs = self.runner.infer(arrays, check_inputs=False)
        return {k: v.to(self.device) for k, v in outputs.items()}

    def _unload(self) -> None:
        if self.runner.is_active:
            self.runner.deactivate()
        del self.runner


class TensorRTBackend(Backend):
    """A TensorRT engine built by ``zoo build`` (needs TensorRT 10.1+ and an NVIDIA GPU).

    The engine is found in the export's cache for this machine's TensorRT and GPU, its plan file
    checked against its sidecar (hashed once per file version) and streamed into TensorRT. Feeds
    and outputs are torch tensors on the device, bound to the execution context by address, and
    state outputs (VAE caches) stay on the device as the next call's inputs. Per call:

    - shapes are set inside the engine's profile; an output whose shape is still unknown then
      (data-dependent) is refused, as are shape tensors TensorRT reads on the host;
    - every address is 256-byte aligned (TensorRT refuses others): a misaligned or strided feed,
      such as a view with an offset, is copied into fresh storage; every TensorRT return value is
      checked, and a refusal is an error naming the tensor;
    - activation memory is the context's own size for these shapes
      (``update_device_memory_size_for_shapes``), taken from torch's caching allocator for the
      call (the context is created ``USER_MANAGED``: nothing is reserved at load for the largest
      profile, outside torch's allocator);
    - the engine runs on the backend's own non-default stream (TensorRT adds device-wide
      synchronisation on the legacy default stream). Ordering: everything the call allocates
      (copies, outputs, activation memory) is allocated on the caller's current stream; the
      backend's stream waits for the caller's stream before the engine runs, and the caller's
      stream waits for the backend's after it is queued. So the engine sees finished inputs, the
      caller's next kernels see finished outputs, and memory freed by the caller after the call is
      reused on the caller's stream only after the engine is done with it: no ``record_stream``
      and no host synchronisation.

    A weight-streaming engine's ``auto`` budget is resolved with the other engines of the same
    pipeline (:class:`StreamingBudgets`), and the budget TensorRT took is read back and kept in
    ``streaming_budget``."""

    name = "tensorrt"
    check_finite_after_run = True  # one host synchronisation per call, inputs and outputs together
    ALIGNMENT = 256  # bytes: what IExecutionContext.set_tensor_address requires

    # set by _load, None once unloaded; tensorrt has no type information: its objects are Any
    engine: Any  # the tensorrt.ICudaEngine
    context: Any  # its IExecutionContext
    stream: torch.cuda.Stream | None

    def __init__(self, manifest: Manifest, component: str, device: str = "cuda") -> None:
        super().__init__(manifest, component, device)
        self.budgets: StreamingBudgets | None = None  # shared by the engines of one pipeline (Runners)
        self.streaming_budget: int | None = None  # bytes, as read back from TensorRT

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        from exporters.tensorrt import unavailable

        problem = unavailable(device)
        return f"the tensorrt backend is not available here: {problem}" if problem else None

    def _load(self) -> None:
        from exporters import tensorrt as engines

        target = engines.current_target(self.device)
        self.entry = engines.find_engine(self.manifest, self.record, target)
        self.dims = self.entry.dims  # the engine's profile, checked on every call
        plan = self.entry.read_plan()  # the file, checked against its sidecar before TensorRT sees it
        import tensorrt as trt

        with torch.cuda.device(self.device):
            self.engine = engines.deserialize(plan)
            self._check_tensors(trt)
            self.streaming_budget = self._set_streaming_budget()
            context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if context is None:
                raise ArtifactError(
                    f"TensorRT could not create an execution context for {self.entry.plan} (see its log above)"
                )
            self.context = context
            self.stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]  # torch leaves Stream.__new__ unannotated

    def _check_tensors(self, trt: Any) -> None:
        """The engine's tensors are the component's, in its dtypes, and all device tensors."""
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        if inputs != set(self.input_names) or set(names) - inputs != {t.name for t in self.record.outputs}:
            raise ArtifactError(
                f"the engine {self.entry.plan} has tensors {', '.join(names)}, not the component's "
                f"{', '.join([*self.input_names, *(t.name for t in self.record.outputs)])}; rebuild it"
            )
        host = [n for n in names if engine.is_shape_inference_io(n)]
        if host:
            raise ArtifactError(
                f"the engine {self.entry.plan} has shape tensor(s) {', '.join(host)} that TensorRT reads on "
                f"the host; the tensorrt backend binds device tensors only: export the component with "
                f"{host[0]!r} as a data input (its values in a device tensor), then rebuild"
            )
        found = {n: _TRT_TORCH.get(str(engine.get_tensor_dtype(n)).split(".")[-1]) for n in names}
        tensors = (*self.record.inputs, *self.record.outputs)
        wrong = [
            f"{t.name} is {found[t.name]}, expected {t.dtype}" for t in tensors if found[t.name] != DTYPES[t.dtype]
        ]
        if wrong:
            raise ArtifactError(
                f"the engine {self.entry.plan} does not have the component's dtypes ({'; '.join(wrong)}); rebuild it"
            )
        # the engine's tensors are the component's (checked above), each in the component's dtype
        self.dtypes: dict[str, torch.dtype] = {t.name: DTYPES[t.dtype] for t in tensors}

    def _set_streaming_budget(self) -> int | None:
        """Set a weight-streaming engine's budget (``auto``: resolved with the pipeline's other
        engines), read back what TensorRT took, and log it."""
        from exporters import tensorrt as engines

        budget = self.entry.sidecar.get("weight_streaming_budget")
        if not (self.entry.sidecar["flags"].get("weight_streaming") and budget):
            return None
        streamable = int(self.engine.streamable_weights_size)
        if budget == "auto" and self.budgets is not None:
            want = self.budgets.budget_for(self)
        else:
            want = engines.budget_bytes(budget, streamable, self.engine.get_weight_streaming_automatic_budget)
        self.engine.weight_streaming_budget_v2 = want
        got = int(self.engine.weight_streaming_budget_v2)
        (log.warning if got != want else log.info)(
            "component %s: weight-streaming budget %s: %d of %d streamable bytes on the device%s",
            self.record.name,
            budget,
            got,
            streamable,
            "" if got == want else f" (asked for {want})",
        )
        return got

    @property
    def profile_dims(self) -> Mapping[str, Any]:
        return self.dims if self.is_active else self.record.dims

    def infer(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.activate()
        check_profile(self.record, self.dims, feeds, f"the engine's profile ({self.entry.folder})")
        return self._run(feeds)

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.cuda.device(self.device):  # the engine's GPU, whichever one is current
            return self._execute(feeds)

    def _refused(self, what: str) -> ArtifactError:
        return ArtifactError(f"component {self.record.name!r}: TensorRT refused {what} (see its log above)")

    def _execute(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context, stream = self.context, self.stream
        assert stream is not None  # set by _load: a call activates the backend first
        caller = torch.cuda.current_stream(self.device)
        bound: dict[str, torch.Tensor] = {}  # alive until the call is queued (see the class's note on streams)
        for name, value in feeds.items():
            t = self._aligned(value.to(self.device))
            if not context.set_input_shape(name, tuple(t.shape)):
                raise InputError(
                    f"component {self.record.name!r} input {name!r}: TensorRT refused the shape {tuple(t.shape)} "
                    f"for the engine {self.entry.plan} (see its log above)"
                )
            bound[name] = t
        outputs = {}
        for spec in self.record.outputs:
            shape = tuple(context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise ArtifactError(
                    f"component {self.record.name!r} output {spec.name!r}: its shape {shape} depends on the "
                    f"data (still unknown once every input shape is set); the tensorrt backend allocates "
                    f"outputs from the input shapes and does not run such engines"
                )
            outputs[spec.name] = self._empty(shape, self.dtypes[spec.name])
        size = int(context.update_device_memory_size_for_shapes())
        scratch = self._empty((max(size, 1),), torch.uint8)  # activations for these shapes, from torch's allocator
        context.set_device_memory(scratch.data_ptr(), size)
        for name, t in (*bound.items(), *outputs.items()):
            if not context.set_tensor_address(name, t.data_ptr()):
                raise self._refused(f"the address of {name!r} ({t.data_ptr():#x}, shape {tuple(t.shape)}, {t.dtype})")
        stream.wait_stream(caller)  # inputs written on the caller's stream are finished first
        queued = context.execute_async_v3(stream.cuda_stream)
        caller.wait_stream(stream)  # the caller's next kernels (and frees) come after the engine
        if not queued:
            raise OutputError(f"component {self.record.name!r}: TensorRT's execute_async_v3 failed (see its log above)")
        return outputs

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor whose address is 256-byte aligned (torch's CUDA allocator gives
        512-byte aligned blocks; any other storage is over-allocated and offset)."""
        t = torch.empty(shape, dtype=dtype, device=self.device)
        if t.data_ptr() % self.ALIGNMENT == 0:
            return t
        nbytes = t.numel() * t.element_size()
        raw = torch.empty(nbytes + self.ALIGNMENT, dtype=torch.uint8, device=self.device)
        offset = -raw.data_ptr() % self.ALIGNMENT
        return raw[offset : offset + nbytes].view(dtype).view(shape)

    def _aligned(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` if contiguous at an aligned address, else a copy that is (made on the caller's stream)."""
        if t.is_contiguous() and t.data_ptr() % self.ALIGNMENT == 0:
            return t
        out = self._empty(tuple(t.shape), t.dtype)
        out.copy_(t)
        return out

    def _unload(self) -> None:
        self.context = self.engine = self.stream = None


class StreamingBudgets:
    """The ``auto`` weight-streaming budgets of one pipeline's TensorRT engines, resolved together
    when the first of them loads, from every engine's sidecar (streamable weights, activation
    memory, plan size) and the device's free memory then (:func:`exporters.tensorrt.auto_budgets`),
    instead of each engine taking the free memory as it loads."""

    def __init__(self, backends: list[TensorRTBackend]) -> None:
        self.backends = backends
        self.resolved: dict[str, int] | None = None

    def budget_for(self, backend: TensorRTBackend) -> int:
        if self.resolved is None:
            self.resolved = self.resolve(backend.device)
            log.info("weight-streaming budgets resolved together: %s", self.resolved)
        return self.resolved[backend.record.name]

    def resolve(self, device: torch.device) -> dict[str, int]:
        from exporters import tensorrt as engines

        target = engines.current_target(device)
        facts = {}
        for b in self.backends:
            try:
                entry = (
                    b.entry
                    if getattr(b, "entry", None) is not None
                    else engines.find_engine(b.manifest, b.record, target)
                )
            except ArtifactError:
                continue  # no engine: that component fails when it loads, and holds no memory before
            built, streams = entry.sidecar["build"], entry.sidecar["flags"].get("weight_streaming")
            facts[b.record.name] = {
                "streamable": built.get("streamable_weights_bytes"),
                "device_memory": built.get("device_memory_bytes"),
                "weights": entry.sidecar["plan"]["size"],
                "budget": (entry.sidecar.get("weight_streaming_budget") or "auto") if streams else None,
            }
        free, _ = torch.cuda.mem_get_info(device)
        return engines.auto_budgets(facts, free)


_TRT_TORCH = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT64": torch.int64,
    "INT32": torch.int32,
    "BOOL": torch.bool,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
}


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TorchBackend, OnnxRuntimeBackend, TensorRTBackend)}


def load_backend(name: str, manifest: Manifest, component: str, device: str = "cpu") -> Backend:
    """An active backend of kind ``name`` for ``component``; errors name the choices."""
    return backend_for(name, manifest, component, device).activate()


def backend_for(name: str, manifest: Manifest, component: str, device: str = "cpu") -> Backend:
    """A backend of kind ``name`` for ``component``, not yet activated; errors name the choices."""
    if name not in BACKENDS:
        raise UnknownFamilyError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    parse_device(device, name)
    return BACKENDS[name](manifest, component, device)


def parse_device(device: str, backend: str = "torch") -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``: :class:`InputError` otherwise, and
    :class:`BackendUnavailableError` where ``backend`` cannot run on it here."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    problem = BACKENDS[backend].unavailable(parsed) if backend in BACKENDS else None
    if problem:
        raise BackendUnavailableError(problem)
    return parsed


class Runners(Mapping[str, Backend]):
    """One backend per exported component, each activated when first called (a video-to-video
    VAE encoder is never loaded for text-to-video). ``close()`` deactivates them all."""

    def __init__(self, name: str, manifest: Manifest, device: str = "cpu") -> None:
        self._backends = {c: backend_for(name, manifest, c, device) for c in manifest.components}
        engines = [b for b in self._backends.values() if isinstance(b, TensorRTBackend)]
        budgets = StreamingBudgets(engines)  # `auto` weight streaming: resolved once all engines are known
        for b in engines:
            b.budgets = budgets

    def __getitem__(self, key: str) -> Backend:
        return self._backends[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    def close(self) -> None:
        for backend in self._backends.values():
            backend.deactivate()

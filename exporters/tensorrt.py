"""TensorRT engines of an export folder: build specs, the content-keyed engine cache, refit.

An engine lives in ``DIR/engines/<key>/engine.plan`` with ``engine.json`` beside it. The key is
a sha256 over everything that makes the plan what it is: the component's graph and weights
(and the sources they came from), its precision, its optimization profile, the builder flags,
the TensorRT version and the GPU's compute capability, as canonical JSON, so the same export
gives the same key in any process. The sidecar records all of it, the plan's size and sha256,
the build time, the engine's device memory and the equivalent ``trtexec`` line.

Everything here but :func:`build_plan`, :func:`refit_plan` and :func:`current_target` runs
without TensorRT: the cache takes the builder as a function, so its keys, sidecar checks,
corrupt-entry rebuilds and locking are tested on any machine, and the real builder (Polygraphy's
``NetworkFromOnnxPath`` / ``CreateConfig`` / ``EngineBytesFromNetwork``) where TensorRT is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shlex
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exporters.artifacts import atomic_write_json, read_json, staged_dir
from exporters.manifest import ComponentRecord, Manifest, inside
from exporters.profiles import input_shapes, narrow_dims, trtexec_command
from zoo.contract import Dim, Range
from zoo.errors import ArtifactError, BackendUnavailableError, EnvelopeError, ExportError, InputError
from zoo.infra.hashing import file_sha256

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
PLAN = "engine.plan"
SIDECAR = "engine.json"
ENGINE_FORMAT = 1  # of the key's ingredients and the sidecar; a change gives every engine a new key
PRECISION_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class EngineTargetError(ArtifactError):
    """An engine built for another TensorRT version or GPU."""


# --------------------------------------------------------------------------------------
# Where an engine runs: TensorRT version and GPU
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The TensorRT version and GPU an engine is built for (a plan runs only there)."""

    tensorrt: str
    compute_capability: str  # "9.0"
    gpu: str = ""  # the device name, recorded; engines are keyed by compute capability

    def to_json(self) -> dict[str, str]:
        return {"tensorrt": self.tensorrt, "compute_capability": self.compute_capability, "gpu": self.gpu}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Target:
        return cls(d["tensorrt"], d["compute_capability"], d.get("gpu", ""))

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt} on compute capability {self.compute_capability}" + (
            f" ({self.gpu})" if self.gpu else ""
        )

    def runs(self, built: Target) -> bool:
        """Whether a plan built for ``built`` runs here (same TensorRT, same compute capability)."""
        return (built.tensorrt, built.compute_capability) == (self.tensorrt, self.compute_capability)


def current_target(device: Any = "cuda") -> Target:
    """This machine's TensorRT and the GPU ``device``; :class:`BackendUnavailableError` without them."""
    import torch

    try:
        import tensorrt as trt
    except Exception as e:  # the PyPI stub raises on import when its libraries are missing
        raise BackendUnavailableError(
            f"TensorRT is not installed ({type(e).__name__}); install NVIDIA's tensorrt "
            f"wheels (`pip install -e '.[gpu]'`) on a machine with an NVIDIA GPU"
        ) from None
    if not torch.cuda.is_available():
        raise BackendUnavailableError("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: expected cuda or cuda:N") from None
    if device.type != "cuda":
        raise InputError(f"TensorRT engines run on a CUDA device: got --device {device}, expected cuda or cuda:N")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    major, minor = torch.cuda.get_device_capability(index)
    return Target(trt.__version__, f"{major}.{minor}", torch.cuda.get_device_name(index))


_DEVICE = re.compile(r"^cuda(:\d+)?$")


def check_device(device: str) -> str:
    """``--device`` of ``zoo build``: ``cuda`` or ``cuda:N`` (checked without torch or a GPU, so a
    dry run refuses what a build would)."""
    if not _DEVICE.match(str(device).strip()):
        raise InputError(f"--device {device!r}: TensorRT engines are built on a CUDA device; expected cuda or cuda:N")
    return str(device).strip()


def unavailable(device: Any = "cuda") -> str | None:
    """Why engines cannot be built or run on ``device`` here (a sentence), or None."""
    try:
        current_target(device)
    except (BackendUnavailableError, InputError) as e:
        return str(e)
    return None


# --------------------------------------------------------------------------------------
# What each TensorRT version's ONNX parser documents (../shared/design/MODELS.md, TensorRT section)
# --------------------------------------------------------------------------------------

# The parser's documented ONNX opset range (onnx-tensorrt docs/operators.md of each release), from
# the first version that documents it: 10.0-10.13: 9-20; 10.14, 10.15 and 11.x: 9-24; 11.5: 9-25.
PARSER_OPSETS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((10, 0), (9, 20)),
    ((10, 14), (9, 24)),
    ((11, 5), (9, 25)),
)
MIN_TENSORRT = (10, 1)  # this zoo's floor (weight_streaming_budget_v2; the gpu extra's pin)
# Restrictions column of the 10.x parser: these inputs must be initializers (constants known when
# the network is built), not tensors computed in the graph or fed at run time.
REDUCE_OPS = (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
)
CONSTANT_INPUTS: dict[str, tuple[int, str]] = {
    "Squeeze": (1, "axes"),
    "Unsqueeze": (1, "axes"),
    **{op: (1, "axes") for op in REDUCE_OPS},
}


def _version(text: str) -> tuple[int, int]:
    parts = re.findall(r"\d+", str(text))
    return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) if parts else (0, 0)


def parser_opsets(version: str) -> tuple[int, int]:
    """The ONNX opsets TensorRT ``version``'s parser documents; :class:`EngineTargetError` below 10.1."""
    v = _version(version)
    if v < MIN_TENSORRT:
        raise EngineTargetError(
            f"TensorRT {version} is older than this zoo supports: install TensorRT 10.1 or newer "
            f"(`pip install -e '.[gpu]'`)"
        )
    return [r for first, r in PARSER_OPSETS if v >= first][-1]


def minimum_tensorrt(opset: int) -> str:
    """The first TensorRT version (at least this zoo's floor) whose parser documents ``opset``."""
    for first, (lo, hi) in PARSER_OPSETS:
        if lo <= opset <= hi:
            return ".".join(map(str, max(first, MIN_TENSORRT)))
    raise ExportError(
        f"ONNX opset {opset}: no TensorRT release documents it (the newest documented is {PARSER_OPSETS[-1][1][1]})"
    )


def check_parser_opset(record: ComponentRecord, target: Target) -> None:
    """Refuse, before building, a graph whose opset ``target``'s parser does not document."""
    lo, hi = parser_opsets(target.tensorrt)
    if not lo <= record.opset <= hi:
        raise EngineTargetError(
            f"component {record.name!r} is an ONNX opset-{record.opset} graph ({record.precision}); TensorRT "
            f"{target.tensorrt} documents opsets {lo}-{hi}, so it needs TensorRT {minimum_tensorrt(record.opset)} or "
            f"newer"
            + (
                ": or re-export with `zoo export ... --precision fp16` (opset 18)"
                if record.precision == "bfloat16"
                else ""
            )
        )


def check_quantized_target(record: ComponentRecord, target: Target) -> None:
    """Refuse, before building, an FP8 graph on a GPU without FP8 (compute capability below 8.9:
    Ada and Hopper have it; Ampere and Jetson Orin do not, INT8 is their path)."""
    quant = record.quantization
    if quant is not None and quant.get("format") == "fp8" and _version(target.compute_capability) < (8, 9):
        raise EngineTargetError(
            f"component {record.name!r} is an FP8 graph; this GPU (compute capability {target.compute_capability}) "
            f"has no FP8 (Ada / Hopper, 8.9+, do): re-export with `zoo export ... --quantize int8`"
        )


def constant_input_problems(graph: Any) -> list[str]:
    """Nodes (subgraphs included) whose ``axes`` input the 10.x parser needs as an initializer but
    that is computed in the graph or fed at run time, each as ``Op 'name': axes from 'tensor'``."""
    constants = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    problems = []
    for node in graph.node:
        for attr in node.attribute:  # If / Loop bodies
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                problems += constant_input_problems(sub)
        rule = CONSTANT_INPUTS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule and len(node.input) > rule[0] and node.input[rule[0]] and node.input[rule[0]] not in constants:
            problems.append(f"{node.op_type} {node.name!r}: {rule[1]} from {node.input[rule[0]]!r}")
    return problems


def check_parser_support(model: Any, component: str) -> int:
    """The TensorRT-parser lint of an exported graph: its opset documented by some TensorRT this
    zoo supports, and the 10.x restrictions column (``axes`` of Squeeze / Unsqueeze / Reduce*
    as initializers). Returns the graph's opset; :class:`ExportError` naming what fails."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    try:
        minimum_tensorrt(opset)
    except ExportError as e:
        raise ExportError(f"component {component!r}: {e}") from None
    problems = constant_input_problems(model.graph)
    if problems:
        raise ExportError(
            f"component {component!r}: TensorRT 10.x's ONNX parser needs these inputs as initializers, "
            f"and the graph computes them: {'; '.join(problems[:5])}"
        )
    problems = qdq_problems(model.graph, opset)
    if problems:
        raise ExportError(
            f"component {component!r}: quantize / dequantize pairs TensorRT does not take: {'; '.join(problems[:5])}"
        )
    return opset


# The quantized types TensorRT 10's Q/DQ layers take (onnx.TensorProto names): INT8 everywhere, FP8
# E4M3 from Ada / Hopper (the graph cannot say which GPU it meets: `zoo build` refuses FP8 elsewhere).
TENSORRT_QUANTIZED = {"INT8": 13, "FLOAT8E4M3FN": 19}  # type -> the first opset whose Q/DQ have it


def qdq_problems(graph: Any, opset: int) -> list[str]:
    """TensorRT's rules for explicit quantization (its ``IQuantizeLayer`` / ``IDequantizeLayer``):
    scales and zero points are build-time constants (initializers); the zero point is 0 (symmetric);
    the quantized type is INT8 or FP8 E4M3 at an opset that has it; activations (a QuantizeLinear
    on a computed tensor) are quantized per tensor, only weights per channel."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    names = TensorProto.DataType.Name
    problems: list[str] = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in ("", "ai.onnx"):
            continue
        where = f"{node.op_type} {node.name or node.output[0]}"
        scale = constants.get(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            problems.append(f"{where}: its scale is computed, not an initializer")
            continue
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and zero is None:
            problems.append(f"{where}: its zero point is computed, not an initializer")
            continue
        if zero is not None and np.any(numpy_helper.to_array(zero).astype(np.float32) != 0):
            problems.append(f"{where}: zero point not 0 (TensorRT quantizes symmetrically)")
        if node.op_type == "QuantizeLinear":
            kind = names(zero.data_type) if zero is not None else "UINT8"
        else:
            source = constants.get(node.input[0])
            kind = names(source.data_type) if source is not None else names(zero.data_type) if zero is not None else ""
        if kind and kind not in TENSORRT_QUANTIZED:
            problems.append(f"{where}: quantized type {kind} (TensorRT takes {', '.join(TENSORRT_QUANTIZED)})")
        elif kind and opset < TENSORRT_QUANTIZED[kind]:
            problems.append(f"{where}: {kind} needs opset {TENSORRT_QUANTIZED[kind]}, the graph is opset {opset}")
        per_channel = int(np.prod(list(scale.dims))) > 1
        if per_channel and node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            problems.append(f"{where}: an activation quantized per channel (TensorRT: per tensor)")
    return problems


# --------------------------------------------------------------------------------------
# What to build: one spec per component
# --------------------------------------------------------------------------------------

_BUDGET = re.compile(r"^(auto|\d+(\.\d+)?%|\d+[BKMG]?)$", re.IGNORECASE)


def parse_budget(text: str) -> str:
    """A weight-streaming budget as trtexec writes it: ``auto``, ``N%`` of the streamable weights
    kept on the device, or bytes with an optional B / K / M / G (base-2) suffix."""
    text = str(text).strip()
    if not _BUDGET.match(text):
        raise EnvelopeError(
            f"--weight-streaming {text!r}: expected auto, a percentage such as 50%, or a size such as 8G"
        )
    if text.endswith("%") and float(text[:-1]) > 100:
        raise EnvelopeError(f"--weight-streaming {text!r}: a percentage is at most 100%")
    return text.lower() if text.lower() == "auto" else text.upper()


_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MAX_BUDGET = 1 << 50  # 1 PiB: more device memory than any GPU has (an H200 has 141 GB)


def _size_bytes(budget: str) -> int:
    return int(budget[:-1]) * _UNITS[budget[-1]] if budget[-1] in _UNITS else int(budget)


def check_budget(budget: str | None, streamable: int | None = None, where: str = "--weight-streaming") -> None:
    """Refuse a size budget no GPU could hold (over 1 PiB), or larger than the engine's streamable
    weights when they are known (:class:`EnvelopeError`): a budget is device memory for weights."""
    if budget is None or budget == "auto" or budget.endswith("%"):
        return
    size = _size_bytes(budget)
    if size > MAX_BUDGET:
        raise EnvelopeError(
            f"{where} {budget}: {size:.3g} bytes is more device memory than any GPU has; expected "
            f"auto, a percentage such as 50%, or a size of at most 1 PiB such as 8G"
        )
    if streamable and size > streamable:  # 0 or None: not known (no engine yet)
        raise EnvelopeError(
            f"{where} {budget}: {size} bytes is more than the engine's {streamable} bytes of "
            f"streamable weights; give at most {streamable // _UNITS['M']}M, a percentage, or auto"
        )


def budget_bytes(budget: str, streamable: int, automatic: Callable[[], int]) -> int:
    """The device bytes for streamable weights that ``budget`` (from :func:`parse_budget`) means;
    ``automatic`` gives the ``auto`` budget (see :func:`auto_budgets` for several engines)."""
    if budget == "auto":
        return int(automatic())
    if budget.endswith("%"):
        return int(streamable * float(budget[:-1]) / 100)
    check_budget(budget, streamable)
    return _size_bytes(budget)


def auto_budgets(engines: Mapping[str, Mapping[str, Any]], free: int, margin: float = 0.1) -> dict[str, int]:
    """The ``auto`` weight-streaming budgets of several engines that run together, resolved once
    all are known instead of each taking the free memory as it loads. ``engines`` maps a name to
    its sidecar facts: ``streamable`` (bytes), ``device_memory`` (activation bytes at its largest
    shapes), ``weights`` (bytes resident without streaming: the plan's size for an engine that does
    not stream), ``budget`` (``auto``, a percentage, a size, or None when it does not stream).
    ``free`` device bytes, less ``margin`` of it, less every engine's activations, resident
    weights and fixed budgets, are shared by the ``auto`` engines in proportion to their
    streamable weights (each at most all of them, at least 0)."""
    usable = int(free * (1 - margin))
    auto = {n: e for n, e in engines.items() if e.get("budget") == "auto"}
    for name, e in engines.items():
        usable -= int(e.get("device_memory") or 0)
        if e.get("budget") is None:
            usable -= int(e.get("weights") or 0)
        elif name not in auto:
            usable -= budget_bytes(e["budget"], int(e.get("streamable") or 0), lambda: 0)
    total = sum(int(e.get("streamable") or 0) for e in auto.values())
    usable = max(usable, 0)
    return {
        n: min(int(e.get("streamable") or 0), usable * int(e.get("streamable") or 0) // total) if total else 0
        for n, e in auto.items()
    }


@dataclass(frozen=True)
class BuildOptions:
    """Builder flags (part of the key) and what is not (timing cache, the streaming budget: a
    runtime setting recorded in the sidecar)."""

    workspace_gib: float | None = None
    refittable: bool = False
    weight_streaming: bool = False
    weight_streaming_budget: str | None = None
    timing_cache: Path | None = None

    def flags(self) -> dict[str, Any]:
        return {
            # the graph carries its precision, fp32 islands as Casts: TensorRT keeps every tensor's
            # dtype (the only mode of TensorRT 11; 10.x needs it for reduced precision and weight streaming)
            "strongly_typed": True,
            "tf32": False,
            "workspace_bytes": None if self.workspace_gib is None else int(self.workspace_gib * (1 << 30)),
            "refittable": self.refittable,
            "weight_streaming": self.weight_streaming,
        }


@dataclass(frozen=True)
class BuildSpec:
    """One component's engine: its ONNX, its profile and the builder flags."""

    family: str
    record: ComponentRecord
    onnx: Path
    dims: dict[str, Dim]  # the profile's dims: the exported ones, or narrowed with --dim
    options: BuildOptions
    content: str  # digest of the graph, its weights and the sources they came from
    root: Path

    @property
    def component(self) -> str:
        return self.record.name

    @property
    def precision(self) -> str:
        return self.record.precision

    @property
    def flags(self) -> dict[str, Any]:
        return self.options.flags()

    def shapes(self) -> dict[str, dict[str, list[int]]]:
        """Every input's min / opt / max shape."""
        lo, opt, hi = (input_shapes(self.record, w, self.dims) for w in ("min", "opt", "max"))
        return {n: {"min": list(lo[n]), "opt": list(opt[n]), "max": list(hi[n])} for n in lo}

    def keyed(self) -> dict[str, Any]:
        """The key's ingredients that are the spec's own (the sidecar records them as they are)."""
        return {
            "format": ENGINE_FORMAT,
            "family": self.family,
            "component": self.component,
            "content": self.content,
            "precision": self.precision,
            "profile": self.shapes(),
            "flags": self.flags,
        }

    def key(self, target: Target) -> str:
        return engine_key(self.keyed(), target)

    def trtexec(self, engine_path: str | Path) -> list[str]:
        o = self.options
        return trtexec_command(
            self.record,
            str(self.onnx),
            str(engine_path),
            dims=self.dims,
            workspace_gib=o.workspace_gib,
            timing_cache=str(o.timing_cache) if o.timing_cache else None,
            refittable=o.refittable,
            weight_streaming=o.weight_streaming,
            weight_streaming_budget=o.weight_streaming_budget,
        )

    def profile(self) -> Any:
        from exporters.profiles import shape_profile

        return shape_profile(self.record, self.dims)


KEYED = ("format", "family", "component", "content", "precision", "profile", "flags")


def engine_key(keyed: Mapping[str, Any], target: Target) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of the ``KEYED`` fields and the
    target's TensorRT version and compute capability: the same in every process, whatever
    ``PYTHONHASHSEED``."""
    ingredients = {
        **{k: keyed[k] for k in KEYED},
        "tensorrt": target.tensorrt,
        "compute_capability": target.compute_capability,
    }
    text = json.dumps(ingredients, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def content_digest(manifest: Manifest, record: ComponentRecord) -> str:
    """The component's graph (its recorded sha256), every external-data file (content hash over
    all its bytes, remembered by file identity) and the export's sources (role, content hash,
    LoRA scale): another LoRA or scale is another digest even where the weights files are the same."""
    from zoo.infra.checkpoint import content_hash

    data = {
        rel: content_hash(inside(manifest.root, rel, f"component {record.name!r} external data"))
        for rel in sorted(record.external_data)
    }
    sources = [[s.get("role"), s.get("hash"), s.get("scale")] for s in manifest.sources]
    text = json.dumps({"graph": record.sha256, "data": data, "sources": sources}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def structure_digest(path: Path) -> str:
    """sha256 of a graph without its initializers' values (names, dtypes and shapes kept): two
    exports with the same digest differ only in weights, so an engine of one refits to the other."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        dims, dtype, name = list(t.dims), t.data_type, t.name
        t.Clear()
        t.name, t.data_type = name, dtype
        t.dims.extend(dims)
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def parse_dims(items: tuple[str, ...]) -> dict[str, Range]:
    """``--dim NAME=MIN:OPT:MAX`` (or ``NAME=N``) options."""
    out: dict[str, Range] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise EnvelopeError(f"--dim {item!r}: expected NAME=MIN:OPT:MAX or NAME=N")
        if name.strip() in out:
            raise EnvelopeError(f"--dim {name.strip()} is given twice")
        out[name.strip()] = Range.parse(value, what=f"--dim {item}")
    return out


def build_specs(
    manifest: Manifest,
    components: tuple[str, ...] = (),
    precision: str | None = None,
    dims: Mapping[str, Range] | None = None,
    options: BuildOptions = BuildOptions(),
) -> list[BuildSpec]:
    """The engines ``zoo build`` makes, every choice checked against the export before anything
    is built: the components (all, or those named), the precision (``fp32`` / ``fp16`` / ``bf16``:
    the graph carries its precision, so an export in another precision is refused, or with no
    component named, only the components in that precision are built), and ``dims`` narrowed
    inside the exported profile."""
    for c in components:
        manifest.component(c)
    repeated = sorted({c for c in components if components.count(c) > 1})
    if repeated:
        raise InputError(
            f"--component {repeated[0]} is given {components.count(repeated[0])} times; name each component once"
        )
    names = list(components or manifest.components)
    if precision is not None:
        want = PRECISION_NAMES[precision]
        other = {n: manifest.components[n].precision for n in names if manifest.components[n].precision != want}
        if components and other:
            listed = ", ".join(f"{n} is {p}" for n, p in other.items())
            raise ArtifactError(
                f"--precision {precision}: the export has no {want} graph of {listed}; the graph carries "
                f"its precision: re-export with `zoo export ... --precision {precision}`"
            )
        names = [n for n in names if n not in other]
        if not names:
            have = sorted({r.precision for r in manifest.components.values()})
            raise ArtifactError(
                f"--precision {precision}: no component of {manifest.root} is exported in {want} "
                f"(it has {', '.join(have)}); re-export with `zoo export ... --precision {precision}`"
            )
    dims = dict(dims or {})
    unused = [d for d in dims if not any(d in manifest.components[n].dims for n in names)]
    if unused:
        have = sorted(
            {d for n in names for d, v in manifest.components[n].dims.items() if not v.is_derived and v.is_dynamic}
        )
        raise EnvelopeError(
            f"--dim {unused[0]}: no component being built has a dim {unused[0]!r}; "
            f"their dynamic dims are {', '.join(have) or 'none'}"
        )
    specs = []
    for name in names:
        record = manifest.components[name]
        mine = {d: r for d, r in dims.items() if d in record.dims}
        specs.append(
            BuildSpec(
                manifest.family,
                record,
                manifest.root / record.file,
                narrow_dims(record, mine),
                options,
                "",
                manifest.root,
            )
        )
    return specs


def with_content(spec: BuildSpec, manifest: Manifest) -> BuildSpec:
    """``spec`` with its content digest (reads the export's files: done after the cheap checks)."""
    return replace(spec, content=content_digest(manifest, spec.record))


# --------------------------------------------------------------------------------------
# The sidecar and cache entries
# --------------------------------------------------------------------------------------


@dataclass
class Entry:
    """A cache entry whose sidecar was read and checked."""

    folder: Path
    sidecar: dict[str, Any]

    @property
    def key(self) -> str:
        return self.folder.name

    @property
    def plan(self) -> Path:
        return self.folder / PLAN

    @property
    def component(self) -> str:
        component: str = self.sidecar["component"]
        return component

    @property
    def target(self) -> Target:
        return Target.from_json(self.sidecar["target"])

    @property
    def dims(self) -> dict[str, Dim]:
        return {k: Dim.from_json(k, v) for k, v in self.sidecar["dims"].items()}

    @property
    def volume(self) -> int:
        """How much the profile covers (to prefer the widest of several engines)."""
        v = 1
        for d in self.dims.values():
            if not d.is_derived:
                v *= d.max - d.min + 1
        return v

    def read_plan(self) -> Path:
        """The plan's path, after checking the file against the sidecar's size and sha256 (an
        error says how to rebuild it). The file is hashed by streaming, once per file identity
        (:func:`zoo.infra.hashing.file_sha256`, remembered by (device, inode, size, mtime, ctime), never
        the whole plan in memory), and TensorRT then deserializes it from the file (:func:`deserialize`)."""
        try:
            return check_plan(self)
        except ArtifactError as e:
            raise ArtifactError(
                f"{e}: rebuild it with `zoo build {self.folder.parent.parent} --component {self.component}`"
            ) from None


_SIDECAR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "key": str,
    "family": str,
    "component": str,
    "content": str,
    "structure": str,
    "precision": str,
    "profile": dict,
    "dims": dict,
    "flags": dict,
    "target": dict,
    "plan": dict,
    "build": dict,
}


def read_sidecar(folder: Path) -> dict[str, Any]:
    """``folder/engine.json``, checked field by field; :class:`ArtifactError` naming the problem."""
    path = folder / SIDECAR
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (an interrupted copy, or not an engine folder)")
    d = read_json(path)
    if not isinstance(d, dict):
        raise ArtifactError(f"{path} is {type(d).__name__}, expected an object")
    for name, kind in _SIDECAR_FIELDS.items():
        if not isinstance(d.get(name), kind) or isinstance(d.get(name), bool):
            raise ArtifactError(
                f"{path}: field {name!r} is {d.get(name, 'missing')!r:.60}, expected {getattr(kind, '__name__', kind)}"
            )
    if d["format"] != ENGINE_FORMAT:
        raise ArtifactError(f"{path} has engine format {d['format']}, this zoo reads {ENGINE_FORMAT}: rebuild")
    target, plan = d["target"], d["plan"]
    if not all(isinstance(target.get(k), str) for k in ("tensorrt", "compute_capability", "gpu")):
        raise ArtifactError(f"{path}: field 'target' is {target!r:.80}, expected tensorrt, compute_capability and gpu")
    if not isinstance(plan.get("size"), int) or not isinstance(plan.get("sha256"), str):
        raise ArtifactError(f"{path}: field 'plan' is {plan!r:.80}, expected size and sha256")
    try:
        for k, v in d["dims"].items():
            Dim.from_json(k, v)
    except (KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{path}: field 'dims' is malformed ({e})") from None
    if d["key"] != folder.name:
        raise ArtifactError(f"{path} names key {d['key']}, but lies in folder {folder.name}: a moved or edited entry")
    if engine_key(d, Target.from_json(d["target"])) != d["key"]:
        raise ArtifactError(f"{path}: its recorded ingredients do not hash to its key: an edited sidecar")
    return d


def check_target(entry: Entry, target: Target) -> None:
    """Refuse, before deserializing, a plan built for another TensorRT version or GPU."""
    built = entry.target
    if not target.runs(built):
        raise EngineTargetError(
            f"the engine {entry.folder} (component {entry.component!r}) was built for {built.describe()}; this machine "
            f"has {target.describe()}, and a plan runs only where it was built: rebuild it here with "
            f"`zoo build {entry.folder.parent.parent} --component {entry.component}`"
        )


def check_plan(entry: Entry) -> Path:
    """The plan's path if the file is whole (size and sha256 as the sidecar says);
    :class:`ArtifactError` if it is missing, empty, truncated or corrupted."""
    path, want = entry.plan, entry.sidecar["plan"]
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    size = path.stat().st_size
    if size != want["size"]:
        what = "empty" if not size else f"truncated ({size} bytes)" if size < want["size"] else f"{size} bytes"
        raise ArtifactError(f"{path} is {what}, its sidecar says {want['size']} bytes")
    if file_sha256(path) != want["sha256"]:
        raise ArtifactError(f"{path} does not match the sha256 in its sidecar: corrupted")
    return path


def check_entry(folder: Path, target: Target | None = None, *, plan: bool = True) -> Entry:
    """A cache entry whose sidecar is whole, built for ``target`` (when given) and whose plan
    matches its sidecar (when ``plan``)."""
    entry = Entry(folder, read_sidecar(folder))
    if target is not None:
        check_target(entry, target)
    if plan:
        check_plan(entry)
    return entry


def sidecar_for(
    spec: BuildSpec,
    target: Target,
    key: str,
    plan: Path,
    built: BuildResult,
    seconds: float,
    structure: str,
    refit_from: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    import platform

    import zoo

    return {
        **spec.keyed(),
        "key": key,
        "structure": structure,
        "dims": {k: d.to_json() for k, d in spec.dims.items()},
        "target": target.to_json(),
        "plan": {"size": plan.stat().st_size, "sha256": file_sha256(plan)},
        "build": {
            "seconds": round(seconds, 3),
            "device_memory_bytes": built.device_memory,
            "streamable_weights_bytes": built.streamable_weights,
            "timing_cache": str(spec.options.timing_cache) if spec.options.timing_cache else None,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "zoo": zoo.__version__,
            "onnx": spec.record.file,
        },
        "weight_streaming_budget": spec.options.weight_streaming_budget,
        "refit_from": dict(refit_from) if refit_from else None,
        "trtexec": shlex.join(spec.trtexec(Path(ENGINES_DIR) / key / PLAN)),
    }


# --------------------------------------------------------------------------------------
# The cache: look up, build under a lock, publish atomically
# --------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    """What a builder reports beside the plan file it wrote."""

    device_memory: int | None = None
    streamable_weights: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[BuildSpec, Path], BuildResult]  # writes the plan at the path it is given


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (two builders of one key: the second waits, then finds
    it built). ``filelock`` picks flock on POSIX and msvcrt.locking on Windows when it is taken,
    so importing this module works on every platform TensorRT runs on (a dry run included)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def engines_dir(root: Path) -> Path:
    return root / ENGINES_DIR


def get_or_build(
    spec: BuildSpec,
    target: Target,
    builder: Builder,
    *,
    rebuild: bool = False,
    refit_from: Mapping[str, Any] | None = None,
    structure: str | None = None,
) -> tuple[Entry, bool]:
    """The entry of ``spec`` for ``target``: the cached one when whole, else built by ``builder``
    (an entry that is empty, truncated, corrupted or has a bad sidecar is rebuilt, never used).
    Returns the entry and whether it was built. The plan is written in a staging folder and the
    entry swapped in whole; a lock file makes a second builder of the same key wait for the first."""
    if not spec.content:
        raise ValueError("a build spec needs its content digest (with_content) before it is keyed")
    key = spec.key(target)
    folder = engines_dir(spec.root) / key
    with _locked(engines_dir(spec.root) / f".{key}.lock"):
        if folder.exists() and not rebuild:
            try:
                entry = check_entry(folder, target)
                budget = spec.options.weight_streaming_budget
                check_budget(budget, entry.sidecar["build"].get("streamable_weights_bytes"))
                if spec.options.weight_streaming and budget and entry.sidecar.get("weight_streaming_budget") != budget:
                    entry.sidecar["weight_streaming_budget"] = budget  # a runtime setting: not part of the key
                    atomic_write_json(folder / SIDECAR, entry.sidecar)
                return entry, False
            except ArtifactError as e:
                log.warning("%s; rebuilding it", e)
        structure = structure or structure_digest(spec.onnx)
        with staged_dir(folder) as stage:
            start = time.perf_counter()
            built = builder(spec, stage / PLAN)
            seconds = time.perf_counter() - start
            plan = stage / PLAN
            if not plan.is_file() or plan.stat().st_size == 0:
                raise ExportError(f"the TensorRT builder wrote no plan for component {spec.component!r}")
            check_budget(spec.options.weight_streaming_budget, built.streamable_weights)
            sidecar = sidecar_for(spec, target, key, plan, built, seconds, structure, refit_from)
            atomic_write_json(stage / SIDECAR, sidecar)
        return Entry(folder, sidecar), True


def scan(root: Path) -> tuple[list[Entry], list[str]]:
    """Every entry under ``root/engines`` whose sidecar reads (plans not yet hashed), and the
    problems of those whose sidecar does not."""
    entries: list[Entry] = []
    problems: list[str] = []
    folder = engines_dir(root)
    if not folder.is_dir():
        return entries, problems
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            entries.append(Entry(sub, read_sidecar(sub)))
        except ArtifactError as e:
            problems.append(str(e))
    return entries, problems


def find_engine(manifest: Manifest, record: ComponentRecord, target: Target) -> Entry:
    """The engine of ``record`` in this export for ``target`` (the widest profile where several were
    built); its plan is checked when it is read (:meth:`Entry.read_plan`). Errors say what was found instead: nothing, entries that do not
    read, engines of another export of the component, or of another TensorRT / GPU."""
    entries, problems = scan(manifest.root)
    build = f"`zoo build {manifest.root} --component {record.name}`"
    mine = [e for e in entries if e.sidecar["family"] == manifest.family and e.component == record.name]
    if not mine:
        unreadable = f" ({len(problems)} unreadable: {problems[0]})" if problems else ""
        raise ArtifactError(
            f"no TensorRT engine for component {record.name!r} under {engines_dir(manifest.root)}"
            f"{unreadable}: build it with {build}"
        )
    content = content_digest(manifest, record)
    current = [e for e in mine if e.sidecar["content"] == content]
    if not current:
        raise ArtifactError(
            f"the engines of component {record.name!r} under {engines_dir(manifest.root)} were built "
            f"from another export of it (its graph, weights or sources changed since): rebuild with {build}"
        )
    here = [e for e in current if target.runs(e.target)]
    if not here:
        check_target(current[0], target)
    return _widest(here)


def _widest(entries: list[Entry]) -> Entry:
    """The engine whose profile covers most (the newest of equals)."""
    return max(entries, key=lambda e: (e.volume, e.sidecar["build"].get("built_at", "")))


# --------------------------------------------------------------------------------------
# Refit: new weights into an engine of the same graph
# --------------------------------------------------------------------------------------


def check_refit_source(manifest: Manifest, other: Manifest, names: list[str]) -> dict[str, str]:
    """Refuse ``--refit-from`` an export of another model: another family, a component it lacks,
    or a graph that differs beyond its weights. Returns each component's structure digest."""
    if other.family != manifest.family:
        raise ArtifactError(
            f"--refit-from {other.root}: it is a {other.family} export, {manifest.root} is {manifest.family}; "
            f"refit takes the weights of another export of the same model"
        )
    digests = {}
    for name in names:
        if name not in other.components:
            raise ArtifactError(
                f"--refit-from {other.root}: it has no component {name!r} (it has {', '.join(other.components)})"
            )
        mine = structure_digest(manifest.root / manifest.components[name].file)
        theirs = structure_digest(other.root / other.components[name].file)
        if mine != theirs:
            raise ArtifactError(
                f"--refit-from {other.root}: component {name!r} is another graph there (layers, shapes or "
                f"operators differ, not only weights): an export of another model or configuration "
                f"cannot be refitted; build it with `zoo build {manifest.root}`"
            )
        digests[name] = mine
    return digests


def refit_entry(
    spec: BuildSpec,
    other: Manifest,
    target: Target,
    refitter: Callable[[Path, Path, Path], BuildResult],
    structure: str,
) -> tuple[Entry, bool]:
    """The engine of ``spec``'s component, refitted with ``spec``'s weights from a refittable engine
    of the same graph in ``other`` (its profile and flags are kept). Returns the entry and whether
    it was made now (False: it was already cached)."""
    candidates = [
        e
        for e in scan(other.root)[0]
        if e.component == spec.component
        and e.sidecar["structure"] == structure
        and e.sidecar["flags"].get("refittable")
    ]
    here = [e for e in candidates if target.runs(e.target)]
    if not here:
        if candidates:
            check_target(candidates[0], target)
        raise ArtifactError(
            f"--refit-from {other.root}: no refittable engine of component {spec.component!r} there; "
            f"build one with `zoo build {other.root} --component {spec.component} --refittable`"
        )
    source = _widest(here)
    dims = source.dims
    for name, dim in spec.record.dims.items():
        d = dims.get(name)
        if d is None or d.min < dim.min or d.max > dim.max:
            raise EnvelopeError(
                f"--refit-from {other.root}: its engine of {spec.component!r} has the profile "
                f"{name} [{d.min if d else '?'}, {d.max if d else '?'}], outside this export's "
                f"[{dim.min}, {dim.max}]; build with `zoo build {spec.root}`"
            )
    flags = source.sidecar["flags"]
    options = replace(
        spec.options,
        refittable=True,
        weight_streaming=bool(flags.get("weight_streaming")),
        weight_streaming_budget=source.sidecar.get("weight_streaming_budget"),
        workspace_gib=None if flags.get("workspace_bytes") is None else flags["workspace_bytes"] / (1 << 30),
    )
    spec = replace(spec, dims=dims, options=options)
    plan = source.read_plan()
    origin = {"export": str(other.root.resolve()), "key": source.key}

    def refit(spec: BuildSpec, path: Path) -> BuildResult:
        return refitter(plan, spec.onnx, path)

    return get_or_build(spec, target, refit, refit_from=origin, structure=structure)


# --------------------------------------------------------------------------------------
# The part only TensorRT runs
# --------------------------------------------------------------------------------------


def _progress_monitor(desc: str) -> Any:
    """A ``trt.IProgressMonitor`` drawing one progress bar per build phase."""
    import tensorrt as trt
    from tqdm.auto import tqdm

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc]  # tensorrt has no type information: its classes are Any
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.bars[phase_name] = tqdm(
                total=num_steps, desc=f"{desc}: {phase_name}", leave=False, position=len(self.bars)
            )

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.n = step + 1
                bar.refresh()
            return True  # keep building

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def _write_plan(serialized: Any, path: Path) -> None:
    with open(path, "wb") as f:
        f.write(memoryview(serialized))


def _engine_facts(engine: Any) -> BuildResult:
    memory = getattr(engine, "device_memory_size_v2", None)
    if memory is None:
        memory = engine.device_memory_size
    return BuildResult(
        device_memory=int(memory), streamable_weights=int(getattr(engine, "streamable_weights_size", 0) or 0)
    )


def build_plan(spec: BuildSpec, path: Path, device: Any = "cuda") -> BuildResult:
    """Build ``spec``'s engine with Polygraphy's loaders and write its plan to ``path``: one
    optimization profile, strongly typed (the graph carries its precision), TF32 off, the
    workspace limit, refit and weight-streaming flags, the timing cache loaded and saved."""
    import tensorrt as trt
    import torch
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.exception import PolygraphyException

    o = spec.options
    pools = None if o.workspace_gib is None else {trt.MemoryPoolType.WORKSPACE: int(o.workspace_gib * (1 << 30))}
    cache = str(o.timing_cache) if o.timing_cache else None
    config = CreateConfig(
        profiles=[spec.profile()],
        tf32=False,
        refittable=o.refittable or None,
        weight_streaming=o.weight_streaming or None,
        memory_pool_limits=pools,
        load_timing_cache=cache if cache and Path(cache).is_file() else None,
        progress_monitor=_progress_monitor(f"build {spec.component}"),
    )
    network = NetworkFromOnnxPath(str(spec.onnx), strongly_typed=spec.flags["strongly_typed"])
    try:
        with torch.cuda.device(torch.device(device)):
            serialized = EngineBytesFromNetwork(network, config, save_timing_cache=cache)()
    except PolygraphyException as e:
        raise ExportError(
            f"TensorRT could not build component {spec.component!r} from {spec.onnx}: {str(e).strip().splitlines()[-1]}"
        ) from None
    _write_plan(serialized, path)  # the plan is on disk before anything else holds a copy of it
    del serialized
    with torch.cuda.device(torch.device(device)):
        return _engine_facts(deserialize(path))


READ_CHUNK = 256 << 20  # bytes a stream reader hands TensorRT at once: the most of a plan in host memory


def plan_reader(trt: Any, path: Path) -> Any | None:
    """A TensorRT stream reader over the plan file, or None where this TensorRT has none.
    ``IStreamReaderV2`` (11.x, later 10.x): ``read(num_bytes, stream)`` may return fewer bytes
    than asked, so the plan goes over in chunks of :data:`READ_CHUNK`; ``seek(offset, where)``
    with a ``SeekPosition``. ``IStreamReader`` (10.0+): ``read(size)`` returns what is asked."""
    base: Any = getattr(trt, "IStreamReaderV2", None) or getattr(trt, "IStreamReader", None)
    if base is None:
        return None
    v2 = base is getattr(trt, "IStreamReaderV2", None)

    class PlanReader(base):  # type: ignore[misc]  # tensorrt has no type information: its classes are Any
        def __init__(self) -> None:
            base.__init__(self)  # pybind11 trampolines need the base initialised explicitly
            self.file = open(path, "rb")

        def read(self, size: int, stream: int = 0) -> bytes:
            return self.file.read(min(size, READ_CHUNK) if v2 else size)

        def seek(self, offset: int, where: Any) -> bool:
            whence = {"SET": 0, "CUR": 1, "END": 2}.get(getattr(where, "name", ""), int(getattr(where, "value", 0)))
            self.file.seek(offset, whence)
            return True

        def close(self) -> None:
            self.file.close()

    return PlanReader()


def deserialize(plan: Path | bytes) -> Any:
    """A ``trt.ICudaEngine`` from a plan file, streamed into TensorRT where it has a stream reader
    (:func:`plan_reader`), so a 28 GB plan is never whole in host memory; from its bytes otherwise.
    TensorRT's plugin library is registered first, as Polygraphy's builder registers it.
    :class:`ArtifactError` if TensorRT refuses the plan."""
    import tensorrt as trt
    from polygraphy.backend.trt import get_trt_logger

    trt.init_libnvinfer_plugins(get_trt_logger(), "")
    runtime = trt.Runtime(get_trt_logger())
    reader = plan_reader(trt, plan) if isinstance(plan, Path) else None
    if reader is not None:
        try:
            engine = runtime.deserialize_cuda_engine(reader)
        finally:
            reader.close()
    else:
        engine = runtime.deserialize_cuda_engine(plan.read_bytes() if isinstance(plan, Path) else plan)
    if engine is None:
        raise ArtifactError("TensorRT could not deserialize the plan (see its log above); rebuild it with `zoo build`")
    return engine


def refit_plan(plan: Path, onnx: Path, path: Path, device: Any = "cuda") -> BuildResult:
    """Deserialize a refittable ``plan``, refit every weight from ``onnx`` (TensorRT's ONNX parser
    refitter) and write the refitted plan to ``path``."""
    import tensorrt as trt
    import torch
    from polygraphy.backend.trt import get_trt_logger

    logger = get_trt_logger()
    with torch.cuda.device(torch.device(device)):
        engine = deserialize(plan)
        refitter = trt.Refitter(engine, logger)
        parser = trt.OnnxParserRefitter(refitter, logger)
        if not parser.refit_from_file(str(onnx)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ArtifactError(f"TensorRT could not refit from {onnx}: {errors or 'no error given'}")
        missing = refitter.get_missing_weights()
        if missing:
            raise ArtifactError(
                f"TensorRT refit from {onnx} left {len(missing)} weights unset: {', '.join(missing[:5])}"
            )
        if not refitter.refit_cuda_engine():
            raise ArtifactError(f"TensorRT could not refit the engine with the weights of {onnx}")
    facts = _engine_facts(engine)
    _write_plan(engine.serialize(), path)
    return facts

"""Reduced-precision graphs: a component's wrapper computing in fp16 / bf16 with its fp32 islands.

A component declares its precision policy as data (:class:`zoo.contract.Precision`, like
diffusers' ``_keep_in_fp32_modules``): the ``keep_fp32`` patterns name what must stay fp32.
:func:`apply_precision` turns a wrapper into one that computes in a reduced dtype with exactly
those islands, by casts only (it works on modules whose weights are on the ``meta`` device and
is traced by ``torch.onnx.export(..., dynamo=True)``), so that the exported graph already holds
every dtype: a strongly typed TensorRT build of it is the graph parity checked.

Pattern semantics (:func:`pattern_matches`). A pattern matches a dotted module, parameter or
buffer path of the wrapper (``model.transformer_blocks.0.norm1``) when it occurs in the path
between *name boundaries*: before it, the start of the path, ``.`` or ``_``; after it,
optional digits and then the end of the path, ``.`` or ``_``. So ``norm`` matches ``norm``,
``norm1``, ``norm_out``, ``norm_q``, ``conv_norm_out`` and ``final_layer_norm``, not
``normalize`` or ``denorm``; ``layer_norm`` matches ``layer_norm1`` and ``final_layer_norm``;
``DenseReluDense.wo`` matches ``encoder.block.3.layer.1.DenseReluDense.wo``; a bare name
(``scale_shift_table``, ``q_t``) matches that parameter or buffer wherever it sits. ``*`` alone
keeps the whole component fp32. A pattern that matches nothing is an error (a typo would
silently drop an island).

What a reduced-precision module computes (``dtype`` = fp16 or bf16):

1. graph boundary: floating inputs are cast to ``dtype`` on entry, floating outputs to float32
   on exit (the contract's tensors are float32); integer inputs are untouched. Per-sample
   scalars (floating inputs of rank <= 1: the timesteps) stay fp32: rounded to bf16 a timestep
   moves (999 -> 1000) and its sinusoidal embedding with it, which in the tiny denoisers is
   nearly all of their bf16 error, and would undo a fp32 timestep-embedding island;
2. every parameter and buffer is cast to ``dtype``, except those of islands;
3. islands: a matched module and everything inside it keep fp32 parameters and buffers; each
   island module casts its floating inputs to fp32 and returns its floating outputs in the dtype
   they came in: ``dtype`` from code computing in ``dtype``; fp32 where the surrounding code
   upcast on purpose, as transformers' T5 does before ``wo`` (the fp16 overflow the policy is
   there for) and a diffusers model before its fp32 norms; ``dtype`` when they came in mixed or there
   were none. Per-sample scalars count as ``dtype`` here (a timestep embedding hands its output
   to the network in ``dtype``). A matched bare parameter or buffer stays fp32, so the ops that
   read it compute in fp32 by type promotion;
4. guards: every leaf module outside the islands that owns ``dtype`` parameters (Linear, Conv,
   norms outside the policy) casts its floating inputs to ``dtype``, so an fp32 value coming out
   of an island never reaches a reduced-precision layer as fp32 (a dtype error in torch, a
   mixed-type layer in a strongly typed engine).

Casts are only added where a dtype differs, so an island fed in fp32 adds no node.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo.contract import DTYPES, Precision
from zoo.errors import ExportError

# `zoo export --precision` spelling -> the dtype name manifests and tolerance rows use
PRECISIONS: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
FLOAT_DTYPES = tuple(PRECISIONS.values())
WHOLE = "*"  # keep_fp32=("*",): the whole component stays fp32


def parse_precision(text: str) -> str:
    """``fp32`` / ``fp16`` / ``bf16`` (or the dtype names themselves) -> the dtype name;
    :class:`ExportError` names the choices otherwise."""
    key = str(text).strip().lower()
    if key in PRECISIONS:
        return PRECISIONS[key]
    if key in FLOAT_DTYPES:
        return key
    raise ExportError(f"--precision {text!r}: expected one of {', '.join(PRECISIONS)}")


def precision_of(policy: Precision, dtype: str | None = None) -> str:
    """The dtype a component's graph computes in when ``dtype`` is asked for (default: the
    policy's own): float32 for a component the policy keeps fp32 whole (``*``), whatever was
    asked. This is what the manifest's ``ComponentRecord.precision`` must hold: parity picks its
    tolerance row from it."""
    dtype = parse_precision(dtype or policy.dtype)
    return "float32" if WHOLE in policy.keep_fp32 else dtype


# --------------------------------------------------------------------------------------
# Which tensors stay fp32
# --------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(r"(?:^|[._])" + re.escape(pattern) + r"\d*(?=$|[._])")


def pattern_matches(pattern: str, path: str) -> bool:
    """Whether ``pattern`` names the module / parameter / buffer at dotted ``path`` (see the
    module docstring: the pattern between name boundaries, optional digits after it)."""
    return bool(path) and _pattern_regex(pattern).search(path) is not None


@dataclass(frozen=True)
class PrecisionPlan:
    """What :func:`apply_precision` does to a wrapper: its compute dtype, the island modules
    (outermost matches, by path), the bare fp32 parameters / buffers outside them, and what each
    pattern matched."""

    dtype: str
    islands: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()  # parameter / buffer paths kept fp32 outside the island modules
    matches: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        """The whole component stays fp32 (float32 asked, or the policy says ``*``)."""
        return self.dtype == "float32"


def plan_precision(wrapper: torch.nn.Module, policy: Precision, dtype: str, *, component: str = "") -> PrecisionPlan:
    """Resolve ``policy.keep_fp32`` against ``wrapper``'s names; :class:`ExportError` names a
    pattern that matches nothing (and the names it might have meant)."""
    dtype = precision_of(policy, dtype)
    if dtype == "float32":
        return PrecisionPlan("float32")
    patterns = tuple(policy.keep_fp32)
    regexes = {p: _pattern_regex(p) for p in patterns}
    modules = list(wrapper.named_modules(remove_duplicate=False))
    tensors = [*wrapper.named_parameters(remove_duplicate=False), *wrapper.named_buffers(remove_duplicate=False)]

    def outermost(paths: list[str]) -> tuple[str, ...]:
        return tuple(n for n in paths if not any(n.startswith(q + ".") for q in paths))

    matched = [n for n, _ in modules if n and any(r.search(n) for r in regexes.values())]
    islands = outermost(matched)
    inside = {id(t) for n in islands for t in _all_tensors(wrapper.get_submodule(n))}
    kept = tuple(
        n
        for n, t in tensors
        if id(t) not in inside and t.is_floating_point() and any(r.search(n) for r in regexes.values())
    )
    matches = {
        p: outermost([n for n in matched if r.search(n)]) + tuple(n for n in kept if r.search(n))
        for p, r in regexes.items()
    }
    missing = [p for p in patterns if not matches[p]]
    if missing:
        names = sorted(
            {part for n, _ in modules for part in n.split(".") if part and not part.isdigit()}
            | {n.rsplit(".", 1)[-1] for n, _ in tensors}
        )
        owner = f"component {component!r}" if component else type(wrapper).__name__
        hints = "; ".join(
            f"{p!r} (close names: {', '.join(difflib.get_close_matches(p.rsplit('.', 1)[-1], names, n=4, cutoff=0.5)) or 'none'})"
            for p in missing
        )
        raise ExportError(
            f"precision policy of {owner}: keep_fp32 pattern(s) {hints} match no module, parameter or buffer of "
            f"{type(wrapper).__name__}; an island that matches nothing would silently run in {dtype}"
        )
    return PrecisionPlan(dtype, islands, kept, matches)


def _all_tensors(module: torch.nn.Module) -> Iterable[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


# --------------------------------------------------------------------------------------
# Casting the module
# --------------------------------------------------------------------------------------


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor in nested tuples / lists / dicts / model outputs."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map_tensors(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    if isinstance(obj, Mapping):
        items = {k: _map_tensors(v, fn) for k, v in obj.items()}
        if dataclasses.is_dataclass(obj):  # transformers' ModelOutput, diffusers' BaseOutput
            return type(obj)(**items)
        mapping_type: Any = type(obj)  # a Mapping subclass: its constructor is not Mapping's
        return mapping_type(items) if mapping_type is not dict else items
    return obj


def _cast_floats(obj: Any, dtype: torch.dtype, *, scalars: bool = True) -> Any:
    """Floating tensors in ``obj`` cast to ``dtype`` (per-sample scalars too unless ``scalars`` is False)."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point() or t.dtype == dtype or (not scalars and _is_scalar(t)):
            return t
        return t.to(dtype)

    return _map_tensors(obj, cast)


def _is_scalar(t: torch.Tensor) -> bool:
    """A per-sample scalar (rank <= 1, like a timestep ``(B,)``)."""
    return t.dim() <= 1


def _float_dtypes(obj: Any, compute: torch.dtype) -> set[torch.dtype]:
    """The dtypes floating tensors of ``obj`` came in, per-sample scalars counted as ``compute``."""
    found: set[torch.dtype] = set()

    def visit(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            found.add(compute if _is_scalar(t) else t.dtype)
        return t

    _map_tensors(obj, visit)
    return found


def _add_boundary(module: torch.nn.Module, compute: torch.dtype) -> None:
    """Graph boundary: floating inputs to ``compute`` (per-sample scalars stay fp32), floating
    outputs to float32."""

    def enter(mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        return _cast_floats(args, compute, scalars=False), _cast_floats(kwargs, compute, scalars=False)

    def leave(mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        return _cast_floats(output, torch.float32)

    module.register_forward_pre_hook(enter, with_kwargs=True)
    module.register_forward_hook(leave, with_kwargs=True)


def _add_island(module: torch.nn.Module, compute: torch.dtype) -> None:
    """fp32 inside; outputs handed back in the dtype the floating inputs came in."""
    came_in: list[torch.dtype] = []  # a stack: an island module may be re-entered

    def enter(mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        dtypes = _float_dtypes((args, kwargs), compute)
        came_in.append(dtypes.pop() if len(dtypes) == 1 else compute)
        return _cast_floats(args, torch.float32), _cast_floats(kwargs, torch.float32)

    def leave(mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        return _cast_floats(output, came_in.pop() if came_in else compute)

    module.register_forward_pre_hook(enter, with_kwargs=True)
    module.register_forward_hook(leave, with_kwargs=True)


def _add_guard(module: torch.nn.Module, compute: torch.dtype) -> None:
    """A reduced-precision layer takes its floating inputs in its own dtype."""

    def enter(mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        return _cast_floats(args, compute), _cast_floats(kwargs, compute)

    module.register_forward_pre_hook(enter, with_kwargs=True)


def apply_precision(wrapper: torch.nn.Module, policy: Precision, dtype: str, *, component: str = "") -> torch.nn.Module:
    """``wrapper`` computing in ``dtype`` (``float16`` / ``bfloat16``, or ``fp16`` / ``bf16``)
    with ``policy``'s fp32 islands, its graph inputs and outputs keeping their dtypes.

    Returns ``wrapper`` itself for float32 (asked, or a policy of ``*``); otherwise a copy that
    shares the fp32 island tensors and holds cast copies of the others (``wrapper`` and the
    modules it holds are left as they were: the fp32 reference stays usable). Parameters may be
    on the ``meta`` device: only casts are done, no value is read. Module, parameter and buffer
    names are those of ``wrapper``. See the module docstring for what is cast where."""
    plan = plan_precision(wrapper, policy, dtype, component=component)
    if plan.whole:
        return wrapper
    compute = DTYPES[plan.dtype]
    keep: set[int] = {id(t) for n in plan.islands for t in _all_tensors(wrapper.get_submodule(n))}
    named = dict(wrapper.named_parameters(remove_duplicate=False)) | dict(wrapper.named_buffers(remove_duplicate=False))
    keep.update(id(named[n]) for n in plan.kept)

    memo: dict[int, Any] = {}
    for t in [*wrapper.parameters(), *wrapper.buffers()]:
        if id(t) in memo:
            continue
        if id(t) in keep or not t.is_floating_point():
            memo[id(t)] = t  # shared with the original: never written
        elif isinstance(t, torch.nn.Parameter):
            memo[id(t)] = torch.nn.Parameter(t.detach().to(compute), requires_grad=False)
        else:
            memo[id(t)] = t.detach().to(compute)
    model = copy.deepcopy(wrapper, memo)

    island_modules = {id(m): m for n in plan.islands for m in model.get_submodule(n).modules()}
    for m in island_modules.values():
        _add_island(m, compute)
    hooked = set(island_modules)
    for m in model.modules():
        if id(m) in hooked or m is model:
            continue
        hooked.add(id(m))
        owns_reduced = any(p is not None and p.dtype == compute for p in m._parameters.values())
        if owns_reduced and not any(True for _ in m.children()):
            _add_guard(m, compute)
    _add_boundary(model, compute)
    # what was done, for logs and the manifest (torch types Module.__setattr__'s value as Tensor | Module,
    # though any attribute may be set)
    model.zoo_precision = plan  # type: ignore[assignment]
    return model


# --------------------------------------------------------------------------------------
# What an exported graph computes in
# --------------------------------------------------------------------------------------

# onnx.TensorProto element type names -> the dtype names of the contract
_ONNX_DTYPES = {
    "FLOAT": "float32",
    "FLOAT16": "float16",
    "BFLOAT16": "bfloat16",
    "DOUBLE": "float64",
    "INT64": "int64",
    "INT32": "int32",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}
HEAVY_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum")  # where the FLOPs are
NORM_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization")


@dataclass(frozen=True)
class GraphDtypes:
    """The dtypes of an ONNX graph: its initializers (count and bytes per dtype) and, per dtype,
    how many nodes of each op type compute in it (a node computes in the dtype of its first
    floating input; a Cast is listed under the dtype it casts to, and in ``casts``)."""

    initializers: Mapping[str, int]
    initializer_bytes: Mapping[str, int]
    ops: Mapping[str, Counter[str]]
    casts: Counter[tuple[str | None, str]]  # (from, to) -> count; from is None where it is unknown

    def count(self, op: str | Iterable[str], dtype: str) -> int:
        ops = (op,) if isinstance(op, str) else tuple(op)
        return sum(self.ops.get(dtype, Counter())[o] for o in ops)

    def summary(self, dtype: str) -> str:
        """One line: the heavy and the norm ops in ``dtype`` and in float32."""
        parts = []
        for label, ops in (("MatMul/Gemm/Conv", HEAVY_OPS), ("norms", NORM_OPS)):
            counts = {d: self.count(ops, d) for d in (dtype, "float32") if self.count(ops, d)}
            parts.append(f"{label}: " + (", ".join(f"{n} in {d}" for d, n in counts.items()) or "none"))
        weights = ", ".join(f"{n} {d}" for d, n in sorted(self.initializers.items()))
        return "; ".join(parts) + f"; initializers: {weights or 'none'}"

    def problems(self, dtype: str) -> list[str]:
        """Why this graph does not compute in ``dtype`` (empty when it does)."""
        if dtype == "float32":
            return []
        if not self.count(HEAVY_OPS, dtype):
            return [f"the graph has no MatMul/Gemm/Conv in {dtype}: it does not compute in {dtype}"]
        return []


def graph_dtypes(model: Any) -> GraphDtypes:
    """:class:`GraphDtypes` of an ONNX model (a path, read without its external data, or a
    ``ModelProto``)."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    name = onnx.TensorProto.DataType.Name
    size = {
        "float32": 4,
        "float16": 2,
        "bfloat16": 2,
        "float64": 8,
        "int64": 8,
        "int32": 4,
        "int8": 1,
        "uint8": 1,
        "bool": 1,
    }

    def dtype_of(elem_type: int) -> str:
        n: str = name(elem_type)
        return _ONNX_DTYPES.get(n, n.lower())

    graph = model.graph
    types: dict[str, str] = {}
    inits: Counter[str] = Counter()
    init_bytes: Counter[str] = Counter()
    for t in graph.initializer:
        d = dtype_of(t.data_type)
        types[t.name] = d
        inits[d] += 1
        numel = 1
        for s in t.dims:
            numel *= s
        init_bytes[d] += numel * size.get(d, 0)
    values = list(graph.input) + list(graph.output) + list(graph.value_info)
    if len(graph.value_info) < len(graph.node) // 2:  # sparse types: infer them (no weight is read)
        try:
            values += list(onnx.shape_inference.infer_shapes(model).graph.value_info)
        except Exception:  # inference is best effort here; unknown types are listed as such
            pass
    for v in values:
        if v.type.HasField("tensor_type"):
            types.setdefault(v.name, dtype_of(v.type.tensor_type.elem_type))
    ops: dict[str, Counter[str]] = {}
    casts: Counter[tuple[str | None, str]] = Counter()
    floats = set(FLOAT_DTYPES) | {"float64"}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    types[node.output[0]] = dtype_of(a.t.data_type)
            continue
        ins = [types.get(i) for i in node.input if i]
        if node.op_type == "Cast":
            to = next(dtype_of(a.i) for a in node.attribute if a.name == "to")
            casts[(ins[0] if ins else "unknown", to)] += 1
            dtype = to
        else:
            outs = [types.get(o) for o in node.output]
            dtype = next((d for d in ins if d in floats), None) or next((d for d in outs if d), "unknown")
        ops.setdefault(dtype, Counter())[node.op_type] += 1
    return GraphDtypes(dict(inits), dict(init_bytes), ops, casts)

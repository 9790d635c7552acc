"""torch -> ONNX: one graph per component, dims named from the contract, checked before use.

The exporter reads only the family contract (components, specs, dims, wrapper, patches): it
has no per-family code. An export folder is written in a staging folder and swapped in whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from exporters.artifacts import EXPORT_MARKER, atomic_write_json, staged_dir
from exporters.manifest import MANIFEST, ComponentRecord, Manifest, TensorRecord, inside, looks_like_export
from exporters.quantize import Quantized, QuantizeRequest
from exporters.weights import (
    WEIGHT_MAP,
    WeightlessBuild,
    check_files_unchanged,
    check_linkable,
    check_weights,
    link_checkpoint_files,
    load_weight_map,
    module_prefixes,
)
from zoo.contract import Component, Dim, Envelope, Family, Reference, Source, TensorSpec, check_dims, resolve_point
from zoo.errors import ArtifactError, CheckpointError, ExportError, ZooError
from zoo.infra.checkpoint import content_hash_of, file_hashes, is_lfs_pointer, random_preset
from zoo.infra.hashing import file_sha256

log = logging.getLogger(__name__)

# LayerNormalization needs opset >= 17; 18 is the lowest the dynamo exporter targets natively,
# and every TensorRT this zoo supports documents it (10.0-10.13 document opsets 9-20, JetPack 6's
# 10.3 included). bf16 graphs need 22, the first opset whose Conv (and ~45 other ops) admit
# bfloat16: at 18 or 20 the ONNX checker rejects a bf16 Conv, and a graph that fails the checker is
# not exported. TensorRT documents opset 22 from 10.14 (exporters.tensorrt.PARSER_OPSETS), so a
# bf16 engine needs TensorRT 10.14+ (`zoo build` refuses older ones; fp16 is the route on 10.3).
OPSET = 18
OPSET_BF16 = 22
# Protobuf cannot hold more than 2 GiB: larger graphs keep their weights in model.onnx.data.
EXTERNAL_DATA_THRESHOLD = 1 << 30
REFERENCE_DIR = "reference"  # where a random reference travels inside its export

# Operators the TensorRT 10 ONNX parser imports (onnx-tensorrt docs/operators.md); a graph
# with anything else would fail at `zoo build` on the deployment machine, so fail here.
TENSORRT_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
    Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Hardmax
    Identity If InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
    Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
    ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
    Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
    Trilu Unsqueeze Upsample Where Xor""".split()
)
# Tensor element types TensorRT has no type for (onnx.TensorProto enum names).
TENSORRT_UNSUPPORTED_DTYPES = frozenset({"DOUBLE", "COMPLEX64", "COMPLEX128", "STRING", "UINT16", "UINT32", "UINT64"})


def opset_for(dtype: str) -> int:
    return OPSET_BF16 if dtype == "bfloat16" else OPSET


# --------------------------------------------------------------------------------------
# Shapes for torch.export
# --------------------------------------------------------------------------------------


def example_point(dims: Mapping[str, Dim]) -> dict[str, int]:
    """Example sizes to trace at: opt where possible, never 1 for a dynamic dim (torch.export
    specializes size-1 dims), and distinct across dynamic dims (so none is mistaken for another).
    Derived dims follow from their sources."""
    point: dict[str, int] = {}
    used: set[int] = set()
    for name, d in dims.items():
        if d.is_derived:
            continue
        if d.min == d.max:
            point[name] = d.opt
            continue
        m = d.multiple_of
        candidates = [d.opt + k * m for k in range(0, (d.max - d.min) // m + 1)]
        candidates += [d.opt - k * m for k in range(1, (d.max - d.min) // m + 1)]
        # torch.export specializes a symbol whose example value is 1: with multiple_of m the
        # symbol is size / m, so that must be >= 2 too
        valid = [v for v in candidates if d.min <= v <= d.max and v >= 2 and v % m == 0 and (m == 1 or v // m >= 2)]
        if not valid:
            raise ExportError(f"dim {name} [{d.min}, {d.max}] has no example size >= 2 to trace with")
        fresh = [v for v in valid if v not in used]
        point[name] = (fresh or valid)[0]
        used.add(point[name])
    return resolve_point(dims, point)


def dynamic_shapes(specs: tuple[TensorSpec, ...], dims: Mapping[str, Dim]) -> dict[str, dict[int, Any]]:
    """``torch.export`` dynamic shapes: one symbol per dynamic dim name, bounded by its profile;
    a dim with ``multiple_of`` m becomes ``m * Dim`` so the tracer knows the divisibility."""
    from torch.export import Dim as ExportDim

    symbols: dict[str, Any] = {}
    for name, d in dims.items():
        if d.min == d.max or d.is_derived:
            continue
        if d.multiple_of > 1:
            m = d.multiple_of
            symbols[name] = m * ExportDim(f"{name}_div{m}", min=max(1, d.min // m), max=d.max // m)
        else:
            symbols[name] = ExportDim(name, min=d.min, max=d.max)
    for name, d in dims.items():  # derived dims: expressions of their source's symbol
        if d.is_derived and d.of in symbols:
            symbols[name] = d.scale * symbols[d.of] + d.offset if d.scale != 1 else symbols[d.of] + d.offset
    return {
        s.name: {i: symbols[a] for i, a in enumerate(s.shape) if isinstance(a, str) and a in symbols} for s in specs
    }


def _export_cause(e: BaseException) -> str:
    """The line that says why: torch.onnx wraps the real error in a long 'next steps' text."""
    text = str(e)
    summary = re.search(r"^<class '([\w.]+)'>: (.+)$", text, re.MULTILINE)
    if summary:
        return f"{summary.group(1).rsplit('.', 1)[-1]}: {summary.group(2)}"
    cause = e.__cause__ or e
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporter's chatter (warnings, step logs) hidden; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


# --------------------------------------------------------------------------------------
# One component
# --------------------------------------------------------------------------------------


def export_component(
    ref: Reference,
    component: Component,
    dims: Mapping[str, Dim],
    dest: Path,
    *,
    weightless: bool = False,
    copy_weights: bool = False,
    precision: str | None = None,
    progress: bool = False,
    quantized: Quantized | None = None,
) -> ComponentRecord:
    """Trace ``component``'s wrapper into ``dest/model.onnx`` (+ ``model.onnx.data`` when large),
    name its dims from the contract and check the graph.

    ``precision`` (a dtype name; default the component's policy) is the dtype the graph computes
    in, with the policy's fp32 islands. ``weightless`` traces the module built on the meta
    device and takes every initializer from the checkpoint's safetensors byte ranges (hard links,
    or streamed copies with ``copy_weights``) or computes it one at a time (see
    :mod:`exporters.weights`): memory stays bounded by the largest tensor. ``quantized``: the
    component's module quantized with calibrated scales (:mod:`exporters.quantize`): its graph
    carries QuantizeLinear / DequantizeLinear pairs, and the scales are saved beside it."""
    import onnx
    import onnx_ir as ir

    from exporters.precision import apply_precision, precision_of

    check_dims(dims)
    dtype = precision or component.precision.dtype
    computes_in = precision_of(component.precision, dtype)  # float32 for a component kept whole in fp32
    build = None
    constants: dict[str, torch.Tensor] = {}
    if weightless:
        build, ref, wrapper, constants = weightless_wrapper(ref, component, dtype)
        if not copy_weights:
            check_linkable(build.stored.files, dest)
    else:
        make_wrapper, _ = component.traced()
        if quantized is not None:
            ref = quantized.reference(ref, component)
        wrapper = apply_precision(make_wrapper(ref).eval(), component.precision, dtype, component=component.name)
    opset = max(opset_for(computes_in), quantized.format.opset if quantized else 0)
    specs = component.input_specs(ref)
    outputs = component.output_specs(ref)
    point = example_point(dims)
    feeds = component.sample_inputs(ref, point)
    if build is not None:  # everything on the meta device: a real tensor beside a meta one cannot be traced
        feeds = {k: v.to("meta") for k, v in feeds.items()}
    path = dest / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        for patch in component.export_patches:
            stack.enter_context(patch())
        stack.enter_context(_quiet_export())
        stack.enter_context(torch.no_grad())
        try:
            program = torch.onnx.export(
                wrapper,
                (),
                kwargs=feeds,
                dynamic_shapes=dynamic_shapes(specs, dims),
                input_names=[s.name for s in specs],
                output_names=[s.name for s in outputs],
                opset_version=opset,
                dynamo=True,
                optimize=build is None,  # the optimizer folds constants: it cannot read meta weights
                verbose=False,
                custom_translation_table=quantized.translations() if quantized else None,
            )
            assert program is not None  # dynamo=True returns a program (None is the legacy exporter's)
            if build is not None:  # weights first: the optimizer reads small initializers
                weight_map = _attach_weights(
                    program.model,
                    dest,
                    build,
                    component.derived(ref),
                    constants,
                    copy_weights=copy_weights,
                    progress=progress,
                    name=component.name,
                )
                _optimize_keeping_weights(program.model)
        except ZooError:
            raise
        except Exception as e:  # the exporter raises many types; report which component and why
            raise ExportError(f"torch.onnx.export failed for component {component.name!r}: {_export_cause(e)}") from e
        if build is None:
            weight_bytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
            program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_THRESHOLD)
        else:
            _point_at_weights(program.model, weight_map, dest)
            ir.save(program.model, str(path))  # external tensors stay references; new constants are embedded
            atomic_write_json(dest / WEIGHT_MAP, weight_map)
    del program

    model = onnx.load(str(path), load_external_data=False)
    _name_dims(model, specs, outputs, dims, component.name, path.parent)
    if quantized is not None:
        one_qdq_per_consumer(model)
        quantized.save(dest)
    onnx.save(model, str(path))  # external data references are kept as they are
    check_graph(path, component.name)
    if build is not None:
        check_weights(dest, onnx.load(str(path), load_external_data=False))
    external = {
        p.relative_to(dest).as_posix(): p.stat().st_size
        for p in sorted(dest.rglob("*"))
        if p.is_file() and p.name not in ("model.onnx", WEIGHT_MAP)
    }
    return component_record(
        ref,
        component,
        path,
        dims,
        external,
        precision=computes_in,
        opset=opset,
        weight_map=f"{component.name}/{WEIGHT_MAP}" if build is not None else None,
        quantization=quantized.record if quantized else None,
    )


def component_record(
    ref: Reference,
    component: Component,
    path: Path,
    dims: Mapping[str, Dim],
    external: Mapping[str, int],
    *,
    precision: str,
    opset: int,
    weight_map: str | None = None,
    imported: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
) -> ComponentRecord:
    """The manifest's record of a component's graph written at ``path`` (``<component>/model.onnx``)
    with its ``external`` files (path relative to the component's folder -> bytes): traced or
    imported, the same fields."""
    return ComponentRecord(
        **_contract_fields(ref, component, dims),
        size=path.stat().st_size,
        sha256=file_sha256(path),
        external_data={f"{component.name}/{k}": v for k, v in sorted(external.items())},
        precision=precision,
        opset=opset,
        weight_map=weight_map,
        imported=imported,
        quantization=quantization,
    )


def unexported_record(ref: Reference, component: Component, dims: Mapping[str, Dim]) -> ComponentRecord:
    """A record of a component's contract without a graph (size 0, no hash): what a torch-backend
    sampler needs of a component it runs on the reference (calibration of a partial export)."""
    return ComponentRecord(
        **_contract_fields(ref, component, dims),
        size=0,
        sha256="",
        external_data={},
        precision=component.precision.dtype,
        opset=0,
    )


def _contract_fields(ref: Reference, component: Component, dims: Mapping[str, Dim]) -> dict[str, Any]:
    """A record's fields that come from the component's contract (its graph's file name included)."""
    return {
        "name": component.name,
        "kind": component.tolerance,
        "module": component.module,
        "file": f"{component.name}/model.onnx",
        "inputs": tuple(TensorRecord(s.name, s.dtype, s.shape) for s in component.input_specs(ref)),
        "outputs": tuple(TensorRecord(s.name, s.dtype, s.shape) for s in component.output_specs(ref)),
        "dims": dict(dims),
        "state": component.state_pairs(ref),
    }


def one_qdq_per_consumer(model: Any) -> int:
    """Give every consumer of a quantize -> dequantize pair its own copy of the pair. The exporter's
    common-subexpression pass merges the identical pairs of layers that read one tensor (an
    attention's to_q / to_k / to_v), and ONNX Runtime fuses a DequantizeLinear into its integer
    MatMul / Conv kernels only where it has one consumer (TensorRT fuses either way). Returns the
    number of pairs added."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes, added = [], 0
    for n in graph.node:
        nodes.append(n)
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" and n.input else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        for k, user in enumerate(consumers.get(n.output[0], [])[1:], 1):
            q2, dq2 = type(q)(), type(n)()
            q2.CopyFrom(q)
            dq2.CopyFrom(n)
            q2.name, dq2.name = f"{q.name}_{k}", f"{n.name}_{k}"
            q2.output[0], dq2.output[0] = f"{q.output[0]}_{k}", f"{n.output[0]}_{k}"
            dq2.input[0] = q2.output[0]
            for j, x in enumerate(user.input):
                if x == n.output[0]:
                    user.input[j] = dq2.output[0]
            nodes += [q2, dq2]
            added += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return added


def weightless_wrapper(
    ref: Reference, component: Component, dtype: str
) -> tuple[WeightlessBuild, Reference, torch.nn.Module, dict[str, torch.Tensor]]:
    """The component's wrapper around its module built without weights, in ``dtype`` with the
    policy's islands, on the meta device; the reference that holds that module; and the real
    tensors the wrapper computed from the config (by wrapper name), which the trace loses."""
    from exporters.precision import apply_precision

    spec = ref.modules.weightless(component.module)
    if spec is None:
        raise ExportError(
            f"component {component.name!r}: its module {component.module!r} has no weightless build "
            f"(the family loads it another way than from its safetensors, e.g. with LoRAs fused by "
            f"diffusers); export it with --load-weights"
        )
    build = WeightlessBuild(spec, f"component {component.name!r} ({component.module})")
    ref = dataclasses.replace(ref, modules=ref.modules.with_module(component.module, build.module))
    make_wrapper, _ = component.traced()
    plain = make_wrapper(ref).eval()
    build.prefixes = module_prefixes(plain, build.module)  # by identity; apply_precision copies, same names
    wrapper = apply_precision(plain, component.precision, dtype, component=component.name)
    constants = {
        k: v.detach().clone() for k, v in wrapper.state_dict(keep_vars=True).items() if v.device.type != "meta"
    }
    constants.update(
        {k: v.detach().clone() for k, v in wrapper.named_buffers(remove_duplicate=False) if v.device.type != "meta"}
    )
    return build, ref, wrapper.to("meta"), constants


def verify_weights(root: Path, record: ComponentRecord, ref: Reference, component: Component) -> dict[str, int]:
    """The initializer check of a weightless export: every initializer against ``weights.json``,
    the checkpoint's safetensors headers, and a recomputation of each computed tensor from the
    checkpoint (casts, buffers, declared transforms) with the reference's weightless build."""
    import onnx

    from exporters.weights import plan_initializer

    path = check_artifact(root, record)
    folder = path.parent
    build, ref, _, constants = weightless_wrapper(ref, component, record.precision)
    derived = component.derived(ref)

    def recompute(name: str, entry: dict[str, Any]) -> torch.Tensor | None:
        """From the checkpoint and the config; None for a constant only the trace made."""
        try:
            plan = plan_initializer(name, entry["dtype"], tuple(entry["shape"]), build, derived, constants.get(name))
        except ExportError:
            return None
        return plan.compute() if plan.compute is not None else None

    return check_weights(folder, onnx.load(str(path), load_external_data=False), recompute=recompute)


FOLDED_CONSTANT_LIMIT = 1 << 14  # elements


def _optimize_keeping_weights(model: Any) -> None:
    """The exporter's own clean-up passes (inlining, constant folding, dead-code removal, common
    subexpressions), except that no node reading a weight is folded: every initializer stays the
    checkpoint tensor it was (the weight map can name its source), and no meta weight is read.
    onnxscript's pattern rewriter is left out: it took 60% of the export of a 10-block 14B DiT and grew
    faster than the graph; TensorRT and ONNX Runtime run their own graph optimizations."""
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import fold_constants_ir

    initializers = set(model.graph.initializers)

    def should_fold(node: Any) -> bool | None:
        return False if any(v is not None and v.name in initializers for v in node.inputs) else None

    common.InlinePass()(model)
    for _ in range(2):
        # folded constants land in the graph proto: keep them small (a 512 x 512 relative-position
        # table per layer of a T5 encoder would otherwise add 100 MB of what the graph computes in microseconds)
        folded = fold_constants_ir(
            model, onnx_shape_inference=True, output_size_limit=FOLDED_CONSTANT_LIMIT, should_fold=should_fold
        )
        common.RemoveUnusedNodesPass()(model)
        if not folded.modified:
            break
    for step in (
        common.RemoveUnusedFunctionsPass(),  # type: ignore[no-untyped-call]  # onnx_ir leaves its __init__ unannotated
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    ):
        step(model)


def _attach_weights(
    model: Any,
    dest: Path,
    build: WeightlessBuild,
    derived: Mapping[str, Any],
    constants: Mapping[str, torch.Tensor],
    *,
    copy_weights: bool,
    progress: bool,
    name: str,
) -> dict[str, Any]:
    """Give every initializer its bytes (linked, copied or computed one at a time) and point the
    graph at them; returns the weight map."""
    import onnx_ir as ir
    from tqdm.auto import tqdm

    from exporters.weights import _onnx_to_torch, dtype_name, lazy_value, plan_initializer, write_weights

    plans = []
    for init_name, value in list(model.graph.initializers.items()):  # _cast_in_graph swaps some
        raw = getattr(value.const_value, "raw", None)
        constant = constants.get(init_name)
        if constant is None and isinstance(raw, torch.Tensor) and raw.device.type != "meta":
            constant = raw.detach().clone()
        elif constant is None and value.const_value is not None and not isinstance(raw, torch.Tensor):
            constant = torch.from_numpy(value.const_value.numpy().copy())
        dtype = dtype_name(_onnx_to_torch(value.dtype.value))
        shape = tuple(int(d) for d in value.shape)
        plan = plan_initializer(init_name, dtype, shape, build, derived, constant)
        if plan.how in WIDENING:  # keep the checkpoint's bytes; the graph widens them
            plan = _cast_in_graph(model, value, plan)
        plans.append(plan)
    with tqdm(total=len(plans), desc=f"weights {name}", unit="tensor", disable=not progress, leave=False) as bar:
        weight_map = write_weights(plans, dest, copy_weights=copy_weights, progress=bar.update)
    for init_name, value in model.graph.initializers.items():
        read = lazy_value(weight_map["initializers"][init_name], dest)
        value.const_value = ir.LazyTensor(
            functools.partial(_read_ir_tensor, read), value.dtype, value.shape, name=init_name
        )
    return weight_map


# Exact casts of a stored tensor into a wider float: done by the graph, not by the export.
WIDENING = frozenset({"cast bfloat16 -> float32", "cast float16 -> float32"})


def _cast_in_graph(model: Any, value: Any, plan: Any) -> Any:
    """Replace the float32 initializer ``value`` with the checkpoint's narrower tensor and a Cast
    node: exact (what loading the checkpoint into an fp32 module computes), and zero-copy. The
    traced module kept its fp32 parameter, so code that reads a module's dtype saw fp32."""
    import onnx_ir as ir

    from exporters.weights import torch_dtype

    stored_dtype = plan.stored.dtype
    onnx_type = {"bfloat16": ir.DataType.BFLOAT16, "float16": ir.DataType.FLOAT16}[stored_dtype]
    graph = model.graph
    stored = ir.Value(name=f"{value.name}.stored_{stored_dtype}", shape=value.shape, type=ir.TensorType(onnx_type))
    stored.const_value = ir.LazyTensor(
        lambda: _ir_tensor(torch.zeros(0, dtype=torch_dtype(stored_dtype))), onnx_type, value.shape, name=stored.name
    )  # replaced by the real bytes below
    cast = ir.node("Cast", inputs=[stored], attributes={"to": value.dtype}, name=f"widen_{value.name}")
    out = cast.outputs[0]
    name, shape, kind = value.name, value.shape, value.type
    value.replace_all_uses_with(out)
    graph.initializers.pop(name)
    graph.register_initializer(stored)
    graph.insert_before(graph[0], cast)
    out.name, out.shape, out.type = name, shape, kind
    return dataclasses.replace(
        plan,
        name=stored.name,
        dtype=stored_dtype,
        source="checkpoint",
        how="stored (widened to float32 by a Cast in the graph)",
        compute=None,
    )


def _read_ir_tensor(read: Callable[[], torch.Tensor]) -> Any:
    return _ir_tensor(read())


def _ir_tensor(t: torch.Tensor) -> Any:
    import ml_dtypes
    import onnx_ir as ir

    if t.dtype == torch.bfloat16:
        return ir.tensor(t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16))
    return ir.tensor(t.numpy())


def _point_at_weights(model: Any, weight_map: dict[str, Any], dest: Path) -> None:
    """After optimizing: link the checkpoint files in, and make every initializer of the map
    ONNX external data at its byte range (relative to the graph)."""
    import onnx_ir as ir

    kept = model.graph.initializers  # the optimizer may have dropped unused ones
    weight_map["initializers"] = {k: v for k, v in weight_map["initializers"].items() if k in kept}
    lost = [
        k for k, v in kept.items() if isinstance(v.const_value, ir.LazyTensor) and k not in weight_map["initializers"]
    ]
    if lost:  # a pass renamed a weight: it would be embedded whole, unchecked
        raise ExportError(
            f"the graph optimizer renamed weights {', '.join(lost[:3])}: they would be embedded in the graph"
        )
    link_checkpoint_files(weight_map, dest)
    for init_name, entry in weight_map["initializers"].items():
        value = kept[init_name]
        value.const_value = ir.ExternalTensor(
            entry["location"],
            entry["offset"],
            entry["length"],
            value.dtype,
            shape=value.shape,
            name=init_name,
            base_dir=dest,
        )


def _name_dims(
    model: Any,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    dims: Mapping[str, Dim],
    component: str,
    folder: Path,
) -> None:
    """Give graph inputs and outputs the contract's dims, with onnx's own tool: dynamic dims by
    name (the exporter's symbols, like ``2*latent_height_div2``, mean nothing to a user or a
    TensorRT profile), static ones by value. First check that the graph has the contract's
    tensors and ranks, and that no dynamic dim was fixed while tracing."""
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    graph_io = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    wanted: dict[str, list[int | str]] = {}
    for spec in inputs + outputs:
        if spec.name not in graph_io:
            raise ExportError(
                f"component {component!r}: graph has no tensor {spec.name!r}; it has {', '.join(graph_io)}"
            )
        shape = graph_io[spec.name].type.tensor_type.shape
        if len(shape.dim) != len(spec.shape):
            raise ExportError(
                f"component {component!r}: {spec.name} has rank {len(shape.dim)} in the graph, "
                f"the contract says {len(spec.shape)}"
            )
        want: list[int | str] = []
        for dim, d in zip(shape.dim, spec.shape):
            if isinstance(d, str) and not dims[d].is_dynamic:
                d = dims[d].min
            if isinstance(d, str) and dim.HasField("dim_value"):
                raise ExportError(
                    f"component {component!r}: {spec.name} dim {d} is dynamic in the contract but the "
                    f"exporter fixed it to {dim.dim_value} (a shape baked in while tracing)"
                )
            if isinstance(d, int) and dim.HasField("dim_value") and dim.dim_value != d:
                raise ExportError(
                    f"component {component!r}: {spec.name} has a dim of {dim.dim_value}, the contract says {d}"
                )
            want.append(d)
        wanted[spec.name] = want
    extra = sorted(set(graph_io) - set(wanted))
    if extra:
        raise ExportError(f"component {component!r}: graph tensors {', '.join(extra)} are not in the contract")
    names = {v.name for v in model.graph.input}
    with checkable(model):  # the tool runs the checker on the model
        update_inputs_outputs_dims(
            model, {k: v for k, v in wanted.items() if k in names}, {k: v for k, v in wanted.items() if k not in names}
        )


@contextlib.contextmanager
def checkable(model: Any) -> Iterator[None]:
    """Run onnx's checker on a graph proto without its weights: in a temporary folder holding a
    sparse stand-in for each external data file. (The checker insists on reading the files, and
    refuses the hard links a weightless export points at; the real files are checked by size,
    digest and safetensors header in :func:`check_artifact` and :func:`exporters.weights.check_weights`.)"""
    import tempfile

    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    sizes: dict[str, int] = {}
    for t in model.graph.initializer:
        if uses_external_data(t):
            info = ExternalDataInfo(t)
            sizes[info.location] = max(sizes.get(info.location, 0), (info.offset or 0) + (info.length or 0))
    with tempfile.TemporaryDirectory(prefix="zoo-check-") as tmp:
        for location, size in sizes.items():
            stand_in = Path(tmp) / location
            if not stand_in.resolve().is_relative_to(Path(tmp).resolve()):
                raise ExportError(f"external data location {location!r} leads outside the model's folder")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            with open(stand_in, "wb") as f:
                f.truncate(size)
        with _chdir(tmp):
            yield


@contextlib.contextmanager
def _chdir(path: str) -> Iterator[None]:
    """``contextlib.chdir`` (Python 3.11+) for Python 3.10: ``path`` as the current folder, the previous
    one restored on exit."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def check_graph(path: Path, component: str) -> None:
    """onnx checker with full shape inference, then TensorRT-parser operator and dtype support."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        with checkable(model):
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"component {component!r}: {path} fails the ONNX checker: {e}") from None
    unsupported = sorted(
        {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type not in TENSORRT_OPS}
        | {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    )
    if unsupported:
        raise ExportError(
            f"component {component!r}: operators the TensorRT ONNX parser does not import: {', '.join(unsupported)}"
        )
    from exporters.tensorrt import check_parser_support

    check_parser_support(model, component)  # a documented opset; initializer-only inputs (10.x restrictions)
    names = onnx.TensorProto.DataType.Name
    bad = sorted(
        {
            f"{t.name} ({names(t.data_type)})"
            for t in model.graph.initializer
            if names(t.data_type) in TENSORRT_UNSUPPORTED_DTYPES
        }
        | {
            f"{v.name} ({names(v.type.tensor_type.elem_type)})"
            for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
            if v.type.HasField("tensor_type") and names(v.type.tensor_type.elem_type) in TENSORRT_UNSUPPORTED_DTYPES
        }
    )
    if bad:
        raise ExportError(f"component {component!r}: tensors of types TensorRT lacks: {', '.join(bad[:10])}")


# --------------------------------------------------------------------------------------
# Loading-time checks of an artifact (truncated, LFS pointer, missing external data)
# --------------------------------------------------------------------------------------


def check_artifact(root: Path, record: ComponentRecord) -> Path:
    """The component's ``model.onnx`` path, after checking it is whole; :class:`ArtifactError` if not."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = inside(root, record.file, f"component {record.name!r} file")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (component {record.name!r}); re-export")
    size = path.stat().st_size
    if size == 0:
        raise ArtifactError(f"{path} is empty (component {record.name!r}); re-export")
    if is_lfs_pointer(path):
        raise ArtifactError(f"{path} is a git-LFS pointer, not a model; run `git lfs pull`")
    if size != record.size:
        raise ArtifactError(
            f"{path} is {size} bytes, the manifest says {record.size}: truncated or replaced; re-export"
        )
    if file_sha256(path) != record.sha256:  # the graph file only: external data is checked by size
        raise ArtifactError(f"{path} does not match the sha256 in the manifest: corrupted or replaced; re-export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ArtifactError(f"{path} is not a readable ONNX model ({type(e).__name__}); re-export") from None
    for rel, expected in record.external_data.items():
        data = inside(root, rel, f"component {record.name!r} external data")
        if not data.is_file():
            raise ArtifactError(f"external data {data} of {path} is missing; copy it beside the model or re-export")
        if is_lfs_pointer(data):
            raise ArtifactError(f"external data {data} is a git-LFS pointer; run `git lfs pull`")
        if data.stat().st_size != expected:
            raise ArtifactError(
                f"external data {data} is {data.stat().st_size} bytes, the manifest says {expected}: truncated; re-export"
            )
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            info = ExternalDataInfo(tensor)
            data = inside(root, (Path(record.file).parent / info.location).as_posix(), f"tensor {tensor.name} location")
            if not data.is_file():
                raise ArtifactError(f"external data {data} (tensor {tensor.name}) of {path} is missing")
            if info.length and info.offset + info.length > data.stat().st_size:
                raise ArtifactError(f"external data {data} is truncated: tensor {tensor.name} lies past its end")
    if record.weight_map:  # weightless: the linked checkpoint files are the ones exported
        check_files_unchanged(path.parent, load_weight_map(path.parent))
    return path


# --------------------------------------------------------------------------------------
# A whole family
# --------------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for dist in (
        "torch",
        "diffusers",
        "transformers",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
    ):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    import zoo

    versions["zoo"] = zoo.__version__
    return versions


def _json_config(config: Any) -> dict[str, Any]:
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in data.items() if not k.startswith("_") or k == "_class_name"}


def export_family(
    family: Family,
    ref: Reference,
    envelope: Envelope,
    out: str | Path,
    *,
    carry_reference: bool = False,
    components: tuple[str, ...] | None = None,
    progress: bool = True,
    weightless: bool | None = None,
    copy_weights: bool = False,
    precision: str | None = None,
    quantize: QuantizeRequest | None = None,
) -> Manifest:
    """Export every component of ``ref`` into ``out`` and write ``out/manifest.json`` last.

    The folder is staged and swapped in whole, so an interrupted export leaves ``out`` as it
    was. Every source (model folder, adapter, LoRA files) is recorded with its content hash, so
    the torch side of every parity run rebuilds exactly this reference; with ``carry_reference``
    (random models) the sources are copied into ``out/reference`` so the export is self-contained.

    ``weightless`` (None: for components whose stored weights exceed ``WEIGHTLESS_ABOVE``) traces
    without materializing the weights (:mod:`exporters.weights`); ``precision`` is the dtype the
    graphs compute in (None: the checkpoint's own dtype for weightless components, else the
    component's policy).

    ``quantize``: the components that declare a quantization (or those named) are calibrated by
    running the family's sampler on the reference (``quantize.forward_loop``, over a manifest of the
    staged export) and exported with Q/DQ pairs (:mod:`exporters.quantize`).
    """
    from tqdm.auto import tqdm

    from exporters.quantize import check_quantize_options, quantize_component

    out = check_export_target(out)
    chosen = [family.component(c) for c in components] if components else list(family.components)
    quantized: set[str] = set()
    if quantize is not None:
        quantized = {c.name for c in check_quantize_options(family, components, quantize.format, precision, weightless)}
    for component in chosen:  # a given graph that is not what its component declares: refused before writing
        if component.graph is not None:
            _check_import_options(component, weightless, precision)
            from exporters.imported import check_imported

            check_imported(ref, component, component.dims(envelope, ref))
    with staged_dir(out) as stage:
        (stage / EXPORT_MARKER).write_text("written by zoo export; a re-export may replace this folder\n")
        sources = _record_sources(ref.sources, stage if carry_reference else None)

        records: dict[str, ComponentRecord] = {}
        plain = [c for c in chosen if c.name not in quantized]
        bar = tqdm(plain, desc="export", unit="component", disable=not progress or not plain)
        for component in bar:
            bar.set_postfix_str(component.name)
            dims = component.dims(envelope, ref)
            if component.graph is not None:  # imported: its graph is the given file, copied
                from exporters.imported import import_component

                log.info("importing %s/%s from %s", family.name, component.name, component.graph.path(ref))
                records[component.name] = import_component(ref, component, dims, stage / component.name)
                continue
            plan = weight_plan(ref, component, weightless, precision)
            log.info("exporting %s/%s with dims %s (%s)", family.name, component.name, dims, plan)
            records[component.name] = export_component(
                ref,
                component,
                dims,
                stage / component.name,
                weightless=plan.weightless,
                copy_weights=copy_weights,
                precision=plan.precision,
                progress=progress,
            )

        host = {}
        for name in family.exported_host_modules(ref):
            module = ref.module(name)
            module.save_pretrained(stage / name)
            host[name] = {"library": type(module).__module__.split(".")[0], "class": type(module).__name__}

        def manifest_of(components: dict[str, ComponentRecord], root: Path) -> Manifest:
            return Manifest(
                family=family.name,
                variant=ref.variant,
                sources=sources,
                versions=library_versions(),
                envelope=dict(envelope),
                axes={a.name: a for a in family.axes(ref)},
                components=components,
                pipeline=ref.pipeline,
                configs={s.module: _json_config(ref.config(s.module)) for s in family.pipeline_slots},
                host_modules=host,
                root=root,
            )

        if quantize is not None:
            # the sampler calibrates on the torch reference: it reads the staged export's manifest, in which the
            # components not exported (yet) have records of their contract only
            every = {
                c.name: records.get(c.name) or unexported_record(ref, c, c.dims(envelope, ref))
                for c in family.components
            }
            forward_loop = quantize.forward_loop(manifest_of(every, stage), ref)
            bar = tqdm(
                [c for c in chosen if c.name in quantized],
                desc=f"quantize {quantize.format}",
                unit="component",
                disable=not progress,
            )
            for component in bar:
                bar.set_postfix_str(component.name)
                log.info("calibrating %s/%s for %s", family.name, component.name, quantize.format)
                calibrated = quantize_component(ref, component, quantize, forward_loop)
                records[component.name] = export_component(
                    ref,
                    component,
                    component.dims(envelope, ref),
                    stage / component.name,
                    precision="float32",
                    quantized=calibrated,
                )
        records = {c.name: records[c.name] for c in chosen}
        manifest = manifest_of(records, out)
        atomic_write_json(stage / MANIFEST, manifest.to_json())
    log.info("wrote %s (%s)", out, ", ".join(records))
    return manifest


def _check_import_options(component: Component, weightless: bool | None, precision: str | None) -> None:
    """An imported graph is copied as given: it computes in its own dtypes, with its own weights."""
    if precision not in (None, component.precision.dtype):
        raise ExportError(
            f"component {component.name!r} is an imported ONNX graph: it computes in the dtypes of the given "
            f"file, so --precision {precision} does not apply to it"
        )
    if weightless:
        raise ExportError(
            f"component {component.name!r} is an imported ONNX graph: its weights are the given file's "
            f"(copied with it), so --weightless does not apply to it"
        )


# Components whose checkpoint weights are larger are exported weightless unless told otherwise.
WEIGHTLESS_ABOVE = 2 << 30


@dataclasses.dataclass(frozen=True)
class WeightPlan:
    weightless: bool
    precision: str
    stored_bytes: int | None = None

    def __str__(self) -> str:
        how = "weightless" if self.weightless else "loaded"
        return f"{how}, {self.precision}" + (
            f", {self.stored_bytes / 2**30:.2f} GiB stored" if self.stored_bytes else ""
        )


def weight_plan(ref: Reference, component: Component, weightless: bool | None, precision: str | None) -> WeightPlan:
    """How a component is exported: weightless or loaded, and in which dtype (see export_family)."""
    from exporters.weights import StoredWeights

    spec = ref.modules.weightless(component.module)
    stored = None
    if spec is not None and weightless is not False:
        try:
            stored = StoredWeights(spec.folders)
        except CheckpointError:
            if weightless:  # asked for: say why it cannot be
                raise
            # not asked for (.bin weights, a variant-only folder): the library loads them as before
    size = sum(f.stat().st_size for f in stored.files) if stored else None
    if weightless is None:
        weightless = size is not None and size > WEIGHTLESS_ABOVE
    if precision is None:
        precision = stored.dominant_dtype() if weightless and stored else component.precision.dtype
    return WeightPlan(weightless, precision, size)


def _record_sources(sources: tuple[Source, ...], stage: Path | None) -> list[dict[str, Any]]:
    """Each source with its content hash; copied under ``stage/reference`` when given."""
    records = []
    seen: dict[str, int] = {}
    for s in sources:
        path = Path(s.path).resolve()
        files = file_hashes(path)  # each file read once (small ones are not remembered by zoo.infra.hashing)
        record: dict[str, Any] = {
            "role": s.role,
            "path": str(path),
            "hash": content_hash_of(path, files),
            "files": files,
        }
        if s.scale is not None:
            record["scale"] = s.scale
        if s.role == "model":
            record["preset"] = random_preset(path)
        if stage is not None:
            n = seen[s.role] = seen.get(s.role, -1) + 1
            rel = f"{REFERENCE_DIR}/{s.role}" + (f"-{n}" if n else "")
            if path.is_file():  # in a folder of its own, under its own name: a file's name is part of its hash
                rel += f"/{path.name}"
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, stage / rel)
            record["path"] = rel
        records.append(record)
    return records


def check_export_target(out: str | Path) -> Path:
    """``out`` resolved, if an export may be written there: a new folder, an empty one, or a
    previous zoo export, even one whose manifest is corrupt (it is replaced whole). Anything
    else is refused untouched."""
    out = Path(out).resolve()
    refuse = f"--out {out} exists and is not a zoo export folder: choose a new or empty folder"
    if out.exists():
        if not out.is_dir():
            raise ExportError(refuse)
        if any(out.iterdir()) and not looks_like_export(out):
            raise ExportError(refuse)
    elif out.parent.exists() and not out.parent.is_dir():
        raise ExportError(f"--out {out}: {out.parent} is not a folder")
    return out


@contextlib.contextmanager
def random_reference(
    family: Family, *, variant: str | None, preset: str, seed: int = 0, extra: tuple[Source, ...] | list[Source] = ()
) -> Iterator[Reference]:
    """A random-weight reference in a temporary folder (with ``extra`` sources, e.g. LoRAs),
    removed afterwards; the folder is named after this process, so the next one removes it if a
    kill -9 left it."""
    from exporters.artifacts import scratch_dir

    tmp = scratch_dir(f"zoo-{family.name}-")
    try:
        path = family.build_random(tmp / "model", variant=variant, preset=preset, seed=seed)
        yield family.load((Source("model", path), *extra))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Imported graphs: a component whose ONNX graph the user gives (a file among the reference's
sources, :class:`zoo.contract.ImportedGraph`) instead of one traced from torch.

The export checks the given file against the component's declaration (input and output names in
order, dtypes, ranks, every dim) before anything is written, then copies it into the export folder
like any component: its dims named from the contract, its external data beside it, the ONNX checker
and the TensorRT-parser lint run on the copy. Where the declaration lets a batch dim vary and the
given graph fixes it to 1, the copy gets a symbolic batch only if the graph computes every item on
its own: a batch run on ONNX Runtime must give exactly (bit for bit) the outputs of its items run
one by one through the given graph; otherwise the batch stays 1 and the manifest says why.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.manifest import ComponentRecord
from zoo.contract import Component, Dim, ImportedGraph, Reference, TensorSpec, check_dims, resolve_point
from zoo.errors import ExportError
from zoo.infra.checkpoint import is_lfs_pointer
from zoo.infra.hashing import file_sha256

log = logging.getLogger(__name__)

# ONNX TensorProto element types of the contract's dtypes (onnx.TensorProto.DataType values)
_ONNX_DTYPES = {"float32": 1, "float16": 10, "bfloat16": 16, "int64": 7, "int32": 6, "bool": 9}


class ImportedGraphError(ExportError):
    """A given ONNX graph that is not what its component declares (a tensor missing, of another
    dtype, rank or shape), or not a readable ONNX file: raised before anything is written."""


GraphShape = tuple[int | str | None, ...]  # a size, a symbolic name, or None (unknown)


@dataclass(frozen=True)
class GraphTensor:
    name: str
    dtype: str  # the onnx element type's name (FLOAT, INT64, ...)
    shape: GraphShape


def _graph_shape(value: Any) -> GraphShape:
    dims: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None)
    return tuple(dims)


def graph_tensors(model: Any) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The graph's run-time inputs (initializers listed as inputs, as IR < 4 files do, left out)
    and its outputs, in session order."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    name = onnx.TensorProto.DataType.Name

    def tensor(v: Any) -> GraphTensor:
        elem = v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else 0
        return GraphTensor(v.name, name(elem), _graph_shape(v))

    inputs = [tensor(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [tensor(v) for v in model.graph.output]


def _show(shape: GraphShape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _declared(spec: TensorSpec, dims: Mapping[str, Dim]) -> str:
    parts = []
    for d in spec.shape:
        if isinstance(d, int):
            parts.append(str(d))
        elif dims[d].is_dynamic:
            parts.append(f"{d}={dims[d].min}..{dims[d].max}")
        else:
            parts.append(str(dims[d].min))
    return "[" + ", ".join(parts) + "]"


def _dtype_name(dtype: str) -> str:
    import onnx

    return str(onnx.TensorProto.DataType.Name(_ONNX_DTYPES[dtype]))


def load_graph(path: Path, component: str) -> Any:
    """The graph proto of ``path`` (external data not read, but required beside it)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    where = f"component {component!r}"
    if not path.exists():
        raise ImportedGraphError(f"{where}: the graph {path} does not exist")
    if not path.is_file():
        raise ImportedGraphError(f"{where}: {path} is not a file; expected an ONNX graph")
    if path.stat().st_size == 0:
        raise ImportedGraphError(f"{where}: the graph {path} is empty")
    if is_lfs_pointer(path):
        raise ImportedGraphError(f"{where}: {path} is a git-LFS pointer, not a model; run `git lfs pull`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ImportedGraphError(f"{where}: {path} is not a readable ONNX graph ({type(e).__name__})") from None
    if not model.graph.node:
        raise ImportedGraphError(f"{where}: {path} is not a readable ONNX graph (it has no nodes)")
    for t in model.graph.initializer:
        if uses_external_data(t):
            data = external_file(path, ExternalDataInfo(t).location, component)
            if not data.is_file():
                raise ImportedGraphError(f"{where}: external data {data} of {path} (tensor {t.name}) is missing")
    return model


def external_file(path: Path, location: str, component: str) -> Path:
    """An external data file of the graph at ``path``: inside the graph's folder, or refused."""
    data = (path.parent / location).resolve()
    if not data.is_relative_to(path.parent.resolve()):
        raise ImportedGraphError(
            f"component {component!r}: external data location {location!r} of {path} leads outside its folder"
        )
    return data


def check_declaration(path: Path, model: Any, component: Component, ref: Reference, dims: Mapping[str, Dim]) -> None:
    """The graph's inputs and outputs against the declaration: the same names in the same order
    (sessions hand outputs back in order; only the same number for a ``positional`` graph), each with the declared dtype, rank and sizes. A
    declared size must be the graph's (or the graph leaves it symbolic); a declared dynamic dim
    may be fixed to 1 in the graph only where it is the component's batch dim (the export then
    decides whether it can be freed). :class:`ImportedGraphError` naming the file, the tensor and
    both shapes otherwise."""
    assert component.graph is not None
    inputs, outputs = graph_tensors(model)
    for kind, declared, found in (
        ("inputs", component.input_specs(ref), inputs),
        ("outputs", component.output_specs(ref), outputs),
    ):
        want = [s.name for s in declared]
        got = [t.name for t in found]
        if component.graph.positional:  # matched by position: the names are the file's own
            got = want if len(got) == len(want) else got
        if want != got:
            declared_text = ", ".join(f"{s.name} {_dtype_name(s.dtype)} {_declared(s, dims)}" for s in declared)
            found_text = ", ".join(f"{t.name} {t.dtype} {_show(t.shape)}" for t in found) or "none"
            raise ImportedGraphError(
                f"{path}: component {component.name!r} declares {kind} {declared_text}; the graph's {kind} are "
                f"{found_text} (is it the right file?)"
            )
        for spec, tensor in zip(declared, found):
            _check_tensor(path, component.name, component.graph, spec, tensor, dims, kind[:-1])


def _check_tensor(
    path: Path,
    component: str,
    graph: ImportedGraph,
    spec: TensorSpec,
    tensor: GraphTensor,
    dims: Mapping[str, Dim],
    kind: str,
) -> None:
    mismatch = (
        f"{path}: {kind} {spec.name!r} of component {component!r} is {tensor.dtype} {_show(tensor.shape)} in the "
        f"graph; the declaration says {_dtype_name(spec.dtype)} {_declared(spec, dims)}"
    )
    if tensor.dtype != _dtype_name(spec.dtype):
        raise ImportedGraphError(mismatch + " (dtype differs)")
    if len(tensor.shape) != len(spec.shape):
        raise ImportedGraphError(mismatch + f" (rank {len(tensor.shape)}, declared {len(spec.shape)})")
    for axis, (have, want) in enumerate(zip(tensor.shape, spec.shape)):
        if not isinstance(have, int):
            continue  # symbolic or unknown in the graph: the copy names it as declared
        if isinstance(want, int) or not dims[want].is_dynamic:
            size = want if isinstance(want, int) else dims[want].min
            if have != size:
                raise ImportedGraphError(mismatch + f" (dim {axis} is {have}, declared {size})")
        elif not (want == graph.batch and have == 1):
            raise ImportedGraphError(
                mismatch + f" (dim {axis} is fixed to {have} in the graph; the declaration lets {want} vary)"
            )


def declared_names(model: Any, component: Component, ref: Reference) -> dict[str, str]:
    """The graph's input and output names -> the declared ones (by position; the identity unless
    the graph is ``positional`` and its exporter named them otherwise)."""
    inputs, outputs = graph_tensors(model)
    declared = component.input_specs(ref) + component.output_specs(ref)
    return {t.name: s.name for t, s in zip(inputs + outputs, declared) if t.name != s.name}


def rename_io(model: Any, names: Mapping[str, str]) -> None:
    """Rename the graph's inputs and outputs in place (every node and shape entry that uses them)."""
    if not names:
        return
    taken = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.initializer}
    clash = sorted((set(names.values()) & taken) - set(names))
    if clash:
        raise ImportedGraphError(f"cannot rename the graph's inputs and outputs: it already has tensors {clash}")

    def rename(graph: Any) -> None:  # the graph and its control-flow bodies (If / Loop / Scan)
        for node in graph.node:
            node.input[:] = [names.get(n, n) for n in node.input]
            node.output[:] = [names.get(n, n) for n in node.output]
            for attribute in node.attribute:
                for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    rename(body)
        for value in list(graph.input) + list(graph.output) + list(graph.value_info):
            value.name = names.get(value.name, value.name)

    rename(model.graph)


# --------------------------------------------------------------------------------------
# The batch decision
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchDecision:
    dim: str
    dynamic: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"dim": self.dim, "dynamic": self.dynamic, "why": self.why}


def _fixed_batch(model: Any, component: Component, ref: Reference) -> bool:
    """Whether the given graph fixes the component's batch dim (to 1) on some input or output."""
    assert component.graph is not None
    batch = component.graph.batch
    inputs, outputs = graph_tensors(model)
    found = {t.name: t for t in inputs + outputs}
    for spec in component.input_specs(ref) + component.output_specs(ref):
        for have, want in zip(found[spec.name].shape, spec.shape):
            if want == batch and isinstance(have, int):
                return True
    return False


def _free_batch(model: Any, component: Component, ref: Reference) -> Any:
    """A copy of ``model`` whose batch dim is symbolic on every declared input and output, with the
    intermediate shapes (which hold the batch of 1) dropped for the runtime to infer."""
    import onnx

    assert component.graph is not None and component.graph.batch is not None
    batch = component.graph.batch
    freed = onnx.ModelProto()
    freed.CopyFrom(model)
    values = {v.name: v for v in list(freed.graph.input) + list(freed.graph.output)}
    for spec in component.input_specs(ref) + component.output_specs(ref):
        shape = values[spec.name].type.tensor_type.shape
        for d, want in zip(shape.dim, spec.shape):
            if want == batch:
                d.ClearField("dim_value")
                d.dim_param = batch
    del freed.graph.value_info[:]
    return freed


def decide_batch(
    source: Path, model: Any, component: Component, ref: Reference, dims: Mapping[str, Dim], trial: Path
) -> tuple[Any, BatchDecision | None]:
    """The graph to copy and the batch decision (None where there is none to make: no batch dim
    declared, a batch the envelope keeps static, or one the given graph leaves symbolic).

    A batch fixed to 1 in the given graph is freed in a trial copy written at ``trial`` (beside
    the copy's external data) and run on ONNX Runtime CPU at batch 2 and at the profile's largest
    batch, each compared with its items run one by one through the given graph: the batch stays
    dynamic only if every output is identical, bit for bit."""
    import onnx

    graph = component.graph
    assert graph is not None
    if graph.batch is None or not dims[graph.batch].is_dynamic or not _fixed_batch(model, component, ref):
        return model, None
    batch = graph.batch
    freed = _free_batch(model, component, ref)
    onnx.save(freed, str(trial))
    sizes = sorted({2, dims[batch].max} & set(range(max(dims[batch].min, 2), dims[batch].max + 1)))
    try:
        problem = _batch_problem(source, trial, component, ref, dims, sizes)
    finally:
        trial.unlink(missing_ok=True)
    if problem is None:
        why = (
            f"the given graph fixes {batch} to 1; made symbolic: batches of {' and '.join(map(str, sizes))} "
            f"on ONNX Runtime CPU gave exactly the outputs of their items run one by one"
        )
        log.info("component %s: %s", component.name, why)
        return freed, BatchDecision(batch, True, why)
    why = f"the given graph fixes {batch} to 1 and does not compute batch items on their own ({problem}): kept at 1"
    log.warning("component %s: %s", component.name, why)
    return model, BatchDecision(batch, False, why)


def _batch_problem(
    source: Path, trial: Path, component: Component, ref: Reference, dims: Mapping[str, Dim], sizes: list[int]
) -> str | None:
    """Why a batch of the trial graph is not its items run one by one through the source graph
    (on ONNX Runtime CPU), or None."""
    import onnxruntime as ort

    assert component.graph is not None and component.graph.batch is not None
    batch = component.graph.batch
    providers = ["CPUExecutionProvider"]
    one = ort.InferenceSession(str(source), providers=providers)
    try:
        many = ort.InferenceSession(str(trial), providers=providers)
    except Exception as e:  # ORT's own Fail / InvalidGraph types
        return f"ONNX Runtime refuses the graph with a symbolic {batch}: {str(e).splitlines()[0]}"
    base = {n: d.opt for n, d in dims.items() if not d.is_derived}
    outputs = component.output_specs(ref)
    for size in sizes:
        point = resolve_point(dims, {**base, batch: size})
        feeds = {k: v.numpy() for k, v in component.sample_inputs(ref, point, seed=size).items()}
        try:
            together = dict(zip([s.name for s in outputs], many.run([s.name for s in outputs], feeds)))
        except Exception as e:
            return f"a batch of {size} fails on ONNX Runtime: {str(e).splitlines()[0]}"
        for spec in outputs:
            if together[spec.name].shape[_axis(spec, batch)] != size:
                return f"a batch of {size} gives {spec.name} of shape {together[spec.name].shape}"
        for i in range(size):
            item = {s.name: np.take(feeds[s.name], [i], axis=_axis(s, batch)) for s in component.input_specs(ref)}
            alone = dict(zip([s.name for s in outputs], one.run([s.name for s in outputs], item)))
            for spec in outputs:
                mine = np.take(together[spec.name], [i], axis=_axis(spec, batch))
                if not np.array_equal(mine, alone[spec.name]):
                    diff = float(np.max(np.abs(mine.astype(np.float64) - alone[spec.name].astype(np.float64))))
                    return f"item {i} of a batch of {size}: {spec.name} differs from its run alone by up to {diff:.3g}"
    return None


def _axis(spec: TensorSpec, dim: str) -> int:
    return spec.shape.index(dim)


# --------------------------------------------------------------------------------------
# The copy
# --------------------------------------------------------------------------------------


def check_imported(ref: Reference, component: Component, dims: Mapping[str, Dim]) -> Path:
    """The component's given graph, checked against its declaration (before anything is written)."""
    assert component.graph is not None
    path = component.graph.path(ref)
    check_declaration(path, load_graph(path, component.name), component, ref, dims)
    return path


def import_component(ref: Reference, component: Component, dims: Mapping[str, Dim], dest: Path) -> ComponentRecord:
    """Copy ``component``'s given graph into ``dest/model.onnx`` (its external data beside it), with
    its dims named from the contract and its batch decided; check it as a traced graph is checked
    (ONNX checker, TensorRT-parser lint); the record says where it came from."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    from exporters.onnx import _name_dims, check_graph, component_record

    assert component.graph is not None
    check_dims(dims)
    source = component.graph.path(ref)
    model = load_graph(source, component.name)
    check_declaration(source, model, component, ref, dims)
    renamed = declared_names(model, component, ref)
    rename_io(model, renamed)  # a positional graph's own names -> the declared ones
    dest.mkdir(parents=True, exist_ok=True)
    external: dict[str, int] = {}
    for t in model.graph.initializer:  # external data first: the trial run reads it beside the graph
        if uses_external_data(t):
            location = ExternalDataInfo(t).location
            if location not in external:
                target = dest / location
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(external_file(source, location, component.name), target)
                external[location] = target.stat().st_size
    given = source
    if renamed:  # the batch check runs the given graph by the declared names: a renamed copy of it
        given = dest / "given.onnx"
        onnx.save(model, str(given))
    try:
        model, decision = decide_batch(given, model, component, ref, dims, dest / "trial.onnx")
    finally:
        if given != source:
            given.unlink(missing_ok=True)
    dims = dict(dims)
    if decision is not None and not decision.dynamic:
        dims[decision.dim] = Dim.static(decision.dim, 1)
    initializers = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.input if v.name not in initializers]
    if len(kept) != len(model.graph.input):  # IR < 4 lists its weights as inputs: a copy lists run-time inputs only
        del model.graph.input[:]
        model.graph.input.extend(kept)
    specs, outputs = component.input_specs(ref), component.output_specs(ref)
    path = dest / "model.onnx"
    _name_dims(model, specs, outputs, dims, component.name, dest)
    onnx.save(model, str(path))  # external data references are kept as they are
    check_graph(path, component.name)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    imported: dict[str, Any] = {
        "source": component.graph.source,
        "file": source.name,
        "sha256": file_sha256(source),
        "reference": component.reference_kind,
    }
    if decision is not None:
        imported["batch"] = decision.to_json()
    if renamed:
        imported["renamed"] = renamed
    return component_record(
        ref, component, path, dims, external, precision=component.precision.dtype, opset=opset, imported=imported
    )

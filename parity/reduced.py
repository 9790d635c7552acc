"""Reduced-precision parity: PyTorch's own error in a dtype, the graph's dtype structure, and
the graphs a runtime here cannot execute.

PARITY.md's fp16 / bf16 rows compare the candidate with the fp32 PyTorch reference, and a
bound also holds when the candidate's error is at most twice PyTorch's own in that dtype.
PyTorch's own is measured by running the component's export wrapper with its precision policy
(:func:`exporters.precision.apply_precision`) eagerly on the same feeds: the function the graph
was traced from. Where the runtime cannot execute the graph (ONNX Runtime on CPU has no bf16
kernels, and rejects a bf16 Conv below opset 22 as an invalid model), the rows are ``not run``:
what is checked instead is that same PyTorch-in-dtype run against the same tolerance row, and
the graph's dtype structure (:func:`exporters.precision.graph_dtypes`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from exporters.precision import apply_precision, graph_dtypes
from zoo.contract import Component, Reference


class TorchInDtype:
    """The component's export wrapper computing in ``dtype`` with its precision policy, run
    eagerly under the component's export patches (as it was traced); named outputs like a backend."""

    def __init__(self, ref: Reference, component: Component, dtype: str, device: str | torch.device = "cpu") -> None:
        self.component = component
        self.dtype = dtype
        self.device = torch.device(device)
        self.outputs = [s.name for s in component.output_specs(ref)]
        make_wrapper, _ = component.traced()
        self.module = apply_precision(make_wrapper(ref).eval(), component.precision, dtype, component=component.name)

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with contextlib.ExitStack() as stack, torch.no_grad():
            for patch in self.component.export_patches:
                stack.enter_context(patch())
            out = self.module(**{k: v.to(self.device) for k, v in feeds.items()})
        if isinstance(out, torch.Tensor):
            out = (out,)
        if isinstance(out, Mapping):
            return {k: out[k] for k in self.outputs}
        return dict(zip(self.outputs, out, strict=True))


def runtime_refusal(error: BaseException, precision: str) -> str | None:
    """Why the runtime cannot execute a ``precision`` graph, when ``error`` (or the error it
    was raised from) is ONNX Runtime refusing one; None for anything else, which stays an error.

    ONNX Runtime raises, at session creation, ``onnxruntime.capi.onnxruntime_pybind11_state.
    NotImplemented`` ("NOT_IMPLEMENTED : Could not find an implementation for MatMul(13) node":
    no kernel of that type on the device) or ``...InvalidGraph`` naming ``tensor(bfloat16)``
    ("INVALID_GRAPH : This is an invalid model. Type Error: Type 'tensor(bfloat16)' of input
    parameter ... of operator (Conv)": the op's schema at the graph's opset has no such type).
    The backend re-raises them as :class:`zoo.errors.ArtifactError`, the original kept as its
    ``__context__``."""
    if precision == "float32":
        return None
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph
        from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NoKernel
    except ImportError:
        return None
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if isinstance(e, NoKernel) and "Could not find an implementation" in text:
            op = re.search(r"implementation for (\S+) node", text)
            return (
                f"onnxruntime here has no {precision} kernel for {op.group(1) if op else 'an op'} of this graph "
                f"(NOT_IMPLEMENTED)"
            )
        if isinstance(e, InvalidGraph) and f"tensor({precision})" in text:
            op = re.search(r"of operator \((\w+)\)", text)
            return (
                f"onnxruntime rejects the graph: {op.group(1) if op else 'an op'} in {precision} is not in that "
                f"op's schema at the graph's opset (INVALID_GRAPH)"
            )
        e = e.__cause__ or e.__context__
    return None


def structure_check(path: str | Path, precision: str) -> tuple[str, list[str]]:
    """The graph's dtype structure in one line, and why it does not compute in ``precision``
    (its initializers only, no weight is read)."""
    dtypes = graph_dtypes(path)
    return f"graph dtypes: {dtypes.summary(precision)}", dtypes.problems(precision)

"""A small ``onnx.helper`` graph builder for the families' stand-in graphs (``zoo random``): the
imported-graph families (unianimate-pose, wan-animate-pose) write ONNX files with exactly the real
models' inputs and outputs whose outputs are deterministic functions of the input, built op by op.

``onnx`` is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

# stand-ins' opset: in every TensorRT this zoo supports (10.0+ documents 9-20), ReduceSum's axes an input
STAND_IN_OPSET = 17


def const(name: str, value: np.ndarray | float | list[float] | list[int]) -> onnx.TensorProto:
    """An initializer ``name`` holding ``value``: integers as int64, everything else as float32."""
    from onnx import numpy_helper

    array = np.asarray(value)
    array = array.astype(np.int64 if array.dtype.kind in "iu" else np.float32)
    return numpy_helper.from_array(array, name)


class GraphBuilder:
    """Nodes and initializers of one graph, named in order (``{prefix}_c{i}`` initializers,
    ``{prefix}_{op}{n}`` outputs, ``{Op}_{n}`` nodes)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, value: np.ndarray | float | list[float] | list[int]) -> str:
        """Add an initializer (:func:`const`'s dtypes) and return its name."""
        name = f"{self.prefix}_c{len(self.initializers)}"
        self.initializers.append(const(name, value))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attributes: Any) -> str:
        """Add one node with one output (named ``output``, or after the node) and return that name."""
        from onnx import helper

        self.count += 1
        out = output or f"{self.prefix}_{op_type.lower()}{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{self.count}", **attributes))
        return out

    def pool(self, x: str, kernel: tuple[int, int], stride: int, pads: tuple[int, int]) -> str:
        """A windowed mean, the window centred on each output cell, padding not counted."""
        return self.op(
            "AveragePool",
            x,
            kernel_shape=list(kernel),
            strides=[stride, stride],
            pads=[pads[0], pads[1], pads[0], pads[1]],
            count_include_pad=0,
        )

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str
    ) -> onnx.ModelProto:
        """The ``onnx.ModelProto``: opset :data:`STAND_IN_OPSET`, IR version 8."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", STAND_IN_OPSET)], producer_name="zoo random"
        )
        model.ir_version = 8  # what ONNX Runtime and TensorRT of this zoo read
        return model


def sigmoid(g: GraphBuilder, x: str, gain: float, at: float, below: bool = False) -> str:
    """``sigmoid(gain * (x - at))`` (``below``: ``sigmoid(gain * (at - x))``)."""
    return g.op("Sigmoid", g.op("Mul", g.op("Sub", x, g.const(at)), g.const(-gain if below else gain)))

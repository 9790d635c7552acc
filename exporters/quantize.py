"""Quantized components: INT8 (SmoothQuant) and FP8 graphs with explicit Q/DQ.

NVIDIA Model Optimizer (``modelopt.torch.quantization``, the ``quantize`` extra) calibrates a copy of
the component's module while the family's own sampler runs on it (the caller's ``forward_loop``):
INT8 with its SmoothQuant preset, FP8 (E4M3) with its FP8 preset, both per-tensor activations and
per-output-channel weights, symmetric. What it found is read back as plain numbers per layer
(activation amax, weight amax, SmoothQuant's per-input-channel scale) and saved beside the graph
(``quantization.safetensors``). From those numbers and the unquantized module, :func:`quantized_module`
rebuilds the quantized module: every calibrated ``Linear`` / ``Conv`` becomes a layer whose two
quantizers are ``torch.library`` operators. In PyTorch their bodies are the exact simulation (what
parity compares the graph with: :func:`simulation`); in the ONNX export they are translated to the
standard ``QuantizeLinear`` / ``DequantizeLinear`` (zero point 0; weights stored quantized, per output
channel), which a strongly typed TensorRT engine follows. modelopt's own ONNX export is not used: with
the dynamo exporter it fails on the INT8 quantizer's data-dependent guard and the FP8 fake tensor,
and its FP8 graphs carry ``trt::`` operators that neither the ONNX checker nor ONNX Runtime accept.

What stays in high precision is each family's declaration (:class:`zoo.contract.Quantization`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import hashlib
import io
import json
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from exporters.manifest import Manifest
from zoo.contract import Component, Family, Reference
from zoo.errors import ExportError

SCALES = "quantization.safetensors"  # beside the component's model.onnx


@dataclasses.dataclass(frozen=True)
class Format:
    """A quantized number format: its range, its torch and ONNX types, the opset its Q/DQ need and
    the modelopt preset that calibrates it."""

    name: str
    qmax: float  # the largest magnitude (scale = amax / qmax)
    dtype: torch.dtype
    onnx_type: str  # onnx.TensorProto enum name
    opset: int
    preset: str  # attribute of modelopt.torch.quantization
    method: str

    @property
    def fp8(self) -> bool:
        return self.name == "fp8"


FORMATS: dict[str, Format] = {
    # opset 18 as the fp32 graphs: per-axis QuantizeLinear / DequantizeLinear exist since 13
    "int8": Format("int8", 127.0, torch.int8, "INT8", 18, "INT8_SMOOTHQUANT_CFG", "SmoothQuant (modelopt)"),
    # FLOAT8E4M3FN Q/DQ need opset 19; 20 is the highest every supported TensorRT documents
    "fp8": Format(
        "fp8", 448.0, torch.float8_e4m3fn, "FLOAT8E4M3FN", 20, "FP8_DEFAULT_CFG", "max calibration (modelopt)"
    ),
}


def format_of(name: str) -> Format:
    if name not in FORMATS:
        raise ExportError(f"--quantize {name}: expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


# --------------------------------------------------------------------------------------
# The quantizers: exact simulation in PyTorch, QuantizeLinear / DequantizeLinear in ONNX
# --------------------------------------------------------------------------------------


@torch.library.custom_op("zoo::quantize_dequantize", mutates_args=())
def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, fp8: bool) -> torch.Tensor:
    """``DequantizeLinear(QuantizeLinear(x, scale, 0), scale, 0)`` of ONNX, per tensor: x / scale
    rounded half to even and saturated to int8 (or rounded to the nearest E4M3 value, saturated at
    448), times scale."""
    if fp8:
        return torch.clamp(x / scale, -448.0, 448.0).to(torch.float8_e4m3fn).to(x.dtype) * scale
    return torch.clamp(torch.round(x / scale), -128.0, 127.0) * scale


@quantize_dequantize.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, fp8: bool) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("zoo::dequantize", mutates_args=())
def dequantize(w: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    """``DequantizeLinear(w, scale, axis=axis)`` of ONNX: a stored quantized weight times its scale
    per channel of ``axis``."""
    shape = [1] * w.dim()
    shape[axis] = -1
    return w.to(torch.float32) * scale.reshape(shape)


@dequantize.register_fake
def _(w: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.empty(w.shape, dtype=torch.float32, device=w.device)


def translations(fmt: Format) -> dict[Any, Callable[..., Any]]:
    """``torch.onnx.export``'s ``custom_translation_table`` for the two operators, at the format's opset."""
    from onnx import TensorProto, helper
    from onnxscript import opset18, opset20

    op: Any = opset20 if fmt.opset >= 20 else opset18
    zero = helper.make_tensor("zero_point", getattr(TensorProto, fmt.onnx_type), [], [0])

    def qdq(x: Any, scale: Any, fp8: bool) -> Any:
        zp = op.Constant(value=zero)
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zp), scale, zp)

    def dq(w: Any, scale: Any, axis: int) -> Any:
        return op.DequantizeLinear(w, scale, axis=axis)  # no zero point: 0 of the weight's type

    return {torch.ops.zoo.quantize_dequantize.default: qdq, torch.ops.zoo.dequantize.default: dq}


def _quantized_weight(w: torch.Tensor, amax: torch.Tensor, fmt: Format, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored weight in the format's dtype, per-channel scale) of ``w`` along ``axis``."""
    scale = (amax.reshape(-1).float() / fmt.qmax).clamp_min(torch.finfo(torch.float32).tiny)
    shape = [1] * w.dim()
    shape[axis] = -1
    q = w / scale.reshape(shape)
    if fmt.fp8:
        return torch.clamp(q, -fmt.qmax, fmt.qmax).to(fmt.dtype), scale
    return torch.clamp(torch.round(q), -128, 127).to(fmt.dtype), scale


def _input_scale(amax: torch.Tensor, fmt: Format) -> torch.Tensor:
    return (amax.float().reshape(()) / fmt.qmax).clamp_min(torch.finfo(torch.float32).tiny)


class QuantizedLinear(torch.nn.Module):
    """``y = DQ(Q(x * pre)) @ DQ(W_q)^T + b``: activations per tensor, weights per output channel
    (stored transposed, ``(in, out)``, so the graph is a MatMul on a DequantizeLinear of axis 1)."""

    def __init__(self, linear: torch.nn.Linear, scales: Mapping[str, torch.Tensor], fmt: Format) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        pre = scales.get("pre_quant_scale")
        if pre is not None:  # SmoothQuant: x * s and W / s, computed as modelopt does (the same bits)
            pre = pre.reshape(-1).float()
            w = w * (1.0 / pre)[None, :]
        q, scale = _quantized_weight(w.t().contiguous(), scales["weight_amax"], fmt, axis=1)
        self.fp8 = fmt.fp8
        self.register_buffer("weight_q", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("input_scale", _input_scale(scales["input_amax"], fmt))
        self.register_buffer("pre_quant_scale", pre)
        self.bias = linear.bias
        self.smoothed = pre is not None

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Linear's name: diffusers passes it by keyword
        x = input
        if self.smoothed:
            x = x * self.get_buffer("pre_quant_scale")
        x = torch.ops.zoo.quantize_dequantize(x, self.input_scale, self.fp8)
        y = torch.matmul(x, torch.ops.zoo.dequantize(self.weight_q, self.weight_scale, 1))
        return y if self.bias is None else y + self.bias


_CONVS = {torch.nn.Conv1d: "conv1d", torch.nn.Conv2d: "conv2d", torch.nn.Conv3d: "conv3d"}


class QuantizedConv(torch.nn.Module):
    """A convolution on ``DQ(Q(x))`` with ``DQ(W_q)`` (weights per output channel, axis 0)."""

    def __init__(self, conv: torch.nn.modules.conv._ConvNd, scales: Mapping[str, torch.Tensor], fmt: Format) -> None:
        super().__init__()
        q, scale = _quantized_weight(conv.weight.detach().float(), scales["weight_amax"], fmt, axis=0)
        self.fp8 = fmt.fp8
        self.function = _CONVS[type(conv)]
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.register_buffer("weight_q", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("input_scale", _input_scale(scales["input_amax"], fmt))
        self.bias = conv.bias

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Conv's name, as QuantizedLinear
        x = torch.ops.zoo.quantize_dequantize(input, self.input_scale, self.fp8)
        w = torch.ops.zoo.dequantize(self.weight_q, self.weight_scale, 0)
        conv = getattr(torch.nn.functional, self.function)
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)  # type: ignore[no-any-return]


def quantizable(module: torch.nn.Module) -> bool:
    """A layer this exporter quantizes: a Linear, or a Conv1d/2d/3d with zero padding given as numbers."""
    if type(module) in _CONVS:
        return getattr(module, "padding_mode", "zeros") == "zeros" and not isinstance(module.padding, str)
    return type(module) is torch.nn.Linear


def kept(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# --------------------------------------------------------------------------------------
# Scales: what calibration found, per layer; the module rebuilt from them
# --------------------------------------------------------------------------------------

Scales = dict[str, dict[str, torch.Tensor]]  # layer name -> input_amax, weight_amax[, pre_quant_scale]


def quantized_module(module: torch.nn.Module, scales: Scales, fmt: Format) -> torch.nn.Module:
    """A copy of ``module`` with each layer of ``scales`` replaced by its quantized layer."""
    out = copy.deepcopy(module)
    layers = dict(out.named_modules())
    missing = sorted(set(scales) - set(layers))
    if missing:
        raise ExportError(
            f"the quantization scales name layers the module lacks ({', '.join(missing[:3])}): they were "
            f"calibrated on another model; re-export"
        )
    for name, layer_scales in scales.items():
        layer = layers[name]
        parent_name, _, child = name.rpartition(".")
        parent = layers[parent_name] if parent_name else out
        if isinstance(layer, torch.nn.Linear):
            setattr(parent, child, QuantizedLinear(layer, layer_scales, fmt))
        elif isinstance(layer, torch.nn.modules.conv._ConvNd):
            setattr(parent, child, QuantizedConv(layer, layer_scales, fmt))
        else:
            raise ExportError(f"the quantization scales name {name}, a {type(layer).__name__}: not a Linear or a Conv")
    return out


def save_scales(path: Path, scales: Scales) -> None:
    from safetensors.torch import save_file

    flat = {f"{layer}::{key}": t.detach().float().contiguous() for layer, d in scales.items() for key, t in d.items()}
    save_file(flat, str(path), metadata={"format": "zoo quantization scales"})


def load_scales(path: Path) -> Scales:
    from safetensors.torch import load_file

    scales: Scales = {}
    for key, t in load_file(str(path)).items():
        layer, _, name = key.partition("::")
        scales.setdefault(layer, {})[name] = t
    return scales


def modelopt_quantization() -> Any:
    """``modelopt.torch.quantization`` (its import-time warning about untested transformers
    releases hidden: the zoo uses its torch quantizers only); :class:`ExportError` without it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise ExportError(
            f"--quantize needs NVIDIA Model Optimizer: pip install 'zoo[quantize]' ({type(e).__name__}: {e})"
        ) from None
    return mtq


def module_config(fmt: Format, keep: tuple[str, ...]) -> dict[str, Any]:
    """modelopt's preset for the format with the declaration's layers disabled; FP8 weights per
    output channel (the preset is per tensor)."""
    config: dict[str, Any] = copy.deepcopy(getattr(modelopt_quantization(), fmt.preset))
    entries = config["quant_cfg"]
    for entry in entries:
        if entry.get("quantizer_name") == "*weight_quantizer" and "cfg" in entry:
            entry["cfg"]["axis"] = 0
    entries += [{"quantizer_name": f"{p}*", "enable": False} for p in keep]
    return config


def calibrate(
    ref: Reference,
    component: Component,
    fmt: Format,
    forward_loop: Callable[[Reference], None],
) -> tuple[Scales, list[str]]:
    """Calibrate a copy of the component's module with modelopt while ``forward_loop`` runs the
    family's sampler on a reference holding that copy. Returns the scales of every quantized layer
    and the names of the quantizable layers left in high precision (declared, or not calibrated)."""
    mtq = modelopt_quantization()
    declaration = component.quantize
    assert declaration is not None
    original = dict(ref.module(component.module).named_modules())
    keep = declaration.patterns(ref.module(component.module))
    candidates = [n for n, layer in original.items() if n and quantizable(layer)]
    if not any(not kept(n, keep) for n in candidates):
        raise ExportError(
            f"component {component.name!r}: all of its {len(candidates)} Linear / Conv layers are declared to stay in "
            f"high precision ({', '.join(keep)}): there is nothing to quantize"
        )
    module = copy.deepcopy(ref.module(component.module)).float().eval()

    def loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            forward_loop(dataclasses.replace(ref, modules=ref.modules.with_module(component.module, m)))

    with _quiet_modelopt():
        mtq.quantize(module, module_config(fmt, keep), loop)
    scales: Scales = {}
    left: list[str] = []
    for name, layer in module.named_modules():
        iq, wq = getattr(layer, "input_quantizer", None), getattr(layer, "weight_quantizer", None)
        if iq is None or wq is None or not name:
            continue
        if not quantizable(original[name]) or kept(name, keep) or not (iq.is_enabled and wq.is_enabled):
            left.append(name)
            continue
        if iq.amax is None or wq.amax is None:  # never reached by the calibration inputs
            left.append(name)
            continue
        entry = {
            "input_amax": iq.amax.detach().float().reshape(()),
            "weight_amax": wq.amax.detach().float().reshape(-1),
        }
        pre = getattr(iq, "pre_quant_scale", None)
        if pre is not None and getattr(iq, "_enable_pre_quant_scale", True):
            entry["pre_quant_scale"] = pre.detach().float().reshape(-1)
        scales[name] = entry
    if not scales:
        raise ExportError(
            f"component {component.name!r}: calibration quantized no layer (every Linear / Conv is declared to stay "
            f"in high precision or was not reached by the calibration inputs)"
        )
    return scales, left


@contextlib.contextmanager
def _quiet_modelopt() -> Iterator[None]:
    """modelopt prints its progress and warns about its own defaults: hidden (errors still raise)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------
# What an export asks for, and the reference parity compares the graph with
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QuantizeRequest:
    """``zoo export --quantize``: the format, and the calibration. ``forward_loop(stage)`` returns
    the loop that runs the family's sampler over the calibration inputs on a reference (the
    runtime layer builds it from the staged fp32 export, whose manifest the sampler reads);
    ``inputs`` describes those inputs for the manifest (count, steps, seed, their hash)."""

    format: str
    forward_loop: Callable[[Manifest, Reference], Callable[[Reference], None]]
    inputs: Mapping[str, Any]


def quantized_components(family: Family, components: Iterable[str] | None) -> list[Component]:
    """The components ``--quantize`` applies to: those named (each must declare a quantization),
    else every component that declares one (the family must have one)."""
    if components:
        chosen = [family.component(c) for c in components]
        refused = [c.name for c in chosen if c.quantize is None]
        if refused:
            can = [c.name for c in family.components if c.quantize is not None]
            raise ExportError(
                f"--quantize: component {', '.join(refused)} of {family.name} cannot be quantized"
                + (f"; the ones that can: {', '.join(can)}" if can else f"; {family.name} has none")
            )
        return chosen
    chosen = [c for c in family.components if c.quantize is not None]
    if not chosen:
        raise ExportError(f"--quantize: family {family.name} has no component that can be quantized")
    return chosen


def check_quantize_options(
    family: Family,
    components: Iterable[str] | None,
    fmt: str,
    precision: str | None,
    weightless: bool | None,
) -> list[Component]:
    """Everything about ``--quantize`` that can be refused before a model is loaded."""
    chosen = quantized_components(family, components)
    f = format_of(fmt)
    for c in chosen:
        assert c.quantize is not None
        if f.name not in c.quantize.min_cosine:
            raise ExportError(
                f"--quantize {fmt}: component {c.name} of {family.name} declares {', '.join(c.quantize.min_cosine)} only"
            )
    if precision not in (None, "float32"):
        raise ExportError(
            f"--quantize {fmt} with --precision {precision}: a quantized graph computes in float32 between its "
            f"quantize / dequantize pairs (TensorRT picks its own kernels inside them); drop --precision"
        )
    if weightless:
        raise ExportError(
            f"--quantize {fmt} with --weightless: calibration runs the model, so its weights must be loaded, and the "
            f"quantized weights are new tensors the checkpoint does not hold; export with --load-weights"
        )
    if not family.has_sampler:
        raise ExportError(
            f"--quantize: family {family.name} has no sampler to calibrate with (calibration runs the family's own "
            f"sampler over its inputs)"
        )
    return chosen


def record_of(
    fmt: Format, component: Component, scales: Scales, left: list[str], inputs: Mapping[str, Any], seconds: float
) -> dict[str, Any]:
    """The manifest's ``quantization`` entry of a component."""
    assert component.quantize is not None
    return {
        "format": fmt.name,
        "method": fmt.method,
        "scales": f"{component.name}/{SCALES}",
        "layers": len(scales),
        "high_precision": sorted(left),
        "keep": list(component.quantize.keep) + [f"first and last of {n}" for n in component.quantize.keep_ends],
        "calibration": {**inputs, "seconds": round(seconds, 2)},
    }


def inputs_hash(items: Iterable[Any]) -> str:
    return hashlib.sha256(json.dumps(list(items), sort_keys=True, default=str).encode()).hexdigest()[:16]


def simulation(ref: Reference, component: Component, root: Path, record: Mapping[str, Any]) -> Reference:
    """The reference with the component's module quantized as the export says (its saved scales):
    what the Q/DQ graph computes, simulated in PyTorch."""
    fmt = format_of(record["format"])
    scales = load_scales(root / record["scales"])
    module = quantized_module(ref.module(component.module), scales, fmt)
    return dataclasses.replace(ref, modules=ref.modules.with_module(component.module, module))


def quantize_component(
    ref: Reference, component: Component, request: QuantizeRequest, forward_loop: Callable[[Reference], None]
) -> Quantized:
    """Calibrate ``component`` through ``forward_loop`` (the family's sampler over the calibration
    inputs) and return what its export needs."""
    fmt = format_of(request.format)
    start = time.perf_counter()
    scales, left = calibrate(ref, component, fmt, forward_loop)
    seconds = time.perf_counter() - start
    return Quantized(fmt, scales, record_of(fmt, component, scales, left, request.inputs, seconds))


@dataclasses.dataclass(frozen=True)
class Quantized:
    """A component's module quantized with calibrated ``scales``: what its export traces."""

    format: Format
    scales: Scales
    record: dict[str, Any]  # the manifest's ``quantization`` entry

    def reference(self, ref: Reference, component: Component) -> Reference:
        module = quantized_module(ref.module(component.module), self.scales, self.format)
        return dataclasses.replace(ref, modules=ref.modules.with_module(component.module, module))

    def translations(self) -> dict[Any, Callable[..., Any]]:
        return translations(self.format)

    def save(self, dest: Path) -> None:
        save_scales(dest / SCALES, self.scales)

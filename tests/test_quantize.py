"""zoo export --quantize int8|fp8: the Q/DQ graphs, their calibration, their parity rows, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_error, zoo
from onnx import numpy_helper

from exporters.manifest import load_manifest
from exporters.tensorrt import qdq_problems

CALIBRATION = ("--calibration-size", "2", "--calibration-steps", "2")
_QUANTIZED: dict[tuple[str, str, str], object] = {}


@pytest.fixture(scope="session")
def quantized(tmp_path_factory, tiny_checkpoint):
    """``quantized(family, fmt, component, *axes)`` -> the tiny checkpoint exported with ``--quantize
    fmt`` (only ``component`` when given, else every component; axis options), once per session."""

    def make(family: str, fmt: str, component: str = "", *axes: str):
        key = (family, fmt, component)
        if key not in _QUANTIZED:
            out = tmp_path_factory.mktemp(f"quantized-{family}-{fmt}") / "export"
            only = ("--component", component) if component else ()
            args = ("--model", tiny_checkpoint(family), "--out", out, "--quantize", fmt, *only, *axes, *CALIBRATION)
            result = zoo("export", family, *args)
            assert result.exit_code == 0, result.output
            _QUANTIZED[key] = out
        return _QUANTIZED[key]

    return make


def _parity(export, *extra):
    result = zoo("parity", export, "--json", *extra)
    return result, json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])


def _graph(export, component):
    return onnx.load(str(export / component / "model.onnx"))


def test_int8_graph_is_standard_symmetric_qdq(quantized):
    """The graph's quantization: QuantizeLinear / DequantizeLinear pairs with zero point 0 on the
    activations (per tensor), int8 weights dequantized per output channel, one pair per consumer;
    the declared layers left in high precision; TensorRT's Q/DQ rules hold."""
    export = quantized("pixart", "int8")
    record = load_manifest(export).component("transformer")
    quant = record.quantization
    assert quant["format"] == "int8" and quant["method"].startswith("SmoothQuant")
    assert record.opset == 18 and record.precision == "float32"
    kept = set(quant["high_precision"])
    assert {"pos_embed.proj", "caption_projection.linear_1", "adaln_single.linear", "proj_out"} <= kept
    model = _graph(export, "transformer")
    inits = {t.name: t for t in model.graph.initializer}
    nodes = model.graph.node
    quantizers = [n for n in nodes if n.op_type == "QuantizeLinear"]
    weights = [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weights) == quant["layers"] and len(quantizers) >= quant["layers"]
    for n in weights:  # stored int8, one scale per output channel (axis 1 of the (in, out) MatMul weight)
        w, scale = inits[n.input[0]], numpy_helper.to_array(inits[n.input[1]])
        axis = next(a.i for a in n.attribute if a.name == "axis")
        assert w.data_type == onnx.TensorProto.INT8 and axis == 1 and scale.shape == (w.dims[1],)
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    producers = {o: n for n in nodes for o in n.output}
    for q in quantizers:
        dq = [n for n in nodes if n.input and n.input[0] == q.output[0]]
        assert len(dq) == 1 and consumers[dq[0].output[0]] == 1  # its own pair per MatMul
        zero = numpy_helper.to_array(inits[q.input[2]] if q.input[2] in inits else producers[q.input[2]].attribute[0].t)
        assert zero.dtype == np.int8 and not zero.any()
    assert qdq_problems(model.graph, record.opset) == []
    # the scales saved beside the graph are what the manifest says
    assert (export / quant["scales"]).is_file()


def test_trt_lint_refuses_what_tensorrt_does_not_take(quantized):
    """The TensorRT Q/DQ lint fails a graph with a non-zero zero point, a computed scale or a
    per-channel activation quantizer (each named)."""
    model = _graph(quantized("pixart", "int8"), "transformer")
    inits = {t.name: t for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zp = model.graph.node.add()
    zp.CopyFrom(onnx.helper.make_node("Constant", [], ["bad_zp"], value=numpy_helper.from_array(np.int8(3), "bad_zp")))
    q.input[2] = "bad_zp"
    problems = qdq_problems(model.graph, 18)
    assert any("zero point not 0" in p for p in problems)
    scale = inits[q.input[1]]
    scale.CopyFrom(numpy_helper.from_array(np.full(4, 0.1, np.float32), scale.name))
    assert any("per channel" in p for p in qdq_problems(model.graph, 18))
    q.input[1] = "some_activation"
    assert any("scale is computed" in p for p in qdq_problems(model.graph, 18))


def test_pixart_int8_parity_rows_and_generation(quantized, tmp_path):
    """`zoo parity` of a quantized PixArt: at every profile point the graph against its torch
    simulation (tight) and against fp32 (the family's cosine), end to end against the fp32
    pipeline (PSNR); all pass. Then `zoo run` writes an image and `zoo build --dry-run` plans a
    strongly typed build."""
    export = quantized("pixart", "int8")
    result, report = _parity(export)
    assert result.exit_code == 0, result.output
    rows = [r for r in report["rows"] if r["component"] == "transformer" and r["level"] == "component"]
    sim = [r for r in rows if r["precision"] == "int8 vs simulation"]
    fp32 = [r for r in rows if r["precision"] == "int8 vs fp32"]
    assert len(sim) == len(fp32) >= 9 and all(r["status"] == "pass" for r in rows)
    assert max(1 - r["metrics"]["cosine"] for r in sim) < 1e-8  # the export of the quantizers, tight
    # quantization's own error: measurable, inside the declared bound
    assert 1e-7 < min(1 - r["metrics"]["cosine"] for r in fp32) and all(r["metrics"]["cosine"] >= 0.99 for r in fp32)
    e2e = [r for r in report["rows"] if r["level"] == "end_to_end"]
    assert e2e and all(r["precision"] == "int8 vs fp32" and r["status"] == "pass" for r in e2e)
    assert all(25.0 <= r["metrics"]["psnr"] < 200 for r in e2e)
    out = tmp_path / "fox.png"
    run = zoo("run", export, "--prompt", "a red fox", "--steps", "2", "--out", out)
    assert run.exit_code == 0 and out.is_file(), run.output
    dry = zoo("build", export, "--dry-run")
    assert dry.exit_code == 0 and "--stronglyTyped" in dry.output, dry.output


def test_simulation_row_catches_a_wrong_scale(quantized, tmp_path):
    """A graph whose weight scale of one layer is 50% off the saved one (an export bug) fails the
    simulation row while it stays within the bound against fp32: the tight row proves the export."""
    export = tmp_path / "export"
    shutil.copytree(quantized("pixart", "int8"), export, copy_function=os.link)
    path = export / "transformer" / "model.onnx"
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    scale = inits[dq[len(dq) // 2].input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.5), scale.name))
    path.unlink()  # a hard link to the session's export: replaced, not written through
    onnx.save(model, str(path))
    manifest = json.loads((export / "manifest.json").read_text())
    entry = manifest["components"]["transformer"]
    entry["size"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (export / "manifest.json").unlink()
    (export / "manifest.json").write_text(json.dumps(manifest))
    result, report = _parity(export, "--no-end-to-end")
    assert result.exit_code != 0
    sim = [r for r in report["rows"] if r["precision"] == "int8 vs simulation"]
    assert sim and all(r["status"] == "fail" for r in sim), [r["metrics"]["rel_l2"] for r in sim]
    fp32 = [r for r in report["rows"] if r["precision"] == "int8 vs fp32"]
    assert fp32 and all(r["status"] == "pass" for r in fp32)


def test_calibration_is_seeded(quantized):
    """The same calibration inputs give the same scales and a byte-identical graph: a second export
    of the transformer alone (its calibration runs the same sampler, the other components on the
    reference) writes the full export's bytes."""
    full, alone = quantized("pixart", "int8"), quantized("pixart", "int8", "transformer")
    assert list(load_manifest(alone).components) == ["transformer"]
    for name in ("model.onnx", "quantization.safetensors"):
        assert (full / "transformer" / name).read_bytes() == (alone / "transformer" / name).read_bytes(), name


def test_animatediff_unet_fp8_convolutions_and_parity(quantized):
    """FP8 (E4M3FN) on the AnimateDiff UNet: opset 20, its convolutions quantized too (FP8 weights
    per output channel, axis 0), conv_in / conv_out / time embedding / shortcuts kept; both rows
    pass at every profile point on ONNX Runtime CPU (it runs FP8 Q/DQ: no row is a not-run)."""
    export = quantized("animatediff", "fp8", "unet", "--frames", "4:8:8", "--height", "32", "--width", "32")
    record = load_manifest(export).component("unet")
    assert record.quantization["format"] == "fp8" and record.opset == 20
    kept = set(record.quantization["high_precision"])
    assert {"conv_in", "conv_out", "time_embedding.linear_1"} <= kept
    model = _graph(export, "unet")
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized_convs = [
        c for c in convs if c.input[1] in producers and producers[c.input[1]].op_type == "DequantizeLinear"
    ]
    assert quantized_convs and len(quantized_convs) < len(convs)
    for c in quantized_convs:
        dq = producers[c.input[1]]
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
        assert inits[dq.input[0]].data_type == onnx.TensorProto.FLOAT8E4M3FN
    assert qdq_problems(model.graph, 20) == []
    result, report = _parity(export)
    rows = [r for r in report["rows"] if r["component"] == "unet"]
    assert {r["precision"] for r in rows} == {"fp8 vs simulation", "fp8 vs fp32"}
    assert len(rows) >= 8 and all(r["status"] == "pass" for r in rows), result.output


# --- bad input: one error line, exit 2, nothing written ---------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (("pixart", "--quantize", "int8", "--component", "text_encoder"), "component text_encoder of pixart cannot be quantized"),
        (("transformer-temporal", "--quantize", "int8"), "has no component that can be quantized"),
        (("pixart", "--quantize", "fp8", "--precision", "bf16"), "drop --precision"),
        (("pixart", "--quantize", "int8", "--weightless"), "export with --load-weights"),
        (("pixart", "--quantize", "int8", "--calibration-size", "0"), "--calibration-size 0: expected at least 1"),
        (("pixart", "--quantize", "int8", "--calibration-size", "17"), "the built-in list has 16 prompts"),
        (("pixart", "--quantize", "int8", "--calibration-steps", "0"), "--calibration-steps 0"),
    ],
)  # fmt: skip
def test_bad_quantize_options(tmp_path, args, message):
    out = tmp_path / "out"
    result = zoo("export", args[0], "--tiny", "--out", out, *args[1:])
    assert_error(result, message)
    assert not out.exists()


@pytest.mark.parametrize(
    "content, size, message",
    [
        ("", None, "has no prompts"),
        ("\n  \n", None, "has no prompts"),
        (b"\xff\xfe\x00bad", None, "cannot be read as UTF-8 text"),
        ("one prompt\nanother\n", "3", "has 2 prompts (one per non-empty line), fewer than --calibration-size 3"),
        (None, None, "no such file or folder"),
    ],
)
def test_bad_calibration_file(tmp_path, content, size, message):
    path = tmp_path / "prompts.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    extra = ("--calibration-size", size) if size else ()
    result = zoo("export", "pixart", "--tiny", "--out", out, "--quantize", "int8", "--calibration", path, *extra)
    assert_error(result, message)
    assert not out.exists()


def test_calibration_without_quantize_is_a_usage_error(tmp_path):
    result = zoo("export", "pixart", "--tiny", "--out", tmp_path / "out", "--calibration-size", "4")
    assert result.exit_code == 2 and "--calibration and --calibration-size are for --quantize" in result.output


def test_quantized_module_matches_modelopt_fake_quant():
    """The rebuilt quantized Linear computes what modelopt's calibrated module computes (its own
    fake quantization), on a layer calibrated here: the scales are read back correctly."""
    from exporters.quantize import FORMATS, QuantizedLinear, modelopt_quantization, module_config

    mtq = modelopt_quantization()
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(16, 8))
    original = torch.nn.Linear(16, 8)
    original.load_state_dict(layer[0].state_dict())
    data = [torch.randn(4, 16) * torch.linspace(0.1, 3, 16) for _ in range(4)]
    mtq.quantize(layer, module_config(FORMATS["int8"], ()), lambda m: [m(x) for x in data])
    iq, wq = layer[0].input_quantizer, layer[0].weight_quantizer
    scales = {"input_amax": iq.amax, "weight_amax": wq.amax, "pre_quant_scale": iq.pre_quant_scale}
    ours = QuantizedLinear(original, scales, FORMATS["int8"])
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected, got = layer(x), ours(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5), (got - expected).abs().max()


def test_calibration_folder_of_requests(tmp_path):
    """``--calibration DIR``: one JSON request per file, zoo run's options checked as a served
    request's, paths relative to the folder; a bad file is one error naming it."""
    from runtimes.calibration import read_calibration
    from zoo.errors import InputError
    from zoo.registry import get_family

    family = get_family("unianimate-dit")
    folder = tmp_path / "requests"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.json").write_text(
            json.dumps({"prompt": f"dancer {i}", "image": "ref.png", "pose_video": "pose", "ref_pose": "pose.jpg"})
        )
    inputs = read_calibration(folder, None, family)
    assert [o["prompt"] for o in inputs.options] == ["dancer 0", "dancer 1"] and not inputs.prompts_only
    assert inputs.options[0]["image"] == folder / "ref.png"
    assert len(read_calibration(folder, 1, family).options) == 1
    with pytest.raises(InputError, match="has 2 requests"):
        read_calibration(folder, 3, family)
    (folder / "2.json").write_text('{"prompt": "no image"}')
    with pytest.raises(InputError, match=r"2\.json: .*--image"):
        read_calibration(folder, None, family)
    (folder / "2.json").write_text("[1, 2")
    with pytest.raises(InputError, match=r"2\.json: not a JSON request"):
        read_calibration(folder, None, family)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="has no requests"):
        read_calibration(empty, None, family)

"""Reduced-precision graphs (fp16 / bf16 with fp32 islands) and their parity checks."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from conftest import zoo

from exporters.onnx import OPSET, dynamic_shapes, example_point
from exporters.precision import (
    HEAVY_OPS,
    PRECISIONS,
    apply_precision,
    graph_dtypes,
    parse_precision,
    pattern_matches,
    plan_precision,
    precision_of,
)
from parity.compare import component_parity
from parity.metrics import compare
from parity.reduced import runtime_refusal
from parity.report import NOT_RUN, PASS, format_table, report_json
from parity.tolerances import Tolerance, tolerance
from zoo.contract import Precision
from zoo.errors import ArtifactError, ExportError
from zoo.infra.hashing import file_sha256
from zoo.registry import get_family


def _tiny(tiny_checkpoint, family: str, component: str, variant: str | None = None):
    """(reference, component, feeds at the trace point) of a tiny random model."""
    fam = get_family(family)
    ref = fam.load(tiny_checkpoint(family, variant))
    comp = fam.component(component)
    feeds = comp.sample_inputs(ref, example_point(comp.dims(fam.envelope(ref), ref)))
    return ref, comp, feeds


def _first(out):
    return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------------------
# Names, patterns and the plan
# --------------------------------------------------------------------------------------


def test_precision_names():
    assert PRECISIONS == {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    assert parse_precision("bf16") == "bfloat16" and parse_precision("float16") == "float16"
    with pytest.raises(ExportError, match=r"--precision 'int8': expected one of fp32, fp16, bf16"):
        parse_precision("int8")
    assert precision_of(Precision(keep_fp32=("*",)), "bfloat16") == "float32"  # a VAE stays fp32 whole
    assert precision_of(Precision(keep_fp32=("norm",)), "bf16") == "bfloat16"
    assert precision_of(Precision()) == "float32"


@pytest.mark.parametrize(
    "pattern, path, expected",
    [
        ("norm", "model.transformer_blocks.0.norm1", True),
        ("norm", "unet.conv_norm_out", True),
        ("norm", "transformer.norm_out", True),
        ("norm", "blocks.0.attn1.norm_q", True),
        ("norm", "encoder.final_layer_norm", True),
        ("norm", "model.normalize", False),
        ("norm", "model.denorm", False),
        ("norm", "model.norm2d", False),
        ("layer_norm", "encoder.layers.1.layer_norm2", True),
        ("layer_norm", "encoder.norm", False),
        ("DenseReluDense.wo", "encoder.block.3.layer.1.DenseReluDense.wo", True),
        ("DenseReluDense.wo", "encoder.block.3.layer.1.DenseReluDense.wi", False),
        ("scale_shift_table", "transformer.blocks.0.scale_shift_table", True),
        ("q_t", "q_t", True),
        ("q_t", "seq_tokens", False),
        ("rope", "transformer.rope", True),
        ("rope", "transformer.europe", False),
    ],
)
def test_pattern_semantics(pattern, path, expected):
    assert pattern_matches(pattern, path) is expected


def test_every_declared_policy_matches_what_its_note_says(tiny_checkpoint):
    """Each pattern of the families' policies matches the modules its note names (a typo raises)."""
    fam = get_family("pixart")
    ref = fam.load(tiny_checkpoint("pixart"))
    plan = plan_precision(fam.component("transformer").wrapper(ref), fam.component("transformer").precision, "bfloat16")
    assert plan.matches["adaln_single"] == ("model.adaln_single",)
    assert plan.matches["pos_embed"] == ("model.pos_embed", "pos_embed_omega")  # the wrapper's sin-cos frequencies
    assert all(
        type(fam.component("transformer").wrapper(ref).get_submodule(n)).__name__ == "LayerNorm"
        for n in plan.matches["norm"]
    )
    plan = plan_precision(
        fam.component("text_encoder").wrapper(ref), fam.component("text_encoder").precision, "float16"
    )
    assert plan.matches["DenseReluDense.wo"] and all(
        n.endswith("DenseReluDense.wo") for n in plan.matches["DenseReluDense.wo"]
    )


def test_unknown_pattern_raises_naming_pattern_and_component(tiny_checkpoint):
    ref, comp, _ = _tiny(tiny_checkpoint, "transformer-temporal", "transformer")
    policy = Precision(keep_fp32=("nrom", "norm"))
    with pytest.raises(ExportError) as e:
        apply_precision(comp.wrapper(ref), policy, "bfloat16", component="transformer")
    text = str(e.value)
    assert "component 'transformer'" in text and "'nrom'" in text and "close names: norm" in text
    assert "'norm' (close" not in text  # only the typo is named


def test_float32_and_whole_fp32_policies_return_the_wrapper(tiny_checkpoint):
    ref, comp, _ = _tiny(tiny_checkpoint, "transformer-temporal", "transformer")
    wrapper = comp.wrapper(ref)
    assert apply_precision(wrapper, comp.precision, "float32") is wrapper
    assert apply_precision(wrapper, Precision(keep_fp32=("*",)), "bfloat16") is wrapper


# --------------------------------------------------------------------------------------
# The module computing in the reduced dtype
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, component, islands, reduced_layer",
    [
        (
            "pixart",
            "transformer",
            ("model.adaln_single", "model.pos_embed", "model.transformer_blocks.0.norm1"),
            "model.transformer_blocks.0.attn1.to_q",
        ),
        (
            "animatediff",
            "unet",
            ("unet.time_embedding", "unet.down_blocks.0.resnets.0.norm1", "unet.conv_norm_out"),
            "unet.down_blocks.0.resnets.0.conv1",
        ),
    ],
)
def test_bf16_module_has_reduced_layers_and_fp32_islands(tiny_checkpoint, family, component, islands, reduced_layer):
    ref, comp, feeds = _tiny(tiny_checkpoint, family, component)
    wrapper = comp.wrapper(ref).eval()
    model = apply_precision(wrapper, comp.precision, "bfloat16", component=component)

    assert model.get_submodule(reduced_layer).weight.dtype == torch.bfloat16
    for name in islands:
        assert all(p.dtype == torch.float32 for p in model.get_submodule(name).parameters()), name
    matmuls = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert sum(w.dtype == torch.bfloat16 for w in matmuls) > len(matmuls) // 2  # most of the FLOPs are reduced
    assert all(p.dtype == torch.float32 for p in wrapper.parameters())  # the fp32 reference is untouched

    with torch.no_grad():
        expected = _first(wrapper(**feeds))
        got = _first(model(**feeds))
    assert got.dtype == torch.float32 and got.shape == expected.shape  # graph outputs keep their dtype
    m = compare(got, expected)
    assert not tolerance("denoiser", "bfloat16").failures(m), m  # close: the bf16 row holds
    assert m.max_abs > 1e-3 and m.rel_l2 > 1e-3  # and really computed in bf16, not fp32


def test_t5_wo_island_keeps_its_output_fp32_in_fp16(tiny_checkpoint):
    """transformers upcasts before ``wo`` (the fp16 overflow the PixArt policy is for): the island
    hands fp32 back, so the feed-forward's output never passes through fp16."""
    ref, comp, feeds = _tiny(tiny_checkpoint, "pixart", "text_encoder")
    model = apply_precision(comp.wrapper(ref).eval(), comp.precision, "float16", component="text_encoder")
    seen = []
    wo = model.get_submodule("model.encoder.block.0.layer.1.DenseReluDense.wo")
    wo.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.no_grad():
        out = model(**feeds)
    assert seen == [(torch.float32, torch.float32)] and out.dtype == torch.float32
    assert model.get_submodule("model.encoder.block.0.layer.0.SelfAttention.q").weight.dtype == torch.float16


def test_timestep_stays_fp32_on_entry(tiny_checkpoint):
    """A timestep rounded to bf16 moves (999 -> 1000): per-sample scalars enter in fp32."""
    ref, comp, feeds = _tiny(tiny_checkpoint, "pixart", "transformer")
    model = apply_precision(comp.wrapper(ref).eval(), comp.precision, "bfloat16")
    seen = {}
    model.get_submodule("model.adaln_single").register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(t=args[0]), with_kwargs=True
    )
    feeds["timestep"] = torch.full_like(feeds["timestep"], 999.0)
    with torch.no_grad():
        model(**feeds)
    assert seen["t"].dtype == torch.float32 and bool((seen["t"] == 999.0).all())


def test_meta_parameters_are_cast_without_reading_values(tiny_checkpoint):
    ref, comp, feeds = _tiny(tiny_checkpoint, "transformer-temporal", "transformer")
    wrapper = comp.wrapper(ref).eval().to("meta")
    model = apply_precision(wrapper, comp.precision, "bfloat16")
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(p.device.type == "meta" for p in model.parameters())
    assert dtypes["model.proj_in.weight"] == torch.bfloat16 and dtypes["model.norm.weight"] == torch.float32
    with torch.no_grad():
        out = model(**{k: v.to("meta") for k, v in feeds.items()})
    assert out.device.type == "meta" and out.dtype == torch.float32


# --------------------------------------------------------------------------------------
# "At most twice PyTorch's own error in that dtype"
# --------------------------------------------------------------------------------------


def _with_error(reference: torch.Tensor, direction: torch.Tensor, rel: float) -> torch.Tensor:
    """``reference`` plus a perturbation orthogonal to it of relative L2 norm ``rel``."""
    return reference + direction * (rel * reference.norm() / direction.norm())


def test_twice_torch_rule_accepts_within_2x_and_rejects_beyond():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(4096, generator=gen, dtype=torch.float64)
    n = torch.randn(4096, generator=gen, dtype=torch.float64)
    n -= (n @ r) / (r @ r) * r  # orthogonal: 1 - cos = 1 - 1 / sqrt(1 + rel^2)
    tol = tolerance("denoiser", "bfloat16")  # cos >= 0.998, rel-L2 <= 6e-2
    own = compare(_with_error(r, n, 0.05), r)  # PyTorch in bf16 itself: within the row
    assert not tol.failures(own)

    near = compare(_with_error(r, n, 0.065), r)  # breaks both fixed bounds, within twice PyTorch's
    assert len(tol.failures(near)) == 2
    assert tol.failures(near, own, "bfloat16") == []
    notes = tol.held_by_torch(near, own, "bfloat16")
    assert len(notes) == 2 and "within twice PyTorch in bfloat16" in notes[0]

    far = compare(_with_error(r, n, 0.09), r)  # 1 - cos 4e-3 > 2 x 1.25e-3: fails; rel-L2 0.09 <= 0.1 holds
    (failure,) = tol.failures(far, own, "bfloat16")
    assert (
        failure.startswith("cosine")
        and "PyTorch in bfloat16 has 1 - cosine 0.00125, twice that would be 0.0025" in failure
    )

    psnr = Tolerance(min_psnr=35.0)  # twice the RMS error = 6.02 dB lower
    own = compare(_with_error(r, n, 0.02), r, data_range=2.0)
    assert psnr.failures(compare(_with_error(r, n, 0.039), r, data_range=2.0), own) == []
    assert psnr.failures(compare(_with_error(r, n, 0.041), r, data_range=2.0), own)

    nan = compare(torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0]))
    assert tol.failures(nan, own) == ["1 NaN / 0 Inf in the candidate"]  # never rescued
    torch_nan = compare(torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0]))
    assert tol.failures(near, torch_nan, "bfloat16")  # a NaN yardstick rescues nothing


def test_rows_show_both_errors_and_a_failing_stand_in_fails_a_row_that_did_not_run():
    from parity.compare import _not_run_rows, _rows_for

    gen = torch.Generator().manual_seed(1)
    r = torch.randn(2, 64, 64, generator=gen)
    n = torch.randn(2, 64, 64, generator=gen)
    n -= (n * r).sum() / (r * r).sum() * r
    tol = tolerance("denoiser", "bfloat16")
    own = {"sample": _with_error(r, n, 0.05)}
    (row,) = _rows_for(
        "component",
        "transformer",
        "opt",
        "-",
        {"sample": _with_error(r, n, 0.065)},
        {"sample": r},
        tol,
        precision="bfloat16",
        own=own,
    )
    assert row.status == PASS and len(row.notes) == 2 and row.torch_metrics.rel_l2 == pytest.approx(0.05, rel=1e-3)
    assert "within twice PyTorch in bfloat16" in format_table([row])
    assert report_json([row])["rows"][0]["torch_metrics"]["rel_l2"] == pytest.approx(0.05, rel=1e-3)

    def not_run(own_rel: float):
        (row,) = _not_run_rows(
            "component",
            "transformer",
            "opt",
            "-",
            {"sample": r},
            tol,
            None,
            precision="bfloat16",
            reason="no kernel",
            own={"sample": _with_error(r, n, own_rel)},
            own_problem=None,
            structure="graph dtypes: ...",
            problems=[],
        )
        return row

    assert not_run(0.05).status == NOT_RUN and not not_run(0.05).ok
    bad = not_run(0.2)  # PyTorch itself in bf16 breaks the row: the policy fails, whatever the runtime
    assert bad.status == "fail" and bad.failures[0].startswith(
        "PyTorch in bfloat16 with the precision policy (checked instead)"
    )


# --------------------------------------------------------------------------------------
# Exported graphs and their parity
# --------------------------------------------------------------------------------------


def _trace(ref, component, dims, dtype: str, path: Path) -> None:
    """``component``'s wrapper in ``dtype`` traced to ``path`` (without the exporter's checks)."""
    wrapper = apply_precision(component.wrapper(ref).eval(), component.precision, dtype, component=component.name)
    specs, outputs = component.input_specs(ref), component.output_specs(ref)
    feeds = component.sample_inputs(ref, example_point(dims))
    with contextlib.ExitStack() as stack, torch.no_grad():
        for patch in component.export_patches:
            stack.enter_context(patch())
        program = torch.onnx.export(
            wrapper,
            (),
            kwargs=feeds,
            dynamic_shapes=dynamic_shapes(specs, dims),
            input_names=[s.name for s in specs],
            output_names=[s.name for s in outputs],
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))


def _reduce(export: Path, name: str, dtype: str) -> Path:
    """Replace component ``name``'s graph in ``export`` by one computing in ``dtype`` and record
    that precision in the manifest, as `zoo export --precision` writes them."""
    from exporters.manifest import load_manifest
    from runtimes.backends import load_reference

    manifest = load_manifest(export)
    ref = load_reference(manifest)
    path = export / manifest.component(name).file
    _trace(ref, get_family(manifest.family).component(name), manifest.component(name).dims, dtype, path)
    data = json.loads((export / "manifest.json").read_text())
    data["components"][name].update(precision=dtype, size=path.stat().st_size, sha256=file_sha256(path))
    (export / "manifest.json").write_text(json.dumps(data))
    return path


def test_fp16_graph_runs_in_onnxruntime_and_passes_the_fp16_row(copied_export):
    path = _reduce(copied_export, "transformer", "float16")
    dtypes = graph_dtypes(path)
    assert dtypes.count(HEAVY_OPS, "float16") > 0 and dtypes.count(HEAVY_OPS, "float32") == 0
    assert dtypes.count(("LayerNormalization", "InstanceNormalization"), "float32") > 0  # the norm islands
    assert dtypes.count(("LayerNormalization", "InstanceNormalization"), "float16") == 0
    assert dtypes.initializers.get("float16", 0) > dtypes.initializers.get("float32", 0)

    rows = component_parity(copied_export)
    assert rows and all(r.status == PASS for r in rows), format_table(rows)
    assert {r.precision for r in rows} == {"float16"}
    assert all(r.tolerance == tolerance("denoiser", "float16") for r in rows)
    for r in rows:  # both numbers: the graph's error and PyTorch's own in fp16
        assert r.torch_metrics is not None and 0 < r.torch_metrics.rel_l2 < 3e-2
        assert 0 < r.metrics.rel_l2 < 3e-2
    assert "torch" in format_table(rows).splitlines()[0]


def test_bf16_graph_onnxruntime_cannot_run_is_not_run_never_pass(copied_export, tmp_path):
    path = _reduce(copied_export, "transformer", "bfloat16")
    assert graph_dtypes(path).count("MatMul", "bfloat16") > 0

    rows = component_parity(copied_export)
    assert rows and all(r.status == NOT_RUN and not r.ok for r in rows), format_table(rows)
    r = rows[0]
    assert "no bfloat16 kernel" in r.not_run and "NOT_IMPLEMENTED" in r.not_run and r.metrics is None
    assert r.checked_instead[0].startswith("PyTorch in bfloat16 with the precision policy vs the fp32 reference")
    assert r.checked_instead[0].endswith("within") and r.checked_instead[1].startswith(
        "graph dtypes: MatMul/Gemm/Conv:"
    )
    assert r.torch_metrics is not None and r.torch_metrics.cosine > 0.998
    report = report_json(rows)
    assert report["passed"] == 0 and report["not_run"] == len(rows) and report["complete"] is False
    text = format_table(rows)
    verdict = (
        f"nothing ran: {len(rows)} checks not run (0 passed, 0 failed; the NOT RUN lines say why; not a full pass)"
    )
    assert "NOT RUN" in text and text.splitlines()[-1] == verdict

    result = zoo("parity", copied_export, "--no-end-to-end")  # exit 3: nothing failed, not everything ran
    assert result.exit_code == 3 and result.output.strip().splitlines()[-1] == verdict, result.output
    assert (
        "NOT RUN component transformer sample at" in result.output
        and "onnxruntime here has no bfloat16 kernel" in result.output
    )
    assert "error:" not in result.output
    written = json.loads((copied_export / "parity.json").read_text())
    assert written["not_run"] == len(rows) and written["passed"] == 0


def test_bf16_conv_is_an_invalid_model_for_onnxruntime(tmp_path):
    """A bf16 Conv is not in Conv's schema below opset 22: ONNX Runtime refuses the session with
    INVALID_GRAPH; parity reads that (through the backend's ArtifactError) as a graph it cannot run."""
    import onnxruntime as ort

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.norm = torch.nn.GroupNorm(2, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.conv(x))

    model = apply_precision(Block().eval(), Precision(keep_fp32=("norm",)), "bfloat16")
    path = tmp_path / "block.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(1, 4, 8, 8),),
            input_names=["x"],
            output_names=["y"],
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        ).save(str(path))
    dtypes = graph_dtypes(path)
    assert dtypes.count("Conv", "bfloat16") == 1 and dtypes.count("InstanceNormalization", "float32") == 1

    error = wrapped = None
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # what OnnxRuntimeBackend does with it
        error = e
        try:
            raise ArtifactError(f"onnxruntime could not load {path}: {str(e).splitlines()[0]}") from None
        except ArtifactError as a:
            wrapped = a
    assert type(error).__name__ == "InvalidGraph" and "tensor(bfloat16)" in str(error)
    reason = runtime_refusal(wrapped, "bfloat16")
    assert reason is not None and "Conv in bfloat16" in reason and "INVALID_GRAPH" in reason
    assert runtime_refusal(error, "float32") is None  # an fp32 graph it rejects is broken, not unsupported
    assert runtime_refusal(ArtifactError("model.onnx is truncated"), "bfloat16") is None

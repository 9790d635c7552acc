"""Parity: metrics, tolerances, and the whole suite on exports, passing and failing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import perturb_graph
from parity.compare import component_parity, run_parity
from parity.metrics import compare
from parity.report import format_table, report_json
from parity.tolerances import TABLE, Tolerance, tolerance


def test_metrics_on_known_values():
    r = torch.tensor([1.0, -1.0, 0.5, 0.0])
    m = compare(r.clone(), r)
    assert (m.max_abs, m.mean_abs, m.rel_l2, m.nan, m.inf) == (0.0, 0.0, 0.0, 0, 0)
    assert m.cosine == pytest.approx(1.0) and m.psnr == float("inf")
    c = r + torch.tensor([0.1, 0.0, 0.0, 0.0])
    m = compare(c, r, data_range=2.0)
    assert m.max_abs == pytest.approx(0.1) and m.mean_abs == pytest.approx(0.025)
    assert m.psnr == pytest.approx(10 * np.log10(4 / (0.01 / 4)))
    m = compare(torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0]))
    assert m.nan == 1
    with pytest.raises(ValueError, match=r"shape \(2,\) vs reference \(3,\)"):
        compare(torch.zeros(2), torch.zeros(3))


def test_tolerance_failure_names_the_passing_bound():
    tol = Tolerance(atol=1e-4, rtol=1e-3)
    m = compare(torch.tensor([1.01]), torch.tensor([1.0]), rtol=1e-3)
    (failure,) = tol.failures(m)
    assert failure.startswith("needs atol 0.009") and "(allowed atol 0.0001)" in failure
    tol = Tolerance(min_psnr=50.0)
    (failure,) = tol.failures(compare(torch.tensor([0.1, 0.0]), torch.tensor([0.0, 0.0]), data_range=2.0))
    assert "< 50 dB (would pass with min_psnr" in failure
    assert Tolerance(max_abs=1e-3).failures(compare(torch.tensor([float("inf")]), torch.tensor([0.0]))) == ["0 NaN / 1 Inf in the candidate"]


def test_table_matches_parity_md():
    assert tolerance("denoiser", "float32", "tiny") == Tolerance(atol=1e-4, rtol=1e-3)
    assert tolerance("denoiser", "float32", "full") == Tolerance(atol=2e-3, rtol=1e-2)
    assert tolerance("text_encoder", "float32", "full") == Tolerance(min_cosine=0.99999)
    assert tolerance("vae_decoder", "float32", "full") == Tolerance(min_psnr=50.0)
    assert tolerance("vae_decoder", "bfloat16", "full") == Tolerance(min_psnr=35.0)
    assert tolerance("end_to_end", "float32", "tiny") == Tolerance(max_abs=1e-3)
    assert set(TABLE) >= {"text_encoder", "image_encoder", "denoiser", "vae_encoder", "vae_decoder", "end_to_end"}


@pytest.mark.parametrize("family, variant", [("pixart", "sigma"), ("pixart", "alpha-1024"), ("transformer-temporal", "single-group"), ("transformer-temporal", "sinusoidal")])
def test_exports_pass_parity_at_every_point(tiny_export, family, variant):
    rows = run_parity(tiny_export(family, variant))
    failed = [r for r in rows if not r.ok]
    assert not failed, format_table(failed)
    components = {r.component for r in rows if r.level == "component"}
    assert components == {"text_encoder", "transformer", "vae_decoder"} if family == "pixart" else {"transformer"}
    points = {r.point for r in rows if r.component == "transformer" and r.level == "component"}
    assert {"opt", "all-min", "all-max", "corner", "interior", "portrait", "landscape"} <= points
    if family == "pixart":
        levels = [r.level for r in rows]
        assert levels.count("trajectory") == 3 and levels.count("end_to_end") == 1
    report = report_json(rows, family=family)
    assert report["failed"] == 0 and report["passed"] == len(rows)
    json.dumps(report)


def test_wrong_graph_fails_parity_naming_component_and_shape(tiny_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_export("transformer-temporal", "default"), out)
    noise = np.random.default_rng(0).standard_normal
    perturb_graph(out, "transformer", lambda w: w + 0.05 * noise(w.shape).astype(w.dtype))

    rows = component_parity(out)
    failed = [r for r in rows if not r.ok]
    assert failed and all(r.component == "transformer" and r.output == "sample" for r in failed)
    text = format_table(rows)
    assert "FAIL component transformer sample at opt batch=2 frames=8 height=8 width=8: needs atol" in text
    assert text.splitlines()[-1] == f"{len(rows) - len(failed)} passed, {len(failed)} failed"

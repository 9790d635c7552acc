"""Parity: metrics, tolerances, and the whole suite on exports, passing and failing."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import perturb_graph, zoo

from parity.compare import component_parity, run_parity
from parity.metrics import compare
from parity.report import format_table, report_json
from parity.tolerances import TABLE, Tolerance, tolerance
from zoo.registry import get_family


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
    assert Tolerance(max_abs=1e-3).failures(compare(torch.tensor([float("inf")]), torch.tensor([0.0]))) == [
        "0 NaN / 1 Inf in the candidate"
    ]


def test_table_matches_parity_md():
    assert tolerance("denoiser", "float32", "tiny") == Tolerance(atol=1e-4, rtol=1e-3)
    assert tolerance("denoiser", "float32", "full") == Tolerance(atol=2e-3, rtol=1e-2)
    assert tolerance("text_encoder", "float32", "full") == Tolerance(min_cosine=0.99999)
    assert tolerance("vae_decoder", "float32", "full") == Tolerance(min_psnr=50.0)
    assert tolerance("vae_decoder", "bfloat16", "full") == Tolerance(min_psnr=35.0)
    assert tolerance("end_to_end", "float32", "tiny") == Tolerance(max_abs=1e-3)
    assert set(TABLE) >= {"text_encoder", "image_encoder", "denoiser", "vae_encoder", "vae_decoder", "end_to_end"}


@pytest.mark.parametrize(
    "family, variant",
    [
        ("pixart", "alpha-1024"),
        ("transformer-temporal", "single-group"),
        ("transformer-temporal", "sinusoidal"),
    ],
)
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


def test_pixart_sigma_passes_parity_at_every_point(parity_report):
    """The first variant's rows: the session's parity report of the cached export (the conformance
    battery's run, which holds every family to its profile points; these are PixArt's own counts)."""
    result, report = parity_report("pixart", "sigma")
    rows = report["rows"]
    assert result.exit_code == 0 and report["family"] == "pixart" and report["variant"] == "sigma"
    failed = [r for r in rows if r["status"] != "pass"]
    assert not failed, failed
    assert {r["component"] for r in rows if r["level"] == "component"} == {"text_encoder", "transformer", "vae_decoder"}
    points = {r["point"] for r in rows if r["component"] == "transformer" and r["level"] == "component"}
    assert {"opt", "all-min", "all-max", "corner", "interior", "portrait", "landscape"} <= points
    levels = [r["level"] for r in rows]
    assert levels.count("trajectory") == 3 and levels.count("end_to_end") == 1
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


# --------------------------------------------------------------------------------------
# Rounding points: a tensor the family rounds to bf16 on purpose is compared to one ulp
# --------------------------------------------------------------------------------------


def _straddling(n: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Values exactly on bf16 rounding boundaries (midpoints of neighbours in [0.5, 1)), and the
    same values 1e-7 below and above them: two correct fp32 results that the bf16 rounding sends
    one ulp (2^-8 here) apart."""
    low = 0.5 + torch.arange(n, dtype=torch.float32) * 2.0**-8  # bf16 values, spacing 2^-8
    boundary = low + 2.0**-9
    return boundary, (boundary - 1e-7).bfloat16().float(), (boundary + 1e-7).bfloat16().float()


def test_rounding_bound_on_values_straddling_a_boundary():
    from parity.tolerances import rounding_tolerance

    _, below, above = _straddling()
    assert torch.equal(above - below, torch.full_like(above, 2.0**-8))  # every element flipped by one ulp
    row = tolerance("image_encoder")  # atol 1e-4, rtol 1e-3: broken by the flips as such
    (failure,) = row.failures(compare(above, below, rtol=row.rtol))
    assert failure.startswith("needs atol 0.00") and failure.endswith("(allowed atol 0.0001)")
    trajectory = tolerance("trajectory")  # max abs 1e-3: the 0.0039 the trajectory rows measured
    assert trajectory.failures(compare(above, below)) == ["max abs 0.00391 > 0.001 (would pass with max_abs 0.00391)"]

    tol = rounding_tolerance(row, "bfloat16")
    assert (
        str(tol) == "atol 0.0001 rtol 0.001 + 1 bfloat16 ulp" and tolerance("image_encoder") == row
    )  # the row is kept
    m = compare(above, below, rtol=tol.rtol, rounded_to="bfloat16")
    assert (m.max_ulps, m.flipped, m.elements, m.unrounded, m.max_abs_beyond_ulp) == (1, 64, 64, 0, 0.0)
    assert tol.failures(m) == [] and m.max_abs == 2.0**-8
    assert rounding_tolerance(trajectory, "bfloat16").failures(compare(above, below, rounded_to="bfloat16")) == []

    two = above.clone()
    two[3] = (above[3] + 2.0**-8).bfloat16().float()  # two ulps: more than a rounding adds
    (failure,) = tol.failures(compare(two, below, rtol=tol.rtol, rounded_to="bfloat16"))
    assert failure.startswith("needs atol 0.00") and "beyond one bfloat16 ulp (allowed atol 0.0001)" in failure
    (failure,) = rounding_tolerance(trajectory, "bfloat16").failures(compare(two, below, rounded_to="bfloat16"))
    assert failure == "max abs 0.00391 beyond one bfloat16 ulp > 0.001 (would pass with max_abs 0.00391)"

    # near zero an ulp is smaller than what the row allows before rounding: 2 ulps of 2^-12 pass by the atol
    small = torch.tensor([2.0**-12, -(2.0**-12)])
    moved = small + torch.tensor([2.0**-18, -(2.0**-18)])
    m = compare(moved, small, rtol=tol.rtol, rounded_to="bfloat16")
    assert m.max_ulps == 2 and m.max_abs_beyond_ulp > 0 and tol.failures(m) == []

    unrounded = above.clone()
    unrounded[5] += 1e-4  # the graph does not round there
    (failure,) = tol.failures(compare(unrounded, below, rtol=tol.rtol, rounded_to="bfloat16"))
    assert (
        failure == "1 values are not bfloat16 values: the tensor is not rounded to bfloat16 where the family says it is"
    )
    negative = compare(-above, -below, rounded_to="bfloat16")  # the sign-magnitude order
    assert (negative.max_ulps, negative.flipped) == (1, 64)
    zeros = compare(torch.tensor([0.0, -0.0]), torch.tensor([-0.0, 0.0]), rounded_to="bfloat16")
    assert (zeros.max_ulps, zeros.flipped) == (0, 0)  # -0 == +0
    assert compare(torch.tensor([1.0]), torch.tensor([1.0 - 2.0**-11]), rounded_to="float16").max_ulps == 1


def test_rounding_rows_count_the_flips_and_leave_other_outputs_alone():
    from parity.compare import _rows_for
    from zoo.contract import Rounding

    _, below, above = _straddling(8)
    above[:6] = below[:6]  # 2 of 8 flipped
    tol = tolerance("image_encoder")
    rounding = Rounding("pose_encoder", "pose_features", "bfloat16", why="the original's .to(torch.bfloat16)")
    rows = _rows_for(
        "component",
        "pose_encoder",
        "opt",
        "static",
        {"pose_features": above, "other": above},
        {"pose_features": below, "other": below},
        tol,
        roundings={"pose_features": rounding},
    )
    by_output = {r.output: r for r in rows}
    rounded, other = by_output["pose_features"], by_output["other"]
    assert rounded.ok and (rounded.metrics.flipped, rounded.metrics.elements) == (2, 8)
    assert rounded.notes == [
        "rounded to bfloat16 on purpose (the original's .to(torch.bfloat16)): 2 of 8 elements one "
        "ulp apart, a difference below the rounding crossing its boundary"
    ]
    assert not other.ok and other.tolerance == tol  # an output not declared keeps its row
    text = format_table(rows)
    assert "bfloat16 ulps  1 (2/8 flipped)" in text and "atol 0.0001 rtol 0.001 + 1 bfloat16 ulp" in text
    assert "note component pose_encoder pose_features at opt static: rounded to bfloat16 on purpose" in text


# --------------------------------------------------------------------------------------
# Nothing passes that did not run: the verdict line and exit status
# --------------------------------------------------------------------------------------


def test_verdict_and_exit_status_tell_a_full_pass_from_a_partial_one():
    from parity.report import EXIT_FAILED, EXIT_NOT_RUN, EXIT_PASSED, Row, exit_status, summary

    tol = Tolerance(max_abs=1e-3)
    ran = Row("component", "transformer", "opt", "static", "sample", compare(torch.zeros(2), torch.zeros(2)), tol)
    skipped = Row("loop", "loops", "-", "-", "-", None, Tolerance(), not_run="the export lacks vae_decoder_step")
    failed = Row("component", "transformer", "opt", "static", "sample", None, tol, failures=["max abs 1 > 0.001"])
    assert (exit_status([ran]), summary([ran])) == (EXIT_PASSED, "1 passed, 0 failed") == (0, "1 passed, 0 failed")
    assert exit_status([ran, skipped]) == EXIT_NOT_RUN == 3
    assert summary([ran, skipped]) == (
        "passed what ran; 1 check not run (1 passed, 0 failed; the NOT RUN lines say why; not a full pass)"
    )
    assert summary([ran, skipped, skipped]).startswith("passed what ran; 2 checks not run (1 passed, 0 failed;")
    assert summary([skipped]) == (
        "nothing ran: 1 check not run (0 passed, 0 failed; the NOT RUN lines say why; not a full pass)"
    )  # not "passed what ran" when none did
    assert summary([skipped, skipped]).startswith("nothing ran: 2 checks not run (0 passed, 0 failed;")
    assert exit_status([skipped]) == EXIT_NOT_RUN
    assert exit_status([ran, skipped, failed]) == EXIT_FAILED == 2
    assert summary([ran, skipped, failed]) == "1 passed, 1 failed, 1 not run (not counted as passed)"
    report = report_json([ran, skipped])
    assert (report["complete"], report["exit_status"], report["verdict"]) == (False, 3, summary([ran, skipped]))
    assert format_table([ran, skipped]).splitlines()[-2] == (
        "NOT RUN loop loops: the export lacks vae_decoder_step; checked instead: nothing"
    )
    help_text = zoo("parity", "--help").output  # the convention is documented where the command is
    for line in (
        '0  every check ran and passed       "N passed, 0 failed"',
        '2  a check failed (or bad input)    "parity failed: K of N ..."',
        '3  nothing failed, some did not run "passed what ran; K checks not run (...)"',
        '("nothing ran: K checks not run (...)" when none ran)',
    ):
        assert line in help_text


def test_partial_export_ends_passed_what_ran_never_a_pass(tmp_path):
    """`zoo export --component` leaves the host loop and the sampler out: their rows are NOT RUN
    naming what the export lacks, and `zoo parity` exits 3, its last line saying so."""
    out = tmp_path / "partial"
    assert zoo("export", "unianimate-dit", "--tiny", "--component", "ref_pose_encoder", "--out", out).exit_code == 0
    result = zoo("parity", out)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 3, result.output
    assert (
        lines[-1]
        == "passed what ran; 2 checks not run (11 passed, 0 failed; the NOT RUN lines say why; not a full pass)"
    )
    lacks = (
        "the export lacks vae_decoder_first, vae_decoder_step, vae_encoder_first, vae_encoder_step (a partial "
        "export, zoo export --component): re-export with them to run these checks"
    )
    assert f"NOT RUN loop loops: {lacks}; checked instead: the exported components on their own" in result.output
    assert (
        "NOT RUN end_to_end sampler: the export lacks image_encoder, pose_encoder, text_encoder, transformer,"
        in result.output
    )
    report = json.loads((out / "parity.json").read_text())
    assert (report["passed"], report["failed"], report["not_run"], report["exit_status"]) == (11, 0, 2, 3)
    assert [r["level"] for r in report["rows"] if r["status"] == "not run"] == ["loop", "end_to_end"]
    stdout_json = zoo("parity", out, "--json")  # the JSON on stdout, the verdict still the last line
    assert stdout_json.exit_code == 3 and stdout_json.output.strip().splitlines()[-1] == lines[-1]


def test_unianimate_straddled_rounding_point_passes_counting_the_flips(tmp_path, monkeypatch):
    """The issue's case made certain: the reference-pose encoder's output sits exactly on bf16
    rounding boundaries (its last conv zero, its bias midpoints between bf16 values, which round to
    the even one) and the graph's bias is one float32 ulp above them (a 6e-8 difference). Rounded
    to bf16 as the original does, every element lands one ulp (2^-8) apart: the trajectory rows,
    which compare the transformer's hidden_states, failed by exactly that 0.0039. Parity compares
    the rounded tensor there, counts the flips, and the rows after it keep their own bound. The
    host loops (the Wan VAE chunk loops) are the cached export's (test_unianimate.py: the export here
    differs in the reference-pose encoder only)."""
    from parity.compare import component_parity, end_to_end_parity
    from zoo.registry import get_family

    family = get_family("unianimate-dit")
    model, checkpoint = family.write_random_sources(tmp_path / "sources", seed=3)
    state = torch.load(checkpoint.path)
    key = "randomref_embedding_pose.10"  # the last conv: its output is the rounded tensor
    channels = state[f"{key}.bias"].shape[0]
    boundary = 0.5 + 2 * torch.arange(channels, dtype=torch.float32) * 2.0**-8 + 2.0**-9
    state[f"{key}.weight"] = torch.zeros_like(state[f"{key}.weight"])
    state[f"{key}.bias"] = boundary
    torch.save(state, checkpoint.path)
    out = tmp_path / "export"
    result = zoo("export", "unianimate-dit", "--model", model.path, "--checkpoint", checkpoint.path, "--out", out)
    assert result.exit_code == 0, result.output
    above = torch.nextafter(boundary, torch.ones(channels)).numpy()
    perturb_graph(
        out,
        "ref_pose_encoder",
        lambda values: above,
        pick=lambda v: v.shape == (channels,) and np.array_equal(v, boundary.numpy()),
    )

    # the rounded component at every corner, then the sampler (the other components' corners and the host
    # loops are what every UniAnimate export's parity checks already: not repeated here)
    rows = component_parity(out, components=("ref_pose_encoder",)) + end_to_end_parity(out)
    failed = [r for r in rows if not r.ok]
    assert not failed, format_table(failed)
    ref_pose = [r for r in rows if r.component == "ref_pose_encoder"]
    assert ref_pose and all(r.metrics.flipped == r.metrics.elements > 0 and r.metrics.max_ulps == 1 for r in ref_pose)
    assert all(r.metrics.max_abs == 2.0**-8 and str(r.tolerance).endswith(" + 1 bfloat16 ulp") for r in ref_pose)
    calls = [r for r in ref_pose if r.level == "trajectory"]
    assert [r.point for r in calls] == ["short call 0", "long call 0", "teacache call 0"]
    assert calls[0].notes == [  # 192 = 1 x 8 x 32/8 x 48/8 at the tiny opt size
        "rounded to bfloat16 on purpose (randomref_embedding_pose(...).to(torch.bfloat16)): 192 of 192 elements one "
        "ulp apart, a difference below the rounding crossing its boundary (the candidate continues from the "
        "reference's value)"
    ]
    trajectory = [r for r in rows if r.level == "trajectory" and r.output == "hidden_states"]
    assert trajectory and all(r.tolerance == tolerance("trajectory") and r.metrics.max_abs < 1e-4 for r in trajectory)

    # without the declaration the same export fails every trajectory row, from step 0 on by exactly one bf16 ulp
    monkeypatch.setattr(type(family), "roundings", ())
    rows = end_to_end_parity(out)
    trajectory = [r for r in rows if r.level == "trajectory"]
    assert trajectory and all(not r.ok and r.metrics.max_abs > 2.0**-8 - 1e-6 for r in trajectory)
    first = [r.metrics.max_abs for r in trajectory if r.point.endswith(" step 0")]
    assert first == [pytest.approx(2.0**-8, abs=1e-6)] * 3  # short, long (its first window), teacache: y + ref in fp32


def test_weights_only_is_not_a_full_pass(tmp_path):
    """`--weights-only` proves where every initializer comes from and runs nothing else: the numeric
    checks are one NOT RUN row, and the verdict says so (exit 3)."""
    out = tmp_path / "weightless"
    result = zoo("export", "pixart", "--tiny", "--weightless", "--component", "transformer", "--out", out)
    assert result.exit_code == 0, result.output
    result = zoo("parity", out, "--weights-only")
    assert result.exit_code == 3, result.output
    assert "NOT RUN component all: skipped by --weights-only: only the initializer check ran" in result.output
    assert result.output.strip().splitlines()[-1] == (
        "passed what ran; 1 check not run (1 passed, 0 failed; the NOT RUN lines say why; not a full pass)"
    )


def test_psnr_range_is_the_declared_value_range_of_each_output():
    """An image output declares its value range ([-1, 1]: PSNR over 2); a cache output beside it
    declares none, so its PSNR is over the reference's own span (not the image's range)."""
    from parity.compare import _rows_for, value_ranges
    from parity.tolerances import tolerance
    from zoo.contract import Component, TensorSpec, specs
    from zoo.models import sd_vae

    decoder = sd_vae.decoder_component("batch", lambda env, ref: {})
    assert value_ranges(decoder, None) == {"sample": 2.0}  # the SD decoder's specs need no reference
    step = Component(
        name="vae_decoder_step",
        tolerance="vae_decoder",
        module="vae",
        inputs=specs(),
        outputs=specs(
            TensorSpec("frames", "float32", (1, 4), value_range=(-1.0, 1.0)),
            TensorSpec("cache_out_0", "float32", (1, 4)),
        ),
        dims=lambda env, ref: {},
        wrapper=lambda ref: torch.nn.Identity(),
        reference=lambda ref, feeds: {},
    )
    ranges = value_ranges(step, None)
    assert ranges == {"frames": 2.0, "cache_out_0": None}
    reference = {
        "frames": torch.tensor([[-1.0, 0.0, 0.5, 1.0]]),
        "cache_out_0": torch.tensor([[0.0, 10.0, 20.0, 40.0]]),
    }
    candidate = {k: v + 0.01 for k, v in reference.items()}
    tol = tolerance("vae_decoder", "float32", "tiny")
    rows = {
        r.output: r for r in _rows_for("component", "vae_decoder_step", "opt", "1x4", candidate, reference, tol, ranges)
    }
    assert rows["frames"].metrics.psnr == pytest.approx(
        10 * math.log10(2.0**2 / 0.01**2), abs=0.01
    )  # fp32 rounding of the 0.01
    assert rows["cache_out_0"].metrics.psnr == pytest.approx(
        10 * math.log10(40.0**2 / 0.01**2), abs=0.01
    )  # fp32 rounding of the 0.01
    with pytest.raises(TypeError, match="value_range must be"):
        TensorSpec("frames", "float32", (1,), value_range=(1.0, -1.0))


def test_wan_vae_declares_the_image_range_on_decoded_frames_only(tiny_checkpoint):
    from parity.compare import value_ranges
    from zoo.models import wan_vae

    fam = get_family("wan-animate")
    ref = fam.load(tiny_checkpoint("wan-animate"))
    for name in wan_vae.CHUNK_COMPONENTS:
        ranges = value_ranges(fam.component(name), ref)
        caches = {k: v for k, v in ranges.items() if k.startswith("cache_out_")}
        assert caches and set(caches.values()) == {None}, name
        if "decoder" in name:
            assert ranges["frames"] == 2.0
        else:
            assert ranges["latent_parameters"] is None

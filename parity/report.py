"""Parity rows, the printed table and the JSON report.

A row is ``pass``, ``fail`` or ``not run``. ``not run`` is for a comparison this machine cannot
make (ONNX Runtime on CPU has no bf16 kernels): the row says why and what was checked instead,
and is never counted as passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity.metrics import Metrics
from parity.tolerances import Tolerance

PASS, FAIL, NOT_RUN = "pass", "fail", "not run"


@dataclass
class Row:
    """One comparison: which output of which component at which shape, measured and allowed.

    For a reduced-precision component ``torch_metrics`` is PyTorch itself in that dtype (the
    component's wrapper with its precision policy) against the same fp32 reference: the
    yardstick of the 'at most twice' rule, and what is checked when the candidate cannot run
    (``not_run`` says why, ``checked_instead`` what was checked)."""

    level: str  # component | loop | trajectory | end_to_end
    component: str
    point: str  # label (opt, all-max, step 3, ...)
    shape: str
    output: str
    metrics: Metrics | None
    tolerance: Tolerance
    failures: list[str] = field(default_factory=list)
    precision: str = "float32"
    torch_metrics: Metrics | None = None
    notes: list[str] = field(default_factory=list)  # bounds held by the 'twice PyTorch' rule
    not_run: str | None = None  # why the candidate could not run here
    checked_instead: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``fail`` when anything failed (a not-run row whose stand-in check failed too),
        else ``not run`` when the candidate did not run, else ``pass``."""
        if self.failures:
            return FAIL
        return NOT_RUN if self.not_run is not None else PASS

    @property
    def ok(self) -> bool:
        """Passed: compared and within tolerance (a row that did not run is not ok)."""
        return self.status == PASS

    def headline(self, metrics: Metrics | None = None) -> tuple[str, float]:
        """The metric the tolerance is about, for the table (of ``metrics``, default the row's)."""
        t = self.tolerance
        m = metrics if metrics is not None else self.metrics
        if m is None:
            return "-", math.nan
        if t.rounded_to is not None:
            return f"{t.rounded_to} ulps", math.nan if m.max_ulps is None else float(m.max_ulps)
        if t.atol is not None:
            return "atol needed", m.atol_needed
        if t.max_abs is not None:
            return "max abs", m.max_abs
        if t.min_psnr is not None:
            return "PSNR dB", m.psnr
        if t.min_cosine is not None:
            return "1 - cos", 1.0 - m.cosine  # 0.9999999 vs 0.9999998 says little; 1e-7 vs 2e-7 does
        return "rel-L2", m.rel_l2

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "component": self.component,
            "point": self.point,
            "shape": self.shape,
            "output": self.output,
            "precision": self.precision,
            "metrics": self.metrics.to_json() if self.metrics else None,
            "torch_metrics": self.torch_metrics.to_json() if self.torch_metrics else None,
            "tolerance": str(self.tolerance),
            "status": self.status,
            "pass": self.ok,
            "failures": self.failures,
            "notes": self.notes,
            "not_run": self.not_run,
            "checked_instead": self.checked_instead,
        }


def _value(metric: str, value: float, metrics: Metrics | None = None) -> str:
    """The table's value: the metric, and at a rounding point the elements that flipped."""
    if metric == "-" or math.isnan(value):
        return "-"
    if metrics is not None and metrics.flipped is not None:
        return f"{value:.3g} ({metrics.flipped}/{metrics.elements} flipped)"
    return f"{value:.3g}"


def format_table(rows: list[Row]) -> str:
    header = (
        "level",
        "component",
        "point",
        "shape",
        "output",
        "dtype",
        "max abs",
        "metric",
        "value",
        "torch",
        "tolerance",
        "status",
    )
    lines = [header]
    for r in rows:
        metric, value = r.headline()
        _, own = r.headline(r.torch_metrics) if r.torch_metrics else ("-", math.nan)
        if r.metrics is None and r.torch_metrics is not None:
            metric = r.headline(r.torch_metrics)[0]
        max_abs = f"{r.metrics.max_abs:.3g}" if r.metrics else "-"
        status = {PASS: "ok", FAIL: "FAIL", NOT_RUN: "NOT RUN"}[r.status]
        lines.append(
            (
                r.level,
                r.component,
                r.point,
                r.shape,
                r.output,
                r.precision,
                max_abs,
                metric,
                _value(metric, value, r.metrics),
                _value(metric, own),
                str(r.tolerance),
                status,
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    if any(r.torch_metrics for r in rows if not r.precision.endswith(" vs simulation")):
        text.append(
            "torch: the same metric for PyTorch itself in that dtype (the export wrapper with its precision "
            "policy) against the fp32 reference; a bound also holds within twice its error"
        )
    if any(r.torch_metrics for r in rows if r.precision.endswith(" vs simulation")):
        text.append(
            "torch of a 'vs simulation' row: the simulation itself on its inputs nudged by 1e-5, against the "
            "simulation (a quantized network's own spread); a bound also holds within twice it"
        )
    failed = [r for r in rows if r.status == FAIL]
    not_run = [r for r in rows if r.status == NOT_RUN]
    for r in rows:
        for note in r.notes:
            text.append(f"note {r.level} {r.component} {r.output} at {r.point} {r.shape}: {note}")
    for r in failed:
        why = "; ".join(r.failures) + (f" (the candidate did not run: {r.not_run})" if r.not_run else "")
        text.append(f"FAIL {r.level} {r.component} {r.output} at {r.point} {r.shape}: {why}")
    groups: dict[tuple[str, str, str, str], list[Row]] = {}
    for r in not_run:  # one line per component output and reason, not one per shape
        groups.setdefault((r.level, r.component, r.output, r.not_run or ""), []).append(r)
    for (level, component, output, reason), group in groups.items():
        where = f" at {group[0].point} {group[0].shape}" if len(group) == 1 else f" at {len(group)} points"
        what = " ".join(x for x in (level, component, output) if x != "-")
        where = "" if where == " at - -" else where  # a whole level (a partial export's loops, the sampler)
        text.append(f"NOT RUN {what}{where}: {reason}; checked instead: {_instead(group)}")
    text.append(summary(rows))
    return "\n".join(text)


def _instead(group: list[Row]) -> str:
    """What was checked instead for rows that did not run (the worst of the stand-in's numbers)."""
    if len(group) == 1 or not all(r.torch_metrics for r in group):
        return "; ".join(dict.fromkeys(c for r in group for c in r.checked_instead)) or "nothing"
    metric, worst = max(
        (r.headline(r.torch_metrics) for r in group), key=lambda mv: mv[1] if mv[0] != "PSNR dB" else -mv[1]
    )
    first = group[0]
    rest = [c for c in dict.fromkeys(c for r in group for c in r.checked_instead[1:])]
    return "; ".join(
        [
            f"PyTorch in {first.precision} with the precision policy vs the fp32 reference, within the "
            f"{first.precision} row ({first.tolerance}) at each point (worst {metric} {worst:.3g})",
            *rest,
        ]
    )


# ``zoo parity``'s exit status: every check ran and passed; one failed (or bad input: every
# ``error:`` line of zoo exits 2); nothing failed but some checks did not run here
EXIT_PASSED, EXIT_FAILED, EXIT_NOT_RUN = 0, 2, 3


def summary(rows: list[Row]) -> str:
    """The verdict line: ``N passed, 0 failed`` only when every check ran and passed; ``passed what
    ran; K checks not run (...)`` when nothing failed but some did not run (``nothing ran: K checks
    not run (...)`` when none ran at all); else the counts."""
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, FAIL, NOT_RUN)}
    text = f"{counts[PASS]} passed, {counts[FAIL]} failed"
    if not counts[NOT_RUN]:
        return text
    if not counts[FAIL]:
        checks = "check" if counts[NOT_RUN] == 1 else "checks"
        ran = "passed what ran;" if counts[PASS] else "nothing ran:"
        return f"{ran} {counts[NOT_RUN]} {checks} not run ({text}; the NOT RUN lines say why; not a full pass)"
    return text + f", {counts[NOT_RUN]} not run (not counted as passed)"


def exit_status(rows: list[Row]) -> int:
    """:data:`EXIT_FAILED` when a row failed, :data:`EXIT_NOT_RUN` when none failed but some did
    not run, :data:`EXIT_PASSED` only when every row ran and passed."""
    statuses = {r.status for r in rows}
    return EXIT_FAILED if FAIL in statuses else EXIT_NOT_RUN if NOT_RUN in statuses else EXIT_PASSED


def not_run_reasons(rows: list[Row]) -> list[str]:
    """The distinct reasons rows did not run, in order."""
    return list(dict.fromkeys(r.not_run for r in rows if r.status == NOT_RUN and r.not_run))


def report_json(rows: list[Row], **meta: Any) -> dict[str, Any]:
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, FAIL, NOT_RUN)}
    return {
        **meta,
        "passed": counts[PASS],
        "failed": counts[FAIL],
        "not_run": counts[NOT_RUN],
        "complete": counts[NOT_RUN] == 0,
        "verdict": summary(rows),
        "exit_status": exit_status(rows),
        "not_run_reasons": not_run_reasons(rows),
        "rows": [r.to_json() for r in rows],
    }

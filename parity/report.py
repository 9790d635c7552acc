"""Parity rows, the printed table and the JSON report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity.metrics import Metrics
from parity.tolerances import Tolerance


@dataclass
class Row:
    """One comparison: which output of which component at which shape, measured and allowed."""

    level: str  # component | trajectory | end_to_end
    component: str
    point: str  # label (opt, all-max, step 3, ...)
    shape: str
    output: str
    metrics: Metrics | None
    tolerance: Tolerance
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def headline(self) -> tuple[str, float]:
        """The metric the tolerance is about, for the table."""
        t, m = self.tolerance, self.metrics
        if m is None:
            return "-", math.nan
        if t.atol is not None:
            return "atol needed", m.atol_needed
        if t.max_abs is not None:
            return "max abs", m.max_abs
        if t.min_psnr is not None:
            return "PSNR dB", m.psnr
        if t.min_cosine is not None:
            return "cosine", m.cosine
        return "rel-L2", m.rel_l2

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "component": self.component,
            "point": self.point,
            "shape": self.shape,
            "output": self.output,
            "metrics": self.metrics.to_json() if self.metrics else None,
            "tolerance": str(self.tolerance),
            "pass": self.ok,
            "failures": self.failures,
        }


def format_table(rows: list[Row]) -> str:
    header = ("level", "component", "point", "shape", "output", "max abs", "metric", "value", "tolerance", "pass")
    lines = [header]
    for r in rows:
        metric, value = r.headline()
        max_abs = f"{r.metrics.max_abs:.3g}" if r.metrics else "-"
        lines.append(
            (r.level, r.component, r.point, r.shape, r.output, max_abs, metric, f"{value:.3g}", str(r.tolerance),
             "ok" if r.ok else "FAIL")
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    failed = [r for r in rows if not r.ok]
    for r in failed:
        text.append(f"FAIL {r.level} {r.component} {r.output} at {r.point} {r.shape}: {'; '.join(r.failures)}")
    text.append(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return "\n".join(text)


def report_json(rows: list[Row], **meta: Any) -> dict[str, Any]:
    return {**meta, "passed": sum(r.ok for r in rows), "failed": sum(not r.ok for r in rows), "rows": [r.to_json() for r in rows]}

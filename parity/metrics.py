"""Comparison metrics between a candidate tensor and its fp32 reference."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Metrics:
    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    psnr: float  # dB over ``data_range``; inf when identical
    nan: int  # NaN / Inf counts of the candidate
    inf: int
    # the smallest atol that passes at the given rtol is computed on demand (needs the tensors)
    atol_needed: float  # max(|c - r| - rtol * |r|) for the rtol used in compare()

    def to_json(self) -> dict[str, float]:
        return {k: (v if math.isfinite(v) else str(v)) if isinstance(v, float) else v for k, v in asdict(self).items()}


def compare(candidate: torch.Tensor, reference: torch.Tensor, *, rtol: float = 0.0, data_range: float | None = None) -> Metrics:
    """Metrics of ``candidate`` against ``reference`` (same shape), computed in float64."""
    if candidate.shape != reference.shape:
        raise ValueError(f"shape {tuple(candidate.shape)} vs reference {tuple(reference.shape)}")
    c = candidate.detach().to("cpu", torch.float64)
    r = reference.detach().to("cpu", torch.float64)
    nan, inf = int(torch.isnan(c).sum()), int(torch.isinf(c).sum())
    if nan or inf or c.numel() == 0:
        bad = math.nan
        return Metrics(bad, bad, bad, bad, bad, nan, inf, bad)
    diff = (c - r).abs()
    r_norm = float(r.norm())
    c_norm = float(c.norm())
    rel_l2 = float((c - r).norm()) / r_norm if r_norm > 0 else (0.0 if c_norm == 0 else math.inf)
    if r_norm > 0 and c_norm > 0:
        cosine = float((c * r).sum()) / (c_norm * r_norm)
    else:
        cosine = 1.0 if r_norm == c_norm else 0.0
    mse = float((diff**2).mean())
    span = data_range if data_range is not None else float(r.max() - r.min()) or 1.0
    psnr = math.inf if mse == 0 else 10.0 * math.log10(span * span / mse)
    return Metrics(
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        rel_l2=rel_l2,
        cosine=cosine,
        psnr=psnr,
        nan=0,
        inf=0,
        atol_needed=max(0.0, float((diff - rtol * r.abs()).max())),
    )

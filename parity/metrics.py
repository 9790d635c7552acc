"""Comparison metrics between a candidate tensor and its fp32 reference."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

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
    # at a rounding point (compare(rounded_to=...)): the distance in ulps of that dtype, and the
    # elementwise errors left once one ulp (what the rounding may add) is taken off each element
    max_ulps: int | None = None  # the largest distance, in representable values of the dtype
    flipped: int | None = None  # elements that differ after the rounding
    elements: int | None = None
    unrounded: int | None = None  # values of candidate or reference the dtype cannot represent
    max_abs_beyond_ulp: float | None = None  # max(|c - r| - ulp)
    atol_beyond_ulp: float | None = None  # max(|c - r| - ulp - rtol * |r|)

    def to_json(self) -> dict[str, float | int | str | None]:  # a non-finite float as its text
        return {k: (v if math.isfinite(v) else str(v)) if isinstance(v, float) else v for k, v in asdict(self).items()}


ROUNDED_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def ulp_distance(candidate: torch.Tensor, reference: torch.Tensor, dtype: str) -> tuple[torch.Tensor, int]:
    """Elementwise distance in representable values of ``dtype`` (bfloat16 / float16) between two
    tensors that should both hold values of that dtype, and how many values do not (counted in
    both; those are measured after rounding them). +0 and -0 are the same value."""
    target = ROUNDED_DTYPES[dtype]

    def ordered(t: torch.Tensor) -> tuple[torch.Tensor, int]:
        t = t.detach().to("cpu", torch.float32)
        low = t.to(target)
        unrounded = int((low.to(torch.float32) != t).sum())
        bits = low.view(torch.int16).to(torch.int32)
        magnitude = bits & 0x7FFF
        return torch.where(bits < 0, -magnitude, magnitude), unrounded  # sign-magnitude -> ordered integers

    c, c_bad = ordered(candidate)
    r, r_bad = ordered(reference)
    return (c - r).abs(), c_bad + r_bad


def ulp(magnitude: torch.Tensor, dtype: str) -> torch.Tensor:
    """The spacing of ``dtype`` (bfloat16 / float16) at each ``|magnitude|``, as float64."""
    target = ROUNDED_DTYPES[dtype]
    low = magnitude.detach().to("cpu", torch.float32).abs().to(target)
    up = torch.nextafter(low, torch.full_like(low, math.inf))
    return up.to(torch.float64) - low.to(torch.float64)


def compare(
    candidate: torch.Tensor,
    reference: torch.Tensor,
    *,
    rtol: float = 0.0,
    data_range: float | None = None,
    rounded_to: str | None = None,
) -> Metrics:
    """Metrics of ``candidate`` against ``reference`` (same shape), computed in float64; with
    ``rounded_to`` (a dtype both were rounded to), also their distance in ulps of that dtype."""
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
    metrics = Metrics(
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        rel_l2=rel_l2,
        cosine=cosine,
        psnr=psnr,
        nan=0,
        inf=0,
        atol_needed=max(0.0, float((diff - rtol * r.abs()).max())),
    )
    if rounded_to is None:
        return metrics
    distance, unrounded = ulp_distance(candidate, reference, rounded_to)
    beyond = (diff - ulp(torch.maximum(c.abs(), r.abs()), rounded_to)).clamp(min=0)
    return replace(
        metrics,
        max_ulps=int(distance.max()),
        flipped=int((distance > 0).sum()),
        elements=distance.numel(),
        unrounded=unrounded,
        max_abs_beyond_ulp=float(beyond.max()),
        atol_beyond_ulp=max(0.0, float((beyond - rtol * r.abs()).max())),
    )

"""The shapes a component is checked at: every profile corner, opt, an interior point, portrait."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from zoo.contract import Dim, resolve_point, round_to


def _interior(d: Dim) -> int:
    """A valid size strictly between opt and max (or min and opt), else opt."""
    for lo, hi in ((d.opt, d.max), (d.min, d.opt)):
        v = round_to((lo + hi) / 2, d.multiple_of)
        if lo < v < hi:
            return v
    return d.opt


def profile_points(dims: Mapping[str, Dim]) -> list[tuple[str, dict[str, int]]]:
    """Labelled points: ``opt``, every min/max corner of the dynamic dims, an interior point and,
    where a component has height and width dims, a portrait and a landscape point. Duplicates
    (a dim with min == opt, say) are dropped. Corners are taken over the source dims; derived
    dims follow from them."""
    dynamic = [n for n, d in dims.items() if d.is_dynamic and not d.is_derived]
    opt = {n: d.opt for n, d in dims.items() if not d.is_derived}
    points: list[tuple[str, dict[str, int]]] = [("opt", opt)]
    for corner in itertools.product(("min", "max"), repeat=len(dynamic)):
        p = dict(opt)
        for name, which in zip(dynamic, corner):
            p[name] = getattr(dims[name], which)
        label = "all-" + corner[0] if len(set(corner)) == 1 else "corner"
        points.append((label, p))
    points.append(
        ("interior", {n: _interior(d) if n in dynamic else d.opt for n, d in dims.items() if not d.is_derived})
    )
    heights = [n for n in dynamic if n.endswith("height")]
    for h in heights:
        w = h[: -len("height")] + "width"
        if w in dynamic:
            points.append(("portrait", {**opt, h: dims[h].max, w: dims[w].min}))
            points.append(("landscape", {**opt, h: dims[h].min, w: dims[w].max}))
    seen: set[tuple[tuple[str, int], ...]] = set()
    unique = []
    for label, p in ((label, resolve_point(dims, p)) for label, p in points):
        key = tuple(sorted(p.items()))
        if key not in seen:
            seen.add(key)
            unique.append((label, p))
    return unique


def describe(point: Mapping[str, int], dims: Mapping[str, Dim]) -> str:
    """``cfg_batch=2 latent_height=8 ...`` for the dynamic dims of a point."""
    return " ".join(f"{n}={v}" for n, v in point.items() if dims[n].is_dynamic and not dims[n].is_derived) or "static"

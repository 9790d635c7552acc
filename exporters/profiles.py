"""Engine optimization profiles from a component's recorded dims, as Polygraphy's ``Profile``.

One profile per component: every input's min / opt / max shape, each symbolic dim taken at its
own min / opt / max (a derived dim's profile already follows from its source's, so the three
shapes are consistent across inputs). ``zoo build`` and the trtexec lines read it.
"""

from __future__ import annotations

from typing import Any

from exporters.manifest import ComponentRecord


def input_shapes(record: ComponentRecord, which: str) -> dict[str, tuple[int, ...]]:
    """Every input's shape at the profile's ``min``, ``opt`` or ``max``."""
    return {t.name: tuple(d if isinstance(d, int) else getattr(record.dims[d], which) for d in t.shape)
            for t in record.inputs}


def shape_profile(record: ComponentRecord) -> Any:
    """A Polygraphy ``Profile`` (min / opt / max shape per input) for ``record``; Polygraphy
    imports TensorRT lazily, so this works where TensorRT is absent."""
    from polygraphy.backend.trt import Profile

    lo, opt, hi = (input_shapes(record, w) for w in ("min", "opt", "max"))
    profile = Profile()
    for name in lo:
        profile.add(name, min=lo[name], opt=opt[name], max=hi[name])
    return profile

"""The registry of families: name -> the package that declares it (``zoo/families/<name>/``).
Adding a family = one new folder there and one line here; its tests come from the conformance
battery (``tests/test_conformance.py``)."""

from __future__ import annotations

import importlib

from zoo.contract import Family
from zoo.errors import UnknownFamilyError

# family name -> module that declares it (imported on first use: torch/diffusers are heavy)
_MODULES: dict[str, str] = {
    "animatediff": "zoo.families.animatediff",
    "pixart": "zoo.families.pixart",
    "transformer-temporal": "zoo.families.transformer_temporal",
    "unianimate-dit": "zoo.families.unianimate_dit",
    "unianimate-pose": "zoo.families.unianimate_pose",
    "wan-animate": "zoo.families.wan_animate",
    "wan-animate-pose": "zoo.families.wan_animate_pose",
}
_LOADED: dict[str, Family] = {}


def family_names() -> list[str]:
    return sorted(_MODULES)


def get_family(name: str) -> Family:
    """The declaration of ``name``; :class:`UnknownFamilyError` lists the known ones."""
    if name not in _MODULES:
        raise UnknownFamilyError(f"unknown family {name!r}; known families: {', '.join(family_names())}")
    if name not in _LOADED:
        module = importlib.import_module(_MODULES[name])
        _LOADED[name] = module.FAMILY
    return _LOADED[name]

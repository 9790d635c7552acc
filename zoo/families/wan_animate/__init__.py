"""The wan-animate family: its declaration is :data:`FAMILY` (see ``family.py``)."""

from zoo.families.wan_animate.family import FAMILY

__all__ = ["FAMILY"]

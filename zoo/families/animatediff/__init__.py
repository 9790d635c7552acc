"""The animatediff family: its declaration is :data:`FAMILY` (see ``family.py``)."""

from zoo.families.animatediff.family import FAMILY

__all__ = ["FAMILY"]

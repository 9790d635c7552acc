"""The pixart family: its declaration is :data:`FAMILY` (see ``family.py``)."""

from zoo.families.pixart.family import FAMILY

__all__ = ["FAMILY"]

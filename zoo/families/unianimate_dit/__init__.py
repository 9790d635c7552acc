"""The unianimate-dit family: its declaration is :data:`FAMILY` (see ``family.py``)."""

from zoo.families.unianimate_dit.family import FAMILY

__all__ = ["FAMILY"]

"""The transformer-temporal family: its declaration is :data:`FAMILY` (see ``family.py``)."""

from zoo.families.transformer_temporal.family import FAMILY

__all__ = ["FAMILY"]

"""One package per family: its declaration (``family.py``, the ``FAMILY`` object the package
exports) and, beside it, modules of its own (a checkpoint format, a sampler) where it has them.
A family imports the contract, the shared model pieces and the infrastructure, never another
family; :mod:`zoo.registry` names the packages."""

"""Model zoo: PyTorch references and export contracts of video and image diffusion models.

The bottom layer of the house, by role:

- :mod:`zoo.contract` (dims, tensors, sources, requests, family) and :mod:`zoo.registry`;
- :mod:`zoo.families` (one package per family) over :mod:`zoo.models` (model pieces several
  families share) over :mod:`zoo.infra` (checkpoints, hashes, LoRA, media, tiny tokenizers);
- :mod:`zoo.errors`, imported by everything.

None of these imports ``exporters``, ``runtimes`` or ``parity``. The command line,
:mod:`zoo.cli`, sits on top of the whole house (above ``parity``): it is in this package only so
that ``zoo`` is both the command and the library (``pyproject.toml``'s import-linter contract
states the layers).
"""

from zoo.errors import (
    ArtifactError,
    BackendUnavailableError,
    CheckpointError,
    EnvelopeError,
    ExportError,
    InputError,
    OutputError,
    ParityError,
    UnknownFamilyError,
    ZooError,
)

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "BackendUnavailableError",
    "CheckpointError",
    "EnvelopeError",
    "ExportError",
    "InputError",
    "OutputError",
    "ParityError",
    "UnknownFamilyError",
    "ZooError",
    "__version__",
]

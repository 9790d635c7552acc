"""Model zoo: PyTorch references and export contracts of video and image diffusion models.

This is the lowest layer: it imports neither ``exporters``, ``runtimes`` nor ``parity``
(the command line in :mod:`zoo.cli` is the one exception and imports them lazily).
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

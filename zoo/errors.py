"""The one family of user-facing errors.

Every error a user can cause (bad family, bad folder, bad envelope, bad feeds, bad artifact,
missing runtime) is a :class:`ZooError` whose message names the thing and what was expected.
The command line prints the message and exits non-zero, without a traceback.
"""

from __future__ import annotations


class ZooError(Exception):
    """Base class of every error the zoo raises on purpose."""


class UnknownFamilyError(ZooError, KeyError):
    """A family, variant, preset, component or backend name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(ZooError):
    """A checkpoint folder that is missing, empty, or holds another model."""


class EnvelopeError(ZooError, ValueError):
    """An export envelope or request that breaks a constraint."""


class ExportError(ZooError):
    """A component could not be exported, or its graph failed a check."""


class InputError(ZooError, ValueError):
    """Feeds that do not match the component contract (name, dtype, rank, dim, values)."""


class OutputError(ZooError):
    """A backend produced outputs that must not be used (NaN / Inf, wrong shape)."""


class ArtifactError(ZooError):
    """An export artifact that is missing, truncated, corrupted or of another version."""


class BackendUnavailableError(ZooError):
    """A backend asked for where its runtime or hardware is absent."""


class ParityError(ZooError):
    """A parity comparison failed its tolerance."""

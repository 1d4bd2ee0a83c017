"""The errors a user can cause, in one small family.

Every class inherits `SeqportError`, so an application can catch all of seqport's errors at
once, and the matching builtin, so code written against builtins keeps working.
"""

from __future__ import annotations


class SeqportError(Exception):
    """Base class of every error seqport raises on purpose."""


class ArtifactError(SeqportError, FileNotFoundError):
    """An artifact folder or one of its files is missing."""

    def __str__(self) -> str:  # FileNotFoundError would otherwise format (errno, strerror)
        return str(self.args[0]) if self.args else ""


class IntegrityError(SeqportError, ValueError):
    """A component file is not the one the manifest describes (corrupt, replaced or truncated)."""


class ManifestError(SeqportError, ValueError):
    """seqport.json is unreadable, of an unknown format version, or inconsistent."""


class ConfigError(SeqportError, ValueError):
    """Generation options that are invalid or do not fit together."""


class InputError(SeqportError, ValueError):
    """A user input the model cannot take: empty, too long, or of the wrong type or shape."""


class ProviderError(SeqportError, RuntimeError):
    """An execution provider that this installation cannot use."""


class RuntimeFailure(SeqportError, RuntimeError):
    """The runtime rejected a component or failed while running it."""


class ParityError(SeqportError, ValueError):
    """An exported component disagrees with PyTorch beyond the stated tolerance."""


class ExportError(SeqportError, RuntimeError):
    """A model that cannot be exported as asked (unsupported family, missing files)."""

"""One error hierarchy for microchange.

Every error raised for bad input derives from :class:`MicrochangeError` *and* from the matching
builtin, so callers may catch either (``except ValueError`` keeps working). The CLI maps
:class:`InputError` subclasses to exit code 2 and prints only the message, which always names the
offending file or value and says how to fix it.
"""

from __future__ import annotations

__all__ = (
    "BandMismatchError",
    "ConfigError",
    "DiskFullError",
    "GridMismatchError",
    "InputError",
    "InputNotFoundError",
    "MicrochangeError",
    "MissingCRSError",
    "NoOverlapError",
    "NotFittedError",
    "OutputError",
    "OutputNotWritableError",
    "OutputRootError",
    "RasterReadError",
    "StateMismatchError",
    "UnknownMethodError",
)


class MicrochangeError(Exception):
    """Root of all microchange errors."""


class InputError(MicrochangeError, ValueError):
    """Bad input given by the user: a file, a value or an option (CLI exit code 2)."""


class RasterReadError(InputError, OSError):
    """A raster cannot be opened or read (missing file, unsupported format, corrupt data)."""


class InputNotFoundError(RasterReadError, FileNotFoundError):
    """An input file or folder does not exist."""


class BandMismatchError(InputError):
    """BEFORE and AFTER do not have the same bands, or a band selection is out of range."""


class GridMismatchError(InputError):
    """BEFORE and AFTER cannot be put on one pixel grid."""


class MissingCRSError(GridMismatchError):
    """One input is georeferenced and the other is not."""


class NoOverlapError(GridMismatchError):
    """BEFORE and AFTER footprints do not overlap, or no valid pixel is left."""


class ConfigError(InputError):
    """A configuration value is invalid."""


class UnknownMethodError(ConfigError, KeyError):
    """A method, scorer or threshold name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0]) if self.args else ""


class OutputError(MicrochangeError, OSError):
    """Outputs cannot be written (directory not writable, disk full)."""


class DiskFullError(OutputError):
    """No space left (or quota exceeded) where the outputs are written (CLI exit code 1).

    The run's staging folder is kept: the same command run again, once there is space,
    resumes from it.
    """


class OutputNotWritableError(OutputError, InputError):
    """The output location cannot be written: permission denied, read-only (CLI exit code 2)."""


class OutputRootError(InputError):
    """An output path resolves outside the configured output root (``MICROCHANGE_OUTPUT_ROOT``)."""


class NotFittedError(MicrochangeError, RuntimeError):
    """A fitted component (extractor, scorer, normaliser) was used before it was fitted."""


class StateMismatchError(MicrochangeError, ValueError):
    """A fitted state does not match what uses it (other bands, method or objective)."""

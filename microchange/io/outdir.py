"""Output locations: confined to a configured root, and clear errors when they cannot be written.

``MICROCHANGE_OUTPUT_ROOT`` (set by whoever runs the worker, not by the one who fills in a flow's
form) confines every output path to one folder: the path is resolved (``..`` and symbolic links
followed) and must lie inside the root. A full disk or a folder that cannot be written becomes
:class:`~microchange.errors.DiskFullError` or :class:`~microchange.errors.OutputNotWritableError`
with one message naming the path and the fix.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from microchange.errors import (
    DiskFullError,
    MicrochangeError,
    OutputError,
    OutputNotWritableError,
    OutputRootError,
)
from microchange.types import PathLike, is_remote

__all__ = ("OUTPUT_ROOT_ENV", "check_output_path", "output_failure", "output_root",
           "writing_outputs")

OUTPUT_ROOT_ENV = "MICROCHANGE_OUTPUT_ROOT"
"""Environment variable: when set, every output path must resolve inside this folder."""

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")
_NOT_WRITABLE_TEXT = ("Permission denied", "Read-only file system", "Operation not permitted")


def output_root() -> Path | None:
    """The configured output root (``$MICROCHANGE_OUTPUT_ROOT``), or None when not set."""
    root = os.environ.get(OUTPUT_ROOT_ENV, "").strip()
    return Path(root) if root else None


def check_output_path(out: PathLike, *, root: PathLike | None = None,
                      what: str = "out") -> Path:
    """``out`` as a path, after checking that it resolves inside the output root.

    Args:
        out: An output folder or file.
        root: The folder outputs must stay in; None takes :func:`output_root` (no check when
            that is not set either).
        what: The parameter's name, for the message.

    Returns:
        ``Path(out)``, unchanged.

    Raises:
        OutputRootError: If ``out`` is a URL or /vsi path, or resolves (``..``, symbolic links)
            outside the root.
    """
    root = root if root is not None else output_root()
    if root is None:
        return Path(out)
    text = os.fspath(out)
    hint = (f"give a path inside {str(root)!r}, e.g. {os.path.join(root, 'myrun')!r} "
            f"({OUTPUT_ROOT_ENV} confines outputs there)")
    if is_remote(text):
        raise OutputRootError(f"{what} {text!r} is a URL or /vsi path: {hint}")
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(text))
    if real != real_root and real_root not in real.parents:
        raise OutputRootError(f"{what} {text!r} resolves to {str(real)!r}, outside the output "
                              f"root: {hint}")
    return Path(out)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover - the loop returns


def _size(folder: Path) -> str:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return _human(total)


def output_failure(exc: BaseException, out: PathLike,
                   staging: PathLike | None = None) -> OutputError | None:
    """The clear error for a failure to write under ``out``, or None if it is not one.

    Recognises a full disk or exceeded quota, and a permission denied or read-only file system,
    by ``errno`` or by GDAL's message.
    """
    # errno of an OSError only: GDAL's errors carry their own numbers under that name
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc)
    path = (exc.filename if isinstance(exc, OSError) else None) or out
    if code in _DISK_FULL or any(t in text for t in _DISK_FULL_TEXT):
        free = shutil.disk_usage(out).free if Path(out).is_dir() else None
        kept = ""
        if staging is not None and Path(staging).is_dir():
            kept = (f"; the run's state so far ({_size(Path(staging))} in {str(staging)!r}) is "
                    "kept, and the same command run again resumes from it (delete that folder "
                    "to get its space back instead)")
        return DiskFullError(
            f"no space left on the disk of the output folder {str(out)!r} while writing "
            f"{str(path)!r}" + (f" ({_human(free)} free)" if free is not None else "")
            + f": free some space there or give another --out{kept}")
    if code in _NOT_WRITABLE or any(t in text for t in _NOT_WRITABLE_TEXT):
        return OutputNotWritableError(
            f"cannot write {str(path)!r} ({os.strerror(code) if code else text}): the output "
            f"folder {str(out)!r} is not writable; give an --out you can write to, or make it "
            "writable (e.g. chmod u+w or chown)")
    return None


@contextmanager
def writing_outputs(out: PathLike, staging: PathLike | None = None) -> Iterator[None]:
    """Turn a full disk or an unwritable ``out`` met inside the block into a clear error.

    Any other error passes through unchanged.
    """
    try:
        yield
    except MicrochangeError:
        raise
    except Exception as exc:
        failure = output_failure(exc, out, staging)
        if failure is None:
            raise
        raise failure from exc

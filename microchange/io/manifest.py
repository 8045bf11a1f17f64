"""JSON documents (plans, run manifests), input fingerprints, library versions, run folders."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from microchange.errors import InputNotFoundError, RasterReadError
from microchange.io.datasets import content_digest, is_remote, open_raster
from microchange.types import CHANGE_MASK, CHANGE_SCORE, RUN_MANIFEST, PathLike

__all__ = ("code_version", "file_fingerprint", "library_versions", "read_json",
           "read_run_manifest", "run_fingerprint", "run_rasters", "write_json_atomic",
           "write_text_atomic")

log = logging.getLogger("microchange")

_HASH_CHUNK = 8 * 1024 * 1024


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name, then rename it: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:  # a full disk, say: leave no half-written temporary file
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, document: Any) -> None:
    """Write ``document`` as indented JSON; readers never see a half-written file."""
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON document."""
    return json.loads(Path(path).read_text())


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Path, size and SHA-256 of one file (read in 8 MiB chunks); see below for /vsi and URLs.

    A /vsi path or URL is read through GDAL only and recorded unchanged, as ``{"path",
    "bytes": None, "sha256", "remote": True}``: its digest is :func:`content_digest` of the
    dataset (grid, types, nodata, every pixel), since GDAL exposes no raw bytes through
    rasterio. A remote file GDAL cannot open as a raster (a sidecar such as ``.aux.xml``) gets
    ``"sha256": None``; what it changes (nodata, georeferencing) is in its raster's digest.
    """
    if is_remote(path):
        return _remote_fingerprint(str(path))
    p = Path(path)
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    st = p.stat()
    return {"path": str(p.resolve()), "bytes": st.st_size, "mtime": int(st.st_mtime),
            "sha256": digest.hexdigest()}


def _remote_fingerprint(path: str) -> dict[str, Any]:
    try:
        ds = open_raster(path, role="input")
    except RasterReadError:
        if path.lower().endswith((".aux.xml", ".xml", ".hdr", ".prj", ".tfw", ".wld", ".txt")):
            return {"path": path, "bytes": None, "sha256": None, "remote": True}
        raise
    with ds:
        digest = content_digest(ds)
    return {"path": path, "bytes": None, "sha256": digest, "remote": True}


@cache
def code_version() -> str:
    """The version of microchange and a digest of its source files (what shaped outputs).

    A run's staging state is reused only by the same code: a changed source file (an edited
    install, another commit) gives another version.
    """
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    try:
        version = metadata.version("microchange")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        version = "0+unknown"
    return f"{version}+{digest.hexdigest()[:12]}"


def run_fingerprint(document: Any) -> str:
    """A stable digest of what determines a run's outputs (inputs, parameters, code version).

    Args:
        document: JSON-serialisable description of the run; key order does not matter.

    Returns:
        16 hex digits: the run id, and the name of the run's staging folder.
    """
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Versions of Python, microchange and the libraries that shape the results."""
    out = {"python": platform.python_version()}
    for name in ("microchange", "numpy", "scipy", "rasterio", "shapely", "pyarrow", "pydantic",
                 "scikit-learn", "torch", "prefect", "dask"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except ImportError:  # pragma: no cover - rasterio is a dependency
        pass
    return out


def read_run_manifest(out: PathLike) -> dict[str, Any]:
    """``run.json`` of a finished run folder, or an empty dict if it is missing or unreadable.

    A run folder is finished once ``run.json`` is in it (it is published last); callers that
    only enrich their output with it (the report, the evaluation) carry on without it.
    """
    path = Path(out) / RUN_MANIFEST
    if not path.is_file():
        return {}
    try:
        doc = read_json(path)
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): carrying on without the run's details", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def run_rasters(out: PathLike) -> tuple[Path, Path]:
    """The change mask and the score map of a finished detection run folder.

    A publish that a killed run left halfway in ``out`` is completed first
    (:func:`microchange.io.publish.complete_publish`), so both come from one run.

    Raises:
        InputNotFoundError: If either is missing (``out`` is not the folder of a finished run).
    """
    from microchange.io.publish import complete_publish  # publish imports this module

    out = Path(out)
    if out.is_dir():
        complete_publish(out)
    paths = out / CHANGE_MASK, out / CHANGE_SCORE
    for path in paths:
        if not path.is_file():
            raise InputNotFoundError(
                f"{str(path)!r} not found: OUT_DIR must be the --out folder of a finished "
                f"detection run; run `microchange detect BEFORE AFTER --out {out}` first")
    return paths

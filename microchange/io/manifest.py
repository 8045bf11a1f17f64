"""JSON documents (plans, run manifests), input fingerprints and library versions."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ("file_fingerprint", "library_versions", "read_json", "write_json_atomic")

_HASH_CHUNK = 8 * 1024 * 1024


def write_json_atomic(path: Path, document: Any) -> None:
    """Write ``document`` as indented JSON; readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    """Read a JSON document."""
    return json.loads(Path(path).read_text())


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Path, size and SHA-256 of one file (read in 8 MiB chunks)."""
    p = Path(path)
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return {"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": digest.hexdigest()}


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

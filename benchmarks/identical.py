"""Are the outputs of a change byte-identical? Fingerprints of default runs, saved and compared.

Usage::

    .venv/bin/python benchmarks/identical.py save before    # on the old commit
    .venv/bin/python benchmarks/identical.py save after     # on the new one
    .venv/bin/python benchmarks/identical.py compare before after

``save`` runs ``microchange detect`` with each sensor family's defaults on the demo scene and on
every shared pair (``--method learned`` too on the demo and on Bern), and records the SHA-256 of
``change_mask.tif`` and ``change_score.tif``, the rows of both tables (without ``run_id``) and
``run.json`` without its volatile keys, in ``out/identical/LABEL.json``. ``compare`` lists every
output that differs; ``run.json`` keys that differ are listed apart (a manifest may change on
purpose while the maps stay the same).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import list_pairs, shared_data_root

WORK = ROOT / "out" / "identical"
VOLATILE = {"run_id", "created", "finished", "timings", "versions"}


def _jobs() -> list[dict[str, Any]]:
    from microchange.synthetic import make_scene, write_scene

    paths = write_scene(make_scene(height=1024, width=1024, seed=0), WORK / "inputs" / "demo")
    demo = {"before": str(paths["before"]), "after": str(paths["after"])}
    jobs = [{"name": "demo", **demo, "args": []},
            {"name": "demo-learned", **demo, "args": ["--method", "learned"]}]
    if shared_data_root().exists():
        for p in list_pairs(WORK / "inputs", oscd_folders=True):
            args = ["--sensor", "sar" if p.family == "sar" else "optical"]
            if p.bands:
                args += ["--bands", ",".join(map(str, p.bands))]
            jobs.append({"name": p.name, "before": str(p.before), "after": str(p.after),
                         "args": args})
            if p.name == "bern":
                jobs.append({**jobs[-1], "name": "bern-learned",
                             "args": [*args, "--method", "learned"]})
    return jobs


def _fingerprint(out: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    record: dict[str, Any] = {}
    for name in ("change_mask.tif", "change_score.tif"):
        record[name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    for name in ("tiles.parquet", "changes.parquet"):
        table = pq.read_table(out / name).drop_columns(["run_id"])
        record[name] = hashlib.sha256(repr(table.to_pydict()).encode()).hexdigest()
    run = json.loads((out / "run.json").read_text())
    record["run.json"] = {k: v for k, v in run.items() if k not in VOLATILE}
    return record


def save(label: str) -> int:
    results: dict[str, Any] = {}
    for job in _jobs():
        out = WORK / label / job["name"]
        cmd = [str(Path(sys.executable).parent / "microchange"), "detect", job["before"],
               job["after"], "--out", str(out), "-q", *job["args"]]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        results[job["name"]] = ({"failed": proc.stderr[-2000:]} if proc.returncode
                                else _fingerprint(out))
        print(f"{job['name']:28s} {'FAILED' if proc.returncode else 'ok'}", file=sys.stderr)
    path = WORK / f"{label}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"saved {path}")
    return 0


def compare(a_label: str, b_label: str) -> int:
    a = json.loads((WORK / f"{a_label}.json").read_text())
    b = json.loads((WORK / f"{b_label}.json").read_text())
    differ = 0
    for name, rec in a.items():
        other = b.get(name)
        if other is None or "failed" in other or "failed" in rec:
            print(f"{name}: missing or failed")
            differ += 1
            continue
        outputs = [k for k in rec if k != "run.json" and rec[k] != other.get(k)]
        keys = sorted(k for k in set(rec["run.json"]) | set(other["run.json"])
                      if rec["run.json"].get(k) != other["run.json"].get(k))
        differ += bool(outputs)
        if outputs or keys:
            print(f"{name}: outputs differ {outputs}; run.json keys differ {keys}")
    print(f"{len(a)} runs compared; {differ} with different outputs")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save").add_argument("label")
    cmp = sub.add_parser("compare")
    cmp.add_argument("a")
    cmp.add_argument("b")
    args = parser.parse_args(argv)
    return save(args.label) if args.command == "save" else compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())

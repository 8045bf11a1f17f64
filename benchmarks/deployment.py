"""Runs triggered on deployments, as "Run" in the UI does: wall time and state of each.

Needs what the README's "Run it on a schedule" sets up: ``make server``, ``make deploy`` and
``make worker`` running against ``PREFECT_API_URL`` (default http://127.0.0.1:4200/api). Each
deployment is run with parameters overridden (a new output folder, as a user filling the form
would) and timed from the trigger to its final state. With ``--screenshots DIR`` the run page
of the detection (its Artifacts tab) and its summary artifact are saved as PNG with headless
Chromium (``pip install playwright``; the system Chromium, ``apt-get install chromium``, is used,
nothing is downloaded).

Usage:
    python benchmarks/deployment.py [--screenshots docs/images]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_result

RUNS = [
    ("detect-changes/nightly-demo-area", {"out": "out/triggered/demo-area", "area": "demo-area"}),
    ("detect-changes-catalog/nightly-catalog", {"out": "out/triggered/catalog"}),
    ("evaluate-changes/evaluate-demo-area", {"out": "out/triggered/demo-area"}),
]


def _ui() -> str:
    api = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    return api.removesuffix("/api")


def _screenshots(run_id: str, folder: Path) -> list[str]:
    """The run page with its Artifacts tab open, and the summary artifact's page."""
    import asyncio

    from playwright.sync_api import sync_playwright
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def artifact_id() -> str:
        async with get_client() as client:
            (art,) = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), type={"any_": ["markdown"]}))
            return str(art.id)

    art = asyncio.run(artifact_id())  # before playwright starts its own event loop
    folder.mkdir(parents=True, exist_ok=True)
    shots = [folder / "run-page.png", folder / "run-artifact.png"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{_ui()}/runs/flow-run/{run_id}", wait_until="networkidle")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.wait_for_timeout(2500)
        page.screenshot(path=shots[0])
        page.set_viewport_size({"width": 1400, "height": 1100})
        page.goto(f"{_ui()}/artifacts/artifact/{art}",
                  wait_until="networkidle")
        page.wait_for_timeout(2500)
        page.screenshot(path=shots[1], full_page=True)
        browser.close()
    return [str(s) for s in shots]


def main() -> None:
    """Trigger each deployment with parameters, wait, print and record the wall times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshots", type=Path, help="folder for the UI screenshots")
    args = parser.parse_args()
    from prefect.deployments import run_deployment

    rows: list[dict[str, Any]] = []
    detect_run = None
    for name, params in RUNS:
        t0 = time.perf_counter()
        run = run_deployment(name, parameters=params, timeout=1800)
        wall = time.perf_counter() - t0
        state = run.state.type.value if run.state else "?"
        print(f"{name}: {state} in {wall:.1f} s (trigger to final state)", flush=True)
        rows.append({"deployment": name, "parameters": ", ".join(f"{k}={v}" for k, v in
                                                                 params.items()),
                     "state": state, "wall_s": round(wall, 1)})
        if name.startswith("detect-changes/"):
            detect_run = str(run.id)
    if args.screenshots and detect_run:
        print("screenshots:", ", ".join(_screenshots(detect_run, args.screenshots)))
    write_result("deployment", "Runs triggered on deployments", [{
        "caption": "Each deployment run with parameters overridden, as the UI's Custom run does, "
                   "executed by a process worker (make server / deploy / worker)",
        "columns": ["deployment", "parameters", "state", "wall_s"], "rows": rows}],
        notes="wall_s: from the trigger to the final state, including the worker picking the "
              "run up and starting a Python process.")


if __name__ == "__main__":
    main()

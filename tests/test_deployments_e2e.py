"""From nothing to runs triggered on deployments, as the README walks through it.

Starts its own Prefect server (temporary home, free port), registers deployments/prefect.yaml
with the commands of ``make deploy``, starts a process worker, triggers a detection and a catalog
run with parameters (as the UI's Custom run does), checks their outputs and artifacts, and stops
everything. About a minute and a half on 2 cores.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from microchange.synthetic import make_scene, write_scene

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict) -> list:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A MICROCHANGE_HOME with the repository's flows and deployments and a small demo scene."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("flows", "deployments"):
        (home / name).symlink_to(ROOT / name)
    paths = write_scene(make_scene(height=192, width=192, seed=0, n_changes=8),
                        home / "out" / "demo" / "inputs")
    assert paths["before"].is_file()
    return home


def test_deploy_worker_and_triggered_runs(home: Path, tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "MICROCHANGE_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_API_KEY", None)
    prefect = str(BIN / "prefect")
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        procs.append(subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
            stdout=(logs / "server.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True))
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (logs / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        # what `make deploy` runs
        subprocess.run([prefect, "work-pool", "create", "microchange", "--type", "process"],
                       env=env, check=True, capture_output=True, cwd=ROOT)
        subprocess.run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file",
                        "deployments/prefect.yaml"], env=env, check=True, capture_output=True,
                       cwd=ROOT)
        deployments = _post(f"{api}/deployments/filter", {})
        assert len(deployments) == 4
        assert sum(bool(d["schedules"]) for d in deployments) == 2
        procs.append(subprocess.Popen(
            [prefect, "worker", "start", "--pool", "microchange"], env=env, cwd=ROOT,
            stdout=(logs / "worker.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True))
        runs = {
            "detect-changes/nightly-demo-area": ["--param", "out=out/ui/demo",
                                                 "--param", "area=e2e-area"],
            "detect-changes-catalog/nightly-catalog": ["--param", "out=out/ui/catalog"],
        }
        for name, params in runs.items():
            res = subprocess.run([prefect, "deployment", "run", name, *params, "--watch",
                                  "--watch-timeout", "400"], check=False, env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=450)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + \
                (logs / "worker.log").read_text()[-3000:]
        assert (home / "out" / "ui" / "demo" / "change_mask.tif").is_file()
        assert (home / "out" / "ui" / "catalog" / "summary.parquet").is_file()
        assert (home / "out" / "ui" / "catalog" / "demo-fields" / "2026-05-01_2026-05-11" /
                "run.json").is_file()
        keys = {a["key"] for a in _post(f"{api}/artifacts/filter", {})}
        assert {"changes-e2e-area", "changes-demo-fields", "changes-demo-fields-cva",
                "catalog-demo-catalog"} <= keys
        # a few lines per run at INFO: no Dask/distributed chatter in the worker's log
        assert "distributed.scheduler - INFO" not in (logs / "worker.log").read_text()
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(tmp_path / "prefect", ignore_errors=True)

"""The core library never imports Prefect (nor torch unless a deep method is used)."""

import subprocess
import sys


def test_core_does_not_import_prefect() -> None:
    code = (
        "import sys, microchange, microchange.cli, microchange.pipeline\n"
        "assert 'prefect' not in sys.modules, 'microchange imported prefect'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_prefect_import_in_core_sources() -> None:
    from pathlib import Path

    import microchange

    root = Path(microchange.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if any(
            line.strip().startswith(("import prefect", "from prefect"))
            for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []

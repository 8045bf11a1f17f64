"""The ``microchange`` command line (installed as ``microchange.cli``): parser and commands.

It sits above the flows (``--runner prefect``/``dask`` runs them), so no library module imports
it. ``python -m microchange.cli`` runs it too.
"""

from microchange.cli.main import build_parser, main

__all__ = ("build_parser", "main")

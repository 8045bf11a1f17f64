"""``python -m microchange`` runs the command line."""

import sys

from microchange.cli import main

sys.exit(main())

"""``python -m microchange.cli``."""

import sys

from microchange.cli import main

sys.exit(main())

"""``python -m lossd.service`` is ``lossd``: with no arguments it serves with the defaults."""

import sys

from .cli import main

sys.exit(main())

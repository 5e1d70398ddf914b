"""``python -m lossd`` is the ``lossd`` command (``lossd serve`` with no arguments)."""

import sys

from lossd.service.cli import main

sys.exit(main())

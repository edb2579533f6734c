"""``python -m steeldefect.cascade``: see ``cli.main``."""

import sys

from .cli import main

sys.exit(main())

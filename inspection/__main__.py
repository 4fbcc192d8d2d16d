"""Entry point of ``python -m inspection``."""

import sys

from .cli import main

sys.exit(main())

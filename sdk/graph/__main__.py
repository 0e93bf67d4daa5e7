"""``python -m brinell.graph``: see :mod:`brinell.graph.cli`."""

import sys

from .cli import main

sys.exit(main())

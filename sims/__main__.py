"""``python -m sims``: the same as the ``sims`` command."""

import sys

from sims.cli import main

sys.exit(main())

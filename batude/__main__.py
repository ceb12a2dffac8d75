"""``python -m batude`` runs the ``batude`` CLI."""

import sys

from batude.cli import main

sys.exit(main())

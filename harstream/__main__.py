"""``python -m harstream`` runs the CLI."""

import sys

from harstream.cli import main

sys.exit(main())

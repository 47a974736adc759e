"""``python -m pdlink ...``: the ``pdlink`` command."""

import sys

from pdlink.cli import main

sys.exit(main())

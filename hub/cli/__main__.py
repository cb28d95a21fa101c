"""``python -m edgeloop.hub.cli``: the ``edgeloop`` command."""

import sys

from edgeloop.hub.cli.parser import main

sys.exit(main())

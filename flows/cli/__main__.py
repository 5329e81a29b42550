"""``python -m flows.cli``: the ``langfuse-rotate`` command line, as the installed script runs it."""

import sys

from flows.cli.main import main

sys.exit(main())

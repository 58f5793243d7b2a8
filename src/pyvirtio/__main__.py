"""``python -m pyvirtio``: the ``pyvirtio`` command."""

import sys

from pyvirtio.cli import main

sys.exit(main())

"""``python -m imrs.cli``: the same as the ``imrs`` command."""

import sys

from . import main

sys.exit(main())

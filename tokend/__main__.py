"""`python -m tokend` is the `tokend` command."""

import sys

from tokend.cli import main

sys.exit(main())

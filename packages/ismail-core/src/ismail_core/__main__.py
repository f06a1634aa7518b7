"""`python -m ismail_core ...` runs the `ismail` command (torchrun uses this: `-m ismail_core`)."""

import sys

from ismail_core.cli import main

sys.exit(main())

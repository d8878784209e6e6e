"""`python -m server ...` is `tickroom ...`."""

import sys

from server.cli import main

sys.exit(main())

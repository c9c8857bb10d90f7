"""`python -m sparkfeed.bench ...`: the same as `sparkfeed bench ...`."""

import sys

from .cli import main

sys.exit(main())

"""``python -m zplug.cli``."""

import sys

from zplug.cli import main

sys.exit(main())

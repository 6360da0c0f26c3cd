"""``python -m zplug`` (also under ``torchrun``)."""

import sys

from zplug.cli import main

sys.exit(main())

"""``python -m diinn_napari.batch``: the batch command line (:mod:`.cli`)."""

import sys

from .cli import main

sys.exit(main())

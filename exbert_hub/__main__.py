"""``python -m exbert_hub --model NAME``: same as the ``exbert-hub`` command."""

import sys

from .cli import main

sys.exit(main())

"""``python -m coattn ...`` = ``coattn ...``."""
import sys

from coattn.cli import main

sys.exit(main())

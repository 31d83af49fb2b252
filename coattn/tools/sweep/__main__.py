"""``python -m coattn.tools.sweep ...``: the same as ``coattn sweep ...``."""
from __future__ import annotations

import sys

from coattn.tools.sweep import main

sys.exit(main())

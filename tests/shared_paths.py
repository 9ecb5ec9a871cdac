"""Where the tests find the real data that lives beside the repository (``<repo>/../shared``).

``MEDSSL_SHARED`` overrides the location.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSSL_SHARED", REPO.parent / "shared"))
LA_ROOT = SHARED / "data" / "la"
LA_SPLITS = SHARED / "data" / "la_splits"

"""Where distill keeps caches: ``$DISTILL_CACHE`` or ``~/.cache/distill``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))

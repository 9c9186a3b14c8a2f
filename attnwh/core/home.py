"""Where attnwh keeps what it makes for itself on this machine (models it trains, cached object-store footers)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "ATTNWH_HOME"


def attnwh_home() -> Path:
    """``$ATTNWH_HOME``, else ``$XDG_CACHE_HOME/attnwh``, else ``~/.cache/attnwh``."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "attnwh"

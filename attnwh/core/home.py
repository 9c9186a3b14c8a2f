"""Where attnwh keeps what it makes for itself on this machine (models it trains, cached object-store footers)."""

from __future__ import annotations

import os
from pathlib import Path

from attnwh.core.errors import UsageError

ENV_HOME = "ATTNWH_HOME"


def attnwh_home() -> Path:
    """``$ATTNWH_HOME``, else ``$XDG_CACHE_HOME/attnwh``, else ``~/.cache/attnwh``; a ``UsageError`` naming the setting
    when a file stands where that folder is (or would be made)."""
    if os.environ.get(ENV_HOME):
        return _folder_or_refuse(Path(os.environ[ENV_HOME]), ENV_HOME)
    if os.environ.get("XDG_CACHE_HOME"):
        return _folder_or_refuse(Path(os.environ["XDG_CACHE_HOME"]) / "attnwh", "XDG_CACHE_HOME")
    return _folder_or_refuse(Path.home() / ".cache" / "attnwh", "the home folder's .cache")


def _folder_or_refuse(folder: Path, setting: str) -> Path:
    """``folder`` unless it, or a folder above it, is a file (what attnwh writes there would fail late, after the work)."""
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                where = "" if path == folder else f" ({path} is a file)"
                raise UsageError(f"{setting}: {folder} is not a folder{where}; point {ENV_HOME} at a folder attnwh may write in")
            return folder
    return folder

"""attnwh: a data warehouse of attention statistics for vision-language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attnwh")  # one definition: pyproject.toml's
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    """``attnwh.open`` and ``attnwh.Warehouse``, the notebook API, imported on first use (the CLI does not need them)."""
    if name in ("open", "Warehouse"):
        from attnwh.face import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'attnwh' has no attribute {name!r}")

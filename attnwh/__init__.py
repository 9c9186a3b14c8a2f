"""attnwh: a data warehouse of attention statistics for vision-language models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``attnwh.open`` and ``attnwh.Warehouse``, the notebook API, imported on first use (the CLI does not need them)."""
    if name in ("open", "Warehouse"):
        from attnwh import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'attnwh' has no attribute {name!r}")

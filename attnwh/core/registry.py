"""Registries of named things (benchmarks, model adapters): a name is registered once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TypeVar

Item = TypeVar("Item")

NEAR_NAME = 0.6  # how alike a mistyped name and a known one are to be offered (0.5 offered qbench for nosuch)


def register(registry: dict[str, Item], name: str, item: Item, what: str) -> Item:
    """Add ``item`` under ``name``; a second registration of a name is a programming error."""
    if name in registry:
        raise ValueError(f"{what} {name} is already registered")
    registry[name] = item
    return item


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the known name nearest ``name`` when it is near enough, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=NEAR_NAME)
    return f"did you mean {close[0]!r}? " if close else ""

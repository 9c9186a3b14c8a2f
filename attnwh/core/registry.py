"""Registries of named things (benchmarks, model adapters): a name is registered once."""

from __future__ import annotations

from typing import TypeVar

Item = TypeVar("Item")


def register(registry: dict[str, Item], name: str, item: Item, what: str) -> Item:
    """Add ``item`` under ``name``; a second registration of a name is a programming error."""
    if name in registry:
        raise ValueError(f"{what} {name} is already registered")
    registry[name] = item
    return item

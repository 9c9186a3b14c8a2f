"""The query library: staging views and marts, and the DuckDB session that defines them."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from attnwh.warehouse.catalog import Catalog
from attnwh.warehouse.layout import open_warehouse

STAGING_ORDER = ("stg_samples", "stg_head_metrics")


@dataclass(frozen=True)
class Mart:
    name: str
    sql: str
    description: str
    grain: str
    columns: dict[str, str]
    parameters: dict[str, Any]
    tests: dict[str, Any]


def _package_files():
    return resources.files("attnwh.queries")


def staging_sql() -> list[tuple[str, str]]:
    folder = _package_files() / "staging"
    return [(name, (folder / f"{name}.sql").read_text()) for name in STAGING_ORDER]


def marts() -> dict[str, Mart]:
    folder = _package_files() / "marts"
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".sql"):
            continue
        name = entry.name.removesuffix(".sql")
        sidecar = yaml.safe_load((folder / f"{name}.yml").read_text())
        found[name] = Mart(
            name=name,
            sql=entry.read_text(),
            description=sidecar["description"],
            grain=sidecar["grain"],
            columns=sidecar.get("columns") or {},
            parameters=sidecar.get("parameters") or {},
            tests=sidecar.get("tests") or {},
        )
    return found


def open_session(warehouse_path: Path | str | None) -> Catalog:
    """A locked DuckDB session over the warehouse with every staging view and mart defined."""
    catalog = Catalog(open_warehouse(warehouse_path))
    try:
        for name, sql in staging_sql():
            catalog.define_view(name, sql)
        for mart in marts().values():
            if not mart.parameters:
                catalog.define_view(mart.name, mart.sql)
        catalog.lock()
    except Exception:
        catalog.close()
        raise
    return catalog

"""Views over derived tables (``attnwh recompute``): one per name the user gave, over every derived run of
that name, with the source run's id as ``run_id`` so that it joins ``head_metrics`` on
(run_id, sample_idx, query, layer, head); and ``NAME_sinks`` where the statistic finds sinks.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

from attnwh.core.errors import UsageError
from attnwh.warehouse.schema import DERIVED_VALUE_COLUMNS, TABLES

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,55}")
SINKS_SUFFIX = "_sinks"
RESERVED_PREFIXES = ("stg_", "report_", "duckdb_", "pg_", "sqlite_")
KEYS = ("sample_idx", "query", "layer", "head")


def check_view_name(name: str, reserved: set[str] | frozenset[str] = frozenset()) -> None:
    """A derived table's view name: a lower-case identifier that no table, view or mart of attnwh uses."""
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"--name {name!r} must be a lower-case identifier (a-z, 0-9, _, starting with a letter, at most 56 characters)")
    if name in reserved or name in TABLES or name == "runs" or name.startswith(RESERVED_PREFIXES):
        raise UsageError(f"--name {name} is taken by attnwh's own tables, views and queries; choose another")


def define_derived_views(connection: duckdb.DuckDBPyConnection, names: dict[str, dict[str, Any]]) -> None:
    """``names``: view name -> the derived spec (``columns``, ``statistic``) of its runs."""
    if not names:
        return
    metrics = connection.table("derived_metrics")
    sinks = connection.table("derived_sinks")
    for name, spec in sorted(names.items()):
        this = duckdb.ColumnExpression("name") == duckdb.ConstantExpression(name)
        columns = [
            duckdb.ColumnExpression("source_run_id").alias("run_id"),
            *(duckdb.ColumnExpression(key) for key in KEYS),
            *(duckdb.ColumnExpression(column) for column in spec["columns"]),
            duckdb.ColumnExpression("run_id").alias("derived_run_id"),
        ]
        metrics.filter(this).select(*columns).create_view(name, replace=True)
        if spec.get("sinks"):
            sink_columns = [
                duckdb.ColumnExpression("source_run_id").alias("run_id"),
                *(duckdb.ColumnExpression(key) for key in ("sample_idx", "query", "n_sinks", "sink_positions")),
                duckdb.ColumnExpression("run_id").alias("derived_run_id"),
            ]
            sinks.filter(this).select(*sink_columns).create_view(name + SINKS_SUFFIX, replace=True)


def derived_view_claims(manifests: list[dict[str, Any]], warnings: list[str]) -> dict[str, dict[str, Any]]:
    """The view name each derived run claims (``attnwh recompute --name``) and what it holds; a name two
    statistics claim, or one that is not a valid view name (a hand-edited RUN.json), is left out with a warning."""
    names: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        spec = manifest.get("spec") or {}
        if manifest.get("kind") != "derived":
            continue
        name, claim = spec.get("name"), {"statistic": spec.get("statistic"), "columns": spec.get("columns"), "sinks": spec.get("sinks", False)}
        try:
            check_view_name(name if isinstance(name, str) else "")
            if not isinstance(claim["columns"], list) or not all(isinstance(column, str) and column in DERIVED_VALUE_COLUMNS for column in claim["columns"]):
                raise UsageError(f"its columns {claim['columns']!r} are not derived_metrics columns")
        except UsageError as exc:
            warnings.append(f"run {manifest.get('run_id')}: derived table {name!r} has no view: {exc}")
            continue
        if name in names and names[name] != claim:
            warnings.append(f"run {manifest.get('run_id')}: derived table {name} holds {claim['statistic']}, another run's {names[name]['statistic']}; only the first has a view")
            continue
        names[name] = claim
    return names

"""The query library: staging views and marts, and the DuckDB session that defines them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pyarrow as pa
import yaml

from attnwh.core.errors import UsageError
from attnwh.core.registry import did_you_mean
from attnwh.warehouse.catalog import Catalog
from attnwh.warehouse.definitions import head_score_names
from attnwh.warehouse.layout import open_warehouse

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader when libyaml is there: 10× faster
STAGING_ORDER = (
    "stg_runs",
    "stg_samples",
    "stg_layers",
    "stg_head_metrics",
    "stg_head_scores",
    "stg_head_summary",
    "stg_layer_summary",
    "stg_head_ranks",
    "stg_logit_lens",
    "stg_gen_metrics_not_rolled_up",
    "stg_gen_scores",
    "stg_gen_head_scores",
    "stg_gen_tokens",
    "stg_gen_lens",
    "stg_sweep_conditions",
    "stg_sweep_results",
    "stg_mask_conditions",
    "stg_mask_rankings",
    "stg_mask_results",
    "stg_prune_conditions",
    "stg_prune_results",
    "stg_head_attributions",
    "stg_attribution_pairs",
    # the former stored tables, in their shape over old and new parts (sweeps now share sweep_conditions / sweep_results)
    "mask_conditions",
    "mask_results",
    "prune_conditions",
    "prune_results",
)


@dataclass(frozen=True)
class Mart:
    name: str
    sql: str
    description: str
    grain: str
    columns: dict[str, str]
    parameters: dict[str, Any]
    tests: dict[str, Any]
    when_empty: str | None = None  # what `attnwh query` says when the answer has no rows ({parameter} filled in)


def _package_files():
    return resources.files("attnwh.queries")


def staging_sql() -> list[tuple[str, str]]:
    folder = _package_files() / "staging"
    return [(name, (folder / f"{name}.sql").read_text()) for name in STAGING_ORDER]


def marts() -> dict[str, Mart]:
    """Every mart of the package, by name. The sidecars are parsed once; the choices they take from the definitions
    (``choices: head_score_names``) are read from them on each call."""
    return {name: _with_choices(mart) for name, mart in _parsed_marts().items()}


@cache
def _parsed_marts() -> MappingProxyType[str, Mart]:
    folder = _package_files() / "marts"
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".sql"):
            continue
        name = entry.name.removesuffix(".sql")
        sidecar = yaml.load((folder / f"{name}.yml").read_text(), Loader=_YAML_LOADER)
        found[name] = Mart(
            name=name,
            sql=entry.read_text(),
            description=sidecar["description"],
            grain=sidecar["grain"],
            columns=sidecar.get("columns") or {},
            parameters=sidecar.get("parameters") or {},
            tests=sidecar.get("tests") or {},
            when_empty=sidecar.get("when_empty"),
        )
    return MappingProxyType(found)


# what a sidecar may name instead of listing choices: lists the definitions own, read from them
_NAMED_CHOICES = {"head_score_names": head_score_names}


def _with_choices(mart: Mart) -> Mart:
    return replace(mart, parameters=_resolved(mart.parameters))


def _resolved(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters with ``choices: head_score_names`` (a name of the definitions' lists) replaced by the list itself."""
    return {name: {**spec, "choices": list(_NAMED_CHOICES[spec["choices"]]())} if isinstance(spec.get("choices"), str) else spec for name, spec in parameters.items()}


def open_session(warehouse_path: Path | str | None) -> Catalog:
    """A locked DuckDB session over the warehouse with every staging view and mart defined."""
    catalog = Catalog(open_warehouse(warehouse_path))
    try:
        # staging views and parameterless marts are defined when a query first names them
        catalog.define_on_demand(dict(staging_sql()))
        plain = [mart for mart in marts().values() if not mart.parameters]
        catalog.define_on_demand({mart.name: mart.sql for mart in plain}, descriptions={mart.name: mart.description for mart in plain})
        catalog.lock()
    except Exception:
        catalog.close()
        raise
    return catalog


def get_mart(name: str) -> Mart:
    found = _parsed_marts()
    if name not in found:
        raise UsageError(f"unknown query {name!r}; {did_you_mean(name, found)}see `attnwh query --list`")
    return _with_choices(found[name])  # the one mart asked for, not every mart resolved


_CASTS = {"string": str, "int": int, "float": float}


def bind_parameters(mart: Mart, given: dict[str, str]) -> dict[str, Any]:
    """The mart's parameters from ``key=value`` strings: typed, checked against choices, defaults filled.

    Values are bound by DuckDB (``$name``), never pasted into the SQL.
    """
    unknown = sorted(set(given) - set(mart.parameters))
    if unknown:
        allowed = ", ".join(mart.parameters) or "none"
        raise UsageError(f"query {mart.name} has no parameter {', '.join(unknown)}; parameters: {allowed}")
    bound = {}
    for name, declared in mart.parameters.items():
        if name in given:
            kind = declared.get("type", "string")
            try:
                value = _CASTS[kind](given[name])
            except ValueError as exc:
                raise UsageError(f"parameter {name} of {mart.name} must be {kind}, got {given[name]!r}") from exc
        elif "default" in declared:
            value = declared["default"]
        else:
            raise UsageError(f"query {mart.name} needs --param {name}=...")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:  # DuckDB would bind it as a HUGEINT no function takes
            raise UsageError(f"parameter {name} of {mart.name} is out of range: {value}")
        if "min" in declared and value < declared["min"]:
            raise UsageError(f"parameter {name} of {mart.name} must be at least {declared['min']}, got {value!r}")
        choices = declared.get("choices")
        if choices is not None and value not in choices:
            raise UsageError(f"parameter {name} of {mart.name} takes {', '.join(map(str, choices))}; got {value!r}")
        bound[name] = value
    return bound


def run_mart(session: Catalog, name: str, given: dict[str, str] | None = None) -> pa.Table:
    mart = get_mart(name)
    return session.query(mart.sql, bind_parameters(mart, given or {}))


RUN_PARAMETERS = ("run_id", "run_a", "run_b")  # the marts' parameters that name a run


def check_runs_named(session: Catalog, name: str, given: dict[str, str]) -> None:
    """A user's parameters that name a run (``RUN_PARAMETERS``) name a run of the warehouse: else one line, where the
    query would answer with no rows as if the run had none."""
    named = {key: value for key, value in given.items() if key in RUN_PARAMETERS and key in get_mart(name).parameters}
    if not named:
        return
    found = session.query("select run_id, kind from stg_runs where run_id in (select unnest($ids))", {"ids": list(named.values())}).to_pylist()
    kinds = {row["run_id"]: row["kind"] for row in found}
    for key, value in named.items():
        if value not in kinds:
            if value in session.left_out:
                raise UsageError(f"--param {key}={value}: run {value!r} is damaged and left out of every view ({session.left_out[value]}); see `attnwh verify`")
            raise UsageError(f"--param {key}={value}: no run {value!r} in the warehouse (`attnwh runs` lists them)")
        # a run of another kind holds none of the rows the query reads: it would answer with no rows
        accepted = get_mart(name).parameters[key].get("kinds")
        if accepted and kinds[value] not in accepted:
            raise UsageError(
                f"--param {key}={value}: run {value!r} is a{'n' if kinds[value][0] in 'aeiou' else ''} {kinds[value]} run; query {name} reads {' or '.join(accepted)} runs"
            )


def data_test_failures(mart: Mart, table: pa.Table) -> list[str]:
    """The sidecar's data tests (unique, not_null, accepted_values, range) checked on a result, in Python."""
    failures = []
    tests = mart.tests
    rows = table.to_pylist()
    key = tests.get("unique")
    if key:
        seen = [tuple(row[column] for column in key) for row in rows]
        if len(seen) != len(set(seen)):
            failures.append(f"{mart.name}: ({', '.join(key)}) is not unique")
    for column in tests.get("not_null", []):
        if table.column(column).null_count:
            failures.append(f"{mart.name}: {column} has {table.column(column).null_count} null(s)")
    for column, allowed in (tests.get("accepted_values") or {}).items():
        bad = sorted({row[column] for row in rows} - set(allowed) - {None}, key=str)
        if bad:
            failures.append(f"{mart.name}: {column} has values outside {allowed}: {bad}")
    for column, (low, high) in (tests.get("range") or {}).items():
        values = [row[column] for row in rows if row[column] is not None]
        outside = [value for value in values if not (low - 1e-9 <= value <= high + 1e-9)]
        if outside:
            failures.append(f"{mart.name}: {column} outside [{low}, {high}]: {outside[:3]}")
    missing = sorted(set(mart.columns) ^ set(table.column_names))
    if missing:
        failures.append(f"{mart.name}: columns differ from the sidecar: {missing}")
    return failures

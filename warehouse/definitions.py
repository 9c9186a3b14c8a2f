"""The SQL definitions of head scores, stages and depth (``sql/definitions.sql``), their version, and
the per-part rollups built from them (``sql/rollups.sql``).

One definition per concept: the DuckDB macros are the only place where concentration, the head
scores, the order of a sample's heads and the stages are written down. The warehouse materialises
the per-part rollups ``head_scores`` and ``head_ranks`` from them at commit time, tagged with
``DEFINITIONS_VERSION`` (a hash of the definition files); every query session defines the same
macros, and ``attnwh.queries``' staging views read a run's rollups only when their version is the
current one, else recompute from ``head_metrics``. Changing a formula is one edit in
``definitions.sql``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

import duckdb
import pyarrow as pa

from attnwh.warehouse.schema import GEN_HEAD_SCORES, GEN_SCORES, HEAD_RANKS, HEAD_SCORES, META_DEFINITIONS

_FILES = ("definitions.sql", "rollups.sql")  # versioned: the rollups are built from them
STATISTICS_FILE = "statistics.sql"  # Wilson intervals, McNemar tests: macros of the accuracy tables, not of the rollups


@cache
def definitions_sql() -> str:
    """The text of every definition file, in order (macros only: ``create or replace macro``)."""
    folder = resources.files("attnwh.warehouse") / "sql"
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in _FILES)


def definitions_version(sql: str | None = None) -> str:
    """A short hash of the definitions: rollups record it, readers compare it."""
    return hashlib.sha256((sql if sql is not None else definitions_sql()).encode()).hexdigest()[:16]


def define_macros(connection: duckdb.DuckDBPyConnection, sql: str | None = None) -> None:
    """Create the macros in ``connection``, and ``definitions_version()`` returning their version."""
    text = sql if sql is not None else definitions_sql()
    connection.execute(text)
    connection.execute((resources.files("attnwh.warehouse") / "sql" / STATISTICS_FILE).read_text(encoding="utf-8"))
    connection.execute("create or replace table definitions_info as select $version::varchar as version", {"version": definitions_version(text)})
    connection.execute("create or replace macro definitions_version() as (select version from definitions_info)")


def _build_rollups(inputs: dict[str, pa.Table], queries: list[tuple[str, pa.Schema]]) -> list[pa.Table]:
    """Each ``(sql, schema)`` of ``queries`` (each selecting ``definitions_version()`` as ``definitions``) over the
    registered ``inputs``, computed by DuckDB from the definitions
    (one thread: sums in a fixed order, so the same part always gives the same bytes), tagged with the
    definitions' version in the footer (readers tell current rollups from it alone) and a column."""
    connection = duckdb.connect(":memory:", config={"threads": 1, "autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        define_macros(connection)
        for name, table in inputs.items():
            connection.register(name, table)
        built = [(connection.sql(sql).to_arrow_table(), schema) for sql, schema in queries]
    finally:
        connection.close()
    tagged = {META_DEFINITIONS: definitions_version().encode()}
    return [table.select(schema.names).cast(schema).replace_schema_metadata(tagged) for table, schema in built]


def rollups(metrics: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``head_scores`` and ``head_ranks`` of one part's ``head_metrics``."""
    summary, ranks = _build_rollups(
        {"part_head_metrics": metrics},
        [
            ("select *, definitions_version() as definitions from summarise_head_metrics('part_head_metrics') order by query, score, layer, head", HEAD_SCORES),
            ("select *, definitions_version() as definitions from rank_head_metrics('part_head_metrics') order by query, score, rank, layer, head", HEAD_RANKS),
        ],
    )
    return summary, ranks


def gen_rollup(metrics: pa.Table, tokens: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``gen_scores`` (by step bucket, token kind and layer) and ``gen_head_scores`` (by step bucket, object-word kind,
    layer and head, a sample as the unit) of one part's ``gen_metrics`` and ``gen_tokens``."""
    steps, heads = _build_rollups(
        {"part_gen_metrics": metrics, "part_gen_tokens": tokens},
        [
            (
                "select *, definitions_version() as definitions from summarise_gen_metrics('part_gen_metrics', 'part_gen_tokens') order by step_bucket, token_kind, score, layer",
                GEN_SCORES,
            ),
            (
                "select *, definitions_version() as definitions from summarise_gen_heads('part_gen_metrics', 'part_gen_tokens') order by step_bucket, token_kind, score, layer, head",
                GEN_HEAD_SCORES,
            ),
        ],
    )
    return steps, heads


def layer_stages(n_layers: int) -> list[str]:
    """The stage of every layer of an ``n_layers``-layer decoder, by the ``stage`` macro."""
    return [stage for (stage,) in _evaluate("select stage(layer, $n) from range($n) as t(layer) order by layer", {"n": n_layers})]


def heads_at_share(share: float, total_heads: int) -> int:
    """The whole heads a share of all heads masks (``attnwh mask --k 0.1``): the nearest, a half to the even count
    (Python's ``round``; 2.5 heads are 2, 3.5 are 4). The report names a share by it when it compares models."""
    return round(share * total_heads)


@cache
def head_score_names() -> tuple[str, ...]:
    """The head scores that rank heads, by the ``head_score_names`` macro (the choices of every ``--score``)."""
    return tuple(_evaluate("select head_score_names()")[0][0])


@cache
def patterns_interval() -> str:
    """The label of a patterns attribution fit's intervals as drawn today, by the ``patterns_interval`` macro."""
    return _evaluate("select patterns_interval()")[0][0]


@cache
def min_agreement_heads() -> int:
    """The fewest heads two rankings must both score for a rank correlation, by the ``min_agreement_heads`` macro."""
    return _evaluate("select min_agreement_heads()")[0][0]


def _evaluate(sql: str, parameters: dict | None = None) -> list[tuple]:
    """Rows of ``sql`` in a fresh in-memory DuckDB with the definitions' macros."""
    connection = duckdb.connect(":memory:")
    try:
        define_macros(connection)
        return connection.execute(sql, parameters or {}).fetchall()
    finally:
        connection.close()

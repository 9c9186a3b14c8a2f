"""What DuckDB's own listings (``show tables``, ``information_schema.tables``, ``duckdb_views()``) show of a
session: every table, view and mart a query may name, each with a one-line description, without binding
the views not used yet (``Catalog.list_everything`` makes placeholders of them)."""

from __future__ import annotations

import re

import duckdb

from attnwh.warehouse.schema import TABLES

PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Once a statement lists the session's tables, an on-demand view not bound yet is a placeholder: a view
# over a table of this prefix that no longer exists, so that naming it fails on that table, which defines
# the real view (see ``Catalog.list_everything``). The name says so in ``duckdb_views()``'s ``sql`` column.
PENDING_PREFIX = "attnwh_bound_when_first_named__"
# statements that read DuckDB's catalog (``show tables``, ``information_schema.tables``, ``duckdb_views()``,
# ``pg_catalog``, ``sqlite_master``, ...): before they run, every name a query may use is listed
LISTING = re.compile(r"\b(?:show|information_schema|pg_catalog|pg_\w+|duckdb_\w+|sqlite_\w+)\b", re.IGNORECASE)
# a one-line description of each view and table the warehouse itself defines (shown by
# ``information_schema.tables`` and ``duckdb_views()``; staging views and marts give their own)
DESCRIPTIONS = {
    "runs": "one row per sound run (damaged runs are left out, with a warning): what it is, its settings and how far it got",
    "samples": "one row per run and sample: the prompt, the model's answer, whether it was correct, token counts",
    "head_metrics": "one row per run, sample, query, layer and head: the statistics of that attention row (image sum, entropy, ...)",
    "head_scores": "per committed part, one row per run, query, layer, head and summarised value (head scores, segment mass): head_metrics added up (rollups; stg_head_scores adds up parts)",
    "head_summary": "legacy rollups of parts written before head_scores (a column of sums per score); read never: such runs are recomputed from head_metrics",
    "head_ranks": "per committed part, one row per run, query, score, place and head: in how many samples the head held that place (rollups)",
    "logit_lens": "one row per run, sample, query and layer: the logit lens's view of the final answer (rank, probability)",
    "sweep_conditions": "one row per sweep run (mask, prune, ...) and condition: the intervention, its settings (JSON) and the ranking that chose it",
    "sweep_results": "one row per sweep run, condition and sample: the answer under that condition, and the KV cache it leaves",
    "mask_conditions": "one row per mask run and condition: which heads were masked, and how they were ranked",
    "mask_results": "one row per mask run, condition and sample: the answer with those heads masked",
    "prune_conditions": "one row per prune run and condition: the image-KV budget, its allocation over heads and what each head keeps",
    "prune_results": "one row per prune run, condition and sample: the answer with the image KV cache pruned, and the KV kept",
    "derived_metrics": "rows of every derived table (attnwh recompute); each table's name is also a view of its own",
    "derived_sinks": "the attention sinks derived tables found (attnwh recompute), per run, sample and query",
    "imported_rankings": "head rankings imported with attnwh heads import: one row per ranking and head",
    "sweep_targets": "one row per attribution sweep, condition and sample: the gold option's log-probability and margin (attnwh attribute)",
    "head_attributions": "one row per attribution run and head: its causal importance (attnwh attribute), standard error and 95% interval",
    "attribution_fits": "one row per attribution run: method, ablation, target, fit, and the fit's held-out R² and rank correlation",
    "definitions_info": "the version of the definitions (head scores, concentration, stages) this session computes with",
    "rolled_up_runs": "the runs whose head_scores / head_ranks rollups were all built from the current definitions",
    "head_metrics_not_rolled_up": "the head_metrics rows of every run not in rolled_up_runs when the local cache is off (staging recomputes their sums from them; with it on, the first session sums them up once)",
    "rolled_up_head_scores": "the head_scores rollups: of the runs in rolled_up_runs each run's parts added up once, of the others (with the local cache on) computed from their rows once, kept on this machine",
    "rolled_up_head_ranks": "the head_ranks rollups: of the runs in rolled_up_runs each run's parts added up once, of the others (with the local cache on) computed from their rows once, kept on this machine",
    "gen_metrics_not_rolled_up": "the gen_metrics rows of every run whose gen_scores / gen_head_scores rollups are not all current, when the local cache is off (staging recomputes their sums from them)",
    "rolled_up_gen_scores": "the gen_scores rollups: of the runs whose long-answer rollups are all current each run's parts added up once, of the others (with the local cache on) computed from their rows once, kept on this machine",
    "rolled_up_gen_head_scores": "the gen_head_scores rollups: of the runs whose long-answer rollups are all current each run's parts added up once, of the others (with the local cache on) computed from their rows once, kept on this machine",
}


def stored_table(name: str) -> str | None:
    """The stored table a view of the session reads (``head_metrics``; ``rolled_up_head_scores``: ``head_scores``;
    a table read under another name, ``legacy_mask_results``: ``mask_results``), or None."""
    for prefix in ("", "rolled_up_", "legacy_"):
        if name.startswith(prefix) and name.removeprefix(prefix) in TABLES:
            return name.removeprefix(prefix)
    return None


def leading_comment(sql: str) -> str:
    """The ``--`` comment lines an SQL file starts with, joined."""
    lines = []
    for line in sql.lstrip().splitlines():
        if not line.startswith("--"):
            break
        lines.append(line.removeprefix("--").strip())
    return " ".join(line for line in lines if line)


def one_line(text: str, limit: int = 200) -> str:
    """A description's first sentence on one line, cut at ``limit`` characters (at a word, with an ellipsis)."""
    text = " ".join(text.split())
    sentence = re.split(r"(?<=[a-z0-9)\]])\.\s+(?=[A-Z(])", text, maxsplit=1)[0].rstrip(".")
    if len(sentence) <= limit:
        return sentence
    return sentence[:limit].rsplit(" ", 1)[0].rstrip(",;:(") + " …"


def add_placeholders(connection: duckdb.DuckDBPyConnection, names: list[str], descriptions: dict[str, str]) -> None:
    """A placeholder view per name not bound yet (see ``list_everything``), with its description."""
    script = []
    for name in names:
        if not PLAIN_NAME.fullmatch(name):
            continue
        pending = PENDING_PREFIX + name
        schema = TABLES.get(stored_table(name) or "")
        if schema is not None:
            connection.from_arrow(schema.empty_table()).create(pending)
        else:
            script.append(f'create table "{pending}" ("not bound yet: describe it, or name it in a query" boolean);')
        script.append(f'create view if not exists "{name}" as select * from "{pending}"; drop table "{pending}";')
        script.append(comment_sql(name, "view", descriptions))
    if script:
        connection.execute("\n".join(script))


def comment_sql(name: str, kind: str, descriptions: dict[str, str]) -> str:
    stored = stored_table(name)
    if stored is not None and name.startswith("legacy_"):
        fallback = f"the committed {stored} files, read under this name: a table no longer written (the view {stored} keeps its shape)"
    else:
        fallback = f"the committed {stored} rows of every sound run" if stored else None
    description = descriptions.get(name) or fallback
    if not description or not PLAIN_NAME.fullmatch(name) or kind not in ("table", "view"):
        return ""
    return f"comment on {kind} \"{name}\" is '{description.replace(chr(39), chr(39) * 2)}';"


def comment(connection: duckdb.DuckDBPyConnection, kinds: dict[str, str], descriptions: dict[str, str]) -> None:
    """Comment each table or view (name -> 'table' | 'view') with its description."""
    script = "\n".join(comment_sql(name, kind, descriptions) for name, kind in kinds.items()).strip()
    if script:
        connection.execute(script)

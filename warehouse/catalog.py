"""The DuckDB session over a warehouse: views from the commit log, and a read-only SQL gate.

Each command opens an in-memory DuckDB, defines ``runs``, ``samples`` and ``head_metrics`` from
explicit lists of committed files (never globs, so uncommitted files are invisible), then locks
the session down: file access only inside the warehouse, no extension installs, configuration
locked. User SQL must be a single SELECT (or EXPLAIN of one): DuckDB's directory allow-list alone
would still let COPY TO and ATTACH write inside the warehouse.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from attnwh.core.errors import SqlError, SqlRefused, WarehouseError, first_line
from attnwh.warehouse import parts, storage
from attnwh.warehouse.definitions import define_macros, definitions_version
from attnwh.warehouse.derived import define_derived_views, derived_view_claims
from attnwh.warehouse.footers import FOOTER_KEYS, file_problems, files_of_definitions, keep_compacted, keep_footers, read_compacted, read_footers
from attnwh.warehouse.layout import RunPaths, Warehouse, table_file_name
from attnwh.warehouse.listing import DESCRIPTIONS, LISTING, PENDING_PREFIX, add_placeholders, comment, leading_comment, one_line
from attnwh.warehouse.runs import check_plan_footer, runs_table
from attnwh.warehouse.schema import META_DEFINITIONS, SCHEMA_VERSION, TABLES, view_name
from attnwh.warehouse.sql_guard import check_read_only

MISSING_TABLE = re.compile(  # DuckDB's error for a table or view it does not know (the CLI's hint reads it too)
    r'Table with name "?([A-Za-z_][A-Za-z0-9_]*)"? does not exist'
)
# DuckDB's errors that come from reading a file, not from the statement: its unclassified errors (a Parquet page's or
# footer's thrift that does not decode), I/O errors, and internal or deserialisation errors; by their type, or by the
# prefix of their message where Arrow's stream of a result carries one as an OSError
_FILE_FAILURES = (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException)
_FILE_FAILURE_PREFIX = re.compile(r"(Invalid|IO|Internal|Serialization) Error: ")
# an "Invalid Input Error" is mostly the statement's (error(), strptime, a bad regex), except when a file's bytes are
_DAMAGED_INPUT = re.compile(r"failed to read file|magic bytes|invalid string encoding|corrupt", re.IGNORECASE)
DAMAGE_HINT = "a committed file may be damaged; run `attnwh verify`"


@contextmanager
def sql_errors(streamed: bool = False) -> Iterator[None]:
    """DuckDB's failure to run a statement as ``SqlError`` (``sql_error``): its own errors; its binding's failure to
    turn an error's text into a string (a ``RuntimeError`` of nanobind: the undecodable bytes a damaged file puts
    there); with ``streamed``, the ``OSError`` that Arrow's stream of a result raises for DuckDB's error met after the
    first batch (its message is DuckDB's)."""
    try:
        yield
    except (duckdb.Error, RuntimeError, OSError) as exc:
        if isinstance(exc, duckdb.Error) or (isinstance(exc, RuntimeError) and "nanobind" in str(exc)) or (isinstance(exc, OSError) and streamed):
            raise sql_error(exc) from exc
        raise


def sql_error(exc: BaseException) -> SqlError | SqlRefused:
    """One line for a statement DuckDB could not run; a failure that is not the statement's (reading a file's
    bytes) says that a committed file may be damaged, since DuckDB names no file and ``verify`` finds it. A read of
    a file outside the warehouse (which the locked session does not permit) is refused SQL, as a write is."""
    message = first_line(exc)
    if isinstance(exc, duckdb.PermissionException):
        return SqlRefused(f"only files inside the warehouse can be read: {message}")
    if isinstance(exc, duckdb.Error):
        from_a_file = type(exc) is duckdb.Error or isinstance(exc, _FILE_FAILURES) or (isinstance(exc, duckdb.InvalidInputException) and _DAMAGED_INPUT.search(message) is not None)
    elif isinstance(exc, OSError):
        from_a_file = _FILE_FAILURE_PREFIX.match(message) is not None or (message.startswith("Invalid Input Error: ") and _DAMAGED_INPUT.search(message) is not None)
    else:
        from_a_file = True  # the binding could not decode the message: bytes of a file
    return SqlError(f"{message.rstrip('.')}; {DAMAGE_HINT}" if from_a_file else message)


ROLLUP_TABLES = ("head_scores", "head_ranks")
GEN_ROLLUP_TABLES = ("gen_scores", "gen_head_scores")  # the long answers' (``--queries gen``)
# how a rollup is computed from a run's rows (the rollups' own macros, as at commit time and in staging): the tables
# whose files are its input, and the statement over the view ``rows_to_roll_up`` of those runs' rows
_ROLLUP_FROM_ROWS = {
    "head_scores": (("head_metrics",), "select * from summarise_head_metrics('rows_to_roll_up')"),
    "head_ranks": (("head_metrics",), "select * from rank_head_metrics('rows_to_roll_up')"),
    "gen_scores": (("gen_metrics", "gen_tokens"), "select * from summarise_gen_metrics('rows_to_roll_up', 'gen_tokens')"),
    "gen_head_scores": (("gen_metrics", "gen_tokens"), "select * from summarise_gen_heads('rows_to_roll_up', 'gen_tokens')"),
}


def _as_rollup(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """A run's added-up staging rows in the shape of its rollup files (tagged with the current definitions)."""
    rows = rows.append_column("definitions", pa.array([definitions_version()] * rows.num_rows, pa.string()))
    return rows.select(schema.names).cast(schema)


def _readable_or_problem(run: RunPaths) -> parts.ReadableRun | WarehouseError:
    try:
        return parts.readable_run(run)
    except WarehouseError as exc:
        return exc


class Catalog:
    """An in-memory DuckDB session over one warehouse."""

    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse
        self.connection = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        # Parquet footers are read once per session, not once per view bound over them
        self.connection.execute("SET parquet_metadata_cache = true")
        self._keep_alive: list[pa.Table] = []
        self.warnings: list[str] = []  # damaged runs (left out of every view, or not resumable): callers must show them
        self.left_out: dict[str, str] = {}  # run id -> why it is left out of every view (a command naming it says so)
        self._on_demand: dict[str, str | Callable[[], None]] = {}  # views defined when a query first names them
        self.descriptions: dict[str, str] = dict(DESCRIPTIONS)  # name -> one line, the comment of its table or view
        self._listed = False  # whether a statement listed the catalog (``list_everything``)
        define_macros(self.connection)
        self._define_raw_views()
        self._define_rollup_views()

    # -- building -------------------------------------------------------------------------------

    def _define_raw_views(self) -> None:
        """``runs`` and one view per table over the committed files of every sound run.

        A run whose manifest, commit records or committed tables are damaged is left out of every
        view (not only of those that join ``runs``) and named in ``warnings``, never dropped silently;
        one whose plan is damaged is kept (its tables are sound) with a warning that it cannot be resumed.
        """
        runs: list[tuple[RunPaths, parts.ReadableRun]] = []
        files: dict[str, list[str]] = {table: [] for table in TABLES}
        self._run_files: dict[str, dict[str, list[str]]] = {}  # run_id -> table -> committed files
        self._define_readable_views(self.warehouse.run_folders(tagged=False), runs, files)
        self._register_table("runs", runs_table(runs))
        # each table's view is bound (every footer of its files read by DuckDB) when a query first names it
        self._on_demand.update({view_name(table): self._raw_view(table, files[table]) for table in TABLES})
        self._define_derived_views(runs)

    def _leave_out(self, run: RunPaths, problem: str) -> None:
        run_id = run.root.name.removeprefix("run=")
        self.left_out[run_id] = problem
        self.warnings.append(f"run {run_id} left out: {problem}; see `attnwh verify`")

    def _define_readable_views(self, found_runs: list[RunPaths], runs: list, files: dict[str, list[str]]) -> None:
        """Fill ``runs`` and ``files`` with the sound runs and their committed files."""
        readable_runs: list[tuple[RunPaths, parts.ReadableRun, dict[str, list[str]]]] = []
        committed: dict[str, tuple[int, str]] = {}  # every committed Parquet file, its size and hash
        # each run's manifest, commit records and listings, the runs' requests overlapping (object stores)
        readables = storage.concurrently([partial(_readable_or_problem, run) for run in found_runs])
        for run, readable in zip(found_runs, readables):
            if isinstance(readable, WarehouseError):
                self._leave_out(run, str(readable))
                continue
            run = readable.paths  # with its listing: the plan's footer comes from the local cache
            # one stat (and one object-store path) per part, not per table: files are named by joining text
            folders = [(record, str(parts.part_folder(run, record))) for record in readable.records]
            run_files = {table: [f"{folder}/{table_file_name(table)}" for record, folder in folders if table in record.tables] for table in TABLES}
            readable_runs.append((run, readable, run_files))
            committed.update(
                {f"{folder}/{entry['path']}": (entry["size"], entry["sha256"]) for record, folder in folders for entry in record.files if entry["path"].endswith(".parquet")}
            )
        self._committed_hashes = {path: sha256 for path, (_, sha256) in committed.items()}  # the rollups' compaction key
        if storage.is_object_store(self.warehouse.root):  # DuckDB reads the store through fsspec (httpfs cannot be installed offline)
            self.connection.register_filesystem(storage.committed_objects(self.warehouse.root, committed))
        problems = self._table_file_problems([run_files for _, _, run_files in readable_runs])
        for (run, readable, run_files), problem in zip(readable_runs, problems):
            if problem is not None:
                self._leave_out(run, problem)
                continue
            try:
                unrecorded = [] if storage.is_object_store(run.root) else parts.unrecorded_parts(run)  # object stores publish nothing (verify lists them)
            except WarehouseError as exc:  # its committed parts were found by their names: only the unrecorded ones are unknown
                self.warnings.append(f"run {run.root.name.removeprefix('run=')}: {exc}; see `attnwh verify`")
                unrecorded = []
            for name in unrecorded:
                self.warnings.append(f"run {run.root.name.removeprefix('run=')}: {name} left out: it has no commit record; see `attnwh verify`")
            try:
                check_plan_footer(run, readable.manifest)
            except WarehouseError as exc:
                self.warnings.append(f"run {run.root.name.removeprefix('run=')} cannot be resumed: {exc}; see `attnwh verify`")
            runs.append((run, readable))
            self._run_files[readable.manifest["run_id"]] = run_files
            for table, paths in run_files.items():
                files[table] += paths

    def _raw_view(self, table: str, files: list[str]) -> Callable[[], None]:
        def define() -> None:
            if files:
                relation = self._with_every_column(self.connection.read_parquet(files, union_by_name=True), TABLES[table])
            else:
                relation = self._arrow_relation(TABLES[table].empty_table())
            relation.create_view(view_name(table), replace=True)

        return define

    def define_everything(self) -> None:
        """Define every view now (tools that list the session's views, like ``duckdb_views()``, see them all)."""
        while self._on_demand:
            name = next(iter(self._on_demand))
            self._define_pending(name)

    def _define_pending(self, name: str) -> None:
        definition = self._on_demand.pop(name)
        try:
            if callable(definition):
                self._when_defined(definition)
            else:
                self.define_view(name, definition)
        except BaseException:
            self._on_demand[name] = definition  # still pending: its placeholder names it again
            raise
        if self._listed:
            comment(self.connection, {name: "view"}, self.descriptions)  # a view defined anew loses its placeholder's comment

    def list_everything(self) -> None:
        """Make DuckDB's own listings (``show tables``, ``information_schema.tables``, ``duckdb_views()``)
        name every table, view and mart a query may use, each with a one-line description (its
        comment), without binding any: done once, before the first statement that reads the catalog.

        A view not bound yet becomes a placeholder: a view over a table that is dropped at once (DuckDB
        binds a view when it is created, and again when a query names it), so naming it fails on that
        table and ``_when_defined`` defines the real view in its place. A stored table's placeholder has
        the table's columns (``information_schema.columns``); a staging view's or mart's has one column
        saying it is not bound yet, until a query (or DESCRIBE) names it. Sessions that list nothing
        never pay for this (about 60 statements, 10-30 ms).
        """
        if self._listed:
            return
        self._listed = True
        existing = dict(
            self.connection.execute(
                "select view_name, 'view' from duckdb_views() where not internal and schema_name = 'main' "
                "union all select table_name, 'table' from duckdb_tables() where schema_name = 'main'"
            ).fetchall()
        )
        add_placeholders(self.connection, [name for name in self._on_demand if name not in existing], self.descriptions)
        comment(self.connection, existing, self.descriptions)

    def _define_derived_views(self, runs: list[tuple[RunPaths, parts.ReadableRun]]) -> None:
        """One view per name of a derived table (``attnwh recompute --name``); a name two statistics claim, or
        one that is not a valid view name (a hand-edited RUN.json), is left out with a warning."""
        names = derived_view_claims([readable.manifest for _, readable in runs], self.warnings)
        if names:
            for table in ("derived_metrics", "derived_sinks"):
                if table in self._on_demand:
                    self._define_pending(table)
        define_derived_views(self.connection, names)
        for name, claim in names.items():
            self.descriptions[name] = f"derived table {name} (attnwh recompute --statistic {claim['statistic']}): one row per source run, sample, query, layer and head"
            if claim["sinks"]:
                self.descriptions[name + "_sinks"] = f"the attention sinks of derived table {name}: one row per source run, sample and query"

    def _table_file_problems(self, runs: list[dict[str, list[str]]]) -> list[str | None]:
        """Per run (its committed files by table), the first problem of a file, or None.

        Every file's footer metadata (the table it holds, its schema version, the Arrow schema pyarrow
        stored) is read in one DuckDB call over all files (0.16 s for 2,000 files, where reading each
        schema with pyarrow took 0.33 s, and it warms the footer cache the views then bind from); each
        distinct Arrow schema is parsed once and its column types checked. A file without that
        metadata, and every file when the batch fails (a file missing or unreadable), gets the full
        per-file check (``check_file_schema``), which names the file.
        """
        # object stores: a run's footer metadata kept on this machine by its files' committed hashes (what
        # a hash names never changes); read through fsspec it cost 0.35 ms a file, every session
        cache = storage.object_cache() if storage.is_object_store(self.warehouse.root) else None
        files_of = [[path for table_paths in run_files.values() for path in table_paths] for run_files in runs]
        keys = {i: self._footers_key(paths) for i, paths in enumerate(files_of) if paths} if cache is not None else {}
        kept = {i: metadata for i, key in keys.items() if (metadata := read_footers(cache, key)) is not None}
        found: dict[str, dict[str, str]] | None = {path: kept[i].get(self._committed_hashes[path], {}) for i in kept for path in files_of[i]}
        paths = [path for i, run_paths in enumerate(files_of) if i not in kept for path in run_paths]
        if paths:
            try:
                rows = self.connection.sql(
                    "select file_name, decode(key) as key, decode(value) as value from parquet_kv_metadata($files) "
                    "where key in ($table_key::blob, $version_key::blob, $definitions_key::blob, $arrow_key::blob)",
                    params={"files": paths, **FOOTER_KEYS},
                ).fetchall()
            except duckdb.Error:
                found = None
            else:
                for name, key, value in rows:
                    found.setdefault(name, {})[key] = value
                for i in keys.keys() - kept.keys():
                    keep_footers(cache, keys[i], {self._committed_hashes[path]: found.get(path, {}) for path in files_of[i]})
        self._file_metadata = found or {}  # the rollup views read the definitions' versions from it
        return file_problems(runs, found or {})

    def _define_rollup_views(self) -> None:
        """``rolled_up_runs``: the runs every one of whose ``head_scores`` and ``head_ranks`` files was
        built from the current definitions (``definitions_version()``), read from the files' footers
        (their ``attnwh.definitions`` metadata, else the column's statistics), not their rows; ``head_metrics_not_rolled_up``: the ``head_metrics`` files of every
        other run (parts older than versioned rollups, or rollups of other definitions), from which
        staging recomputes the same sums, unless the local cache keeps them: with it on, those runs' sums are
        computed from their rows once and read from the cache (``_define_rolled_up``), and the view holds no file.
        At 10 M rows this takes 10 ms where scanning the rows took 0.3 s.
        """
        rollup_files = {run_id: tables["head_scores"] + tables["head_ranks"] for run_id, tables in self._run_files.items()}
        version = definitions_version()
        tagged = {
            path: self._file_metadata[path].get(META_DEFINITIONS.decode())
            for paths in rollup_files.values()
            for path in paths
            if META_DEFINITIONS.decode() in self._file_metadata.get(path, {})
        }
        current = {path for path, tag in tagged.items() if tag == version}
        # files written before their footers carried the version: from the column's statistics
        current |= files_of_definitions(self.connection, [path for paths in rollup_files.values() for path in paths if path not in tagged], version)
        rolled = sorted(
            run_id
            for run_id, paths in rollup_files.items()
            if paths
            and all(path in current for path in paths)
            # every part with head_metrics has both rollups (parts written before head_ranks existed have none)
            and len(self._run_files[run_id]["head_scores"]) == len(self._run_files[run_id]["head_ranks"]) == len(self._run_files[run_id]["head_metrics"])
        )
        self._register_table("rolled_up_runs", pa.table({"run_id": pa.array(rolled, pa.string())}))
        # the other runs (rollups of other definitions, or parts without them): with a local cache, their sums are
        # computed from their rows by the first session that needs them and kept by the rows' files and the
        # definitions, so a run committed before a definitions change is not recomputed from its rows by every session
        cache = storage.object_cache()
        stale = self._not_rolled_up("head_metrics", rolled) if cache is not None else []
        # what staging adds up: the rollups of those runs, each run's parts added up once on this machine
        self._on_demand.update({f"rolled_up_{table}": partial(self._define_rolled_up, table, rolled, stale) for table in ROLLUP_TABLES})
        # the long answers' (``--queries gen``) rollups the same way: the runs every part of whose gen_metrics has both
        # rollups, built from the current definitions (by their footers; a file without the tag is recomputed), each
        # run's parts added up once on this machine (at 100 M gen_metrics rows a run has ~100 parts); the others'
        # gen_metrics rows in ``gen_metrics_not_rolled_up``, from which staging recomputes them. When every run is
        # current that view holds no file, so a session reads no gen_metrics row.
        gen_rolled = sorted(
            run_id
            for run_id, tables in self._run_files.items()
            if tables["gen_metrics"]
            and all(len(tables[table]) == len(tables["gen_metrics"]) for table in GEN_ROLLUP_TABLES)
            and all(self._file_metadata.get(path, {}).get(META_DEFINITIONS.decode()) == version for table in GEN_ROLLUP_TABLES for path in tables[table])
        )
        gen_stale = self._not_rolled_up("gen_metrics", gen_rolled) if cache is not None else []
        self._on_demand.update({f"rolled_up_{table}": partial(self._define_rolled_up, table, gen_rolled, gen_stale) for table in GEN_ROLLUP_TABLES})
        self._define_not_rolled_up("gen_metrics", gen_rolled + gen_stale)
        self._define_not_rolled_up("head_metrics", rolled + stale)

    def _not_rolled_up(self, table: str, rolled: list[str]) -> list[str]:
        """The runs not in ``rolled`` that have rows of ``table``."""
        return sorted(run_id for run_id, tables in self._run_files.items() if run_id not in rolled and tables[table])

    def _define_not_rolled_up(self, table: str, rolled: list[str]) -> None:
        """``<table>_not_rolled_up``: the rows of ``table`` of every run not in ``rolled`` (staging recomputes their sums)."""
        files = [path for run_id, tables in self._run_files.items() if run_id not in rolled for path in tables[table]]
        if files:
            relation = self._with_every_column(self.connection.read_parquet(files, union_by_name=True), TABLES[table])
        else:
            relation = self._arrow_relation(TABLES[table].empty_table())
        relation.create_view(f"{table}_not_rolled_up", replace=True)

    def _define_rolled_up(self, table: str, rolled: list[str], stale: list[str]) -> None:
        """``rolled_up_<table>``: the ``head_scores`` / ``head_ranks`` rows of the rolled-up runs, a run of
        many parts as one compacted table kept in the local cache.

        At 100 M rows a run has 400 parts, and every session read and added up 800 rollup files. The
        compacted table of a run is ``add_up_<table>`` of the rollups (warehouse/sql/rollups.sql: the one
        definition of adding up parts, which staging uses too) over that run's parts, computed by the first
        session that needs it, and kept by a key of the parts' committed hashes and the definitions' version
        (which covers that macro: so it is found again only for exactly those parts and that arithmetic);
        staging adding up one row per head gives the same rows.
        With the cache off (``ATTNWH_OBJECT_CACHE=off``) the parts are read as before. The same for the long
        answers' ``gen_scores`` / ``gen_head_scores``.

        ``stale``: runs whose rollups are of other definitions (or missing in a part). Their rows are summed up by the
        rollups' macros with the current definitions (``_ROLLUP_FROM_ROWS``, the statements staging recomputes with),
        as one run-wide rollup, once, by the first session that needs it, and kept by the key of the rows' committed
        hashes and the definitions' version: after a definitions change every session recomputed every older run
        from its rows (at 10 M rows the head marts 1.3-4.5 s in every session, 0.16-0.35 s from the cache:
        ``bench/bench_warehouse.py --stale``).
        """
        cache = storage.object_cache()
        recomputed = self._recomputed(table, stale, cache)
        adding_up = f"select * from add_up_{table}('rolled_up_{table}')"
        keys = {run_id: self._rollup_key(table, run_id) for run_id in rolled if cache is not None and len(self._run_files[run_id][table]) > 1}
        compacted = {run_id: found for run_id, key in keys.items() if (found := read_compacted(cache, key, TABLES[table])) is not None}
        missing = [run_id for run_id in keys if run_id not in compacted]
        if missing:  # added up here once, then read from the cache by every later session
            self._rolled_up_view(table, [path for run_id in missing for path in self._run_files[run_id][table]], [])
            rows = self._when_defined(
                lambda: self.connection.sql(adding_up).filter(duckdb.ColumnExpression("run_id").isin(*[duckdb.ConstantExpression(run_id) for run_id in missing])).to_arrow_table()
            )
            for run_id in missing:
                found = _as_rollup(rows.filter(pc.equal(rows["run_id"], run_id)), TABLES[table])
                keep_compacted(cache, keys[run_id], found)
                compacted[run_id] = found
        files = [path for run_id in rolled if run_id not in compacted for path in self._run_files[run_id][table]]
        self._rolled_up_view(table, files, [compacted[run_id] for run_id in rolled if run_id in compacted] + [recomputed[run_id] for run_id in stale])

    def _recomputed(self, table: str, stale: list[str], cache) -> dict[str, pa.Table]:
        """Each of the ``stale`` runs' ``table`` rollup computed from its rows with the current definitions, from the
        local cache where a session kept it, else computed here (a run at a time: memory bounded by the largest) and kept."""
        sources, statement = _ROLLUP_FROM_ROWS[table]
        found = {}
        for run_id in stale:
            key = self._recomputed_key(table, run_id)
            kept = read_compacted(cache, key, TABLES[table])
            if kept is None:
                rows = self._with_every_column(self.connection.read_parquet(self._run_files[run_id][sources[0]], union_by_name=True), TABLES[sources[0]])
                rows.create_view("rows_to_roll_up", replace=True)
                try:
                    computed = self._when_defined(lambda: self.connection.sql(statement).to_arrow_table())
                finally:
                    self.connection.execute("drop view rows_to_roll_up")
                kept = _as_rollup(computed, TABLES[table])
                keep_compacted(cache, key, kept)
            found[run_id] = kept
        return found

    def _rolled_up_view(self, table: str, files: list[str], tables: list[pa.Table]) -> None:
        schema = TABLES[table]
        relations = [self._with_every_column(self.connection.read_parquet(files, union_by_name=True), schema)] if files else []
        if tables:
            self._keep_alive.append(combined := pa.concat_tables(tables))
            relations.append(self.connection.from_arrow(combined))
        relation = relations[0] if relations else self._arrow_relation(schema.empty_table())
        for other in relations[1:]:
            relation = relation.select(*schema.names).union(other.select(*schema.names))
        relation.create_view(f"rolled_up_{table}", replace=True)

    def _rollup_key(self, table: str, run_id: str) -> str:
        return self._cache_key(f"rollup-{table}", self._run_files[run_id][table], run_id, definitions_version(), SCHEMA_VERSION)

    def _recomputed_key(self, table: str, run_id: str) -> str:
        sources, _ = _ROLLUP_FROM_ROWS[table]
        return self._cache_key(f"recomputed-{table}", [path for source in sources for path in self._run_files[run_id][source]], run_id, definitions_version(), SCHEMA_VERSION)

    def _footers_key(self, files: list[str]) -> str:
        # the keys read are part of the key: an attnwh that reads other keys does not take these entries
        return self._cache_key("footers", files, sorted(FOOTER_KEYS.values()))

    def _cache_key(self, kind: str, files: list[str], *how: Any) -> str:
        """The local cache's name of what was computed from ``files`` (by their committed hashes) and ``how``."""
        text = json.dumps([*how, sorted(self._committed_hashes[path] for path in files)])
        return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()}"

    def _with_every_column(self, relation: duckdb.DuckDBPyRelation, schema: pa.Schema) -> duckdb.DuckDBPyRelation:
        """The relation with NULLs for columns of the schema that none of its files has (files
        written before the column was added), so that views and marts bind on any warehouse."""
        missing = [name for name in schema.names if name not in relation.columns]
        if not missing:
            return relation
        typed = self.connection.from_arrow(schema.empty_table())
        types = dict(zip(typed.columns, typed.types))
        columns = [duckdb.ColumnExpression(name) for name in relation.columns]
        columns += [duckdb.ConstantExpression(None).cast(types[name]).alias(name) for name in missing]
        return relation.select(*columns)

    def _arrow_relation(self, table: pa.Table) -> duckdb.DuckDBPyRelation:
        self._keep_alive.append(table)
        return self.connection.from_arrow(table)

    def _register_table(self, name: str, table: pa.Table) -> None:
        self._arrow_relation(table).create_view(name, replace=True)

    def define_view(self, name: str, sql: str) -> None:
        """Define a view from trusted SQL shipped with attnwh (staging and marts)."""
        self._when_defined(lambda: self.connection.sql(sql).create_view(name, replace=True))

    def define_on_demand(self, views: dict[str, str], descriptions: dict[str, str] | None = None) -> None:
        """Views from trusted SQL, each defined when a query (or another view) first names it.

        Binding a view over a large warehouse costs: DuckDB binds it down to the Parquet files of
        every view beneath (10-20 ms a view at 10 M rows), so a session defines only what it uses.
        Listings of the catalog still name each (``list_everything``), with a one-line description:
        ``descriptions[name]``, else the first sentence of the SQL's leading comment.
        """
        for name, sql in views.items():
            described = (descriptions or {}).get(name) or leading_comment(sql)
            if described:
                self.descriptions[name] = one_line(described)
        self._on_demand.update(views)
        if self._listed:
            add_placeholders(self.connection, list(views), self.descriptions)

    def _when_defined(self, action):
        """Run ``action``; while it fails on a missing table that is an on-demand view, define that view and retry."""
        while True:
            try:
                return action()
            except duckdb.CatalogException as exc:
                match = MISSING_TABLE.search(str(exc))
                name = match.group(1).removeprefix(PENDING_PREFIX) if match is not None else None
                if name not in self._on_demand:
                    raise
                self._define_pending(name)

    def lock(self) -> None:
        """No file access outside the warehouse, no extensions, no further configuration changes."""
        root = str(self.warehouse.root) if storage.is_object_store(self.warehouse.root) else str(self.warehouse.root.resolve())
        root = root.rstrip("/") + "/"
        self.connection.execute("SET allowed_directories = $dirs", {"dirs": [root]})
        self.connection.execute("SET enable_external_access = false")
        self.connection.execute("SET lock_configuration = true")

    # -- querying ---------------------------------------------------------------------------------

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> pa.Table:
        """Run trusted SQL (attnwh's own queries) with bound parameters."""
        with sql_errors():
            return self._when_defined(lambda: self.connection.sql(sql, params=parameters or None).to_arrow_table())

    def relation(self, sql: str, parameters: dict[str, Any] | None = None) -> duckdb.DuckDBPyRelation:
        """Trusted SQL (attnwh's own queries) as a lazy DuckDB relation, parameters bound."""
        with sql_errors():
            return self._when_defined(lambda: self.connection.sql(sql, params=parameters or None))

    def user_relation(self, sql: str, parameters: dict[str, Any] | None = None) -> duckdb.DuckDBPyRelation:
        """A user's statement, checked to only read, as a lazy DuckDB relation (the notebook API)."""
        return self.relation(self._user_statement(sql), parameters)

    def user_query(self, sql: str, parameters: dict[str, Any] | None = None) -> pa.Table:
        """Run a user's statement after checking that it only reads."""
        return self.query(self._user_statement(sql), parameters)

    def user_batches(self, sql: str, rows: int = 65_536) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """A user's statement, checked to only read, as its result's schema and its rows in batches of up to ``rows``,
        fetched as they are read (a result larger than memory streams through)."""
        relation = self.user_relation(sql)
        with sql_errors():
            reader = self._when_defined(lambda: relation.fetch_record_batch(rows))

        def batches() -> Iterator[pa.RecordBatch]:
            with sql_errors(streamed=True):
                yield from reader

        return reader.schema, batches()

    def _user_statement(self, sql: str) -> str:
        """The user's statement checked to only read; one that reads the catalog first gets every name listed."""
        statement = check_read_only(sql)
        if LISTING.search(statement):
            with sql_errors():
                self.list_everything()
        return statement

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

"""Warehouses on object storage, against a local S3 server (moto) that enforces conditional puts and
checks credentials: the whole pipeline, racing writers, a kill mid-part, damaged objects, hostile SQL,
wrong credentials and an unreachable endpoint. The reference is the same commands on a local folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import attnwh
from attnwh.core.errors import SqlRefused, WarehouseError
from attnwh.queries.library import open_session
from attnwh.warehouse import parts, storage
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.parts import FAULT_ENV
from attnwh.warehouse.runs import Plan, open_or_create_run
from tests.objectstore.s3server import BUCKET, OTHER_BUCKET
from tests.reliability.harness import run_cli

EXTRACT = ["extract", "--limit", "8", "--part-size", "4", "--batch-size", "4", "--device", "cpu"]
MASK = ["mask", "--limit", "8", "--k", "0,1", "--seeds", "1", "--batch-size", "4", "--device", "cpu"]


def tables(warehouse: str | Path) -> dict[str, list]:
    """Every committed row without run-specific ids and times."""
    with open_session(warehouse) as session:
        return {
            "samples": session.query("select * exclude (run_id) from samples order by sample_idx").to_pylist(),
            "head_metrics": session.query("select * exclude (run_id) from head_metrics order by sample_idx, query, layer, head").to_pylist(),
            "logit_lens": session.query("select * exclude (run_id) from logit_lens order by sample_idx, query, layer").to_pylist(),
            "mask": session.query("select * exclude (run_id) from mask_results order by condition_id, sample_idx").to_pylist(),
            "derived": session.query("select * exclude (run_id, source_run_id) from derived_metrics order by all").to_pylist(),
        }


def objects(s3, url: str) -> dict[str, bytes]:
    """Every object under a warehouse URL, read with boto3 (not through attnwh)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = s3.client()
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/") for item in page.get("Contents", [])]
    return {key.removeprefix(prefix + "/"): client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def subprocess_attnwh(args: list[str], warehouse: str, env: dict[str, str], fault: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env, "ATTNWH_WAREHOUSE": warehouse}
    environment.pop(FAULT_ENV, None)
    if fault:
        environment[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "attnwh.face.cli", *args], env=environment, capture_output=True, text=True, timeout=300)


def test_extract_verify_sql_report_mask_recompute_on_s3_equal_a_local_folder(s3, tmp_path, capsys):
    url = s3.url()
    local = tmp_path / "local"
    for warehouse in (url, str(local)):
        assert run_cli(capsys, *EXTRACT, "--warehouse", warehouse)[0] == 0
        assert run_cli(capsys, *MASK, "--warehouse", warehouse)[0] == 0
        code, out, _ = run_cli(capsys, "runs", "--format", "csv", "--warehouse", warehouse)
        extraction = next(line.split(",")[0] for line in out.splitlines() if ",extract," in line)
        assert run_cli(capsys, "recompute", extraction, "--statistic", "topk_mass", "--k", "2", "--name", "top2", "--warehouse", warehouse)[0] == 0
    assert tables(url) == tables(local)

    code, out, err = run_cli(capsys, "verify", "--warehouse", url)
    assert code == 0, out + err
    code, out, _ = run_cli(capsys, "sql", "select count(*) as n, count(distinct run_id) as runs from head_metrics", "--format", "csv", "--warehouse", url)
    _, shape, _ = run_cli(capsys, "sql", "select n_layers * n_heads from runs where kind = 'extract'", "--format", "csv", "--warehouse", url)
    assert code == 0 and out.splitlines()[1] == f"{8 * 2 * int(shape.splitlines()[1])},1"  # 8 samples x 2 queries x every head, 1 run
    code, out, _ = run_cli(capsys, "query", "visual_heads", "--format", "csv", "--warehouse", url)
    assert code == 0 and out == run_cli(capsys, "query", "visual_heads", "--format", "csv", "--warehouse", str(local))[1].replace(str(local), url)
    code, out, _ = run_cli(capsys, "status", "--format", "csv", "--warehouse", url)
    assert code == 0 and "2/2" in out
    code, _, err = run_cli(capsys, "report", "--out", str(tmp_path / "report"), "--warehouse", url)
    assert code == 0, err
    assert (tmp_path / "report" / "index.html").is_file() and len(list((tmp_path / "report").glob("*.html"))) > 3

    stored = objects(s3, url)
    assert not any(key.startswith("runs/") and "/parts/" in key for key in stored)  # no publish step: parts stay at their attempt's prefix
    assert all(s3.secret.encode() not in content and s3.key_id.encode() not in content for content in stored.values())
    with attnwh.open(url) as wh:  # the notebook API on the same warehouse
        assert wh.sql("select count(*) from samples").fetchall() == [(8,)]
        assert wh.rows(extraction).shape[0] == 8


def test_two_writers_racing_for_one_part_commit_it_once(s3):
    warehouse = open_warehouse(s3.url("race"), create=True)
    run, _ = open_or_create_run(warehouse, kind="extract", model="m", benchmark="b", spec={}, plan=Plan(["a", "b"], 2), run_id="race", details={})
    both_written = threading.Barrier(2)
    results: list[parts.CommitRecord | None] = []

    def write(folder: Path) -> dict[str, int]:
        pq.write_table(pa.table({"writer": [threading.current_thread().name]}), folder / "samples.parquet")
        both_written.wait(timeout=60)  # both attempts are uploaded before either puts its record
        return {"samples": 1}

    writers = [threading.Thread(target=lambda: results.append(parts.commit_part(run.paths, 0, write)), name=f"writer-{i}") for i in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    winners = [record for record in results if record is not None]
    assert len(results) == 2 and len(winners) == 1
    stored = objects(s3, str(warehouse.root))
    run_prefix = "runs/model=m/benchmark=b/run=race/"
    assert sorted(key for key in stored if key.startswith(run_prefix + "_commits/")) == [run_prefix + "_commits/part-000000.json"]
    attempts = {key.split("/")[5] for key in stored if key.startswith(run_prefix + "_staging/")}
    assert attempts == {f"part-000000.{winners[0].attempt}"}  # the loser removed its objects
    assert parts.verify(run.paths) == []
    name = pq.read_table(pa.BufferReader(stored[f"{run_prefix}_staging/part-000000.{winners[0].attempt}/samples.parquet"])).column("writer")[0].as_py()
    assert name in {"writer-0", "writer-1"}


@pytest.mark.parametrize("point", ["after_staging", "after_commit"])
def test_killed_in_the_middle_of_a_part_then_resumed_commits_each_part_once(s3, point, tmp_path):
    url, local = s3.url("crash"), str(tmp_path / "local")
    env = s3.environment()
    killed = subprocess_attnwh([*EXTRACT, "--no-rows"], url, env, fault=f"{point}:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = objects(s3, url)
    assert any("/_staging/part-000001." in key for key in before)  # the killed attempt left its objects behind
    resumed = subprocess_attnwh([*EXTRACT, "--no-rows"], url, env)
    assert resumed.returncode == 0, resumed.stderr
    assert subprocess_attnwh([*EXTRACT, "--no-rows"], local, env).returncode == 0

    store = open_warehouse(url)
    (run,) = store.run_folders()
    records = parts.commit_records(run)
    assert [record.part_id for record in records] == [0, 1] and parts.verify(run) == []
    stored = objects(s3, url)
    committed_attempts = {f"part-{record.part_id:06d}.{record.attempt}" for record in records}
    assert {key.split("/")[5] for key in stored if "/_staging/" in key} == committed_attempts  # nothing uncommitted left
    found = tables(url)
    assert [row["sample_idx"] for row in found["samples"]] == list(range(8))  # each sample exactly once
    assert found == tables(local)


def test_verify_names_a_corrupted_or_missing_object_and_readers_leave_the_run_out(s3, capsys):
    url = s3.url("damage")
    assert run_cli(capsys, *EXTRACT, "--no-rows", "--warehouse", url)[0] == 0
    bucket_prefix = url.removeprefix(f"s3://{BUCKET}/")
    stored = objects(s3, url)
    metrics = next(key for key in stored if key.endswith("part-000000." + key.split("part-000000.")[-1].split("/")[0] + "/head_metrics.parquet"))
    samples = next(key for key in stored if "/_staging/part-000001." in key and key.endswith("/samples.parquet"))
    client = s3.client()
    corrupted = bytes(b ^ 0xFF for b in stored[metrics][:64]) + stored[metrics][64:]  # same size, other bytes
    client.put_object(Bucket=BUCKET, Key=f"{bucket_prefix}/{metrics}", Body=corrupted)
    client.delete_object(Bucket=BUCKET, Key=f"{bucket_prefix}/{samples}")

    code, out, err = run_cli(capsys, "verify", "--warehouse", url)
    assert code != 0
    assert "part-000000: head_metrics.parquet content differs from its sha256" in out + err
    assert "part-000001: missing file samples.parquet" in out + err
    code, out, err = run_cli(capsys, "sql", "select count(*) from samples", "--format", "csv", "--warehouse", url)
    assert code == 0 and out.splitlines()[1] == "0"
    assert "samples.parquet is missing" in err and "see `attnwh verify`" in err
    after = objects(s3, url)
    assert {key: value for key, value in after.items() if key not in (metrics, samples)} == {
        key: value for key, value in stored.items() if key not in (metrics, samples)
    }  # nothing else touched


def test_a_runs_footer_metadata_is_read_from_the_store_once_then_from_the_local_cache(s3, capsys, tmp_path, monkeypatch):
    """The first session on a machine reads every committed file's footer metadata from the store and keeps
    it by the files' hashes (one entry a run); later sessions check the files against the kept entry. The
    entry equals pyarrow's reading of the stored objects; an altered one shows (so it is what is read); a
    damaged one is read from the store again; a missing object is named whatever the entry says. Every
    kept entry (tails, commit records, this metadata) with a byte flipped is read from the store again."""
    import hashlib
    import io
    import json

    cache = tmp_path / "cache"
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", str(cache))
    url = s3.url("footers")
    assert run_cli(capsys, *EXTRACT, "--no-rows", "--warehouse", url)[0] == 0
    for entry in cache.rglob("footers-*"):
        entry.unlink()  # what extract's own sessions kept: this test starts on a machine that never read the run

    def session() -> tuple[int, list[str]]:
        with open_session(url) as opened:
            return opened.query("select count(*) as n from head_metrics").to_pylist()[0]["n"], opened.warnings

    stored = {key: content for key, content in objects(s3, url).items() if key.endswith(".parquet") and "/_staging/" in key}
    n_rows = sum(pq.read_metadata(io.BytesIO(content)).num_rows for key, content in stored.items() if key.endswith("/head_metrics.parquet"))
    assert session() == (n_rows, [])
    (entry,) = cache.rglob("footers-*")
    kept = json.loads(storage.cached_content(cache, entry.name))
    by_pyarrow = {
        hashlib.sha256(content).hexdigest(): {
            key.decode(): value.decode()
            for key, value in pq.read_metadata(io.BytesIO(content)).metadata.items()
            if key in (b"attnwh.table", b"attnwh.schema_version", b"attnwh.definitions", b"ARROW:schema")
        }
        for content in stored.values()
    }
    assert {sha256: {key: kept["values"][index] for key, index in found.items()} for sha256, found in kept["files"].items()} == by_pyarrow
    assert session() == (n_rows, [])  # from the entry

    # an entry that says every file holds another table: the session believes it
    altered = dict(kept, values=["samples" if value == "head_metrics" else value for value in kept["values"]])
    storage.keep_content(cache, entry.name, json.dumps(altered).encode())
    _, warnings = session()
    assert len(warnings) == 1 and "holds table samples, expected head_metrics" in warnings[0]
    # a damaged entry (a byte flipped; not JSON): read from the store again, and kept anew
    for damage in (lambda: entry.write_bytes(flipped(entry.read_bytes())), lambda: storage.keep_content(cache, entry.name, b"{not json")):
        damage()
        assert session() == (n_rows, [])
        assert json.loads(storage.cached_content(cache, entry.name)) == kept
    # whatever else the entry holds (any bytes, any JSON, the right shape with wrong values), a session
    # answers, or leaves the run out with one warning naming it: never a traceback
    run_id = json.loads(next(content for key, content in objects(s3, url).items() if key.endswith("/RUN.json")))["run_id"]
    shas = sorted(kept["files"])
    scalars = st.none() | st.booleans() | st.integers(-3, 8) | st.floats(allow_nan=False) | st.text(max_size=8)
    any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
    shaped = st.fixed_dictionaries(
        {
            "values": st.lists(st.sampled_from(kept["values"]) | any_json, max_size=6),
            "files": st.dictionaries(
                st.sampled_from([*shas, "0" * 64]), st.dictionaries(st.sampled_from([*kept["files"][shas[0]], "other"]), scalars, max_size=4), max_size=len(shas) + 1
            ),
        }
    )

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @example(json.dumps({"values": [["a", "list"], *kept["values"]], "files": {sha: {"ARROW:schema": 0} for sha in shas}}).encode())
    @given(st.binary(max_size=64) | any_json.map(lambda value: json.dumps(value).encode()) | shaped.map(lambda value: json.dumps(value).encode()))
    def any_entry(content: bytes) -> None:
        storage.keep_content(cache, entry.name, content)
        count, warnings = session()
        assert (count, warnings) == (n_rows, []) or (count == 0 and len(warnings) == 1 and warnings[0].startswith(f"run {run_id} left out: ")), warnings

    any_entry()
    storage.keep_content(cache, entry.name, json.dumps(kept).encode())
    # every kept entry damaged at once (file tails, commit records and manifest, footer metadata): all read again
    entries = sorted(path for path in cache.rglob("*") if path.is_file())
    assert {path.name.split("-")[0] for path in entries} >= {"tail", "footers"} and len(entries) > len(stored) + 1
    for path in entries:
        path.write_bytes(flipped(path.read_bytes()))
    assert session() == (n_rows, [])
    assert all(storage.cached_content(cache, path.name) is not None for path in entries if path.name.startswith(("tail-", "footers-")))
    # a missing object is named from the store's listing, whatever the entry holds
    samples = next(key for key in stored if key.endswith("/samples.parquet"))
    bucket_prefix = url.removeprefix(f"s3://{BUCKET}/")
    s3.client().delete_object(Bucket=BUCKET, Key=f"{bucket_prefix}/{samples}")
    _, warnings = session()
    assert len(warnings) == 1 and f"{samples} is missing" in warnings[0]


def test_commit_log_damage_a_listing_shows_is_a_warning_or_harmless(s3, capsys, tmp_path):
    """On a store as on a disk: a stray commit-log object named like a record (``part-1.json``) doubles no
    row, and ``verify`` names it; a record that counts rows of a table it lists no file of, or a committed file cut short, leaves
    the run out with one warning naming it (never a traceback)."""
    import json

    url = s3.url("records")
    local = tmp_path / "local"
    for where in (url, str(local)):
        assert run_cli(capsys, *EXTRACT, "--no-rows", "--warehouse", where)[0] == 0
    bucket_prefix = url.removeprefix(f"s3://{BUCKET}/")
    client = s3.client()
    stored = objects(s3, url)
    record_key = next(key for key in stored if key.endswith("/_commits/part-000001.json"))
    (local_record,) = local.rglob("_commits/part-000001.json")

    def session(where: str) -> tuple[int, list[str]]:
        with open_session(where) as opened:
            return opened.query("select count(*) as n from samples").to_pylist()[0]["n"], opened.warnings

    assert session(url) == session(str(local)) == (8, [])
    stray = record_key.replace("part-000001.json", "part-1.json")
    client.put_object(Bucket=BUCKET, Key=f"{bucket_prefix}/{stray}", Body=stored[record_key])
    (local_record.parent / "part-1.json").write_bytes(local_record.read_bytes())
    assert session(url) == session(str(local)) == (8, [])
    for where in (url, str(local)):  # verify names it
        code, out, err = run_cli(capsys, "verify", "--warehouse", where)
        assert code == 1 and "part-1.json: not a commit record's name (part-000001.json); readers ignore it" in out + err
    client.delete_object(Bucket=BUCKET, Key=f"{bucket_prefix}/{stray}")
    (local_record.parent / "part-1.json").unlink()

    record = json.loads(stored[record_key])
    record["files"] = [entry for entry in record["files"] if entry["path"] != "samples.parquet"]
    client.put_object(Bucket=BUCKET, Key=f"{bucket_prefix}/{record_key}", Body=json.dumps(record).encode())
    local_record.write_text(json.dumps(dict(json.loads(local_record.read_text()), files=record["files"])))
    for where in (url, str(local)):
        count, warnings = session(where)
        assert count == 0 and len(warnings) == 1 and "counts rows of table samples but lists no file samples.parquet" in warnings[0], warnings
    client.put_object(Bucket=BUCKET, Key=f"{bucket_prefix}/{record_key}", Body=stored[record_key])

    samples = next(key for key in stored if "/_staging/part-000000." in key and key.endswith("/samples.parquet"))
    client.put_object(Bucket=BUCKET, Key=f"{bucket_prefix}/{samples}", Body=stored[samples][:100])
    count, warnings = session(url)
    assert count == 0 and len(warnings) == 1
    assert f"{samples} has 100 bytes, its commit record says {len(stored[samples])}" in warnings[0] and "see `attnwh verify`" in warnings[0]


def flipped(content: bytes) -> bytes:
    """``content`` with one bit of its middle byte flipped."""
    middle = len(content) // 2
    return content[:middle] + bytes([content[middle] ^ 0x01]) + content[middle + 1 :]


@pytest.mark.parametrize(
    "target",
    [
        f"s3://{OTHER_BUCKET}/secret.parquet",  # another bucket
        f"s3://{BUCKET}/elsewhere/secret.parquet",  # another prefix of the same bucket
        "{url}-sibling/secret.parquet",  # a prefix that only starts like the warehouse's
        "{url}/../elsewhere/secret.parquet",  # out through '..'
    ],
)
def test_hostile_sql_cannot_read_outside_the_warehouse_prefix(s3, capsys, target):
    url = s3.url("guard")
    assert run_cli(capsys, *EXTRACT, "--limit", "2", "--no-rows", "--warehouse", url)[0] == 0
    client = s3.client()
    secret = pa.BufferOutputStream()
    pq.write_table(pa.table({"secret": ["do not read"]}), secret)
    path = target.format(url=url)
    bucket, _, key = path.removeprefix("s3://").partition("/")
    client.put_object(Bucket=bucket, Key=os.path.normpath(key), Body=secret.getvalue().to_pybytes())
    for query in (f"select * from read_parquet('{path}')", f"select * from '{path}'", f"select * from glob('{path}')"):
        code, out, err = run_cli(capsys, "sql", query, "--warehouse", url)
        assert code != 0 and "do not read" not in out + err and len(err.strip().splitlines()) == 1, (query, out, err)
    with attnwh.open(url) as wh, pytest.raises((SqlRefused, Exception)) as refused:
        wh.sql(f"select * from read_parquet('{path}')").fetchall()
    assert "do not read" not in str(refused.value)


def test_wrong_credentials_and_an_unreachable_endpoint_are_one_clear_line(s3, tmp_path):
    url = s3.url("creds")
    wrong = {**s3.environment(), "AWS_SECRET_ACCESS_KEY": "not-the-secret-" + s3.secret[:4]}
    for args in (["runs"], ["verify"], [*EXTRACT, "--limit", "2", "--no-rows"]):
        result = subprocess_attnwh(args, url, wrong)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"attnwh: error: warehouse {url}: access denied") and "Traceback" not in result.stderr
        assert wrong["AWS_SECRET_ACCESS_KEY"] not in result.stderr
    with socket_closed() as port:
        unreachable = {**s3.environment(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        result = subprocess_attnwh(["runs"], url, unreachable)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"attnwh: error: warehouse {url}: the store cannot be reached")
    result = subprocess_attnwh(["runs"], "s3://no-such-bucket-here/wh", s3.environment())
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no-such-bucket-here" in result.stderr
    assert not any(tmp_path.iterdir())


class socket_closed:
    """A port of 127.0.0.1 that nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def __exit__(self, *exc_info) -> None:
        return None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40), st.sampled_from(["s3", "S3", "gs", "http", "file", "memory", "x+y", ""]))
def test_any_warehouse_text_is_a_location_or_one_clear_error(tail, scheme):
    text = f"{scheme}://{tail}" if scheme else tail
    try:
        where = storage.location(text)
    except WarehouseError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"warehouse {text if text.isprintable() else repr(text)}")
        return
    assert storage.is_object_store(where) == (scheme.lower() in storage.CONDITIONAL_PUT_PROTOCOLS)


def test_a_sweep_interrupted_on_s3_resumes_from_its_journal(s3, capsys, tmp_path):
    """The batch journal (extract.batch_journal) on an object store: kept as objects under the run's ``_progress/``
    while the group runs, read back by the resumed sweep, gone when its conditions are committed."""
    from attnwh.extract.mask_run import MaskOptions
    from attnwh.face.workflows import mask_sweep

    url, local = s3.url("journal"), str(tmp_path / "local")
    options = MaskOptions(limit=8, k=("0", "1"), seeds=1, batch_size=4, device="cpu", command=["test"])
    for warehouse in (url, local):
        assert run_cli(capsys, *EXTRACT, "--warehouse", warehouse)[0] == 0

    def interrupt(done: float, total: int) -> None:
        if done != int(done):  # the group's first batch is done
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mask_sweep(url, options, on_progress=interrupt)
    kept = sorted(key.rsplit("/", 1)[1] for key in objects(s3, url) if "/_progress/" in key)
    assert len(kept) == 2 and kept[0] == "conditions.json" and kept[1].startswith("samples-0-3-4-")
    mask_sweep(url, options)
    mask_sweep(local, options)
    assert not any("/_progress/" in key for key in objects(s3, url))
    assert tables(url)["mask"] == tables(local)["mask"]

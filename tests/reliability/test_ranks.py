"""Ranks without a cluster engine (torchrun / accelerate / SLURM), attempt leases, and ``attnwh status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnwh.core.errors import UsageError
from attnwh.extract.ranks import Rank, detect_rank
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from tests.reliability.harness import run_cli
from tests.reliability.test_crash import check_complete

EXTRACT = ["extract", "--limit", "24", "--part-size", "3", "--batch-size", "3", "--device", "cpu", "--no-lens"]
MASK = ["mask", "--limit", "12", "--k", "0,1,2", "--seeds", "2", "--device", "cpu", "--batch-size", "6"]


def launch(args: list[str], warehouse: Path, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "ATTNWH_WAREHOUSE": str(warehouse), **env}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "attnwh.face.cli", *args], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(*processes: subprocess.Popen) -> None:
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode()[-2000:]


def writers(warehouse: Path, kind: str = "extract") -> dict[int, dict]:
    """Part id → the writer its commit record names, for the run of ``kind``."""
    for run in open_warehouse(warehouse).run_folders():
        if json.loads(run.manifest.read_text())["kind"] == kind:
            return {record.part_id: record.writer for record in parts.commit_records(run)}
    raise AssertionError(f"no {kind} run")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Rank()),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, Rank(3, 8, 3, "RANK / WORLD_SIZE (torchrun, accelerate)")),
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}, Rank(4, 8, None, "a SLURM array")),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}, Rank(1, 2, 1, "SLURM_PROCID / SLURM_NTASKS")),
    ],
)
def test_rank_from_the_launchers_environment(env, expected):
    assert detect_rank(env=env) == expected


def test_bad_ranks_are_one_clear_line(capsys, tmp_path):
    assert detect_rank(1, 2, env={"RANK": "0", "WORLD_SIZE": "4"}) == Rank(1, 2, None, "--rank / --world-size")  # options win
    for kwargs, message in (
        ({"rank": 2, "world_size": 2}, r"rank 2 is not in 0..1 \(from --rank / --world-size\)"),
        ({"rank": 0, "world_size": 0}, "world size must be at least 1"),
        ({"rank": 1}, "--rank and --world-size go together"),
        ({"env": {"RANK": "x", "WORLD_SIZE": "2"}}, r"\$RANK must be an integer"),
    ):
        with pytest.raises(UsageError, match=message):
            detect_rank(**kwargs)
    code, _, err = run_cli(capsys, "extract", "--rank", "2", "--world-size", "2", "--warehouse", str(tmp_path / "wh"))
    assert code == 2 and err.splitlines() == ["attnwh: error: rank 2 is not in 0..1 (from --rank / --world-size)"]


def test_a_rank_without_its_run_waits_then_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNWH_RANK_WAIT_SECONDS", "0.5")
    code, _, err = run_cli(capsys, *EXTRACT, "--rank", "1", "--world-size", "2", "--warehouse", str(tmp_path / "wh"))
    assert code == 1 and len(err.splitlines()) == 1
    assert "does not exist after waiting 0.5 s for rank 0 to create it; start rank 0" in err


def test_two_ranks_split_the_parts_and_any_world_size_completes_the_run(tmp_path):
    warehouse = tmp_path / "wh"
    finish(launch(EXTRACT, warehouse, RANK="1", WORLD_SIZE="2"), launch(EXTRACT, warehouse, RANK="0", WORLD_SIZE="2"))
    check_complete(warehouse)
    written = writers(warehouse)
    assert sorted(written) == list(range(8))
    assert all(writer["rank"] == part_id % 2 and writer["world_size"] == 2 for part_id, writer in written.items())  # no part computed twice
    # a second run of 4 ranks: two of them die before they start; three ranks complete it later
    other = [*EXTRACT[:2], "30"] + EXTRACT[3:]
    finish(launch(other, warehouse, RANK="0", WORLD_SIZE="4"), launch(other, warehouse, RANK="1", WORLD_SIZE="4"))
    finish(*(launch(other, warehouse, RANK=str(rank), WORLD_SIZE="3") for rank in range(3)))
    check_complete(warehouse)


def test_mask_sweep_across_ranks(tmp_path):
    warehouse = tmp_path / "wh"
    finish(launch(EXTRACT[:2] + ["12"] + EXTRACT[3:], warehouse))
    finish(launch(MASK, warehouse, RANK="0", WORLD_SIZE="2"), launch(MASK, warehouse, RANK="1", WORLD_SIZE="2"))
    check_complete(warehouse)
    written = writers(warehouse, "mask")
    assert sorted(written) == list(range(7)) and all(writer["rank"] == condition % 2 for condition, writer in written.items())


def _attempt(run, part_id: int, host: str, lease_age: float | None) -> Path:
    folder = run.staging_attempt(part_id, f"{host}-4242-abcdef12")
    folder.mkdir(parents=True)
    (folder / "samples.parquet").write_bytes(b"half written")
    if lease_age is not None:
        lease = run.lease(part_id, f"{host}-4242-abcdef12")
        lease.parent.mkdir(parents=True, exist_ok=True)
        lease.touch()
        os.utime(lease, (time.time() - lease_age, time.time() - lease_age))
    return folder


def test_expired_leases_are_cleaned_and_live_ones_kept(pristine, tmp_path, capsys):
    """Attempts of crashed writers on other machines go once their lease expires; live ones stay."""
    import shutil

    root = tmp_path / "wh"
    shutil.copytree(pristine, root)
    run = next(run for run in open_warehouse(root).run_folders() if json.loads(run.manifest.read_text())["kind"] == "extract")
    (run.commits / "part-000001.json").unlink()  # part 1 is uncommitted again: attempts on it are in flight
    shutil.rmtree(run.published_part(1))
    expired = _attempt(run, 1, "node-17", lease_age=400)
    live = _attempt(run, 1, "node-18", lease_age=2)
    no_lease = _attempt(run, 1, "node-19", lease_age=None)
    code, out, _ = run_cli(capsys, "status", "--format", "json", "--warehouse", str(root))
    flight = {entry["host"]: entry for entry in next(s for s in json.loads(out) if s["run_id"] == run.root.name[4:])["in_flight"]}
    assert code == 0 and set(flight) == {"node-17", "node-18", "node-19"}
    assert flight["node-17"]["lease_age_seconds"] >= 399 and flight["node-18"]["lease_age_seconds"] < 60 and flight["node-19"]["lease_age_seconds"] is None
    parts.recover(run, lease_seconds=300)
    assert (expired.exists(), live.exists(), no_lease.exists()) == (False, True, True)
    parts.recover(run, lease_seconds=1)  # the live one's lease is 2 s old: expired under a 1 s lease
    assert not live.exists() and no_lease.exists()


def test_status_names_the_writers_rate_and_eta(pristine, capsys):
    code, out, _ = run_cli(capsys, "status", "--format", "json", "--warehouse", str(pristine))
    statuses = {s["kind"]: s for s in json.loads(out)}
    extract = statuses["extract"]
    assert code == 0 and (extract["parts_committed"], extract["parts_planned"]) == (2, 2)
    assert extract["eta_seconds"] == 0.0 and extract["in_flight"] == []
    assert all(part["writer"].endswith("rank 0/1") for part in extract["parts"])
    code, out, _ = run_cli(capsys, "status", "--warehouse", str(pristine))
    assert code == 0 and "2/2" in out and "rank 0/1 (2)" in out


ATTRIBUTE = ["attribute", "--limit", "6", "--patterns", "12", "--bootstrap", "5", "--device", "cpu", "--batch-size", "6"]


def _attributions(warehouse: Path) -> list[dict]:
    from attnwh.queries.library import open_session

    with open_session(warehouse) as session:
        return session.query("select * exclude (run_id) from head_attributions order by layer, head").to_pylist()


def test_attribution_across_ranks_is_fitted_by_the_last_rank_and_equals_one_process(tmp_path):
    """Two ranks split the patterns (a condition each in turn); whichever commits its last condition after the
    other's fits, once; the scores equal one process's."""
    ranked, alone = tmp_path / "ranks", tmp_path / "alone"
    finish(launch(ATTRIBUTE, ranked, RANK="0", WORLD_SIZE="2"), launch(ATTRIBUTE, ranked, RANK="1", WORLD_SIZE="2"))
    finish(launch(ATTRIBUTE, alone))
    (run,) = open_warehouse(ranked).run_folders()
    assert parts.verify(run) == [] and parts.committed_part_ids(run) == set(range(14))
    written = writers(ranked, "attribution")
    assert sorted(written) == list(range(14))  # the baseline, 12 patterns (the fewest a fit takes) and the fit
    assert all(writer["rank"] == condition % 2 and writer["world_size"] == 2 for condition, writer in written.items() if condition < 13)
    assert _attributions(ranked) == _attributions(alone) and len(_attributions(alone)) == 32

"""Two extractions into one warehouse at once: different runs, and the same run from two processes."""

from __future__ import annotations

from tests.reliability.test_crash import attnwh, check_complete

from attnwh.queries.library import open_session


def _both(first: list[str], second: list[str], warehouse) -> None:
    processes = [attnwh(first, warehouse), attnwh(second, warehouse)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()[-2000:]


def test_two_different_runs_at_once(tmp_path):
    warehouse = tmp_path / "wh"
    base = ["extract", "--part-size", "3", "--batch-size", "3", "--device", "cpu"]
    _both([*base, "--limit", "9"], [*base, "--limit", "12", "--no-rows"], warehouse)
    check_complete(warehouse)
    with open_session(warehouse) as session:
        runs = session.query("select n_samples, complete from runs order by n_samples").to_pylist()
    assert runs == [{"n_samples": 9, "complete": True}, {"n_samples": 12, "complete": True}]


def test_the_same_run_from_two_processes(tmp_path):
    warehouse = tmp_path / "wh"
    command = ["extract", "--limit", "12", "--part-size", "3", "--batch-size", "3", "--device", "cpu"]
    _both(command, command, warehouse)
    check_complete(warehouse)  # one run, each part committed once, verify clean, no staging left
    with open_session(warehouse) as session:
        assert session.query("select count(*) as n from runs").to_pylist() == [{"n": 1}]

"""Two extractions into one warehouse at once: different runs, and the same run from two processes."""

from __future__ import annotations

from attnwh.queries.library import open_session
from tests.reliability.test_crash import attnwh, check_complete


def _both(first: list[str], second: list[str], warehouse) -> list[str]:
    """Both commands at once; what each printed."""
    processes = [attnwh(first, warehouse), attnwh(second, warehouse)]
    printed = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()[-2000:]
        printed.append(out.decode())
    return printed


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
    printed = _both(command, command, warehouse)
    check_complete(warehouse)  # one run, each part committed once, verify clean, no staging left
    # each process says the run is complete, whichever of them committed its parts (each counted only its own before)
    assert all("(complete): wrote" in out for out in printed), printed
    with open_session(warehouse) as session:
        assert session.query("select count(*) as n from runs").to_pylist() == [{"n": 1}]


def test_readers_under_fire(tmp_path):
    """Four processes run every mart in a loop while two writers extract into the warehouse, one killed
    with SIGKILL again and again: no reader fails or sees a partial part; afterwards verify is clean
    and a resume completes the run."""
    import json
    import random
    import signal
    import subprocess
    import sys
    import time

    warehouse = tmp_path / "wh"
    command = ["extract", "--limit", "60", "--part-size", "3", "--batch-size", "3", "--device", "cpu"]
    assert attnwh(["extract", "--limit", "3", "--part-size", "3", "--device", "cpu"], warehouse).wait(timeout=300) == 0  # something to read
    seconds = 40
    readers = [subprocess.Popen([sys.executable, "-m", "tests.reliability.reader_loop", str(warehouse), str(seconds), "3", str(tmp_path / f"reader-{i}.json")]) for i in range(4)]
    steady = attnwh(command, warehouse)
    victim = attnwh(command, warehouse)
    rng, kills, deadline = random.Random(7), 0, time.monotonic() + seconds - 5
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 3.0))
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            kills += 1
        victim.communicate()
        victim = attnwh(command, warehouse)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    kills += 1
    for reader in readers:
        assert reader.wait(timeout=300) == 0
    steady.communicate(timeout=600)
    reports = [json.loads((tmp_path / f"reader-{i}.json").read_text()) for i in range(4)]
    assert [report["failures"] for report in reports] == [[], [], [], []]
    assert all(report["rounds"] >= 3 for report in reports), reports
    assert kills >= 5
    assert attnwh(command, warehouse).wait(timeout=600) == 0  # resume: completes whatever is left
    check_complete(warehouse)
    with open_session(warehouse) as session:
        assert session.query("select n_samples, complete from runs order by n_samples").to_pylist() == [{"n_samples": 3, "complete": True}, {"n_samples": 60, "complete": True}]
    print(f"readers under fire: {kills} kills, reader rounds {[report['rounds'] for report in reports]}")

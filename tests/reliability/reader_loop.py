"""A reader process for the readers-under-fire test: every mart in a loop over a warehouse being written.

``python -m tests.reliability.reader_loop WAREHOUSE SECONDS PART_SIZE OUT.json`` runs every mart
(parameters at their defaults; a required run id: the oldest run) and a whole-parts check until SECONDS have passed, then writes what
it saw: rounds completed, and every failure (an exception, or a run whose sample count is not a
multiple of the part size, i.e. a partial part seen).
"""

from __future__ import annotations

import json
import sys
import time
import traceback

from attnwh.queries.library import marts, open_session, run_mart


def main(warehouse: str, seconds: float, part_size: int, out: str) -> None:
    rounds, failures, largest = 0, [], 0
    names = sorted(marts())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open_session(warehouse) as session:
                run_ids = session.query("select run_id from runs order by created, run_id").column(0).to_pylist()
                for name in names:
                    required = {key: run_ids[0] for key, spec in marts()[name].parameters.items() if spec.get("required")}
                    run_mart(session, name, required)
                counts = session.query("select run_id, count(distinct sample_idx) as n from samples group by run_id").to_pylist()
            for row in counts:
                largest = max(largest, row["n"])
                if row["n"] % part_size:
                    failures.append(f"run {row['run_id']}: {row['n']} samples, not whole parts of {part_size}")
        except Exception:  # noqa: BLE001  what the test must never see
            failures.append(traceback.format_exc(limit=3))
        rounds += 1
    with open(out, "w") as handle:
        json.dump({"rounds": rounds, "failures": failures, "largest": largest}, handle)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

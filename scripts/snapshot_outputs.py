"""Snapshot what a warehouse shows, to check that a refactoring changes nothing.

    python scripts/snapshot_outputs.py WAREHOUSE OUT.json          # every table, every mart, the report data
    python scripts/snapshot_outputs.py --compare A.json B.json     # equal, floats to 1e-12 relative
    bash scripts/zoo_snapshot.sh PYTHON WAREHOUSE OUT.json          # build the zoo's warehouse, then snapshot it

Tables are read in a fixed order with ``run_id`` and times left out; marts run with their default
parameters (a required run id: each run in turn); the report's chart data are the Vega-Lite datasets
embedded in its pages.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from pathlib import Path

VARYING = ("created", "path")  # when and where a run was made: differ between two builds of the same warehouse
TABLES = ("samples", "head_metrics", "logit_lens", "mask_conditions", "mask_results", "prune_conditions", "prune_results")


def snapshot(warehouse: str) -> dict:
    from attnwh.queries.library import marts, open_session, run_mart
    from attnwh.reports.build import build_report

    result: dict = {"tables": {}, "marts": {}, "report": {}}
    with open_session(warehouse) as session:
        for table in TABLES:
            result["tables"][table] = session.query(f"select * exclude (run_id) from {table} order by all").to_pylist()
        run_ids = session.query("select run_id from runs where kind = 'extract' order by run_id").column(0).to_pylist()
        for name, mart in sorted(marts().items()):
            required = [key for key, spec in mart.parameters.items() if spec.get("required")]
            if set(required) - {"run_id"}:
                continue
            for run_id in run_ids if required else [None]:
                given = {key: run_id for key in required}
                rows = run_mart(session, name, given).to_pylist()
                result["marts"][f"{name} {run_id or ''}".strip()] = sorted((json.dumps(row, default=str, sort_keys=True) for row in rows))
    with tempfile.TemporaryDirectory() as out:
        build_report(warehouse, out)
        for page in sorted(Path(out).glob("*.html")):
            specs = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page.read_text(encoding="utf-8"), re.DOTALL)
            result["report"][page.name] = [json.loads(spec).get("datasets") for spec in specs]
    return json.loads(json.dumps(result, default=str))


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15) or (math.isnan(a) and math.isnan(b)) else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, str) and isinstance(b, str) and a.startswith("{") and b.startswith("{"):
        try:
            return differences(json.loads(a), json.loads(b), path)
        except ValueError:
            pass
    if isinstance(a, dict) and isinstance(b, dict):
        a, b = ({key: value for key, value in side.items() if key not in VARYING} for side in (a, b))
        if path == ".marts":  # marts added since the snapshot are new, not changed
            a, b = ({key: side[key] for key in set(a) & set(b)} for side in (a, b))
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))} differ"]
        return [line for key in a for line in differences(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        found = differences(json.loads(Path(sys.argv[2]).read_text()), json.loads(Path(sys.argv[3]).read_text()))
        print("\n".join(found[:50]) or "equal")
        sys.exit(1 if found else 0)
    Path(sys.argv[2]).write_text(json.dumps(snapshot(sys.argv[1]), sort_keys=True))

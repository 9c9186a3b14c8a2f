"""The README's conformance-matrix section, from `attnwh models --all --format json` (read on stdin).

attnwh models --all --format json | python scripts/readme_matrix.py
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

STATUSES = ("captured", "out of scope", "not built here", "failed")


def main() -> int:
    rows = [row for row in json.load(sys.stdin) if "+" not in row["model_type"]]  # variants ("gemma4+kv_sharing") are not architectures
    by_status = defaultdict(list)
    for row in rows:
        by_status[row["status"]].append(row)
    counts = ", ".join(f"{len(by_status[status])} {status}" for status in STATUSES[1:])
    lines = [f"The conformance matrix: **{len(by_status['captured'])} captured**, {counts} of {len(rows)} architectures.", ""]
    lines.append("Captured (hybrids: attention layers of decoder layers in the tiny model; image tokens per image in the tiny model):")
    lines.append("")
    captured = []
    for row in by_status["captured"]:
        hybrid = f" ({row['layers']}/{row['decoder_layers']} layers)" if row["layers"] != row["decoder_layers"] else ""
        captured.append(f"`{row['model_type']}`{hybrid}")
    lines.append(", ".join(captured) + ".")
    lines.append("")
    lines.append("| model type | status | reason |")
    lines.append("|---|---|---|")
    for status in STATUSES[1:]:
        for row in by_status[status]:
            lines.append(f"| `{row['model_type']}` | {status} | {row['reason'].replace('|', '/')} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

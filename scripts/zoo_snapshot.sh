#!/usr/bin/env bash
# The zoo's tables, marts and report data, for checking that a refactoring changes nothing:
#
#   bash scripts/zoo_snapshot.sh PYTHON WAREHOUSE OUT.json     # once with the old code's Python, once with the new
#   python scripts/snapshot_outputs.py --compare OLD.json NEW.json
#
# PYTHON is an interpreter that imports the attnwh to snapshot (run from outside the checkout, so the
# checkout's own folders are not on sys.path); the warehouse gets the toy zoo (48 samples a benchmark,
# 2 seeds), an extraction on toy-shapes and a pruning sweep over it.
set -euo pipefail
PY=$1
WH=$(realpath -m "$2")
OUT=$(realpath -m "$3")
SNAPSHOT=$(realpath "$(dirname "$0")/snapshot_outputs.py")
cd "$(mktemp -d)"
attnwh() { "$PY" -c "import sys; from attnwh.face.cli import main; sys.argv[0] = 'attnwh'; main()" "$@"; }
attnwh toy zoo -w "$WH" --limit 48 --seeds 2
attnwh extract -w "$WH" --limit 48
attnwh prune -w "$WH" --limit 48 --kv-share 1,0.25,0.05 --allocation score,uniform,random --seeds 1
"$PY" "$SNAPSHOT" "$WH" "$OUT"

"""The README's picture of where heads look: the shipped toy's top heads on one toy sample (docs/overlay-toy.png).

python scripts/make_readme_overlay.py [OUT.png]

Extracts 4 toy samples into a temporary warehouse and draws sample 3 as `attnwh show RUN 3 --top 4` would, smaller.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.face.pictures import HeadChoice, chosen_maps, images_of, sample_figure, sample_rows
from attnwh.queries.library import open_session

SAMPLE, TOP, SIDE = "3", 4, 192


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "overlay-toy.png"
    with tempfile.TemporaryDirectory() as folder:
        result = run_extract(Path(folder) / "wh", ExtractOptions(limit=4, device="cpu", command=["scripts/make_readme_overlay.py"]))
        session = open_session(Path(folder) / "wh")
        try:
            rows = sample_rows(session, result.run_id, [SAMPLE], "gen1")[0]
            maps = chosen_maps(session, rows, HeadChoice(top=TOP), "gen1")
            picture = images_of([rows])[rows.sample["sample_key"]]
            figure = sample_figure(session, rows, picture, maps, "gen1", side=SIDE)
        finally:
            session.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(figure.png())
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

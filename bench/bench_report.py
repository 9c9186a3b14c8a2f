"""The report at the study's breadth: nine models × five benchmarks, built, timed and (with Chromium) photographed.

Builds a synthetic warehouse through the real commit protocol (``bench_warehouse.build``): nine models
of the study's shapes (28-40 layers × heads) on five benchmarks, each an extraction run and a masking
sweep; then times ``attnwh report`` over it, prints every page's size and, with ``--shots``, takes a
screenshot of every page at a desktop width (1440 px) in headless Chromium, to be looked at (facets
wrapped, labels apart, no empty panels).

    python bench/bench_report.py --shots /tmp/report-shots
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_warehouse import build  # noqa: E402

from attnwh.reports.build import build_report  # noqa: E402

MODELS = (  # name, layers, heads: the shapes of the study's families
    ("llava-v1.5-7b", 32, 32),
    ("llava-v1.5-13b", 40, 40),
    ("llava-phi3-mini", 32, 32),
    ("qwen2-vl-7b", 28, 28),
    ("internvl2-8b", 32, 32),
    ("llava-v1.6-7b", 32, 32),
    ("llava-v1.6-13b", 40, 40),
    ("minicpm-v", 28, 28),
    ("idefics2-8b", 32, 32),
)
BENCHMARKS = ("pope", "mmbench", "qbench", "seed-bench", "pointqa")
REPORT_TARGET_S = 30.0


def screenshots(report: Path, folder: Path) -> dict[str, float]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: no screenshots", file=sys.stderr)
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for page in sorted(report.glob("*.html")):
        with tempfile.TemporaryDirectory() as profile:
            started = time.perf_counter()
            subprocess.run(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--proxy-server=127.0.0.1:9",
                    "--virtual-time-budget=30000",
                    f"--user-data-dir={profile}",
                    "--window-size=1440,3000",
                    f"--screenshot={folder / page.with_suffix('.png').name}",
                    page.resolve().as_uri(),
                ],
                capture_output=True,
                check=True,
                timeout=300,
            )
            seconds[page.name] = time.perf_counter() - started
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64, help="samples per run")
    parser.add_argument("--shots", type=Path, default=None, help="keep a screenshot of every page here")
    parser.add_argument("--out", type=Path, default=Path("bench/results-report.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attnwh-bench-") as scratch:
        root = Path(scratch) / "wh"
        started = time.perf_counter()
        for i, (model, layers, heads) in enumerate(MODELS):
            for j, benchmark in enumerate(BENCHMARKS):
                build(root, args.samples, layers, heads, args.samples, seed=10 * i + j, model=model, benchmark=benchmark, mask_ks=(8, 32, 128))
        build_s = time.perf_counter() - started
        print(f"built {len(MODELS)} models × {len(BENCHMARKS)} benchmarks in {build_s:.1f} s", file=sys.stderr)
        started = time.perf_counter()
        build_report(root, Path(scratch) / "report")
        report_s = time.perf_counter() - started
        pages = {page.name: page.stat().st_size for page in sorted((Path(scratch) / "report").glob("*.html"))}
        browser_s = screenshots(Path(scratch) / "report", args.shots) if args.shots else {}
    print(f"\nreport of {len(MODELS)} models × {len(BENCHMARKS)} benchmarks: {report_s:.1f} s (target {REPORT_TARGET_S:g} s)")
    for name, size in pages.items():
        shown = f", {browser_s[name]:.1f} s in Chromium" if name in browser_s else ""
        print(f"  {name:<16}{size / 1e6:7.1f} MB{shown}")
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "models": len(MODELS),
        "benchmarks": len(BENCHMARKS),
        "samples_per_run": args.samples,
        "build_seconds": build_s,
        "report_seconds": report_s,
        "page_bytes": pages,
        "chromium_seconds": browser_s,
        "within_target": report_s <= REPORT_TARGET_S,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

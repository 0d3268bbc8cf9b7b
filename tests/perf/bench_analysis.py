"""Benchmark (not a test): `sdd collect` + `sdd tables` on a synthetic 10,000-record suite.

25 methods x 80 checkpoints x (metrics + linear probe on 4 datasets) = 10,000 records.
Run: make bench   (or: python tests/perf/bench_analysis.py)
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.cli import main  # noqa: E402
from tests.worlds import synthetic_suite  # noqa: E402


def run():
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        n = synthetic_suite(Path(tmp), "bench", methods=25, epochs=80)
        print(f"wrote {n:,} synthetic records in {time.perf_counter() - t:.1f} s (not timed below)")
        t0 = time.perf_counter()
        main(["collect", "--suite", "bench", "--results", tmp])
        t1 = time.perf_counter()
        main(["tables", "--suite", "bench", "--results", tmp])
        t2 = time.perf_counter()
        print(f"collect {t1 - t0:.2f} s + tables {t2 - t1:.2f} s = {t2 - t0:.2f} s for {n:,} records (target < 5 s)")


if __name__ == "__main__":
    run()

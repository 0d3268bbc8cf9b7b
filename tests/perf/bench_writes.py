"""Benchmark (not a test): what the atomic writer and the suite lock cost (issue 30).

- `sdd collect` on a synthetic 10,000-record suite, against the same read and the same tables written in
  place with pandas (what collect did before: no lock, no fsync, no manifest);
- one record written atomically (temp + fsync + rename) against `json.dump` in place, per record: a
  cell's own write;
- the suite lock taken and released with no one else holding it.

Run: make bench   (or: python tests/perf/bench_writes.py)
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.atomic import write_json  # noqa: E402
from harness.collect import collect, write_collected  # noqa: E402
from harness.registry import load_registry  # noqa: E402
from harness.suitedir import suite_lock  # noqa: E402
from tests.worlds import synthetic_suite  # noqa: E402


def best_of(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def collect_cost(tmp: Path) -> None:
    n = synthetic_suite(tmp, "bench", methods=25, epochs=80)
    reg = load_registry()

    def in_place():  # the read, and the two tables written straight to their files
        got = collect(tmp, "bench")
        got.table.to_csv(tmp / "bench" / "plain.csv", index=False, float_format="%.10g", lineterminator="\n")
        got.spectra.to_csv(tmp / "bench" / "plain_spectra.csv", index=False, float_format="%.8g")

    plain = best_of(in_place)
    atomic = best_of(lambda: write_collected(reg, "bench", tmp))
    print(
        f"collect, {n:,} records: {atomic:.2f} s with the lock, the atomic writer and the manifest; "
        f"{plain:.2f} s reading and writing in place; difference {atomic - plain:+.2f} s "
        f"({100 * (atomic - plain) / plain:+.0f}%, best of 3 each)"
    )


def record_cost(tmp: Path, n: int = 500) -> None:
    rec = json.loads(next((tmp / "bench" / "runs").rglob("ep*.json")).read_text())
    out = tmp / "records"
    out.mkdir()
    t = time.perf_counter()
    for i in range(n):
        with open(out / f"plain{i}.json", "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True, default=str)
    plain = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i in range(n):
        write_json(out / f"atomic{i}.json", rec)
    atomic = (time.perf_counter() - t) / n
    print(
        f"one record: {1000 * atomic:.2f} ms atomic (temp + fsync + rename) vs {1000 * plain:.2f} ms in place "
        f"(mean of {n}); a cell runs for seconds to hours"
    )


def lock_cost(tmp: Path, n: int = 200) -> None:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with suite_lock(tmp, "bench", "bench"):
            pass
        times.append(time.perf_counter() - t)
    print(f"suite lock taken and released, uncontended: median {1000 * statistics.median(times):.2f} ms ({n} times)")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        collect_cost(Path(d))
        record_cost(Path(d))
        lock_cost(Path(d))

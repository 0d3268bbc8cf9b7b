"""`sdd plan` prices cells from what finished cells of the same protocol and architecture cost (issue 15)."""

import statistics

from harness.plan import build_plan, cell_states, measured_prices, summarize
from harness.registry import load_registry
from tests.test_slurm import make_registry, sdd


def test_the_plan_prices_from_measured_cells_else_from_the_protocol_file(tmp_path, capsys):
    bench = make_registry(tmp_path, "{steps: 2, sleep_s: 0.05}", methods="[dino, mae]", epochs="[10, 20]")
    results = tmp_path / "results"
    reg = load_registry(bench)
    cells = build_plan(reg, "probe")
    states = cell_states(cells, results)
    assert summarize(cells, states, measured_prices(reg, cells, states, results))[0]["priced_from"] == "protocol file"
    assert (
        sdd(bench, "submit", "--suite", "probe", "--cluster", "inline", "--results", str(results), "--method", "dino")
        == 0
    )
    states = cell_states(cells, results)
    prices = measured_prices(reg, cells, states, results)
    import json

    walls = [
        json.loads(c.record_path(results).read_text())["timings"]["total_s"] / 3600 for c in cells if c.method == "dino"
    ]
    arch = reg.method("dino").arch
    assert set(prices) == {("probe", arch)}  # only dino's cells finished
    price, n = prices[("probe", arch)]
    assert n == 2 and price == statistics.median(walls)
    row = summarize(cells, states, prices)[0]
    if reg.method("mae").arch == arch:  # mae's cells are priced from dino's runs of the same architecture
        assert row["priced_from"].startswith("measured") and row["gpu_h_left"] == 2 * price
    else:  # another architecture: from the protocol file (0 GPU·h for the probe)
        assert row["priced_from"] == "measured + protocol file" and row["gpu_h_left"] == 0.0
    capsys.readouterr()
    assert sdd(bench, "plan", "--suite", "probe", "--results", str(results)) == 0
    assert "measured (median of up to 2 runs)" in capsys.readouterr().out

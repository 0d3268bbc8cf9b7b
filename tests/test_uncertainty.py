"""The uncertainty of Kendall τ (issue 16): p-values and intervals against hand-computed values."""

import numpy as np
import pytest
from scipy.stats import kendalltau

from harness.analysis.uncertainty import bootstrap_mean_tau, interval_text, permutation_p, tau_b


def test_tau_b_equals_scipys_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        x, y = rng.integers(0, 4, 9).astype(float), rng.integers(0, 5, 9).astype(float)
        want = kendalltau(x, y).statistic
        got = float(tau_b(x, y))
        assert (np.isnan(want) and np.isnan(got)) or got == pytest.approx(want)
    batch = rng.normal(size=(3, 7))
    assert tau_b(batch, batch[::-1]).shape == (3,)


def test_permutation_p_values_by_hand():
    # n = 5: inversion counts k = 0..10 occur 1, 4, 9, 15, 20, 22, 20, 15, 9, 4, 1 times in the 120 orders;
    # τ = (10 - 2k) / 10. τ = -1: P(|τ| >= 1) = 2/120. τ = 0.2: |τ| >= 0.2 unless k = 5, so 98/120.
    x = np.arange(5.0)
    assert permutation_p(x, x[::-1]) == pytest.approx(2 / 120)
    assert permutation_p(x, np.array([10, 20, 30, 25, 15.0])) == pytest.approx(98 / 120)
    assert np.isnan(permutation_p(x, np.ones(5)))  # τ undefined


def test_bootstrap_interval_is_seeded_and_exact_where_nothing_varies():
    up = (np.arange(6.0), np.arange(6.0) * 2)  # any resample of a monotone pair keeps τ-b = 1 (ties drop out)
    assert bootstrap_mean_tau([[up, up]]) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    noisy = [(rng.normal(size=8), rng.normal(size=8)) for _ in range(4)]
    a, b = bootstrap_mean_tau([noisy]), bootstrap_mean_tau([noisy])
    assert a == b and a[0] < np.mean([tau_b(x, y) for x, y in noisy]) < a[1]
    assert interval_text(*a).startswith("[") and interval_text(float("nan"), float("nan")) == "—"


def test_the_plain_sentence_follows_the_intervals():
    import pandas as pd

    from harness.analysis.tables import tracking_sentence

    mean = pd.DataFrame(
        {
            "metric": ["DSE", "RankMe", "W2"],
            "n_VOC": [4, 4, 4],
            "Avg. 95% CI": ["[+0.10, +0.60]", "[-0.30, +0.20]", "[-0.80, -0.10]"],
        }
    )
    long = pd.DataFrame({"grid": ["full"] * 4, "tau": [0.5] * 4, "checkpoints": [16, 16, 8, 16]})
    assert tracking_sentence(mean, long).startswith("DSE tracks mIoU here") and "(W2)" in tracking_sentence(mean, long)
    mean["Avg. 95% CI"] = ["[-0.10, +0.60]", "[-0.30, +0.20]", "—"]
    assert tracking_sentence(mean, long).startswith("No metric tracks mIoU here")


@pytest.mark.parametrize("methods, checkpoints", [(1, 16), (2, 16), (4, 3)])
def test_too_little_data_is_no_finding_whatever_the_interval(methods, checkpoints):
    """One method gives the interval [+1.00, +1.00] while its p-value is 0.083: the sentence must not say
    "tracks" from that (issue 23, class 7); nor from two methods, or from methods with 3 checkpoints."""
    import pandas as pd

    from harness.analysis.tables import tracking_sentence

    mean = pd.DataFrame({"metric": ["DSE"], "n_VOC": [methods], "Avg. 95% CI": ["[+1.00, +1.00]"]})
    long = pd.DataFrame({"grid": ["full"] * methods, "tau": [1.0] * methods, "checkpoints": [checkpoints] * methods})
    text = tracking_sentence(mean, long)
    assert text.startswith("Too little data for a finding") and "tracks" not in text
    assert f"{methods} method(s) with at least {checkpoints} checkpoint(s)" in text


def test_the_report_states_the_size_of_the_world_and_the_caution(tmp_path):
    import pandas as pd

    from harness.analysis import build_tables, write_report
    from tests.worlds import synthetic_suite

    synthetic_suite(tmp_path, "syn", methods=3, epochs=6)
    from harness.collect import collect

    t = collect(tmp_path, "syn").table
    t["method"] = "mini_" + t["method"]
    t.to_csv(tmp_path / "syn" / "results.csv", index=False)
    table, tables, _ = build_tables(tmp_path / "syn")
    text = write_report(tmp_path / "syn", table, tables, []).read_text()
    assert "World: 3 method(s)" in text and "6 checkpoints each" in text and "6–6" not in text
    assert "not the paper's" in text and "95% interval" in text
    assert "track mIoU here" in text or "No metric tracks mIoU here" in text
    pd.read_csv(tmp_path / "syn" / "tables" / "kendall_tau.csv")  # written

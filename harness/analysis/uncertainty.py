"""How sure a Kendall τ is: a permutation p-value per method, a bootstrap interval per averaged τ.

- `tau_b`: Kendall's τ-b (ties corrected), vectorised over leading axes, equal to
  `scipy.stats.kendalltau` (tested); NaN where a series is constant.
- `permutation_p`: two-sided p-value of one method's τ under random pairings of its two series
  (`scipy.stats.permutation_test`; exact when the pairings are fewer than the resamples).
- `bootstrap_mean_tau`: the 95% percentile interval of a mean τ when both the methods and each method's
  checkpoints are resampled with replacement (hierarchical bootstrap), seeded: the same table gives the
  same interval.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

RESAMPLES = 9999
BOOTSTRAP = 1000
SEED = 0


def tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """τ-b of x and y along the last axis ([..., n] -> [...])."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    num = (sx * sy).sum(axis=(-1, -2))
    den = np.sqrt(np.abs(sx).sum(axis=(-1, -2)) * np.abs(sy).sum(axis=(-1, -2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def permutation_p(x, y, *, resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Two-sided permutation p-value of τ-b(x, y); NaN when τ is undefined."""
    from scipy.stats import permutation_test

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or math.isnan(float(tau_b(x, y))):
        return math.nan
    # one sample re-ordered against the other fixed: n! pairings (exact when n! <= resamples, i.e. n <= 7)
    res = permutation_test(
        (x,),
        lambda a, axis=-1: tau_b(np.moveaxis(a, axis, -1), y),
        permutation_type="pairings",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        random_state=seed,
        batch=512,
    )
    return float(res.pvalue)


def bootstrap_taus(x, y, draws: int, rng: np.random.Generator) -> np.ndarray:
    """`draws` τ-b values of one method with its checkpoints resampled with replacement."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    idx = rng.integers(0, len(x), size=(draws, len(x)))
    return tau_b(x[idx], y[idx])


def bootstrap_mean_tau(
    series_by_group: list[list[tuple]], *, draws: int = BOOTSTRAP, seed: int = SEED
) -> tuple[float, float]:
    """95% interval of the mean τ over groups (datasets) of the mean over methods, resampling methods and
    each method's checkpoints. `series_by_group[g][m]` is method m's (x, y) in group g (None where it has
    none); the same methods are drawn for every group."""
    rng = np.random.default_rng(seed)
    n_methods = max((len(g) for g in series_by_group), default=0)
    if n_methods == 0:
        return math.nan, math.nan
    per = [
        [bootstrap_taus(*s, draws, rng) if s is not None else np.full(draws, np.nan) for s in group]
        for group in series_by_group
    ]
    pick = rng.integers(0, n_methods, size=(draws, n_methods))
    means = []
    with warnings.catch_warnings():  # a draw that picks only undefined τ is NaN: left out below
        warnings.simplefilter("ignore", RuntimeWarning)
        for group in per:
            taus = np.stack(group + [np.full(draws, np.nan)] * (n_methods - len(group)), axis=1)  # [draws, methods]
            means.append(np.nanmean(np.take_along_axis(taus, pick, axis=1), axis=1))
        avg = np.nanmean(np.stack(means, axis=1), axis=1)
    avg = avg[np.isfinite(avg)]
    if not len(avg):
        return math.nan, math.nan
    lo, hi = np.percentile(avg, [2.5, 97.5])
    return float(lo), float(hi)


def interval_text(lo: float, hi: float) -> str:
    return "—" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"

"""Label-free checkpoint selection, the one home of the paper's λ and of the top-3 rule; used by the
DSE-guided planner (before any mIoU exists) and by the tables (after). Pure Python, no torch/pandas.

- λ = Std(separability) / Std(dim) across one method's checkpoints (population std), DSE =
  separability + λ·dim. One checkpoint, or a constant dim, gives λ = 1.
- Selection: local maxima of that DSE within ±2 checkpoints (ties and plateaus count), the top 3 by
  DSE (ties: earlier epoch first).
"""

from __future__ import annotations

import math
import numbers
import statistics


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and math.isfinite(v)


def dse_lambda(separability: list[float], dim: list[float]) -> float:
    """λ over the checkpoints where both components are finite numbers (a checkpoint that lacks one, e.g.
    an import of the raw DSE only, does not take part)."""
    pairs = [(float(s), float(m)) for s, m in zip(separability, dim) if _finite(s) and _finite(m)]
    if len(pairs) < 2:
        return 1.0
    sd = statistics.pstdev([m for _, m in pairs])
    return statistics.pstdev([s for s, _ in pairs]) / sd if sd > 0 else 1.0


def dse_normalised(separability: list[float], dim: list[float]) -> list[float]:
    """DSE with λ per checkpoint; NaN where a component is missing."""
    lam = dse_lambda(separability, dim)
    return [float(s) + lam * float(m) if _finite(s) and _finite(m) else math.nan for s, m in zip(separability, dim)]


def local_maxima(values: list[float], window: int = 2) -> list[int]:
    """Indices i with values[i] == max(values[i-window : i+window+1]) (edges truncated; ties count)."""
    n = len(values)
    return [i for i in range(n) if values[i] == max(values[max(0, i - window) : min(n, i + window + 1)])]


def select_checkpoints(epochs: list[int], dse: list[float], top: int = 3, window: int = 2) -> list[int]:
    """The epochs of the `top` highest local maxima of `dse` (series in epoch order; NaNs left out)."""
    pairs = [(e, v) for e, v in zip(epochs, dse) if v is not None and math.isfinite(v)]
    epochs, dse = [e for e, _ in pairs], [v for _, v in pairs]
    cand = local_maxima(dse, window)
    cand.sort(key=lambda i: (-dse[i], i))
    return [epochs[i] for i in cand[:top]]

"""Where the harness writes: the results root and the caches (read from the environment at call time,
so tests and users can redirect them)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def results_root() -> Path:
    """The results folder: $SDD_RESULTS, else the repository's results/."""
    return Path(os.environ.get("SDD_RESULTS") or REPO / "results")


def cache_root() -> Path:
    """Caches (features, dataset checks, file digests): $SDD_CACHE, else <results>/.cache."""
    return Path(os.environ.get("SDD_CACHE") or results_root() / ".cache")

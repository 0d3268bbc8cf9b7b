import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def registry():
    from harness.registry import load_registry

    return load_registry(ROOT / "benchmarks")


@pytest.fixture
def ckpt_root(tmp_path, monkeypatch):
    root = tmp_path / "ckpts"
    root.mkdir()
    monkeypatch.setenv("SDD_CKPT_ROOT", str(root))
    return root


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))

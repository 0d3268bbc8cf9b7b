import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.is_dir() else set()


@pytest.fixture(autouse=True, scope="session")
def _leave_no_trace(tmp_path_factory):
    """Every default output location points into a temporary folder for the whole session, and the
    repository's results/ must be exactly as it was when the tests end (a test that writes there fails
    the run, naming what it wrote)."""
    before = _tree(ROOT / "results")
    scratch = tmp_path_factory.mktemp("sdd-defaults")
    saved = {k: os.environ.get(k) for k in ("SDD_RESULTS", "SDD_CACHE", "SDD_SUBMITIT", "SDD_MINI_ROOT")}
    os.environ.update(
        SDD_RESULTS=str(scratch / "results"),
        SDD_CACHE=str(scratch / "cache"),
        SDD_SUBMITIT=str(scratch / "submitit"),
        SDD_MINI_ROOT=str(scratch / "mini"),
    )
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    new = sorted(_tree(ROOT / "results") - before)
    assert not new, f"tests wrote into the repository's results/: {new[:10]}"


@pytest.fixture(scope="session")
def slurm_cluster():
    """The single-node loopback Slurm cluster (slurm/local/up.sh), started or reused. It needs root:
    elsewhere the Slurm tests skip saying so; as root (CI) a failure to start is a test failure."""
    if os.geteuid() != 0:
        pytest.skip(
            "the real-Slurm tests start slurmctld/slurmd with slurm/local/up.sh, which needs root; "
            "run the tests as root (CI does) to include them"
        )
    out = subprocess.run(["bash", str(ROOT / "slurm/local/up.sh")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"slurm/local/up.sh failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    yield
    if os.environ.get("SDD_SLURM_TEARDOWN"):
        subprocess.run(["bash", str(ROOT / "slurm/local/down.sh")], check=False)


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
    """Torch's threads: the machine's cores (at most 2) shared by the pytest-xdist workers, so that two
    workers on two cores do not fight over four threads."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (torch, numpy, random), whichever pytest-xdist worker runs it
    and after whichever tests: a test that draws without its own seed passes or fails the same way every run."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


ONE_WORKER = "the-slurm-cluster-and-the-mini-world"


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two workers): the tests of the one Slurm cluster, and those of the
    session's mini world (45 s to make, once per worker that needs it), run on one worker, one after another;
    the rest runs beside them on the other (`--dist loadgroup`)."""
    for item in items:
        if item.get_closest_marker("slurm") or {"mini_world", "micro_run"} & set(item.fixturenames):
            item.add_marker(pytest.mark.xdist_group(ONE_WORKER))


@pytest.fixture(scope="session")
def mini_world(tmp_path_factory):
    """The demo's mini world -- generated datasets and the three mini methods pre-trained for the registry's
    16 epochs -- made once for the whole session (about 45 s) under `<results>/.mini` of a temporary
    results root. Tests set SDD_MINI_ROOT (or SDD_RESULTS) to it themselves; nothing here stays set."""
    from harness.mini.demo import prepare

    root = tmp_path_factory.mktemp("world") / "results" / ".mini"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDD_MINI_ROOT", str(root))
        mp.setenv("SDD_CACHE", str(root.parent / ".cache"))
        prepare(quiet=True)
    return root


@pytest.fixture(scope="session")
def micro_run(mini_world, tmp_path_factory):
    """The `micro` suite run once for the session on the local executor over the session's mini world
    (about 35 s): (results root, exit code, stdout, stderr). Tests copy the results before they change them
    (`copy_results`)."""
    import contextlib
    import io

    from harness.cli import main

    own = tmp_path_factory.mktemp("micro_run")
    results = own / "results"
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDD_MINI_ROOT", str(mini_world))
        mp.setenv("SDD_SUBMITIT", str(own / "submitit"))
        mp.setenv("SDD_CACHE", str(own / "cache"))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["submit", "--suite", "micro", "--cluster", "local", "--results", str(results)])
    return results, rc, out.getvalue(), err.getvalue()


def copy_results(results: Path, to: Path) -> Path:
    """A copy of a results root (records, ledger, logs) to change freely."""
    import shutil

    shutil.copytree(results, to, symlinks=True)
    return to

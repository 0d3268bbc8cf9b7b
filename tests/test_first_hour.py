"""The first hour, round 2 (issue 34): where `sdd` runs from, and what a CPU machine is steered to. (The
monitor's messages: tests/test_monitor.py; GPU protocols refused on this machine: tests/test_distributed.py.)"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sdd_in(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("SDD_BENCHMARKS",)}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sdd_says_whose_registry_and_results_it_uses_when_they_are_not_this_directorys(tmp_path):
    here = sdd_in(ROOT, "ls", "suites")
    assert here.returncode == 0 and "the clone this sdd was installed from" not in here.stderr
    elsewhere = sdd_in(tmp_path, "ls", "suites")
    assert elsewhere.returncode == 0
    assert f"registry {ROOT / 'benchmarks'}" in elsewhere.stderr and "installed from" in elsewhere.stderr
    second_clone = tmp_path / "clone2"
    (second_clone / "benchmarks").mkdir(parents=True)  # another clone sharing this .venv
    got = sdd_in(second_clone, "ls", "suites")
    assert f"--registry {second_clone / 'benchmarks'}" in got.stderr and ".venv/bin/sdd" in got.stderr
    chosen = sdd_in(tmp_path, "--registry", str(ROOT / "benchmarks"), "ls", "suites")
    assert "installed from" not in chosen.stderr  # chosen explicitly: nothing to say


def test_plan_on_a_cpu_machine_names_the_gpu_protocols_and_their_cpu_versions(tmp_path):
    from harness.device import no_gpu_here

    if not no_gpu_here():
        import pytest

        pytest.skip("this machine has a GPU: the note is for machines without one")
    out = sdd_in(ROOT, "plan", "--suite", "sdd", "--results", str(tmp_path), env={"SDD_CKPT_ROOT": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "need GPUs (" in out.stdout and "linear -> linear_mini" in out.stdout and "metrics ->" in out.stdout
    assert "sdd submit --cluster <profile>" in out.stdout
    assert no_gpu_here({"CUDA_VISIBLE_DEVICES": ""}) and no_gpu_here({"CUDA_VISIBLE_DEVICES": "-1"})

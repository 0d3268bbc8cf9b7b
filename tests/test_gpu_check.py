"""`make gpu-check ARGS=--smoke` is part of `make test` (issue 22): the GPU check's script runs end to end
on this CPU machine through the project's own .venv, and a figure extrapolated from a CPU run is labelled
as a CPU figure, never printed as GPU·h."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="make gpu-check uses the project's .venv")
def test_the_gpu_check_smoke_runs_here_and_claims_no_gpu_figure(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: `make gpu-check` itself is the check there")
    env = {**os.environ, "OUT": str(tmp_path)}
    out = subprocess.run(
        ["make", "-s", "gpu-check", "ARGS=--smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    got = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = got["rows"]
    assert rows and all(r.get("status", "ok") == "ok" for r in rows), [r for r in rows if r.get("status", "ok") != "ok"]
    assert not any("extrapolated_gpu_h" in r for r in rows)  # no GPU·h from a CPU run
    assert any("extrapolated_cpu_h" in r for r in rows)  # the extrapolation is there, as a CPU figure
    # the DSE monitor's call against a timed DINO epoch (issue 26's goal), labelled as the CPU's
    (mon,) = [r for r in rows if "monitor_share_of_epoch_pct" in r]
    assert mon["precision"] == "float32 (CPU)" and mon["status"] == "ok"
    assert mon["dino_epoch_s_extrapolated"] == pytest.approx(1_281_167 / mon["dino_images_per_s"], rel=0.01)
    share = 100 * mon["wall_s"] / mon["dino_epoch_s_extrapolated"]
    assert mon["monitor_share_of_epoch_pct"] == pytest.approx(share, abs=0.01)
    md = (tmp_path / "gpu_check.md").read_text()
    assert "No GPU ran this" in md and "extrapolated_gpu_h" not in md

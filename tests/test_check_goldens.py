"""tools/check_goldens.py finds each golden quote at its cited line in a local clone of the upstream repository
at the cited commit, and names the field, the quote and what the line says when it is not there."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import check_goldens  # noqa: E402


def _repo(tmp: Path) -> str:
    repo = tmp / "up" / "someone+cfgs"
    (repo / "configs").mkdir(parents=True)
    (repo / "configs" / "run.py").write_text(
        "# header\n\noptimizer = dict(type='AdamW', lr=6e-05)\nbatch = 16\n" + "x = 1\n" * 10
    )
    (repo / "configs" / "data.py").write_text("crop_size = (512, 512)\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def _golden(tmp: Path, commit: str, values: dict) -> Path:
    path = tmp / "p.yaml"
    follows = {"repo": "someone/cfgs", "commit": commit, "path": "configs/run.py"}
    path.write_text(yaml.safe_dump({"method": "dino", "follows": follows, "values": values}))
    return path


def test_quotes_found_at_their_lines_pass(tmp_path):
    commit = _repo(tmp_path)
    path = _golden(
        tmp_path,
        commit,
        {
            "optimizer.lr": {"value": 6e-5, "line": 3, "quote": "optimizer = dict(type='AdamW',   lr=6e-05)"},
            "batch": {"value": 16, "line": "4", "quote": "batch = 16"},
            "crop": {"value": [512, 512], "line": "data.py:1", "quote": "crop_size = (512, 512)"},
            "gpus": {"value": 8, "line": "§4", "paper": "§4.1: 'we use 8 GPUs'"},
        },
    )
    assert check_goldens.main(["--upstream", str(tmp_path / "up"), str(path)]) == 0


def test_a_quote_not_at_its_line_fails_naming_field_and_line(tmp_path, capsys):
    commit = _repo(tmp_path)
    path = _golden(
        tmp_path,
        commit,
        {
            "optimizer.lr": {"value": 1e-4, "line": 3, "quote": "lr=1e-04"},
            "batch": {"value": 16, "line": 14, "quote": "batch = 16"},  # more than 3 lines away
            "crop": {"value": 512, "line": 1},
        },
    )
    assert check_goldens.main(["--upstream", str(tmp_path / "up"), str(path)]) == 1
    out = capsys.readouterr().out
    said = "configs/run.py:3-3 says \"optimizer = dict(type='AdamW', lr=6e-05)\""
    assert f"optimizer.lr: quote 'lr=1e-04' not found ({said})" in out
    assert "batch: quote 'batch = 16' not found" in out and "crop: no quote (and no paper citation)" in out

"""The README's command table is the CLI's reference (issue 22): every flag `--help` offers is in the
table's row of its command, every flag the README uses anywhere for a command is one `--help` offers, and
no row lists a flag the command does not take."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("ls", "validate", "plan", "submit", "reproduce", "status", "collect", "tables", "figures", "import", "demo")
SHARED = {"--results"}  # a row of its own: `sdd <command> --results DIR`


def help_flags(cmd: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "harness", cmd, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"(--[a-z][a-z-]+)", out.stdout)) - {"--help"}


def table_rows(readme: str) -> dict[str, set[str]]:
    rows: dict[str, set[str]] = {}
    for line in readme.splitlines():
        m = re.match(r"\| `sdd ([a-z]+)([^`]*)` \|", line)
        if m and m.group(1) in COMMANDS:
            rows.setdefault(m.group(1), set()).update(re.findall(r"--[a-z][a-z-]+", m.group(2)))
    return rows


def test_the_command_table_lists_every_flag_and_only_real_ones():
    readme = (ROOT / "README.md").read_text()
    rows = table_rows(readme)
    assert "| `sdd <command> --results DIR` |" in readme
    for cmd in COMMANDS:
        offered = help_flags(cmd)
        listed = rows.get(cmd, set())
        assert cmd in rows, f"README's command table has no row for `sdd {cmd}`"
        assert not (offered - SHARED) - listed, (
            f"`sdd {cmd}` flags missing from its README row: {sorted(offered - SHARED - listed)}"
        )
        assert not listed - offered, (
            f"README row of `sdd {cmd}` lists flags it does not take: {sorted(listed - offered)}"
        )


def test_every_flag_the_readme_uses_is_a_real_one():
    readme = (ROOT / "README.md").read_text()
    offered = {cmd: help_flags(cmd) for cmd in COMMANDS}
    bad = []
    for m in re.finditer(r"\bsdd (?:--registry \S+ )?([a-z]+)\b([^\n`|&;]*)", readme):
        cmd, rest = m.group(1), m.group(2)
        if cmd not in COMMANDS:
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", rest):
            if flag not in offered[cmd]:
                bad.append(f"sdd {cmd} ... {flag}")
    assert not bad, f"the README uses flags the CLI does not take: {bad}"

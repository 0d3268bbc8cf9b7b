"""Check every quote of the recipe transcriptions (tests/golden/recipes/*.yaml) against the upstream files.

Each transcribed value carries `quote:` -- the verbatim text of the line(s) it cites (a list for several) --
or `paper:` -- the paper's section and sentence. This tool finds each quote at its cited line (within +-3
lines; whitespace runs compared as one space) in the cited file at the cited commit, in local clones of the
upstream repositories. It never touches the network: clone or fetch them yourself, then run it by hand.

    python tools/check_goldens.py --upstream DIR [golden.yaml ...]

DIR holds the repositories as DIR/<owner>/<name>, DIR/<owner>+<name> or DIR/<owner>+<name>/repo (work trees
or bare). A line is "N", "N-M", "file:N" (a file beside the followed one, or a path inside the repository)
or several such locations joined by "; " (a quote is found at any of them). Exit 1 when a quote is not
found, printing the field, the quote and what the cited lines say.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "recipes"
SLACK = 3


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def repo_dir(upstream: Path, repo: str) -> Path | None:
    owner, name = repo.split("/")
    for d in (upstream / owner / name, upstream / f"{owner}+{name}" / "repo", upstream / f"{owner}+{name}"):
        if d.is_dir():
            return d
    return None


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def file_lines(repo: Path, commit: str, path: str, cache: dict) -> list[str] | None:
    key = (repo, commit, path)
    if key not in cache:
        try:
            cache[key] = _git(repo, "show", f"{commit}:{path}").splitlines()
        except subprocess.CalledProcessError:
            cache[key] = None
    return cache[key]


def resolve(repo: Path, commit: str, followed: str, name: str, cache: dict) -> str | None:
    """A cited file name: beside the followed file, else the one path of the repository ending with it."""
    beside = str(Path(followed).parent / name) if "/" not in name else name
    if file_lines(repo, commit, beside, cache) is not None:
        return beside
    if "tree" not in cache:
        cache["tree"] = {}
    if (repo, commit) not in cache["tree"]:
        cache["tree"][(repo, commit)] = _git(repo, "ls-tree", "-r", "--name-only", commit).splitlines()
    tree = cache["tree"][(repo, commit)]
    hits = [p for p in tree if p == name] or [p for p in tree if p.endswith("/" + name)]  # the root's file first
    return hits[0] if len(hits) == 1 else None


def locations(line, followed: str) -> list[tuple[str, int, int]]:
    """(file, first, last) of each location a `line` field names; a part that names no line raises ValueError."""
    out = []
    for part in str(line).split(";"):
        part = part.strip()
        m = re.fullmatch(r"(?:(.+?):)?(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"{part!r} is not N, N-M or file:N")
        first = int(m.group(2))
        out.append((m.group(1) or followed, first, int(m.group(3) or first)))
    return out


def check_golden(path: Path, upstream: Path, cache: dict) -> list[str]:
    data = yaml.safe_load(path.read_text())
    follows = data["follows"]
    repo = repo_dir(upstream, follows["repo"])
    if repo is None:
        return [f"{path.name}: no clone of {follows['repo']} under {upstream}"]
    problems = []
    for field, entry in data["values"].items():
        quotes = entry.get("quote")
        if not quotes:  # a value from a paper cites its section and sentence instead
            if not entry.get("paper"):
                problems.append(f"{path.name}: {field}: no quote (and no paper citation)")
            continue
        quotes = [quotes] if isinstance(quotes, str) else list(quotes)
        try:
            places = locations(entry.get("line"), follows["path"])
        except ValueError as e:
            problems.append(f"{path.name}: {field}: line {entry.get('line')!r}: {e}")
            continue
        for quote in quotes:
            seen = []
            for name, first, last in places:
                file = (
                    resolve(repo, follows["commit"], follows["path"], name, cache) if name != follows["path"] else name
                )
                lines = file_lines(repo, follows["commit"], file, cache) if file else None
                if lines is None:
                    seen.append(f"{name}: no such file at {follows['commit'][:7]}")
                    continue
                window = lines[max(0, first - 1 - SLACK) : last + SLACK]
                if _norm(quote) in _norm(" ".join(window)):
                    break
                seen.append(f"{file}:{first}-{last} says {_norm(' | '.join(lines[first - 1 : last]))[:160]!r}")
            else:
                problems.append(f"{path.name}: {field}: quote {quote!r} not found ({'; '.join(seen)})")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, type=Path, help="directory of local clones of the upstream repos")
    ap.add_argument("goldens", nargs="*", type=Path, help="default: every tests/golden/recipes/*.yaml")
    args = ap.parse_args(argv)
    cache: dict = {}
    paths = args.goldens or sorted(GOLDEN.glob("*.yaml"))
    problems, values = [], 0
    for path in paths:
        data = yaml.safe_load(path.read_text())
        values += len(data["values"])
        found = check_golden(path, args.upstream, cache)
        problems += found
        quoted = sum(1 for e in data["values"].values() if e.get("quote"))
        print(f"{path.name}: {len(data['values'])} values, {quoted} quoted, {len(found)} problem(s)")
    for p in problems:
        print("  " + p)
    verdict = "every quote found at its line" if not problems else f"{len(problems)} problem(s)"
    print(f"{len(paths)} transcriptions, {values} values: {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate the recipe tables of docs/protocols.md (everything below its marker line) from the protocol
files and the transcriptions of their sources (tests/golden/recipes/). `--check` changes nothing and fails
when the committed file is not what the files give (tests/test_recipes.py runs the same comparison).

    .venv/bin/python tools/protocol_docs.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.jobs.recipe import MARKER, markdown
from harness.registry import load_registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"


def rendered(doc_text: str, reg) -> str:
    """The document with its generated part replaced (appended after the hand-written part when absent)."""
    head = doc_text.split(MARKER)[0].rstrip("\n")
    return head + "\n\n" + markdown(reg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when docs/protocols.md is out of date")
    args = ap.parse_args(argv)
    now = DOC.read_text()
    new = rendered(now, load_registry())
    if args.check:
        if new != now:
            print(f"{DOC} is out of date: run .venv/bin/python tools/protocol_docs.py", file=sys.stderr)
            return 1
        print(f"{DOC}: up to date")
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

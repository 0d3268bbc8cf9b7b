"""The one writer of every file the harness writes (records, results.csv/parquet, tables, figures, REPORT,
the ledger, imports, caches): a temporary file in the target's own folder, flushed and fsync'ed, then
renamed over the target. A reader sees the previous file or the new one, never a partial one; a writer
stopped half-way (a full disk, `ulimit -f`, Ctrl-C, a kill) leaves the previous file and no torn one.

Several files that must change together (an import's records, a tables run's files) go through a
`FileSet`: every file is written to its temporary first, and only when all were written are they renamed,
with interrupts held back during the renames and a journal that lets the next writer of the suite finish
them (`recover`) should the process die between two renames. So such an operation is all-or-nothing.

An `OSError` of a write is raised as `WriteError`, a HarnessError naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

JOURNAL_GLOB = ".journal-*.json"


class WriteError(HarnessError):
    """A file could not be written; nothing was replaced. The message names the path and the way out."""


def _advice(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "the disk (or your quota, or `ulimit -f`) is full: free space, or point SDD_RESULTS elsewhere"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable here: fix its permissions, or point SDD_RESULTS at a writable folder"
    return "check the folder and the disk, then run the same command again"


def write_error(path: Path | str, e: OSError, doing: str = "write") -> WriteError:
    """A WriteError for `path` from an OSError: what failed, why, and what to do."""
    return WriteError(f"cannot {doing} {path} ({e.strerror or e}); it was left as it was. {_advice(e)}")


def _fsync_path(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (some filesystems refuse to fsync a directory: nothing lost then)."""
    with contextlib.suppress(OSError):
        _fsync_path(folder)


def _temporary(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def staged(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path` for a library that writes to a path (pandas, matplotlib, torch):
    when the block ends, the file is fsync'ed and left for the caller to rename (or removed on failure)."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        _fsync_path(tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """`with replacing(p) as tmp: frame.to_csv(tmp)`: the file at `p` is replaced by what was written to
    `tmp` once the block ends without an error; on any error `p` is untouched and `tmp` is gone."""
    path = Path(path)
    with staged(path) as tmp:
        yield tmp
    try:
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None
    _fsync_dir(path.parent)


def write_bytes(path: Path | str, data: bytes) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode())


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str, allow_nan=True)


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, json_text(obj))


def save_tensors(obj: Any, path: Path | str) -> None:
    """torch.save, atomically. For state the harness writes itself and reads back with weights_only=True."""
    import torch

    with replacing(path) as tmp:
        torch.save(obj, tmp)


# ------------------------------------------------------------------------------------------------------------
# several files at once


@contextlib.contextmanager
def interrupts_held():
    """SIGINT and SIGTERM wait until the block ends (then act as they would have): a short sequence of
    renames is not cut in two by Ctrl-C. Outside the main thread signals cannot be handled: nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for signum in got[:1]:  # as it would have acted, now that the block is done
            os.kill(os.getpid(), signum)


class FileSet:
    """Files replaced together or not at all. Write each one (`json`, `text`, or `staged(path)` for a
    library), then `commit()`: only then are they renamed into place (and `remove`d files deleted). A
    failure or an interrupt before the commit leaves every target as it was; a process that dies during
    the commit leaves a journal in `journal_dir` that `recover(journal_dir)` completes.

        with FileSet(suite_dir) as files:
            files.json(a, rec_a); files.json(b, rec_b)     # committed when the block ends without error
    """

    def __init__(self, journal_dir: Path | str):
        self.journal_dir = Path(journal_dir)
        self.pending: list[tuple[Path, Path]] = []  # (temporary, target)
        self.removals: list[Path] = []
        self.committed = False

    def __enter__(self) -> FileSet:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def staged(self, path: Path | str, write: Callable[[Path], Any]) -> Path:
        """`write(tmp)` writes the file's content to `tmp`; the target is `path`, replaced at commit."""
        path = Path(path)
        try:
            with staged(path) as tmp:
                write(tmp)
        except BaseException:
            self.abort()
            raise
        self.pending.append((tmp, path))
        return path

    def bytes(self, path: Path | str, data: bytes) -> Path:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        return self.staged(path, write)

    def text(self, path: Path | str, text: str) -> Path:
        return self.bytes(path, text.encode())

    def json(self, path: Path | str, obj: Any) -> Path:
        return self.text(path, json_text(obj))

    def remove(self, path: Path | str) -> None:
        """A file to delete at commit (e.g. a table no longer produced)."""
        self.removals.append(Path(path))

    def abort(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending = []

    def commit(self) -> None:
        if self.committed:
            return
        journal = self.journal_dir / f".journal-{os.getpid()}-{id(self):x}.json"
        plan = {
            "replace": [
                [os.path.relpath(t, self.journal_dir), os.path.relpath(p, self.journal_dir)] for t, p in self.pending
            ],
            "remove": [os.path.relpath(p, self.journal_dir) for p in self.removals],
        }
        try:
            write_json(journal, plan)
        except BaseException:
            self.abort()
            raise
        with interrupts_held():
            _apply(self.journal_dir, plan)
            journal.unlink(missing_ok=True)
        self.committed = True
        self.pending = []


def _apply(root: Path, plan: dict) -> None:
    folders = set()
    for tmp, target in plan.get("replace", []):
        t, p = root / tmp, root / target
        if t.exists():
            try:
                os.replace(t, p)
            except OSError as e:
                raise write_error(p, e, "put in place") from None
            folders.add(p.parent)
    for target in plan.get("remove", []):
        (root / target).unlink(missing_ok=True)
    for d in folders:
        _fsync_dir(d)


def recover(journal_dir: Path | str) -> int:
    """Finish the commits that a process left half-done in `journal_dir` (every file of such a commit was
    written in full before its journal was): returns how many were finished."""
    n = 0
    for journal in sorted(Path(journal_dir).glob(JOURNAL_GLOB)):
        try:
            plan = json.loads(journal.read_text())
        except (OSError, ValueError):
            continue  # a journal being written: its files were never renamed, nothing to finish
        _apply(Path(journal_dir), plan)
        journal.unlink(missing_ok=True)
        n += 1
    return n

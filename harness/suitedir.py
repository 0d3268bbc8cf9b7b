"""A suite's results folder, `<results>/<suite>/`, and who may write in it.

- **One lock per suite** (`suite_lock`): every writer of a suite's results -- `sdd import`, `sdd collect`,
  `sdd tables`, `sdd submit` while it decides and claims its cells, the ledger, the DSE monitor -- holds
  it. A second writer waits for it (saying who holds it: command, PID, host, since when) up to
  `$SDD_LOCK_WAIT_S` seconds (600 by default), then fails naming the holder. The lock is an `flock` on
  `<suite>/.lock`: the kernel releases it when its process ends, so a held lock always means a live
  process. Taking it again in the same process is free (re-entrant). Taking it also finishes a
  multi-file write that a dead process left half-done (`atomic.recover`).
- **Writes never leave the suite's own folder** (`checked_suite_dir`): the folder and each of its trees
  (`runs/`, `imported/`, `tables/`, `figures/`, `logs/`, `work/`) carry a `.sdd-suite` marker naming the
  suite. A folder, or a tree, that is a link into another suite's folder carries that suite's marker
  and is refused before anything is written (a link to a folder of its own, e.g. on a larger disk, is
  fine). A folder that cannot be created or written gives a message naming the path, never a traceback.

A job writes only its own cell's record (atomically, after its claim in the ledger), so jobs do not take
the lock; they check the folder's marker before they write.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from harness.atomic import recover, write_error, write_text
from harness.errors import HarnessError

MARKER = ".sdd-suite"
LOCK = ".lock"
TREES = ("runs", "imported", "tables", "figures", "logs", "work")


class SuiteFolderError(HarnessError):
    """A suite's results folder that must not or cannot be written; nothing was written."""


class SuiteLocked(HarnessError):
    """Another live process holds the suite's lock for longer than this one would wait."""


def _marker_of(folder: Path) -> str | None:
    try:
        return (folder / MARKER).read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SuiteFolderError(f"cannot read {folder / MARKER} ({e.strerror or e})") from None


def _refuse(folder: Path, suite: str, held: str) -> None:
    real = os.path.realpath(folder)
    where = f"{folder} (a link to {real})" if real != os.path.abspath(folder) else str(folder)
    raise SuiteFolderError(
        f"{where} holds the results of suite '{held}', not of suite '{suite}': nothing was written. Two suites "
        f"never share a folder; remove the link, or give suite '{suite}' a folder of its own (a link to an empty "
        f"folder on another disk is fine)"
    )


def _suite_of_records(folder: Path, depth: int = 5) -> str | None:
    """The `suite` of the first record file found below `folder` (a few levels down), or None."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return None
    for e in entries:
        if e.is_file() and e.name.startswith("ep") and e.name.endswith(".json"):
            try:
                rec = json.loads(Path(e.path).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and isinstance(rec.get("suite"), str):
                return rec["suite"]
        elif e.is_dir() and depth > 0 and not e.name.startswith("."):
            found = _suite_of_records(Path(e.path), depth - 1)
            if found is not None:
                return found
    return None


def _check_one(folder: Path, suite: str, create: bool) -> None:
    """Refuse `folder` when its marker -- or, in a folder from before the markers, its records -- name
    another suite; mark it as `suite`'s otherwise (with `create`)."""
    held = _marker_of(folder)
    if held is None:
        held = _suite_of_records(folder)
        if held is not None and held != suite:
            _refuse(folder, suite, held)
        if create:
            try:
                write_text(folder / MARKER, suite + "\n")
            except HarnessError as e:
                raise SuiteFolderError(str(e)) from None
    elif held != suite:
        _refuse(folder, suite, held)


def checked_suite_dir(results: Path | str, suite: str, *, create: bool = True) -> Path:
    """`<results>/<suite>`, created (with `create`) and checked: neither it nor any of its trees belongs to
    another suite. Raises SuiteFolderError naming the folder and the way out."""
    results = Path(results)
    d = results / suite
    if create:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SuiteFolderError(str(write_error(d, e, "create the folder"))) from None
    if not d.is_dir():
        return d
    _check_one(d, suite, create)
    for tree in TREES:
        t = d / tree
        if t.is_dir():
            _check_one(t, suite, create)
    return d


# ------------------------------------------------------------------------------------------------------------
# the lock

_HELD: dict[tuple[str, int], int] = {}  # (lock path, thread) -> depth: re-entrant within a thread; another
_HELD_GUARD = threading.Lock()  # thread of the same process waits for the flock like another process


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it has not said which yet)"
    what, pid, host, since = (info.get(k, "?") for k in ("what", "pid", "host", "since"))
    return f"`{what}` (PID {pid} on {host}, since {since})"


def _wait_s() -> float:
    try:
        return float(os.environ.get("SDD_LOCK_WAIT_S", "600"))
    except ValueError:
        return 600.0


def _acquire(fd: int, suite: str, path: Path, wait_s: float) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    except OSError as e:
        raise SuiteFolderError(
            f"cannot lock {path} ({e.strerror or e}): this filesystem does not support file locks (a Lustre "
            f"mount without `flock`?); put SDD_RESULTS on one that does"
        ) from None
    who = _holder(fd)
    print(f"sdd: suite '{suite}' is being written by {who}; waiting for it (up to {wait_s:.0f} s)", file=sys.stderr)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise SuiteLocked(
                    f"suite '{suite}''s results are being written by {_holder(fd)} (lock {path}); nothing was "
                    f"done. Wait for it to finish and run this again (a lock is released when its process ends; "
                    f"SDD_LOCK_WAIT_S sets how long to wait)"
                ) from None
            time.sleep(0.2)


@contextlib.contextmanager
def suite_lock(results: Path | str, suite: str, what: str, *, wait_s: float | None = None) -> Iterator[Path]:
    """Hold suite `suite`'s lock for the block (`what`: the command, shown to a writer that waits); yields
    the checked suite folder. Re-entrant within a process."""
    d = checked_suite_dir(results, suite)
    path = d / LOCK
    key = (os.path.realpath(path), threading.get_ident())
    with _HELD_GUARD:
        if _HELD.get(key):
            _HELD[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield d
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except OSError as e:
        raise SuiteFolderError(str(write_error(path, e, "create the lock"))) from None
    try:
        _acquire(fd, suite, path, _wait_s() if wait_s is None else wait_s)
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        info = {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        with _HELD_GUARD:
            _HELD[key] = 1
        try:
            checked_suite_dir(results, suite)  # again, under the lock: a link made while we waited
            recover(d)
            yield d
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def holds_lock(results: Path | str, suite: str) -> bool:
    """Whether this process holds suite `suite`'s lock now."""
    return bool(_HELD.get((os.path.realpath(Path(results) / suite / LOCK), threading.get_ident())))

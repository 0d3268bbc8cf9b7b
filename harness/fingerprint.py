"""A file's identity is its content: its size and the SHA-256 of its bytes. Copying a checkpoint (`cp`,
`rsync` without `-t`), moving it to another disk or `touch`ing it keeps its identity; rewriting it with
other bytes changes it, which makes its cells stale and its cached features unused.

Reading a paper-scale checkpoint costs about a second, so the digest is computed once per file version
and cached against what `stat` says of it (device, inode, size, modification time) under
`<cache>/digests/`; a record also keeps that `stat` so that an unchanged file is recognised without
reading it. Nothing is hashed for a cell that has no record yet.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from harness.paths import cache_root

_CHUNK = 1 << 22
_MEMO: dict[tuple, str] = {}  # (path, dev, ino, size, mtime_ns) -> sha256, for this process


def _stat_key(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}


def sha256_of(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _digest(path: Path, st: os.stat_result) -> str:
    """The file's SHA-256, from this process's memo, the on-disk cache, or by reading it (then cached)."""
    real = os.path.realpath(path)
    key = (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _MEMO:
        return _MEMO[key]
    stamp = cache_root() / "digests" / f"{hashlib.sha256(real.encode()).hexdigest()[:24]}.json"
    want = {"path": real, **_stat_key(st)}
    try:
        held = json.loads(stamp.read_text())
        if (
            isinstance(held, dict)
            and all(held.get(k) == v for k, v in want.items())
            and isinstance(held.get("sha256"), str)
        ):
            _MEMO[key] = held["sha256"]
            return held["sha256"]
    except (OSError, ValueError):
        pass  # no cache entry, or a damaged one: read the file
    digest = sha256_of(path)
    try:
        from harness.atomic import write_json

        write_json(stamp, {**want, "sha256": digest})
    except OSError:
        pass  # a read-only cache only costs the next reader the same read
    _MEMO[key] = digest
    return digest


def file_fingerprint(path: Path | str) -> dict | None:
    """{"size", "sha256", "id" (its first 12 hex digits), "mtime_ns", "ino", "dev"} of a file, or None
    when there is no file. `id` is what identifies the content; the rest lets a later check skip the read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    digest = _digest(Path(path), st)
    return {**_stat_key(st), "sha256": digest, "id": digest[:12]}


def same_content(recorded: dict | None, path: Path | str) -> tuple[bool | None, str | None]:
    """Whether the file at `path` holds what `recorded` (a fingerprint stored in a record) describes:
    (True, None) | (False, why) | (None, why) when it cannot be told (no file here, nothing recorded).
    The file is read only when its `stat` differs from the recorded one. A record written before content
    identity (size and modification time only) is judged as it was then."""
    if not recorded:
        return None, "the record does not say which file it read"
    try:
        st = os.stat(path)
    except OSError:
        return None, f"{path} is not there"
    if "sha256" not in recorded:  # an older record: identity by size and modification time
        same = recorded.get("size") == st.st_size and recorded.get("mtime_ns") == st.st_mtime_ns
        return same, None if same else (
            "the checkpoint's size or modification time changed (a record from before "
            "content identity: re-run it once to record the content)"
        )
    if recorded.get("size") != st.st_size:
        return False, f"the checkpoint's content changed (size {recorded.get('size')} -> {st.st_size} bytes)"
    if all(recorded.get(k) == v for k, v in _stat_key(st).items()):
        return True, None  # the very file the record read, untouched
    digest = _digest(Path(path), st)
    if digest == recorded["sha256"]:
        return True, None
    return False, f"the checkpoint's content changed (sha256 {recorded['sha256'][:12]} -> {digest[:12]})"

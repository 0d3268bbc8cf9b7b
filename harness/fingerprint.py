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


_SAMPLES, _SAMPLE = 8, 1 << 16  # 8 blocks of 64 KiB: what tells two same-size checkpoints apart cheaply


def _sample_digest(path: Path | str, size: int) -> str:
    """SHA-256 of 8 blocks of 64 KiB spread over the file (the whole file when it is smaller): a cheap
    first comparison of two files of one size, confirmed by their full digests only when it agrees."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _SAMPLES * _SAMPLE:
            h.update(f.read())
        else:
            for i in range(_SAMPLES):
                f.seek((size - _SAMPLE) * i // (_SAMPLES - 1))
                h.update(f.read(_SAMPLE))
    return h.hexdigest()


def identical_files(files: dict) -> list[tuple[list, str]]:
    """Groups of keys of `files` ({key: path}) whose files hold the same bytes: [(sorted keys, sha256)].
    Cost: one `stat` per file; files of a size no other file has are never read; files of one size are
    compared on 8 sampled blocks first, and only those that agree are hashed in full (the digest cache)."""
    by_size: dict[int, list] = {}
    for key, path in files.items():
        try:
            st = os.stat(path)
        except OSError:
            continue  # a missing file is reported by whoever needs it
        by_size.setdefault(st.st_size, []).append(key)
    groups = []
    for size, keys in by_size.items():
        if len(keys) < 2:
            continue
        by_sample: dict[str, list] = {}
        for key in keys:
            try:
                by_sample.setdefault(_sample_digest(files[key], size), []).append(key)
            except OSError:
                continue
        for same in (v for v in by_sample.values() if len(v) > 1):
            by_digest: dict[str, list] = {}
            for key in same:
                fp = file_fingerprint(files[key])
                if fp is not None:
                    by_digest.setdefault(fp["sha256"], []).append(key)
            groups += [(sorted(v), digest) for digest, v in by_digest.items() if len(v) > 1]
    return sorted(groups, key=lambda g: g[0])


def identical_checkpoints(cells) -> list[str]:
    """For the cells of a plan (objects with `method`, `epoch` and `checkpoint_file`, "" where the file
    cannot be located here): one sentence per group of epochs of one method whose checkpoint files hold the
    same content. Each epoch's file must hold that epoch's weights; two epochs of one content would give
    two `ok` records of identical numbers, one of them under the wrong epoch."""
    files: dict[str, dict[int, str]] = {}
    for c in cells:
        if c.checkpoint_file:
            files.setdefault(c.method, {})[c.epoch] = c.checkpoint_file
    out = []
    for method in sorted(files):
        for epochs, digest in identical_files(files[method]):
            paths = [files[method][e] for e in epochs]
            one = len({(os.stat(p).st_dev, os.stat(p).st_ino) for p in paths}) == 1  # symbolic or hard links
            named = ", ".join(str(e) for e in epochs[:-1]) + f" and {epochs[-1]}"
            out.append(
                f"epochs {named} of method '{method}' are the same file content (sha256 {digest[:12]}…, "
                f"{os.path.getsize(paths[0]):,} bytes{'; the names are links to one file' if one else ''}): "
                f"{', '.join(paths)}. A copy under the wrong name? Each epoch's file must hold that epoch's "
                f"weights; replace the wrong copies (or remove those epochs from the method file's "
                f"checkpoint.epochs)"
            )
    return out

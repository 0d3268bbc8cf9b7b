"""A file's identity without reading it: size and modification time (as make and rsync judge it).
A checkpoint overwritten in place gets a new fingerprint, so its cells are no longer done and its
cached features are no longer used. Copies that keep mtimes (`cp -p`, `rsync -a`) keep it."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_fingerprint(path: Path | str) -> dict | None:
    """{"size", "mtime_ns", "id"} of a file, or None when there is no file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    fid = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "id": fid}

"""Let mmcv-lite's `mmcv.ops` import by standing in for the compiled `mmcv._ext`.

mmseg 1.2.2 imports `mmcv.ops` at module level, and mmcv-lite ships no compiled ops. The stand-in
makes the pure-Python ops usable; a compiled op raises a clear error when called. It is installed
only when the real compiled extension is absent, and always before mmseg is imported.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types


def install() -> bool:
    """Install the stand-in if needed; True if it was installed (now or before)."""
    if "mmcv._ext" in sys.modules:
        return getattr(sys.modules["mmcv._ext"], "__sdd_stub__", False)
    try:
        if importlib.util.find_spec("mmcv._ext") is not None:
            return False  # a compiled mmcv is installed: use it
    except ModuleNotFoundError:
        return False  # no mmcv at all; importing mmseg will say so
    stub = types.ModuleType("mmcv._ext")

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv op {name!r} needs mmcv compiled with ops; only mmcv-lite is installed")

        return missing

    stub.__getattr__ = __getattr__
    stub.__sdd_stub__ = True
    # loader None: mmengine's mmcv_full_available() must keep answering False (it calls find_loader)
    stub.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    sys.modules["mmcv._ext"] = stub
    return True


def import_mmseg():
    """Import mmseg with the stand-in in place and register its modules; returns the mmseg module."""
    install()
    import mmseg
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    return mmseg

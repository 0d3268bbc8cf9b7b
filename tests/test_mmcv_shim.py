"""mmseg imports on mmcv-lite through the harness's stand-in for mmcv._ext."""

import subprocess
import sys


def test_mmseg_imports_with_the_stand_in():
    code = (
        "from harness.mmcv_shim import import_mmseg; import sys\n"
        "m = import_mmseg(); assert sys.modules['mmcv._ext'].__sdd_stub__\n"
        "from mmseg.registry import MODELS; assert MODELS.get('UPerHead') is not None\n"
        "from mmengine.utils.dl_utils import mmcv_full_available; assert not mmcv_full_available()\n"
        "import mmcv._ext as ext\n"
        "try:\n    ext.nms_impl()\nexcept NotImplementedError as e:\n    print('OK', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK mmcv op 'nms_impl' needs mmcv compiled with ops" in out.stdout


def test_without_the_stand_in_mmseg_fails_here():
    """Guards the reason the shim exists: mmcv-lite alone cannot import mmseg.utils."""
    out = subprocess.run([sys.executable, "-c", "import mmseg.utils"], capture_output=True, text=True)
    assert out.returncode != 0 and "mmcv._ext" in out.stderr

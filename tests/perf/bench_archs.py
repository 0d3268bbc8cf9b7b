"""Benchmark (not a test): what reading architectures from the model costs (issue 31).

- checking `arch:` names without timm: the registered names read from timm's source, against importing timm
  for `timm.list_models()` (what the registry would pay per `sdd ls` / `sdd plan` otherwise);
- an architecture's facts (a model built on the meta device): the first one in a process (timm imported) and
  the next ones;
- loading a real-size DINOv2 ViT-S/14-reg4 file: the hub layout through timm's converter (`convert: timm`)
  against the same weights saved in timm's layout (no rule).

Run: make bench   (or: python tests/perf/bench_archs.py)
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def seconds(code: str) -> float:
    """Wall time of `code` in a fresh interpreter (what a command pays), best of 3."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    base = seconds("pass")
    names = seconds("from harness.archnames import timm_names; timm_names()") - base
    listed = seconds("import timm; timm.list_models()") - base
    print(f"arch names: timm's source scanned {names:.2f} s   vs   import timm + list_models {listed:.2f} s")

    from harness.models.archs import arch_facts

    t = time.perf_counter()
    arch_facts("vit_small_patch14_reg4_dinov2")
    first = time.perf_counter() - t
    t = time.perf_counter()
    for name in ("vit_small_patch16_dinov3_qkvb", "vit_large_patch16_224", "convnext_tiny", "resnet50"):
        arch_facts(name)
    rest = (time.perf_counter() - t) / 4
    print(f"arch facts (meta device): first in a process {first:.2f} s (timm imported), then {rest * 1e3:.0f} ms each")

    import torch

    from harness.models.checkpoints import load_backbone
    from harness.registry import ROOT, load_registry
    from tests import formats

    tmp = Path(tempfile.mkdtemp())
    try:
        bench = tmp / "bench"
        shutil.copytree(ROOT / "benchmarks", bench)
        import os

        os.environ["SDD_CKPT_ROOT"] = str(tmp / "ckpt")
        (tmp / "ckpt" / "dinov2_vits14_reg4").mkdir(parents=True)
        sd = formats.dinov2_release(registers=4)
        torch.save(sd, tmp / "ckpt" / "dinov2_vits14_reg4" / "dinov2_vits14_reg4_pretrain.pth")
        reg = load_registry(bench)
        hub = min(_timed(lambda: load_backbone("dinov2_vits14_reg4", 1, registry=reg)) for _ in range(3))
        timm_sd = load_backbone("dinov2_vits14_reg4", 1, registry=reg).backbone.net.state_dict()
        torch.save(timm_sd, tmp / "ckpt" / "dinov2_vits14_reg4" / "dinov2_vits14_reg4_pretrain.pth")
        f = bench / "methods" / "dinov2_vits14_reg4.yaml"
        f.write_text(f.read_text().replace("  state_dict:\n    convert: timm\n", ""))
        reg = load_registry(bench)
        plain = min(_timed(lambda: load_backbone("dinov2_vits14_reg4", 1, registry=reg)) for _ in range(3))
        print(
            f"load a ViT-S/14-reg4 file (88 MB): hub layout + timm's converter {hub:.2f} s, timm layout {plain:.2f} s"
        )
    finally:
        shutil.rmtree(tmp)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()

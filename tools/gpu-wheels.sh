#!/usr/bin/env bash
# Wheels for `make gpu-check` on a bare CUDA machine that has Python 3.12 with torch, timm, pandas,
# scipy (and no package index): the harness's other dependencies, at the versions of lock.txt, for
# CPython 3.12 on x86-64 Linux, into .whl/ (ignored by git). Run here, where PyPI is reachable; carry
# .whl/ to the GPU machine; `make gpu-check` installs from it. See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(mmengine mmsegmentation mmcv-lite pycocotools submitit pydantic pydantic_core annotated-types
      typing-inspection addict yapf termcolor ftfy wcwidth prettytable platformdirs)
mkdir -p .whl
for p in "${PKGS[@]}"; do
  v=$(grep -i -E "^${p//-/[-_]}==" lock.txt | head -1 | cut -d= -f3)
  [[ -n $v ]] || { echo "gpu-wheels: $p is not in lock.txt" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$p==$v"
done
ls -1 .whl
du -sh .whl

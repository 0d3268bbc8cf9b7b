"""Architecture names, without importing torch or timm: the registry checks `arch:` with these, so `sdd ls`,
`sdd validate` and `sdd plan` stay fast. A method's `arch` is one of the seed methods' aliases or any model
name timm registers; timm's names are read from its source (`@register_model` functions, exactly the set
`timm.list_models()` gives, a test checks it) in about 30 ms instead of the 4 s an import of timm takes."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import math
import re
from pathlib import Path

from harness.errors import HarnessError


class ArchError(HarnessError, ValueError):
    """An architecture name that names nothing, arguments its builder refuses, or blocks a ViT cannot give."""


# harness.models.archs.ALIASES builds these (a test checks that both lists agree)
ALIAS_NAMES = (
    "vit_small_patch16",
    "vit_small_patch16_h12",
    "vit_small_patch16_2cls",
    "vit_base_patch16",
    "vit_base_patch16_nocls",
    "resnet50",
    "resnet18_cifar",
    "swin_tiny_patch4_window7",
    "vit_tiny_test",
    "resnet_tiny_test",
)

# The ViT depth of each alias (0: a CNN), for the config hashes of records made before protocols stated their
# blocks (harness.plan._as_before); a test checks it against the built models.
ALIAS_DEPTHS = {
    "vit_small_patch16": 12,
    "vit_small_patch16_h12": 12,
    "vit_small_patch16_2cls": 12,
    "vit_base_patch16": 12,
    "vit_base_patch16_nocls": 12,
    "resnet50": 0,
    "resnet18_cifar": 0,
    "swin_tiny_patch4_window7": 0,
    "vit_tiny_test": 4,
    "resnet_tiny_test": 0,
}

_REGISTERED = re.compile(r"@register_model\s*\n\s*def\s+(\w+)\s*\(")


@functools.lru_cache(maxsize=1)
def timm_names() -> frozenset[str]:
    """Every model name the installed timm registers (empty when timm is not installed)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        return frozenset()
    names: set[str] = set()
    for f in (Path(spec.origin).parent / "models").glob("*.py"):
        names.update(_REGISTERED.findall(f.read_text(encoding="utf-8", errors="replace")))
    return frozenset(names)


def unknown_arch(name: str) -> str | None:
    """None for a usable architecture name, else the message: what is wrong and the closest names."""
    if name in ALIAS_NAMES:
        return None
    base = name.split(".", 1)[0]
    if base in timm_names():
        if base != name:
            return (
                f"'{name}' names timm's model '{base}' with a pretrained tag ('.{name.split('.', 1)[1]}'): weights are "
                f"never downloaded, the method's checkpoint file gives them; write arch: {base}"
            )
        return None
    close = difflib.get_close_matches(name, [*ALIAS_NAMES, *timm_names()], n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown architecture '{name}': neither one of the aliases ({', '.join(ALIAS_NAMES)}) nor a model timm "
        f"registers (`sdd ls archs` lists them; any `timm.list_models()` name works).{hint}"
    )


def scale_blocks(blocks: tuple[int, ...] | list[int], depth: int, written_for: int = 12) -> tuple[int, ...]:
    """The 0-based ViT blocks a protocol takes, written for a `written_for`-block ViT, on a ViT of `depth`
    blocks: block b becomes round((b + 1) * depth / written_for) - 1, so each keeps its relative depth.
    This is how the sources choose them across sizes: BEiT's/iBOT's [3, 5, 7, 11] for 12 blocks is
    [7, 11, 15, 23] for ViT-L (BEiT's UperNet ViT-L config), the evenly spaced [2, 5, 8, 11] is [5, 11, 17, 23]
    (ViTDet/DINOv2's four for 24 blocks), and both are [0, 1, 2, 3] on the 4-block test ViT."""
    out = tuple(max(0, math.floor((b + 1) * depth / written_for + 0.5) - 1) for b in blocks)
    bad = [b for b in blocks if not 0 <= b < written_for]
    if bad:
        raise ArchError(f"blocks {list(blocks)} are written for {written_for} blocks: {bad} are out of range")
    if len(set(out)) != len(out):
        raise ArchError(
            f"blocks {list(blocks)} (written for {written_for} blocks) collapse to {list(out)} on a {depth}-block "
            f"ViT: two levels would be one block; the protocol needs a ViT of at least {len(blocks)} blocks"
        )
    return out


DEFAULT_LEVELS = (3, 5, 7, 11)  # BEiT's/iBOT's four blocks of a 12-block ViT (UperNet's out_indices)

"""Checkpoint adapters: read an SSL method's own checkpoint file safely and load its backbone.

Checkpoints are untrusted input:
- always `torch.load(weights_only=True)`: a file that would need to run pickled code is refused,
  nothing in it is executed. The only extra globals allowed are inert data containers that real
  checkpoints carry beside the weights (DINO/MAE/UDI store their `args` as an argparse.Namespace).
- every backbone key must load: a missing key is an error (the upstream SDD loaders use
  strict=False and can silently load nothing), unexpected keys (heads, projectors) are listed.
- the epoch stored inside the file, where there is one, is checked against the registry's epoch, whatever
  its numeric type (int, integral float, numeric string, numpy scalar, a tensor of one value); a value that
  is no epoch number is refused, never skipped.
- two keys of the file that the state-dict rule maps to one key are an error naming both: loading
  whichever came last would silently pick one of two copies.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError
from harness.models.archs import Backbone, build_backbone
from harness.registry import (
    MethodSpec,
    Registry,
    StateDictRule,
    load_registry,
)


class CheckpointError(HarnessError):
    """A checkpoint cannot be used; the message names the file and the reason."""


def _safe_globals() -> list:
    import numpy as np

    core = np._core.multiarray
    dtypes = [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")]
    return [argparse.Namespace, core._reconstruct, core.scalar, np.ndarray, np.dtype, *dtypes]


def safe_load(path: str | Path) -> Any:
    """torch.load with weights_only=True (a `.safetensors` file through safetensors, safe by construction) and
    errors that name the path and the cause."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"checkpoint {path} is not a readable safetensors file ({size_of(path)}): {_first_line(e)}"
            ) from None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg:
            found = re.search(r"Unsupported (?:global|operand)[^\n]*", msg)
            raise CheckpointError(
                f"refused to load {path}: it contains pickled code or objects that are not plain tensors and "
                f"containers ({found.group(0) if found else 'weights_only rejected it'}); nothing from it was "
                f"executed. Re-save the weights alone (a dict of tensors) from a trusted environment."
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({size_of(path)}): {msg}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({size_of(path)}): {_first_line(e)}"
        ) from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def size_of(path: Path) -> str:
    try:
        return f"{path.stat().st_size:,} bytes"
    except OSError:
        return "size unknown"


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(dotted)
        obj = obj[part]
    return obj


def extract_state_dict(obj: Any, rule: StateDictRule, *, path: Path | str = "?") -> dict[str, torch.Tensor]:
    """Apply a registry state-dict rule to a loaded checkpoint object."""
    keys = (rule.key,) if isinstance(rule.key, str) else tuple(rule.key or ())
    sd = None
    for k in keys:
        try:
            sd = _dig(obj, k)
            break
        except KeyError:
            continue
    if sd is None:
        if keys and not rule.key_optional:
            top = ", ".join(map(str, list(obj)[:12])) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(
                f"{path}: none of the keys {list(keys)} is in the checkpoint "
                f"(top-level keys: {top}); fix checkpoint.state_dict.key in the method file"
            )
        sd = obj
    if not isinstance(sd, dict):
        raise CheckpointError(
            f"{path}: expected a dict of tensors under {list(keys) or 'the top level'}, got {type(sd).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    source: dict[str, Any] = {}  # key produced -> the file's key it came from
    collisions: list[tuple[Any, Any, str]] = []  # (first source, second source, the key both become)
    for raw, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = _apply_rule(str(raw), rule)
        if k is None:
            continue
        if k in source:
            collisions.append((source[k], raw, k))
            continue
        source[k] = raw
        out[k] = v
    if collisions:
        raise CheckpointError(_collision_message(path, collisions, sd))
    return out


def _apply_rule(k: str, rule: StateDictRule) -> str | None:
    """The key `k` becomes under the rule's keep_prefix, drop_containing, strip_prefixes and rename_prefixes
    (in that order), or None when the rule drops it."""
    if rule.keep_prefix is not None:
        if not k.startswith(rule.keep_prefix):
            return None
        k = k[len(rule.keep_prefix) :]
    if any(s in k for s in rule.drop_containing):
        return None
    for p in rule.strip_prefixes:
        if k.startswith(p):
            k = k[len(p) :]
    for old, new in rule.rename_prefixes.items():
        if k.startswith(old):
            return new + k[len(old) :]
    return k


def _collision_message(path, collisions: list[tuple[Any, Any, str]], sd: dict) -> str:
    """Two (or more) keys of the file become one key under the rule: name both and how to keep one copy."""
    a, b, target = collisions[0]
    same = torch.equal(sd[a], sd[b]) if sd[a].shape == sd[b].shape and sd[a].dtype == sd[b].dtype else False
    more = "; ".join(f"'{x}' and '{y}' -> '{t}'" for x, y, t in collisions[1:4])
    prefixes = [_prefix_before(str(x), target) for x in (a, b)]
    choice = " or ".join(f"keep_prefix: '{p}'" for p in prefixes if p)
    return (
        f"{path}: the state-dict rule maps two keys of the file to one: '{a}' and '{b}' both become '{target}' "
        f"(their values {'are equal' if same else 'differ'})"
        + (
            f"; {len(collisions)} such pairs in all (also {more}{' ...' if len(collisions) > 4 else ''})"
            if more
            else ""
        )
        + ". The file holds two copies of these weights and loading one would be a guess. Fix "
        "checkpoint.state_dict in the method file so that one copy is kept"
        + (f" (e.g. {choice}, or drop_containing for the other)" if choice else " (keep_prefix or drop_containing)")
        + "."
    )


def _prefix_before(key: str, target: str) -> str:
    """The part of `key` in front of what it shares with `target` at its end ('module.backbone.' for
    'module.backbone.x' -> 'x'): a keep_prefix that selects this copy."""
    n = 0
    while n < min(len(key), len(target)) and key[-1 - n] == target[-1 - n]:
        n += 1
    head = key[: len(key) - n]
    return head[: head.rfind(".") + 1] if "." in head else ""


def _convert(sd: dict, converter: str | None, backbone: Backbone, path: Path | str = "the checkpoint") -> dict:
    if converter is None:
        return sd
    if converter == "timm":
        return timm_convert(sd, backbone, path)
    if converter == "timm_swin":  # original Swin layout (downsample at stage end) -> timm's
        from timm.models.swin_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(sd, backbone.net)
    if converter == "split_cls_tokens":  # UDI: cls_token [1, 2, d] -> timm cls_token + reg_token
        sd = dict(sd)
        tok = sd.pop("cls_token", None)
        if tok is not None and "reg_token" in sd:  # the split would overwrite a register token the file has
            raise CheckpointError(
                "split_cls_tokens: the state dict already holds a 'reg_token' beside the [1, 2, d] cls_token; "
                "splitting would replace it (two copies of one key). Drop one with the state-dict rule, or remove "
                "`convert: split_cls_tokens` if the file is already in timm's layout"
            )
        if tok is not None:
            n_reg = backbone.net.num_reg_tokens
            if tok.shape[1] != 1 + n_reg:
                raise CheckpointError(f"cls_token has {tok.shape[1]} tokens, the architecture expects {1 + n_reg}")
            sd["cls_token"], sd["reg_token"] = tok[:, :1], tok[:, 1:]
        return sd
    raise CheckpointError(f"unknown state-dict converter {converter!r}")


def timm_convert(sd: dict, backbone: Backbone, path: Path | str = "the checkpoint") -> dict:
    """The file's state dict in the model's layout through the `checkpoint_filter_fn` of the timm module that
    defines the architecture (DINOv2's `register_tokens` -> `reg_token` and its position table, DINOv3's
    `storage_tokens`, `ls1.gamma` and split q/v biases, its RoPE `periods` and NaN-filled `bias_mask` buffers
    dropped), never a hand-written rename table. What timm would drop silently is checked first: a q/k/v bias
    the model has no parameter for must be zero, else the file needs the `_qkvb` variant of the model."""
    import contextlib
    import io
    import sys

    module = sys.modules.get(type(backbone.net).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        raise CheckpointError(
            f"`convert: timm`: timm's module {type(backbone.net).__module__} has no checkpoint_filter_fn for "
            f"{backbone.arch}; remove `convert` if the file is already in the model's layout"
        )
    own = backbone.net.state_dict()
    dropped = [  # DINOv3 masks the key's third to 0 (LinearKMaskedBias): only the query and value parts count
        k
        for k in sd
        if k.endswith("attn.qkv.bias")
        and k not in own  # the model takes the fused bias as it is
        and k.replace("qkv.bias", "q_bias") not in own
        and any(bool(part.ne(0).any()) for part in sd[k].chunk(3)[::2])
    ]
    if dropped:
        raise CheckpointError(
            f"{path}: the file has non-zero attention biases ({dropped[0]}, {len(dropped)} in all) that "
            f"{backbone.arch} has no parameter for: timm's converter would drop them and the features would be "
            f"wrong. Use the variant with q/v biases (for DINOv3: the `_qkvb` model name, e.g. {backbone.arch}_qkvb)"
        )
    _same_geometry(sd, backbone, path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # timm prints each bias it skips on purpose
            out = dict(fn(dict(sd), backbone.net))
    except Exception as e:  # the converter met a layout it does not map: the file is not this architecture's
        raise CheckpointError(
            f"{path}: timm's converter for {backbone.arch} cannot map this file ({_first_line(e)}); {tensor_facts(sd)} "
            f"Set `arch` (and `arch_kwargs`) to the architecture the file was trained with.{layout_hint(set(sd))}"
        ) from None
    extra = sorted(k for k in out if k not in own and not k.startswith(_PRETRAINING_ONLY))
    if extra:  # weights of the file that the model has no place for: another architecture (layer scale, ...)
        shown = ", ".join(extra[:5]) + (f" ... ({len(extra)} in all)" if len(extra) > 5 else "")
        raise CheckpointError(
            f"{path}: after timm's converter, {len(extra)} backbone tensors of the file have no place in "
            f"{backbone.arch}: {shown}. {tensor_facts(sd)} Set `arch` to the architecture the file was trained with."
            + layout_hint(set(sd))
        )
    return out


# what a released file may hold beside its backbone: heads and pre-training parts, never loaded
_PRETRAINING_ONLY = ("head.", "fc_norm.", "mask_token", "projector", "projectors.", "local_cls_norm", "lm_head.")


def _same_geometry(sd: dict, backbone: Backbone, path) -> None:
    """The file's patch size and position grid are the model's: timm's converters resample both to fit any model,
    which would load a patch-14 file into a patch-16 ViT, or resample the positions twice (at load, then to the
    input), without a word."""
    import math

    info = backbone.info
    proj = sd.get("patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4 and info.patch and tuple(proj.shape[-2:]) != (info.patch, info.patch):
        raise CheckpointError(
            f"{path}: the file's patch embedding is {tuple(proj.shape[-2:])} and {backbone.arch}'s patch is "
            f"{info.patch}: {tensor_facts(sd)} Set `arch` to the architecture the file was trained with"
        )
    pos = sd.get("pos_embed")
    grid = getattr(getattr(backbone.net, "patch_embed", None), "grid_size", None)
    if pos is None or pos.ndim != 3 or grid is None or getattr(backbone.net, "pos_embed", None) is None:
        return
    n = pos.shape[1]
    side = next((math.isqrt(n - k) for k in range(0, 9) if math.isqrt(n - k) ** 2 == n - k), None)
    if side is not None and (side, side) != tuple(grid):
        raise CheckpointError(
            f"{path}: the file's position table is a {side}x{side} grid and {backbone.arch} is built for "
            f"{grid[0]}x{grid[1]}: the converter would resample it at load and the ViT again to each input. Set "
            f"`arch_kwargs: {{img_size: {side * info.patch}}}` (the release's size) or leave img_size at timm's default"
        )


def stored_epoch(obj: Any, spec: MethodSpec, *, path: Path | str = "?") -> int | None:
    """Completed epochs according to the checkpoint itself, or None when it stores none (no `epoch_key` in
    the method file, or no such key in the file). The stored value is read whatever its numeric type
    (`epoch_value`); a value that is no epoch number is a CheckpointError naming the file, the key, the
    value and the fix: the epoch check is never skipped because of how the number was stored."""
    key = spec.checkpoint.epoch_key
    if not key or not isinstance(obj, dict):
        return None
    try:
        v = _dig(obj, key)
    except KeyError:
        return None
    try:
        return epoch_value(v) + spec.checkpoint.epoch_key_offset
    except ValueError as e:
        raise CheckpointError(
            f"{path}: its '{key}' field holds {_short_repr(v)}, which is not an epoch number ({e}); the epoch "
            f"check cannot run on it. Fix: re-save the file with its completed epochs as an integer under '{key}', "
            f"or point `checkpoint.epoch_key` in {spec.source} at the field that holds them (`epoch_key: null` if "
            f"the file stores none)"
        ) from None


def epoch_value(v: Any) -> int:
    """An epoch number stored in any of the forms checkpoints use: int, a float with an integral value
    (4.0), a string of one ("9", "4.0"), a numpy integer or float scalar, a tensor or array holding one
    value, or several values that are all equal (tensor([8, 8]), as a per-rank copy is, reads as 8).
    Anything else raises ValueError saying why: a bool, a non-integral or non-finite number, an
    unparsable string, an empty tensor or one of differing values, None or a container."""
    import math

    import numpy as np

    if isinstance(v, (torch.Tensor, np.ndarray, list, tuple)):
        if isinstance(v, torch.Tensor):
            items = v.detach().reshape(-1).tolist()
        else:
            items = np.asarray(v, dtype=object).reshape(-1).tolist()
        if not items or len(items) > 64:  # an epoch is one number (a copy per rank at most), not a weight tensor
            raise ValueError("it is empty" if not items else f"it holds {len(items):,} values")
        values = [epoch_value(x) for x in items]
        if len(set(values)) > 1:
            raise ValueError(f"its {len(values)} values differ: {sorted(set(values))[:6]}")
        return values[0]
    if isinstance(v, (bool, np.bool_)):
        raise ValueError("a boolean")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f) or f != int(f):
            raise ValueError("not a whole number")
        return int(f)
    if isinstance(v, str):
        text = v.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        try:
            return epoch_value(float(text))
        except ValueError:
            raise ValueError("a string that is not a whole number") from None
    raise ValueError(f"a {type(v).__name__}" if v is not None else "null")


def _short_repr(v: Any, limit: int = 80) -> str:
    text = repr(v).replace("\n", " ")
    text = f"{text[: limit - 3]}..." if len(text) > limit else text
    if isinstance(v, str):
        return text
    module = type(v).__module__.split(".")[0]
    return f"{text} ({type(v).__name__ if module == 'builtins' else f'{module}.{type(v).__name__}'})"


def _epoch_mismatch(spec: MethodSpec, path: Path, epoch: int, got: int) -> str:
    """The registry and the file disagree on the epoch: name the key and the value that fix each reading."""
    ck = spec.checkpoint
    raw = got - ck.epoch_key_offset  # what the file stores
    key_fix = ck.epoch_key_offset + (epoch - got)
    file_fix = ck.file_offset + (epoch - got)
    zero_based = epoch - got == 1
    first = (
        f"set `checkpoint.epoch_key_offset: {key_fix}` in {spec.source}: the file's '{ck.epoch_key}' field "
        f"counts from 0 (it stores the index of the last completed epoch, {raw}, as DINO's and MoCo's loops do)"
    )
    second = (
        f"set `checkpoint.file_offset: {file_fix}` if instead the file names are shifted (file number = epoch + "
        f"file_offset)"
    )
    return (
        f"{path}: its '{ck.epoch_key}' field says {raw} (= {got} completed epochs with epoch_key_offset "
        f"{ck.epoch_key_offset}), but the registry maps this file to epoch {epoch}. "
        + (
            f"Likely fix: {first}; or {second}."
            if zero_based
            else f"Fix: {second}; or, if the field counts differently, {first[4:]}."
        )
    )


def checkpoint_path(spec: MethodSpec, epoch: int) -> Path:
    return spec.checkpoint_file(epoch)


def broken_link(path: Path) -> str | None:
    """The hint for a name that is there but leads nowhere: a symbolic link in a loop or to a missing file."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as e:
        why = "a loop of links" if e.errno == 40 else "a target that is not there"
        return (
            f"; it is a symbolic link to {os.readlink(path)!r} that cannot be followed ({why}): fix or replace the link"
        )
    return None


def _missing_hint(spec: MethodSpec, path: Path, epoch: int) -> str:
    """Say which files do exist: an off-by-one numbering, or another zero padding, is then obvious."""
    if not path.parent.is_dir():
        return f"; the directory {path.parent} does not exist"
    tmpl = spec.checkpoint.file
    slot = re.search(r"\{epoch(:[^}]*)?\}", tmpl)
    if slot is None:  # a released file: name the files that look like checkpoints
        near = sorted(f for f in os.listdir(path.parent) if f.endswith((".pth", ".pt", ".safetensors", ".ckpt")))
        shown = ", ".join(near[:6]) + (" ..." if len(near) > 6 else "")
        return f"; {path.parent} holds {shown}" if near else f"; {path.parent} holds no checkpoint file"
    regex = re.compile("^" + re.escape(tmpl[: slot.start()]) + r"(\d+)" + re.escape(tmpl[slot.end() :]) + "$")
    found = sorted(((int(m.group(1)), m.group(1)) for f in os.listdir(path.parent) if (m := regex.match(f))))
    if not found:
        return f"; no file in {path.parent} matches '{tmpl}'"
    want = epoch + spec.checkpoint.file_offset
    same = [raw for n, raw in found if n == want]
    if same:  # the number is there, written differently: the padding of the template is wrong
        fixed = (
            tmpl[: slot.start()]
            + ("{epoch:0%dd}" % len(same[0]) if same[0].startswith("0") else "{epoch}")
            + tmpl[slot.end() :]
        )
        return (
            f"; {path.parent} has '{tmpl[: slot.start()]}{same[0]}{tmpl[slot.end() :]}': the number is written "
            f"with another zero padding than '{tmpl}' gives. Set checkpoint.file: '{fixed}'"
        )
    shown = ", ".join(str(n) for n, _ in found[:8]) + (" ..." if len(found) > 8 else "")
    return (
        f"; files in {path.parent} are numbered {shown} (number = epoch + checkpoint.file_offset, "
        f"now {spec.checkpoint.file_offset})"
    )


def key_prefixes(keys, depth: int = 2, top: int = 6) -> str:
    """The most common dotted prefixes of a state dict's keys, e.g. 'module.base_encoder. (150 keys)'."""
    from collections import Counter

    counts = Counter(".".join(k.split(".")[:depth]) + "." if k.count(".") >= depth else k for k in keys)
    return ", ".join(f"{p} ({n} keys)" for p, n in counts.most_common(top))


def fitting_archs(keys: set[str], current: str) -> list[str]:
    """Registry architectures whose every backbone key is among `keys` (built on the meta device)."""
    from harness.models.archs import ALIASES

    out = []
    for name in ALIASES:
        if name == current:
            continue
        try:
            with torch.device("meta"):
                required = build_backbone(name).required_keys()
        except Exception:  # an architecture that cannot be built on the meta device is not suggested
            continue
        if required and required <= keys:
            out.append(name)
    return out


@dataclass
class LoadedBackbone:
    backbone: Backbone
    method: str
    epoch: int
    path: Path
    stored_epoch: int | None
    loaded_keys: int
    unexpected_keys: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "method": self.method,
            "epoch": self.epoch,
            "path": str(self.path),
            "stored_epoch": self.stored_epoch,
            "loaded_keys": self.loaded_keys,
            "unexpected_keys": self.unexpected_keys,
            "architecture": f"{self.backbone.arch}: {self.backbone.info.summary()}",
            # what a ViT did with inputs not a multiple of its patch (the protocol kind's rule)
            "patch_remainder": self.backbone.remainder if self.backbone.info.family == "vit" else None,
        }


def _rule_source(obj, rule: StateDictRule):
    """The part of the file the state-dict rule reads (its `key`, when there is one)."""
    for k in (rule.key,) if isinstance(rule.key, str) else tuple(rule.key or ()):
        try:
            return _dig(obj, k)
        except KeyError:
            continue
    return obj


def _tensor_keys(obj, prefix: str = "", limit: int = 100000) -> list[str]:
    """Every tensor's dotted key in a loaded checkpoint (nested dicts flattened)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                out.append(f"{prefix}{k}")
            elif isinstance(v, dict) and len(out) < limit:
                out += _tensor_keys(v, f"{prefix}{k}.", limit)
    return out


def fitting_prefix(required: set[str], raw_keys) -> str | None:
    """The prefix under which every required key sits in `raw_keys` (e.g. 'backbone.' or
    'module.momentum_encoder.'), or None: what `keep_prefix` should say."""
    raw = set(raw_keys or ())
    candidates = sorted({k[: i + 1] for k in raw for i, ch in enumerate(k) if ch == "."}, key=len)
    for prefix in [""] + candidates:
        if all(prefix + k in raw for k in required):
            return prefix or None
    return None


_VIT_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1408: "giant", 1536: "giant"}


def tensor_facts(sd: dict[str, torch.Tensor]) -> str:
    """What the file's tensors say about the architecture it was trained with (a ViT's embedding dim, depth,
    patch size and extra tokens; a CNN's last channels), with the timm names that fit."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"(?:.*\.)?blocks\.(\d+)\.", k))}
    proj = next((v for k, v in sd.items() if k.endswith("patch_embed.proj.weight") and v.ndim == 4), None)
    if proj is None or not blocks:
        last = [tuple(v.shape) for k, v in sd.items() if k.endswith(".weight") and v.ndim == 4][-1:]
        return f"the file's tensors are not a ViT's (last convolution {last[0] if last else '?'})."
    dim, patch, depth = int(proj.shape[0]), int(proj.shape[-1]), max(blocks) + 1
    extra = next(
        (v for k, v in sd.items() if k.split(".")[-1] in ("reg_token", "register_tokens", "storage_tokens")), None
    )
    regs = int(extra.shape[1]) if extra is not None and extra.ndim == 3 else 0
    rope = not any(k.endswith("pos_embed") for k in sd)
    said = f"the file's tensors say: ViT, dim {dim}, depth {depth}, patch {patch}" + (
        f", {regs} extra tokens" if regs else ""
    )
    said += ", no position table (RoPE)" if rope else ""
    from harness.archnames import timm_names

    size = _VIT_SIZES.get(dim)
    names = sorted(n for n in timm_names() if size and n.startswith(f"vit_{size}_patch{patch}_"))
    if rope:
        names = [n for n in names if "dinov3" in n or "rope" in n]
    elif regs:
        names = [n for n in names if f"reg{regs}" in n]
    else:
        names = [n for n in names if "reg" not in n and "dinov3" not in n and "rope" not in n]
    fit = f" (timm names of that shape: {', '.join(names[:4])}; check the depth: {depth})" if names else ""
    return said + fit + "."


def layout_hint(keys: set[str]) -> str:
    """A sentence naming a known foreign layout among `keys` and how to load it ('' when none is recognised)."""
    if any("embeddings.patch_embeddings" in k or k.startswith(("encoder.layer.", "dinov2.", "vit.")) for k in keys):
        return (
            " These are Hugging Face `transformers` keys (embeddings.patch_embeddings, encoder.layer.N): neither timm "
            "nor the harness has a converter from them. Load the model in transformers and save the original "
            "release file, or use the release's own file (e.g. DINOv2's dinov2_vits14_pretrain.pth, which loads "
            "with `convert: timm`)."
        )
    if any(k.split(".")[-1] in ("register_tokens", "storage_tokens", "mask_token") or "rope_embed" in k for k in keys):
        return (
            " The file is in a DINOv2/DINOv3 release layout (register_tokens / storage_tokens / mask_token): "
            "set `convert: timm` under checkpoint.state_dict so that timm's own converter maps it."
        )
    return ""


def load_state_into(
    backbone: Backbone,
    sd: dict[str, torch.Tensor],
    *,
    path: Path | str = "the checkpoint",
    raw_keys=None,
    holder: str = "The file",
    fix: str = "Fix checkpoint.state_dict in the method file (key / keep_prefix / strip_prefixes)",
) -> list[str]:
    """Load `sd` into the backbone; every required key must be present with the right shape. `raw_keys`
    (the keys before the state-dict rule) let an error show what the file (`holder`) actually holds and the
    `keep_prefix` that would fit; `fix` says where the rule is set."""
    required = backbone.required_keys()
    missing = sorted(required - sd.keys())
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        have = ", ".join(sorted(sd)[:5]) or "(no tensors left after the rule)"
        msg = (
            f"{path}: {len(missing)} of {len(required)} backbone keys are missing after the state-dict rule: "
            f"{shown}. The rule produced keys such as: {have}."
        )
        if raw_keys:
            msg += f" {holder}'s tensors sit under: {key_prefixes(raw_keys)}."
            prefix = fitting_prefix(required, raw_keys)
            if prefix:
                msg += f" Every backbone key is there under '{prefix}': keep_prefix: '{prefix}' would fit."
        msg += layout_hint(set(sd) | set(raw_keys or ()))
        others = fitting_archs(set(sd), backbone.arch) if len(missing) > len(required) // 2 and sd else []
        if others:
            msg += f" The keys the rule produced fit architecture {', '.join(others)}: is `arch` right?"
        raise CheckpointError(f"{msg} {fix}; partial loads are never accepted.")
    own = backbone.net.state_dict()
    bad = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(required)
        if tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(
            f"{path}: shape mismatch for {len(bad)} backbone keys (checkpoint vs architecture): "
            f"{'; '.join(bad[:5])}. {backbone.arch} is {backbone.info.summary()}; {tensor_facts(sd)} "
            f"Set `arch` (and `arch_kwargs`) in the method file to the architecture the file was trained with."
        )
    # strict=False only because BN batch counters may be absent; every weight was checked above
    backbone.net.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return sorted(set(sd) - set(own))


def load_backbone(
    method: str | MethodSpec,
    epoch: int,
    *,
    registry: Registry | None = None,
    arch_overrides: dict | None = None,
    kind: str | None = None,
) -> LoadedBackbone:
    """Build the method's architecture and load the checkpoint of `epoch` into it (CPU, eval mode).
    `arch_overrides` adds constructor arguments (e.g. drop_path_rate for fine-tuning); `kind` (the protocol
    kind that will use it) sets what a ViT does with inputs that are not a multiple of its patch."""
    spec = method if isinstance(method, MethodSpec) else (registry or load_registry()).method(method)
    if epoch not in spec.epochs():
        raise CheckpointError(
            f"epoch {epoch} is not among the epochs of method '{spec.name}' ({spec.source}: checkpoint.epochs)"
        )
    path = checkpoint_path(spec, epoch)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path} (method '{spec.name}', epoch {epoch})"
            + (broken_link(path) or _missing_hint(spec, path, epoch))
        )
    obj = safe_load(path)
    problems = []  # every problem of this file, reported together (a wrong epoch must not hide a wrong rule)
    try:
        got = stored_epoch(obj, spec, path=path)
    except CheckpointError as e:
        got = None
        problems.append(str(e))
    if got is not None and abs(got - epoch) > spec.checkpoint.epoch_tolerance:
        problems.append(_epoch_mismatch(spec, path, epoch, got))
    backbone = build_backbone(spec.arch, **{**spec.arch_kwargs, **(arch_overrides or {})})
    unexpected: list[str] = []
    try:
        sd = _convert(
            extract_state_dict(obj, spec.checkpoint.state_dict, path=path),
            spec.checkpoint.state_dict.convert,
            backbone,
            path,
        )
        unexpected = load_state_into(
            backbone, sd, path=path, raw_keys=_tensor_keys(_rule_source(obj, spec.checkpoint.state_dict))
        )
    except CheckpointError as e:
        problems.append(str(e))
        sd = None
    nonfinite = sorted(
        k
        for k in backbone.required_keys()
        if sd is not None and sd[k].is_floating_point() and not torch.isfinite(sd[k]).all()
    )
    if nonfinite:  # every protocol would give a number from broken weights (a NaN probe is not a result)
        shown = "; ".join(
            f"{k} ({int((~torch.isfinite(sd[k])).sum())} of {sd[k].numel()} values)" for k in nonfinite[:5]
        )
        problems.append(
            f"{path}: non-finite (NaN/inf) values in {len(nonfinite)} backbone tensor(s): {shown}"
            + (f" ... ({len(nonfinite)} in all)" if len(nonfinite) > 5 else "")
            + ". The checkpoint is broken (a diverged run, or a damaged file); use another epoch or re-save it."
        )
    if problems:
        raise CheckpointError(
            problems[0]
            if len(problems) == 1
            else f"{len(problems)} problems:\n" + "\n".join(f"  {i + 1}. {p}" for i, p in enumerate(problems))
        )
    backbone.eval()
    if kind is not None:
        from harness.kinds import PROTOCOL_KINDS

        backbone.remainder = PROTOCOL_KINDS[kind].patch_remainder
    return LoadedBackbone(backbone, spec.name, epoch, path, got, len(backbone.required_keys()), unexpected)


def projection_layer(method: str | MethodSpec, epoch: int, *, registry: Registry | None = None) -> dict:
    """The weight and bias of the first linear layer of the method's own projection head (its file's
    `projection_head`, e.g. DINO's `head.mlp.0`, under the part of the file its state-dict rule reads: the teacher),
    for protocols that fine-tune from it (UDI's low-shot fine-tuning, `--finetune_head_layer 1`). A method file
    that declares none, or a file without it, is an error saying what the file holds there."""
    spec = method if isinstance(method, MethodSpec) else (registry or load_registry()).method(method)
    key = spec.projection_head
    if not key:
        raise CheckpointError(
            f"method '{spec.name}' declares no projection head ({spec.source}: projection_head); this protocol "
            "fine-tunes from the first layer of the method's projection head (UDI's --finetune_head_layer 1): add "
            "e.g. `projection_head: head.mlp.0` (DINO's and iBOT's DINOHead) to the method file, or use a protocol "
            "with head: new"
        )
    path = checkpoint_path(spec, epoch)
    flat = _flat_tensors(_rule_source(safe_load(path), spec.checkpoint.state_dict))
    out = {name: flat.get(f"{key}.{name}") for name in ("weight", "bias")}
    if out["weight"] is None or out["weight"].ndim != 2:
        near = sorted(k for k in flat if k.startswith(key.split(".")[0] + "."))[:8]
        raise CheckpointError(
            f"{path}: no projection layer '{key}.weight' (a 2-D tensor) under the method's state-dict key, as "
            f"{spec.source} declares (projection_head); "
            + (f"the file holds {', '.join(near)} there" if near else f"its tensors sit under: {key_prefixes(flat)}")
            + ". Fix projection_head in the method file, or use a protocol with head: new"
        )
    return out


def _flat_tensors(obj, prefix: str = "") -> dict:
    """{dotted key: tensor} of a (nested) state dict."""
    out: dict = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                out[f"{prefix}{k}"] = v
            elif isinstance(v, dict):
                out.update(_flat_tensors(v, f"{prefix}{k}."))
    return out

"""Checkpoint metadata that escapes its checks (issue 30, class 5): an epoch stored in another numeric
type is still read and checked (or refused), two keys of a file that the state-dict rule maps to one key
are an error naming both, and one content under two epochs' names is named by `validate` and `plan`."""

import math
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness import fingerprint
from harness.cli import main
from harness.models.archs import build_backbone
from harness.models.checkpoints import (
    CheckpointError,
    _convert,
    epoch_value,
    extract_state_dict,
    load_backbone,
    safe_load,
)
from harness.registry import StateDictRule, load_registry
from tests import formats, worlds

RULE = "{key: teacher, strip_prefixes: [module., backbone.]}"  # DINO's rule: two prefixes, either may be there


def _method(root, name, epochs, rule=RULE, extra=""):
    (root / "methods" / f"{name}.yaml").write_text(
        f"name: {name}\ntitle: {name}\nfamily: test\narch: vit_tiny_test\n"
        f"checkpoint:\n  dir: ${{SDD_CKPT_ROOT}}/{name}\n  file: 'checkpoint{{epoch:04d}}.pth'\n"
        f"  epochs: {epochs}\n  state_dict: {rule}\n{extra}"
    )


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A registry of tiny DINO-format methods: `tinydino` (epochs 4, 8, 9) and `tinyoff`, whose file
    stores the 0-based epoch under meta.epoch (epoch_key_offset 1)."""
    root = tmp_path / "bench"
    (root / "methods").mkdir(parents=True)
    _method(root, "tinydino", "[4, 8, 9]")
    _method(root, "tinyoff", "[4, 8]", extra="  epoch_key: meta.epoch\n  epoch_key_offset: 1\n")
    ck = tmp_path / "ck"
    monkeypatch.setenv("SDD_CKPT_ROOT", str(ck))
    torch.manual_seed(0)
    sd = build_backbone("vit_tiny_test").net.state_dict()
    return SimpleNamespace(root=root, reg=load_registry(root), ck=ck, sd=sd)


def _save(t, obj, method="tinydino", epoch=4):
    path = t.ck / method / f"checkpoint{epoch:04d}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _with_epoch(t, value, epoch=4):
    """A DINO-format file of `epoch` whose 'epoch' field holds `value`."""
    formats.dino(t.sd, t.ck / "tinydino", epoch)
    path = t.ck / "tinydino" / f"checkpoint{epoch:04d}.pth"
    obj = safe_load(path)
    obj["epoch"] = value
    torch.save(obj, path)
    return path


# ---- the stored epoch, whatever its type ------------------------------------------------------------------


@pytest.mark.parametrize(
    "stored",
    [np.int64(9), "9", torch.tensor([8, 8]), torch.tensor(9), np.array([9]), 9.0, np.float32(8.0), " 8 ", "9.0"],
    ids=repr,
)
def test_an_epoch_stored_in_another_type_is_checked_not_skipped(tiny, stored):
    """The issue's trigger: the epoch-4 file says 9 (or 8) in a form other than a Python int."""
    path = _with_epoch(tiny, stored)
    with pytest.raises(CheckpointError, match=r"its 'epoch' field says [89] .*maps this file to epoch 4") as e:
        load_backbone("tinydino", 4, registry=tiny.reg)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "stored",
    [4, np.int64(4), np.int32(4), np.uint8(4), "4", "4.0", 4.0, np.float64(4.0), torch.tensor(4), torch.tensor([4, 4])],
    ids=repr,
)
def test_the_right_epoch_in_any_numeric_type_loads(tiny, stored):
    _with_epoch(tiny, stored)
    loaded = load_backbone("tinydino", 4, registry=tiny.reg)
    assert loaded.stored_epoch == 4 and type(loaded.stored_epoch) is int


@pytest.mark.parametrize(
    "stored, why",
    [
        (4.5, "not a whole number"),
        (float("nan"), "not a whole number"),
        (True, "a boolean"),
        (np.bool_(True), "a boolean"),
        (torch.tensor([8, 9]), r"its 2 values differ: \[8, 9\]"),
        (torch.tensor([4, 5]), r"its 2 values differ"),  # one value right is not enough
        (torch.tensor([]), "it is empty"),
        (torch.zeros(3, 100), "it holds 300 values"),  # epoch_key pointing at a weight
        ("four", "a string that is not a whole number"),
        ("", "a string that is not a whole number"),
        (None, "null"),
        ({"n": 4}, "a dict"),
    ],
    ids=repr,
)
def test_a_value_that_is_no_epoch_is_refused_naming_file_key_value_and_fix(tiny, stored, why):
    path = _with_epoch(tiny, stored)
    with pytest.raises(CheckpointError) as e:
        load_backbone("tinydino", 4, registry=tiny.reg)
    msg = str(e.value)
    assert str(path) in msg and "its 'epoch' field holds" in msg and "not an epoch number" in msg
    assert re.search(why, msg), msg
    assert "checkpoint.epoch_key" in msg and "re-save the file" in msg  # the fix, both ways


def test_a_refused_epoch_does_not_hide_the_files_other_problems(tiny):
    _save(tiny, {"teacher": formats.prefixed("encoder.", tiny.sd), "epoch": "soon"})
    with pytest.raises(
        CheckpointError, match=r"2 problems:\n.*'epoch' field holds 'soon'.*\n.*backbone keys are missing"
    ):
        load_backbone("tinydino", 4, registry=tiny.reg)


def test_a_nested_epoch_key_with_an_offset_reads_any_type(tiny):
    """Another trigger of the class: meta.epoch as a 0-d float tensor, 0-based (stored 3 = 4 completed)."""
    obj = {"teacher": formats.prefixed("backbone.", tiny.sd), "meta": {"epoch": torch.tensor(3.0)}}
    _save(tiny, obj, "tinyoff", 4)
    assert load_backbone("tinyoff", 4, registry=tiny.reg).stored_epoch == 4
    obj["meta"]["epoch"] = np.int64(7)  # = 8 completed, in the epoch-4 file
    _save(tiny, obj, "tinyoff", 4)
    with pytest.raises(CheckpointError, match=r"'meta\.epoch' field says 7 \(= 8 completed epochs"):
        load_backbone("tinyoff", 4, registry=tiny.reg)


def test_epoch_value_reads_every_form_and_refuses_the_rest():
    for v in (9, np.int64(9), np.uint8(9), "9", "+9", 9.0, np.float32(9), np.array(9), [9, 9], torch.tensor([[9, 9]])):
        assert epoch_value(v) == 9, v
    for v in (9.5, math.inf, False, b"9", [8, 9], np.array([]), torch.tensor([1 + 1j]), "9 epochs"):
        with pytest.raises(ValueError):
            epoch_value(v)


# ---- two keys, one target ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module_first", [False, True])
def test_two_copies_that_map_to_one_key_are_an_error_naming_both(tiny, module_first):
    """The issue's trigger: backbone.X and module.backbone.X both become X under strip_prefixes; whichever
    came last used to load. The order in the file does not matter."""
    plain = formats.prefixed("backbone.", tiny.sd)
    wrapped = formats.prefixed("module.backbone.", formats.other(tiny.sd))
    teacher = {**wrapped, **plain} if module_first else {**plain, **wrapped}
    _save(tiny, {"teacher": teacher, "epoch": 4})
    with pytest.raises(CheckpointError) as e:
        load_backbone("tinydino", 4, registry=tiny.reg)
    msg = str(e.value)
    assert "'backbone.pos_embed' and 'module.backbone.pos_embed'" in msg or (
        "'module.backbone.pos_embed' and 'backbone.pos_embed'" in msg
    )
    assert "the state-dict rule maps two keys of the file to one" in msg and "their values differ" in msg
    assert f"{len(tiny.sd)} such pairs in all" in msg
    assert "keep_prefix: 'backbone.'" in msg and "keep_prefix: 'module.backbone.'" in msg
    # the fix the message gives picks one copy, and exactly that one loads
    _method(tiny.root, "tinydino", "[4, 8, 9]", rule="{key: teacher, keep_prefix: module.backbone.}")
    net = load_backbone("tinydino", 4, registry=load_registry(tiny.root)).backbone.net.state_dict()
    assert torch.equal(net["pos_embed"], formats.other(tiny.sd)["pos_embed"])


def test_one_collision_among_many_keys_is_enough(tiny):
    """Even one duplicated key (an EMA copy of a single tensor) is refused, with equal values too."""
    teacher = {**formats.prefixed("backbone.", tiny.sd), "module.backbone.cls_token": tiny.sd["cls_token"].clone()}
    _save(tiny, {"teacher": teacher, "epoch": 4})
    with pytest.raises(
        CheckpointError,
        match=r"'backbone\.cls_token' and 'module\.backbone\.cls_token' both become 'cls_token' "
        r"\(their values are equal\)\. The file holds two copies",
    ):
        load_backbone("tinydino", 4, registry=tiny.reg)


def test_a_rename_that_makes_two_keys_collide_is_an_error():
    """Another trigger of the class: rename_prefixes maps encoder.* onto keys the file already has."""
    sd = {"blocks.0.w": torch.zeros(2), "encoder.0.w": torch.ones(2), "blocks.1.w": torch.ones(1)}
    rule = StateDictRule(rename_prefixes={"encoder.": "blocks."})
    with pytest.raises(
        CheckpointError, match=r"f\.pth: .*'blocks\.0\.w' and 'encoder\.0\.w' both become 'blocks\.0\.w'"
    ):
        extract_state_dict(sd, rule, path="f.pth")
    assert extract_state_dict(sd, StateDictRule(drop_containing=("encoder.",)), path="f.pth").keys() == {
        "blocks.0.w",
        "blocks.1.w",
    }
    # a strip then a rename onto the same key: every step of the rule counts
    sd = {"module.a.w": torch.zeros(1), "b.w": torch.ones(1)}
    rule = StateDictRule(strip_prefixes=("module.",), rename_prefixes={"b.": "a."})
    with pytest.raises(CheckpointError, match=r"'module\.a\.w' and 'b\.w' both become 'a\.w'"):
        extract_state_dict(sd, rule)


def test_a_converter_that_would_overwrite_a_key_is_an_error():
    sd = {"cls_token": torch.zeros(1, 2, 4), "reg_token": torch.ones(1, 1, 4)}
    with pytest.raises(CheckpointError, match=r"split_cls_tokens: .*already holds a 'reg_token'"):
        _convert(sd, "split_cls_tokens", None)


# ---- one content under two epochs ---------------------------------------------------------------------------


def test_identical_files_reads_only_what_it_must(tmp_path, monkeypatch):
    sampled, hashed = [], []
    real_sample, real_fp = fingerprint._sample_digest, fingerprint.file_fingerprint
    monkeypatch.setattr(fingerprint, "_sample_digest", lambda p, n: sampled.append(p) or real_sample(p, n))
    monkeypatch.setattr(fingerprint, "file_fingerprint", lambda p: hashed.append(p) or real_fp(p))
    big = 1 << 20
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, big, dtype=np.uint8).tobytes()
    files = {}
    for e, data in {
        1: base,
        2: base[:100] + b"x" + base[101:],  # same size, differs inside the first sampled block
        3: base[: 1 << 17] + bytes(1000) + base[(1 << 17) + 1000 :],  # differs only between the sampled blocks
        4: base[:-5],  # a size of its own: never read
        5: base,
        6: base,
    }.items():
        files[e] = tmp_path / f"f{e}"
        files[e].write_bytes(data)
    groups = fingerprint.identical_files(files)
    assert [g[0] for g in groups] == [[1, 5, 6]]  # three identical files, one group; 3 agreed on samples only
    assert groups[0][1] == fingerprint.sha256_of(files[1])
    assert files[4] not in sampled and set(sampled) == {files[e] for e in (1, 2, 3, 5, 6)}
    assert set(hashed) == {files[e] for e in (1, 3, 5, 6)}  # 2 told apart by its samples, never hashed in full
    assert fingerprint.identical_files({1: files[1], 2: tmp_path / "absent"}) == []


def test_identical_checkpoints_names_every_epoch_and_links(tmp_path):
    """Three epochs of one content (a copy and a symbolic link), and another method's unrelated copy."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "e1.pth").write_bytes(b"weights" * 100)
    shutil.copy(d / "e1.pth", d / "e2.pth")
    (d / "e3.pth").symlink_to(d / "e1.pth")
    (d / "e4.pth").write_bytes(b"other!!" * 100)  # the same size, another content
    cells = [SimpleNamespace(method="m", epoch=e, checkpoint_file=str(d / f"e{e}.pth")) for e in (1, 2, 3, 4)]
    cells += [SimpleNamespace(method="m", epoch=1, checkpoint_file=str(d / "e1.pth"))]  # another protocol's cell
    cells += [SimpleNamespace(method="n", epoch=1, checkpoint_file="")]  # not locatable here: skipped
    (msg,) = fingerprint.identical_checkpoints(cells)
    digest = fingerprint.sha256_of(d / "e1.pth")
    assert msg.startswith(
        f"epochs 1, 2 and 3 of method 'm' are the same file content (sha256 {digest[:12]}…, 700 bytes)"
    )
    assert "A copy under the wrong name?" in msg and "e4.pth" not in msg
    (d / "e2.pth").unlink()
    (d / "e2.pth").symlink_to(d / "e1.pth")
    cells = [c for c in cells if c.epoch in (1, 2)]
    (msg,) = fingerprint.identical_checkpoints(cells)
    assert "epochs 1 and 2 of method 'm'" in msg and "the names are links to one file" in msg


@pytest.fixture
def world(tmp_path, monkeypatch):
    """The tests' tiny suite (tinyvit and tinyres, epochs 1 and 2) with checkpoints that store no epoch,
    so only their content can tell a copy."""
    data = worlds.imagefolder(tmp_path / "imagenet", classes=2, per_class=2)
    for img in list(data.rglob("*.JPEG")):  # the layout check wants the suffix the dataset file gives
        img.rename(img.with_suffix(".jpg"))
    ck = tmp_path / "ck"
    bench = worlds.tiny_registry(tmp_path, data, ck)
    for i, (method, arch) in enumerate((("tinyvit", "vit_tiny_test"), ("tinyres", "resnet_tiny_test"))):
        for epoch in (1, 2):
            torch.manual_seed(10 * i + epoch)
            sd = build_backbone(arch).net.state_dict()
            (ck / method).mkdir(parents=True, exist_ok=True)
            torch.save({"teacher": formats.prefixed("backbone.", sd)}, ck / method / f"checkpoint{epoch:04d}.pth")
    return SimpleNamespace(bench=bench, ck=ck, results=tmp_path / "results")


def test_validate_and_plan_name_one_content_under_two_epochs(world, capsys):
    """The issue's trigger: epoch 2's file is a copy of epoch 1's; both would run `ok` with identical numbers."""
    sdd = ["--registry", str(world.bench)]
    assert main([*sdd, "validate", "--suite", "tiny"]) == 0
    capsys.readouterr()
    vit = world.ck / "tinyvit"
    shutil.copy(vit / "checkpoint0001.pth", vit / "checkpoint0002.pth")
    digest = fingerprint.sha256_of(vit / "checkpoint0001.pth")[:12]
    said = f"epochs 1 and 2 of method 'tinyvit' are the same file content (sha256 {digest}…"

    assert main([*sdd, "validate", "--suite", "tiny"]) == 1
    err = capsys.readouterr().err
    assert said in err and "A copy under the wrong name?" in err and "tinyres" not in err

    assert main([*sdd, "plan", "--suite", "tiny", "--results", str(world.results)]) == 0
    out = capsys.readouterr()
    assert f"warning: {said}" in out.err and "suite tiny" in out.out
    assert main([*sdd, "plan", "--suite", "tiny", "--method", "tinyres", "--results", str(world.results)]) == 0
    assert "same file content" not in capsys.readouterr().err  # only the methods planned are read

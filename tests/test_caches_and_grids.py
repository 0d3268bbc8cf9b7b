"""No silent wrong number, round 3 (issue 30), classes 3 and 6.

3. Caches that know their data: the feature cache and the dataset-check cache are keyed by what every file
   they were computed from is now (`harness.datasets.stat_stamp`: size, modification and change time,
   inode; the resolved root), the checkpoint's content and the code; a split rewritten in place with files
   of the same names and sizes makes its records stale.
6. Grids that are what they say: a suite entry's epoch list gets the checks a method file's list has.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.datasets import DatasetError, forget_fingerprints, root_of, split_fingerprint, verify_segmentation
from harness.jobs import execute
from harness.plan import build_plan
from harness.registry import RegistryError, load_registry
from tests import worlds

# --------------------------------------------------------------------------------------------- 3. caches


@pytest.fixture
def metrics_world(tmp_path, monkeypatch):
    data = worlds.imagefolder(tmp_path / "imagenet")
    ck = tmp_path / "ck"
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    bench = worlds.tiny_registry(tmp_path, data, ck)
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    forget_fingerprints()
    yield bench, data, tmp_path / "results"
    forget_fingerprints()


def _cell(bench):
    return next(c for c in build_plan(load_registry(bench), "tiny", methods=["tinyvit"]) if c.epoch == 1)


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*") if p.is_file())


def _replace_images(
    root: Path, other: Path, *, seed: int = 7, same_size: bool = False, keep_times: bool = False
) -> None:
    """Every image under `root` overwritten in place by another image under the same name. `same_size`: the
    other image re-encoded smaller and padded (after JPEG's end marker) to the old file's size; `keep_times`:
    the old modification time set back afterwards."""
    other = worlds.imagefolder(other, seed=seed) / "train"
    for f in _images(root):
        st = f.stat()
        new = other / f.relative_to(root)
        if same_size:
            buf = io.BytesIO()
            with Image.open(new) as im:
                im.save(buf, format="JPEG", quality=40)
            data = buf.getvalue()
            assert len(data) <= st.st_size
            data += b"\0" * (st.st_size - len(data))
        else:
            data = new.read_bytes()
        with open(f, "r+b") as out:  # the same file (inode), rewritten
            out.truncate(0)
            out.write(data)
        if keep_times:
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_images_replaced_under_the_same_names_are_not_taken_from_the_feature_cache(metrics_world, tmp_path):
    """The issue's trigger: every image of the metrics split replaced by other images with the same names;
    the cells are stale, and their re-run (`sdd submit`) computes new features and a new DSE."""
    bench, data, results = metrics_world
    c = _cell(bench)
    first = execute(c, results)
    assert first["status"] == "ok" and first["features"]["cache"] == "miss"
    assert execute(c, results)["features"]["cache"] == "hit"  # nothing changed: the cache serves
    _replace_images(data / "train", tmp_path / "other")
    forget_fingerprints()  # a new command lists the split afresh
    state, why = c.state(results)
    assert state == "stale" and why.startswith("the data it read changed")
    worlds.dino_checkpoint(bench.parent / "ck", "tinyvit", "vit_tiny_test", 2, seed=2)  # the suite's other cell
    argv = ["--registry", str(bench), "submit", "--suite", "tiny", "--cluster", "inline", "--results", str(results)]
    assert main([*argv, "--method", "tinyvit"]) == 0
    again = c.state(results)
    assert again[0] == "done", again
    from harness import records

    rec = records.read_record(c.record_path(results), results)
    assert rec["features"]["cache"] == "miss"
    assert rec["metrics"]["dse"] != first["metrics"]["dse"]


def test_same_size_replacements_make_the_cell_stale_and_miss_the_cache(metrics_world, tmp_path):
    """Images replaced by others of exactly the same sizes: the split's names and sizes are unchanged, its
    modification times are not (stale, saying so); with the modification times set back too, the record
    cannot tell, but a re-run does not take the old features (the change time moved)."""
    bench, data, results = metrics_world
    c = _cell(bench)
    first = execute(c, results)
    before = split_fingerprint(load_registry(bench).dataset("imagenet", "tiny"), "train")
    _replace_images(data / "train", tmp_path / "other", same_size=True)
    forget_fingerprints()
    after = split_fingerprint(load_registry(bench).dataset("imagenet", "tiny"), "train")
    assert after["digest"] == before["digest"] and after["times"] != before["times"]
    state, why = c.state(results)
    assert state == "stale" and "files were rewritten since" in why and "same 40 files" in why
    rec = execute(c, results)
    assert rec["status"] == "ok" and rec["features"]["cache"] == "miss"
    assert rec["metrics"]["dse"] != first["metrics"]["dse"]
    # once more, each file's modification time set back after the rewrite: only the change time tells
    _replace_images(data / "train", tmp_path / "third", seed=8, same_size=True, keep_times=True)
    forget_fingerprints()
    third = execute(c, results)
    assert third["status"] == "ok" and third["features"]["cache"] == "miss"
    assert third["metrics"]["dse"] != rec["metrics"]["dse"]


def test_the_same_images_under_another_root_are_another_cache_entry(metrics_world, tmp_path, monkeypatch):
    """The resolved data root is part of the key: a copy elsewhere is computed again (and gives the same
    numbers, being the same images); the records stay done (names and sizes are the same)."""
    bench, data, results = metrics_world
    ds_file = bench / "datasets" / "imagenet.yaml"
    ds_file.write_text(ds_file.read_text().replace(f"root: {data}", "root: ${SDD_TEST_IMAGES}"))
    monkeypatch.setenv("SDD_TEST_IMAGES", str(data))
    c = _cell(bench)
    first = execute(c, results)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    monkeypatch.setenv("SDD_TEST_IMAGES", str(moved))
    forget_fingerprints()
    assert c.state(results)[0] == "done"
    rec = execute(c, results)
    assert rec["features"]["cache"] == "miss" and rec["metrics"] == first["metrics"]


def _png_padded_to(data: bytes, size: int) -> bytes:
    """A PNG grown to `size` bytes by a text chunk before IEND (readers ignore it)."""
    pad = size - len(data) - 12 - 2  # chunk: length, type, "k\0" + text, CRC
    assert pad >= 0
    body = b"tEXt" + b"k\0" + b"x" * pad
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    out = data[:-12] + chunk + data[-12:]
    assert len(out) == size
    return out


@pytest.fixture
def ade(tmp_path, monkeypatch):
    from harness.mini import generate

    generate.ade20k(tmp_path / "data" / "ade" / "ADEChallengeData2016", train=3, val=3)
    monkeypatch.setenv("SDD_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    ds = load_registry().dataset("ade20k")
    return ds, root_of(ds)


def test_a_label_map_replaced_after_its_check_was_cached_is_checked_again(ade):
    """The check's verdict was cached by listing, size and modification time: a label map rewritten with a
    bad class id, of the same size and with its modification time set back, was passed on as checked."""
    ds, root = ade
    assert verify_segmentation(ds, root, "val")["cache"] == "miss"
    assert verify_segmentation(ds, root, "val")["cache"] == "hit"
    ann = sorted((root / "annotations" / "validation").glob("*.png"))[0]
    st = ann.stat()
    h, w = np.array(Image.open(ann)).shape
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w), 200, np.uint8), mode="L").save(buf, format="PNG")  # 200 -> class 199
    with open(ann, "r+b") as f:
        f.truncate(0)
        f.write(_png_padded_to(buf.getvalue(), st.st_size))
    os.utime(ann, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ann.stat().st_size == st.st_size and ann.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(DatasetError) as e:
        verify_segmentation(ds, root, "val")
    assert f"{ann}: label values [199] are outside the class range 0..149" in str(e.value)


def test_the_check_cache_is_keyed_by_the_dataset_spec(ade):
    """A spec that changes the verdict (fewer classes) is checked again, not taken from the cache."""
    ds, root = ade
    assert verify_segmentation(ds, root, "val")["cache"] == "miss"
    fewer = ds.model_copy(update={"num_classes": 2})
    with pytest.raises(DatasetError, match="outside the class range 0..1"):
        verify_segmentation(fewer, root, "val")


# --------------------------------------------------------------------------------------------- 6. grids


@pytest.fixture
def grid_bench(tmp_path):
    bench = worlds.tiny_registry(tmp_path, tmp_path / "imagenet", tmp_path / "ck")  # methods with epochs [1, 2]
    return bench


def _suite(bench: Path, epochs: str) -> Path:
    path = bench / "suites" / "grid.yaml"
    path.write_text(
        "name: grid\ntitle: grid\nmethods: [tinyvit, tinyres]\n"
        f"grid:\n  - protocol: metrics\n    datasets: [imagenet]\n    epochs: {epochs}\n"
    )
    return path


@pytest.mark.parametrize(
    "epochs, expect",
    [
        ("[1, 1, 2]", "epochs [1] listed twice: each would plan and run its cell again; write [1, 2]"),
        ("[]", "no epochs: an empty list would drop this protocol from the suite"),
        ("[1, true]", "epochs must be integers (item 1: True)"),
        ("[2, 1]", "epochs must be strictly increasing without duplicates; write [1, 2]"),
        ("'last '", "got 'last '; expected one of: all, last. Did you mean 'last'?"),
        ("[1, '2']", "epochs must be integers (item 1: '2')"),
        ("[1, 2.5]", "epochs must be integers (item 1: 2.5)"),
        ("[-1, 1]", "epochs must be >= 0"),
        ("2", "a single epoch must be a list: write [2]"),
        ("[1, 3]", "method 'tinyvit' has no checkpoint for epochs [3]"),
    ],
)
def test_a_suite_epoch_list_gets_the_checks_of_a_method_files(grid_bench, epochs, expect, capsys):
    """The issue's triggers ([1, 1, 2] ran a cell twice, [] dropped the protocol, [1, true] was [1, 1]) and
    others of the class: each a registry error naming the file, the line, the key and the fix; `sdd
    validate` fails with it."""
    path = _suite(grid_bench, epochs)
    with pytest.raises(RegistryError) as e:
        load_registry(grid_bench)
    assert f"{path}:7: grid.0.epochs" in str(e.value) and expect in str(e.value)
    assert main(["--registry", str(grid_bench), "validate"]) != 0
    assert expect in capsys.readouterr().err


@pytest.mark.parametrize("epochs, cells", [("[1, 2]", 4), ("[2]", 2), ("all", 4), ("last", 2)])
def test_a_valid_suite_epoch_list_plans_each_cell_once(grid_bench, epochs, cells):
    _suite(grid_bench, epochs)
    plan = build_plan(load_registry(grid_bench), "grid")
    assert len(plan) == cells == len({c.id for c in plan})

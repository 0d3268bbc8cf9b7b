"""NYU Depth v2 in BTS's layout (the split the depth toolboxes and DINOv3's depth evaluation read): the mini world's
generator writes it, `depth_pairs` reads it back (paths, focal, the depth in metres the generator wrote), every
problem of the list or the files is an error naming the file, the per-file verdict is cached by the files' stat, and
a changed depth map or list makes a record of the split stale. The released lists' first lines are transcribed below
verbatim (cleinc/bts @ 5e3406b, train_test_inputs/nyudepthv2_{train,test}_files_with_gt.txt)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from harness import datasets
from harness.datasets import (
    DatasetError,
    check_layout,
    data_change,
    depth_pairs,
    forget_fingerprints,
    read_depth_png,
    split_fingerprint,
)
from harness.mini.generate import NYU_FOCAL, NYU_TEST_TYPES, NYU_TRAIN_SCENES, Painter, depth_scene, nyu_depth
from harness.paths import cache_root
from harness.registry import ROOT, DatasetSpec, SplitSpec, load_spec

TRAIN, VAL, SIZE = 8, 4, (64, 48)

# the first lines of BTS's released lists, verbatim
BTS_TRAIN_HEAD = (
    "/kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png 518.8579\n"
    "/living_room_0019/rgb_00111.jpg /living_room_0019/sync_depth_00111.png 518.8579\n"
    "/playroom_0004/rgb_00113.jpg /playroom_0004/sync_depth_00113.png 518.8579\n"
)
BTS_TEST_HEAD = (
    "bathroom/rgb_00045.jpg bathroom/sync_depth_00045.png 518.8579\n"
    "bathroom/rgb_00046.jpg bathroom/sync_depth_00046.png 518.8579\n"
    "bathroom/rgb_00507.jpg bathroom/sync_depth_00507.png 518.8579"
)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    forget_fingerprints()
    yield
    forget_fingerprints()


def spec(root: Path, img_dirs=("sync", "official_splits/test"), images=(TRAIN, VAL)) -> DatasetSpec:
    """The dataset file's spec, rooted at `root`."""
    ds = load_spec(ROOT / "benchmarks/datasets/nyu_depth_v2.yaml", "datasets")
    splits = {
        "train": SplitSpec(img_dir=img_dirs[0], split_file="nyu_train.txt", images=images[0]),
        "val": SplitSpec(img_dir=img_dirs[1], split_file="nyu_test.txt", images=images[1]),
    }
    return ds.model_copy(update={"root": str(root), "splits": splits, "source": "nyu_depth_v2.yaml"})


@pytest.fixture
def nyu(tmp_path) -> DatasetSpec:
    nyu_depth(tmp_path / "nyu", train=TRAIN, val=VAL, size=SIZE, seed=0)
    return spec(tmp_path / "nyu")


def message(ds: DatasetSpec, split: str = "train") -> str:
    with pytest.raises(DatasetError) as e:
        depth_pairs(ds, split)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# The dataset file and the layout


def test_dataset_file():
    ds = load_spec(ROOT / "benchmarks/datasets/nyu_depth_v2.yaml", "datasets")
    assert (ds.name, ds.kind, ds.task) == ("nyu_depth_v2", "nyu_depth_v2", "depth_estimation")
    assert ds.root == "${SDD_DATA_ROOT:-data}/nyu_depth_v2"
    assert (ds.splits["train"].img_dir, ds.splits["train"].split_file, ds.splits["train"].images) == (
        "sync",
        "nyu_train.txt",
        24231,
    )
    assert (ds.splits["val"].img_dir, ds.splits["val"].split_file, ds.splits["val"].images) == (
        "official_splits/test",
        "nyu_test.txt",
        654,
    )
    # where it comes from, and the Eigen crop's box with the lines that give it
    for said in ("cleinc/bts", "facebookresearch/dinov3", "Monocular-Depth-Estimation-Toolbox", "sync.zip"):
        assert said in ds.notes
    assert "rows 45-470 and columns 41-600" in ds.notes and "eval_mask[45:471, 41:601]" in ds.notes


def test_generated_layout_is_bts(nyu):
    root = Path(nyu.root)
    assert check_layout(nyu) == root
    train = (root / "nyu_train.txt").read_text()
    test = (root / "nyu_test.txt").read_text()
    focal = f"{NYU_FOCAL * SIZE[0] / 640:.4f}"
    # as the released files: a leading "/" on the train paths, none on the test paths, no newline after the last
    assert all(line.startswith("/") and line.endswith(f".png {focal}") for line in train.splitlines())
    assert not any(line.startswith("/") for line in test.splitlines()) and not test.endswith("\n")
    assert len(train.splitlines()) == TRAIN and len(test.splitlines()) == VAL
    assert {p.name for p in (root / "sync").iterdir()} == set(NYU_TRAIN_SCENES[:TRAIN])
    assert {p.name for p in (root / "official_splits" / "test").iterdir()} == set(NYU_TEST_TYPES[:VAL])
    with Image.open(root / "sync" / NYU_TRAIN_SCENES[0] / "sync_depth_00000.png") as im:
        assert (im.format, im.mode, im.size) == ("PNG", "I;16", SIZE)


def test_pairs_read_back(nyu):
    root = Path(nyu.root)
    train, val = depth_pairs(nyu, "train"), depth_pairs(nyu, "val")
    assert len(train) == TRAIN and len(val) == VAL
    assert all(f == pytest.approx(NYU_FOCAL * SIZE[0] / 640, abs=1e-4) for _, _, f in train + val)
    assert all(r.parent == d.parent and r.parent.parent == root / "sync" for r, d, _ in train)
    assert all(r.parent.parent == root / "official_splits" / "test" for r, _, _ in val)
    # sorted by the rgb path as written (as DINOv3 and the toolbox order them), whatever the list's order
    assert [str(r.relative_to(root / "sync")) for r, _, _ in train] == sorted(
        line.split()[0].strip("/") for line in (root / "nyu_train.txt").read_text().splitlines()
    )
    for _, d, _ in train + val:
        metres = read_depth_png(d)
        assert metres.dtype == np.float32 and metres.shape == (SIZE[1], SIZE[0])
        # as BTS's eval reads it: cv2.imread(path, -1) / 1000
        np.testing.assert_array_equal(metres, cv2.imread(str(d), -1).astype(np.float32) / 1000.0)
        assert 0 < (metres == 0).mean() < 0.1  # holes: no depth
        assert 0.3 < metres[metres > 0].min() and metres.max() < 10  # NYU's evaluation range is 1e-3..10 m


def test_depth_in_metres_is_the_scene_written(nyu):
    """The generator's scenes, drawn again from the same seed: every pixel with depth reads back as the depth the
    scene had, to the millimetre; within a region the depth is one plane; the boxes stand before the wall."""
    root = Path(nyu.root)
    p, (w, h) = Painter(5, 0), SIZE
    scenes = [depth_scene(p, h, w) for _ in range(TRAIN)]
    yy, xx = np.mgrid[:h, :w]
    for i, (img, depth, label) in enumerate(scenes):
        folder = root / "sync" / NYU_TRAIN_SCENES[i % len(NYU_TRAIN_SCENES)]
        number = i // len(NYU_TRAIN_SCENES)
        metres = read_depth_png(folder / f"sync_depth_{number:05d}.png")
        valid = metres > 0
        assert np.abs(metres[valid] - depth[valid]).max() <= 0.0005 + 1e-6
        with Image.open(folder / f"rgb_{number:05d}.jpg") as im:
            assert np.abs(np.asarray(im).astype(int) - img).mean() < 6  # the jpg is the scene (within JPEG's loss)
        for c in np.unique(label):
            m = label == c
            a = np.stack([np.ones(m.sum()), xx[m], yy[m]], 1)
            assert np.abs(depth[m] - a @ np.linalg.lstsq(a, depth[m], rcond=None)[0]).max() < 1e-9
        assert (label >= 3).any() and depth[label >= 3].mean() < depth[label == 1].mean()  # boxes before the wall


def test_rgb_predicts_depth(tmp_path):
    """The RGB shows what the depth is: a quadratic regression on 8x8 patches' colour, contrast and stripe
    frequency, fitted on the train split, explains most of the val split's depth (R^2 measured 0.94)."""
    nyu_depth(tmp_path / "nyu", train=24, val=8, size=SIZE, seed=0)
    ds = spec(tmp_path / "nyu", images=(24, 8))

    def patches(split: str):
        x, y = [], []
        for r, d, _ in depth_pairs(ds, split):
            with Image.open(r) as im:
                img = np.asarray(im).astype(float)
            metres = read_depth_png(d)
            for i in range(0, SIZE[1], 8):
                for j in range(0, SIZE[0], 8):
                    q, z = img[i : i + 8, j : j + 8], metres[i : i + 8, j : j + 8]
                    grad = np.abs(np.diff(q, axis=0)).mean() + np.abs(np.diff(q, axis=1)).mean()
                    x.append([*q.mean((0, 1)), *q.std((0, 1)), grad])
                    y.append(z[z > 0].mean())
        return np.array(x), np.array(y)

    (xt, yt), (xv, yv) = patches("train"), patches("val")
    mu, sd = xt.mean(0), xt.std(0)

    def quad(x):
        x = (x - mu) / sd
        return np.concatenate([np.ones((len(x), 1)), x, x**2], 1)

    pred = quad(xv) @ np.linalg.lstsq(quad(xt), yt, rcond=None)[0]
    assert 1 - ((pred - yv) ** 2).sum() / ((yv - yv.mean()) ** 2).sum() > 0.8


def test_released_list_format(tmp_path):
    """BTS's own lines: the train paths' leading "/" is dropped (as DINOv3 and the toolbox drop it), the paths are
    under the split's img_dir, the focal read."""
    root = tmp_path / "nyu"
    for img_dir, text, name in (
        ("sync", BTS_TRAIN_HEAD, "nyu_train.txt"),
        ("official_splits/test", BTS_TEST_HEAD, "nyu_test.txt"),
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        for line in text.splitlines():
            rgb, dep, _ = line.split()
            (root / img_dir / rgb.strip("/")).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 6)).save(root / img_dir / rgb.strip("/"))
            Image.fromarray(np.full((6, 8), 2500, np.uint16)).save(root / img_dir / dep.strip("/"))
    ds = spec(root, images=(3, 3))
    train = depth_pairs(ds, "train")
    assert [(str(r.relative_to(root)), str(d.relative_to(root)), f) for r, d, f in train] == [
        ("sync/kitchen_0028b/rgb_00045.jpg", "sync/kitchen_0028b/sync_depth_00045.png", 518.8579),
        ("sync/living_room_0019/rgb_00111.jpg", "sync/living_room_0019/sync_depth_00111.png", 518.8579),
        ("sync/playroom_0004/rgb_00113.jpg", "sync/playroom_0004/sync_depth_00113.png", 518.8579),
    ]
    val = depth_pairs(ds, "val")
    assert [str(r.relative_to(root / "official_splits/test")) for r, _, _ in val] == [
        "bathroom/rgb_00045.jpg",
        "bathroom/rgb_00046.jpg",
        "bathroom/rgb_00507.jpg",
    ]
    assert float(read_depth_png(val[0][1])[0, 0]) == pytest.approx(2.5)


def test_single_folder_layout(nyu, tmp_path):
    """The toolbox's download (DINOv3's Option 2): every scene folder and both lists in one folder, img_dir '.'."""
    src, flat = Path(nyu.root), tmp_path / "flat"
    for part in (src / "sync", src / "official_splits" / "test"):
        shutil.copytree(part, flat, dirs_exist_ok=True)
    for name in ("nyu_train.txt", "nyu_test.txt"):
        shutil.copy(src / name, flat / name)
    ds = spec(flat, img_dirs=(".", "."))
    assert len(depth_pairs(ds, "train")) == TRAIN and len(depth_pairs(ds, "val")) == VAL
    assert all(r.parent.parent == flat for r, _, _ in depth_pairs(ds, "val"))


# ---------------------------------------------------------------------------------------------
# Every problem names its file and what to do


def test_list_file_missing(nyu):
    (Path(nyu.root) / "nyu_test.txt").unlink()
    msg = message(nyu, "val")
    assert f"list file {Path(nyu.root) / 'nyu_test.txt'} missing" in msg and "BTS's released list" in msg


def test_no_list_file_named(nyu):
    ds = nyu.model_copy(update={"splits": {"train": SplitSpec(img_dir="sync")}})
    assert "no split_file in nyu_depth_v2.yaml" in message(ds)


def test_root_missing(tmp_path):
    assert "does not exist" in message(spec(tmp_path / "nowhere"))


def test_other_kind_is_refused():
    ds = load_spec(ROOT / "benchmarks/datasets/ade20k.yaml", "datasets")
    assert "depth_pairs reads nyu_depth_v2" in message(ds)


@pytest.mark.parametrize(
    "bad",
    [
        "/kitchen_0001a/rgb_00000.jpg /kitchen_0001a/sync_depth_00000.png",  # no focal
        "/kitchen_0001a/rgb_00000.jpg /kitchen_0001a/sync_depth_00000.png f=518",  # not a number
        "/kitchen_0001a/rgb_00000.jpg /kitchen_0001a/sync_depth_00000.png -1",  # not positive
        "/kitchen_0001a/rgb_00000.jpg /kitchen_0001a/sync_depth_00000.jpg 518.8579",  # depth not a PNG
        "/kitchen_0001a/rgb_00000.jpg None 518.8579",  # KITTI's lists' "no depth"
        "/kitchen_0001a/rgb_00000.jpg /kitchen_0001a/sync_depth_00000.png 518.8579 extra",
    ],
)
def test_malformed_line(nyu, bad):
    listing = Path(nyu.root) / "nyu_train.txt"
    lines = listing.read_text().splitlines()
    lines[2] = bad
    listing.write_text("\n".join(lines) + "\n")
    msg = message(nyu)
    assert f"{listing}: 1 malformed line(s) (line 3: {bad!r})" in msg and "<rgb path> <depth path> <focal>" in msg


def test_empty_list(nyu):
    (Path(nyu.root) / "nyu_train.txt").write_text("\n\n")
    assert "lists no images" in message(nyu)


def test_rgb_listed_twice(nyu):
    listing = Path(nyu.root) / "nyu_train.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join([*lines, lines[0].lstrip("/")]) + "\n")  # the same file, without the "/"
    msg = message(nyu, "train")
    assert "1 rgb image(s) listed twice" in msg and f"(lines 1 and {TRAIN + 1})" in msg


def test_split_size(nyu):
    ds = spec(Path(nyu.root), images=(24231, VAL))
    msg = message(ds)
    assert f"lists {TRAIN} images, but the released split has 24231" in msg and "nyu_depth_v2.yaml" in msg


def test_listed_files_missing(nyu):
    pairs = depth_pairs(nyu, "train")
    gone = [p for r, d, _ in pairs[:3] for p in (r, d)]  # six files
    for p in gone:
        p.unlink()
    msg = message(nyu)
    assert f"6 of the {2 * TRAIN} files listed in {Path(nyu.root) / 'nyu_train.txt'} are missing" in msg
    assert all(str(p) in msg for p in sorted(gone)[:5]) and " ..." in msg and "img_dir" in msg


def _replace_depth(nyu: DatasetSpec, array, **kw) -> Path:
    depth = depth_pairs(nyu, "val")[1][1]
    Image.fromarray(array).save(depth, **kw)
    return depth


@pytest.mark.parametrize(
    "array, mode",
    [
        (np.full((48, 64), 200, np.uint8), "L"),  # 8-bit
        (np.full((48, 64, 3), 200, np.uint8), "RGB"),  # a colour-mapped visualisation
        (np.full((48, 64, 4), 200, np.uint8), "RGBA"),
    ],
)
def test_depth_not_16_bit_single_channel(nyu, array, mode):
    depth = _replace_depth(nyu, array, format="PNG")
    msg = message(nyu, "val")
    assert f"{depth}: PNG of mode {mode}" in msg and "16-bit single-channel" in msg and "problem(s)" in msg
    with pytest.raises(DatasetError, match=f"PNG of mode {mode}"):
        read_depth_png(depth)


def test_depth_not_a_png(nyu):
    depth = _replace_depth(nyu, np.full((48, 64), 200, np.uint8), format="JPEG")
    assert f"{depth}: a JPEG file" in message(nyu, "val")


def test_depth_of_another_size(nyu):
    depth = _replace_depth(nyu, np.full((24, 32), 2000, np.uint16))
    assert f"{depth}: depth map is 32x24 but its image rgb_" in message(nyu, "val")


def test_truncated_files(nyu):
    rgb, depth, _ = depth_pairs(nyu, "val")[2]
    for p in (rgb, depth):
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    msg = message(nyu, "val")
    assert "2 problem(s)" in msg and f"{rgb}: unreadable or truncated" in msg and f"{depth}: unreadable" in msg
    with pytest.raises(DatasetError, match="cannot be decoded"):
        read_depth_png(depth)


def test_verdict_cached_until_a_file_changes(nyu, monkeypatch):
    checked = []
    run_checks = datasets._run_checks
    monkeypatch.setattr(
        datasets, "_run_checks", lambda items, check: checked.append(len(items)) or run_checks(items, check)
    )
    depth_pairs(nyu, "train")
    depth_pairs(nyu, "train")
    assert checked == [TRAIN]  # the second call: the verdict of the same files by the same checks
    assert len(list((cache_root() / "datasets").glob("nyu_depth_v2_train_depth_*.json"))) == 1
    depth = depth_pairs(nyu, "train")[0][1]
    Image.fromarray(np.full((48, 64), 9, np.uint8)).save(depth)  # replaced by an 8-bit one: checked again
    assert f"{depth}: PNG of mode L" in message(nyu)
    assert checked == [TRAIN, TRAIN]


# ---------------------------------------------------------------------------------------------
# What a record read: the list and every image and depth map


def test_fingerprint_follows_depth_maps_and_list(nyu):
    recorded = {"train": split_fingerprint(nyu, "train"), "val": split_fingerprint(nyu, "val")}
    assert recorded["train"]["files"] == 2 * TRAIN + 1 and recorded["val"]["files"] == 2 * VAL + 1
    assert data_change(nyu, recorded) is None

    depth = depth_pairs(nyu, "val")[0][1]
    before = depth.read_bytes()
    mm = np.asarray(Image.open(depth)).copy()
    mm[mm > 0] += 10  # 1 cm farther
    Image.fromarray(mm).save(depth)
    forget_fingerprints()
    why = data_change(nyu, recorded)
    assert why is not None and "the data it read changed" in why and "split 'val'" in why
    depth.write_bytes(before)  # the same bytes again: only the modification time tells
    forget_fingerprints()
    assert "rewritten" in (data_change(nyu, recorded) or "")

    recorded = {"train": split_fingerprint(nyu, "train")}
    listing = Path(nyu.root) / "nyu_train.txt"
    listing.write_text("".join(f"{line}\n" for line in listing.read_text().splitlines()[:-1]))  # one pair fewer
    forget_fingerprints()
    why = data_change(nyu, recorded)
    assert why is not None and "the data it read changed" in why and "split 'train'" in why

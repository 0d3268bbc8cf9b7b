"""UDI's transfer-learning datasets (Flowers-102, Stanford Cars, iNaturalist 2018 / 2019) read from their released
layouts, written here in miniature (tiny JPEGs, real .mat files written by scipy.io.savemat with the released
struct and row shapes, json with the released keys): `classification_samples` gives the samples and labels that
UDI's readers give (ISL-CV/udi @ 133c2cb, eval/eval_transfer_learning/dataset.py, lines 24-115, transcribed
below as `udi_*` and run on the same files), but for Stanford Cars' class count (a bug of UDI's, fixed); every
problem is an error naming its file; and a changed annotation file changes the split's fingerprint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io as scio
from PIL import Image

from harness.datasets import (
    CARS_FIELDS,
    DatasetError,
    check_layout,
    classification_samples,
    data_change,
    forget_fingerprints,
    split_fingerprint,
)
from harness.registry import ROOT, DatasetSpec, SplitSpec, load_spec


def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (shade % 256, 40, 90)).save(path, "JPEG")


def _spec(kind: str, root: Path, img_dir: str, num_classes: int, images: tuple[int | None, int | None]) -> DatasetSpec:
    return DatasetSpec(
        name=f"mini_{kind}",
        title=kind,
        kind=kind,
        root=str(root),
        task="classification",
        num_classes=num_classes,
        splits={
            "train": SplitSpec(img_dir=img_dir, images=images[0]),
            "val": SplitSpec(img_dir=img_dir, images=images[1]),
        },
        source=f"mini_{kind}.yaml",
    )


# ---------------------------------------------------------------------------------------------
# The layouts, in miniature


def write_flowers(root: Path) -> DatasetSpec:
    """jpg/image_00001.jpg .. image_00024.jpg, imagelabels.mat ('labels' uint8 [1, 24], 1-based), setid.mat
    ('trnid', 'valid', 'tstid' uint16 [1, N], 1-based, in no sorted order) as the release stores them."""
    labels = [3, 1, 2, 4, 1, 3, 2, 4, 4, 2, 1, 3, 2, 3, 4, 1, 1, 2, 3, 4, 2, 1, 4, 3]
    for i in range(1, len(labels) + 1):
        _jpeg(root / "jpg" / f"image_{i:05d}.jpg", i)
    scio.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    trnid, valid = [5, 2, 3, 4], [10, 11, 8, 6]
    tstid = [i for i in range(24, 0, -1) if i not in trnid + valid]
    scio.savemat(
        root / "setid.mat",
        {k: np.array([v], dtype=np.uint16) for k, v in (("trnid", trnid), ("valid", valid), ("tstid", tstid))},
    )
    return _spec("flowers102", root, "jpg", 4, (8, 16))


def _cars_struct(rows: list[tuple]) -> np.ndarray:
    """cars_annos.mat's 'annotations' as the release stores it (scipy reads it back as this): a struct row [1, N]
    of fields CARS_FIELDS, each value a MATLAB array (the path a char row, the numbers [1, 1])."""
    a = np.zeros((1, len(rows)), dtype=[(f, "O") for f in CARS_FIELDS])
    for i, (rel, x1, y1, x2, y2, cls, test) in enumerate(rows):
        a[0, i] = (
            np.array([rel]),
            *(np.array([[v]], dtype=np.uint16) for v in (x1, y1, x2, y2)),
            np.array([[cls]], dtype=np.uint8),
            np.array([[test]], dtype=np.uint8),
        )
    return a


def write_cars(root: Path) -> DatasetSpec:
    """cars_annos.mat ('annotations' and 'class_names') and car_ims/000001.jpg ..: 3 classes, 14 images; every
    box's bbox_y2 differs, so UDI's class count (over bbox_y2) is not the number of classes."""
    rows = []
    for i in range(1, 15):
        cls, test = (i % 3) + 1, int(i > 8)
        rows.append((f"car_ims/{i:06d}.jpg", 3, 4, 60 + i, 100 + 7 * i, cls, test))
        _jpeg(root / f"car_ims/{i:06d}.jpg", i)
    names = np.empty((1, 3), dtype=object)
    names[0] = [np.array(["AM General Hummer SUV 2000"]), np.array(["Acura RL Sedan 2012"]), np.array(["Acura TL"])]
    scio.savemat(root / "cars_annos.mat", {"annotations": _cars_struct(rows), "class_names": names})
    return _spec("stanford_cars", root, "car_ims", 3, (8, 6))


def write_inat(root: Path, year: int) -> DatasetSpec:
    """train{year}.json, val{year}.json (keys info, images, categories, annotations, licenses, as released),
    categories.json (the list of categories by id) and train_val{year}/<super category>/<category id>/<hash>.jpg.
    Category ids are met in the train annotations out of order (UDI's class index is the order of first
    appearance), and category 2 has no image (it is not a class)."""
    supers = {0: "Plantae", 1: "Aves", 2: "Insecta", 3: "Aves", 4: "Plantae"}
    cats = [
        {"id": c, "name": f"species_{c}", "supercategory": s, "kingdom": "k", "phylum": "p", "class": "c"}
        | {"order": "o", "family": "f", "genus": f"genus_{c % 2}"}
        for c, s in supers.items()
    ]
    (root / "categories.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "categories.json").write_text(json.dumps(cats))
    split_cats = {"train": [3, 0, 3, 4, 1, 0, 4, 1, 3], "val": [1, 4, 0, 3]}
    next_id = 1
    for split, cids in split_cats.items():
        images, anns = [], []
        for cid in cids:
            name = f"train_val{year}/{supers[cid]}/{cid}/{next_id:032x}.jpg"
            _jpeg(root / name, next_id)
            images.append({"id": next_id, "width": 4, "height": 4, "file_name": name, "license": 1})
            anns.append({"id": next_id, "image_id": next_id, "category_id": cid})
            next_id += 1
        data = {"info": {"year": year}, "images": images, "categories": cats, "annotations": anns, "licenses": []}
        (root / f"{split}{year}.json").write_text(json.dumps(data))
    return _spec(f"inat{year}", root, f"train_val{year}", 4, (9, 4))


# ---------------------------------------------------------------------------------------------
# UDI's readers, transcribed (ISL-CV/udi @ 133c2cb, eval/eval_transfer_learning/dataset.py): the lines that decide
# the samples and the number of classes, without the torchvision class around them


def udi_flowers(root, train=True):
    data = np.array(sorted(os.listdir(os.path.join(root, "jpg"))))
    labels = scio.loadmat(os.path.join(root, "imagelabels.mat"))["labels"][0]
    ids = scio.loadmat(os.path.join(root, "setid.mat"))
    ids = np.concatenate((ids["trnid"], ids["valid"]), axis=1)[0] if train else ids["tstid"][0]
    labels -= 1
    ids -= 1
    targeter, indexer = {}, 0
    for catg in labels[ids]:
        if catg not in targeter.keys():
            targeter[catg] = indexer
            indexer += 1
    samples = [(os.path.join(root, "jpg", path), catg) for path, catg in zip(data[ids], labels[ids])]
    return samples, len(targeter)


def udi_cars(root, train=True):
    data = scio.loadmat(os.path.join(root, "cars_annos.mat"))["annotations"][0].tolist()
    data = [elem for elem in data if elem[-1].item() == int(not train)]
    targeter, indexer = {}, 0
    for elem in data:
        catg = elem[4].item()
        if catg not in targeter.keys():
            targeter[catg] = indexer
            indexer += 1
    samples = [(os.path.join(root, elem[0].item()), elem[5].item()) for elem in data]
    return samples, len(targeter)


def udi_inat(root, train=True, year=2018, category="name"):
    with open(os.path.join(root, f"{'train' if train else 'val'}{year}.json")) as f:
        data = json.load(f)
    with open(os.path.join(root, "categories.json")) as f:
        data_catg = json.load(f)
    with open(os.path.join(root, f"train{year}.json")) as f:
        data_for_targeter = json.load(f)
    targeter, indexer = {}, 0
    for elem in data_for_targeter["annotations"]:
        king = [data_catg[int(elem["category_id"])][category]]
        if king[0] not in targeter.keys():
            targeter[king[0]] = indexer
            indexer += 1
    samples = []
    for elem in data["images"]:
        cut = elem["file_name"].split("/")
        target_current = int(cut[2])
        path_current = os.path.join(root, cut[0], cut[1], cut[2], cut[3])
        samples.append((path_current, targeter[data_catg[target_current][category]]))
    return samples, len(targeter)


def _as_udi(samples):
    return [(str(p), int(y)) for p, y in samples]


# ---------------------------------------------------------------------------------------------
# The same samples and labels as UDI's readers


@pytest.mark.parametrize("split", ["train", "val"])
def test_flowers_as_udi_reads_it(tmp_path, split):
    ds = write_flowers(tmp_path)
    samples, n = classification_samples(ds, split)
    udi, _ = udi_flowers(str(tmp_path), train=split == "train")
    _, udi_classes = udi_flowers(str(tmp_path), train=True)  # the head: build_dataset(is_train=True)
    assert _as_udi(samples) == [(p, int(y)) for p, y in udi] and n == udi_classes == 4
    assert len(samples) == (8 if split == "train" else 16)
    assert samples[0][0].name == ("image_00005.jpg" if split == "train" else "image_00024.jpg")  # setid's order


@pytest.mark.parametrize("split", ["train", "val"])
def test_cars_as_udi_reads_it_but_its_class_count_and_label_base(tmp_path, split):
    ds = write_cars(tmp_path)
    samples, n = classification_samples(ds, split)
    udi, _ = udi_cars(str(tmp_path), train=split == "train")
    _, udi_head = udi_cars(str(tmp_path), train=True)
    assert [str(p) for p, _ in samples] == [p for p, _ in udi]  # the same images, in the same order
    assert [y for _, y in samples] == [c - 1 for _, c in udi]  # UDI's 1-based class, made 0-based
    # UDI's head counts the train boxes' distinct bbox_y2 values (8 here), not the classes (3)
    assert n == 3 and udi_head == 8
    assert len(samples) == (8 if split == "train" else 6)


@pytest.mark.parametrize("year", [2018, 2019])
@pytest.mark.parametrize("split", ["train", "val"])
def test_inat_as_udi_reads_it(tmp_path, year, split):
    ds = write_inat(tmp_path, year)
    samples, n = classification_samples(ds, split)
    udi, _ = udi_inat(str(tmp_path), train=split == "train", year=year)
    _, udi_classes = udi_inat(str(tmp_path), train=True, year=year)
    assert _as_udi(samples) == udi and n == udi_classes == 4
    if split == "train":  # first appearance over the train annotations: categories 3, 0, 4, 1 -> 0, 1, 2, 3
        assert [y for _, y in samples] == [0, 1, 0, 2, 3, 1, 2, 3, 0]


def test_layout_check_names_the_annotation_files(tmp_path):
    ds = write_inat(tmp_path, 2018)
    assert check_layout(ds) == tmp_path
    (tmp_path / "categories.json").unlink()
    with pytest.raises(DatasetError) as e:
        check_layout(ds)
    assert str(e.value).count("categories.json") == 1  # read by both splits, named once


# ---------------------------------------------------------------------------------------------
# Every error names its file and what to do

WRITERS = {
    "flowers102": (write_flowers, "imagelabels.mat"),
    "stanford_cars": (write_cars, "cars_annos.mat"),
    "inat2018": (lambda root: write_inat(root, 2018), "train2018.json"),
    "inat2019": (lambda root: write_inat(root, 2019), "train2019.json"),
}


def _error(ds: DatasetSpec, split: str = "train") -> str:
    with pytest.raises(DatasetError) as e:
        classification_samples(ds, split)
    return str(e.value)


@pytest.mark.parametrize("kind", WRITERS)
def test_missing_image_is_named(tmp_path, kind):
    ds = WRITERS[kind][0](tmp_path)
    samples, _ = classification_samples(ds, "val")
    samples[2][0].unlink()
    msg = _error(ds, "val")
    assert str(samples[2][0]) in msg and f"1 of the {len(samples)} images" in msg and "extract" in msg


@pytest.mark.parametrize("kind", WRITERS)
def test_wrong_class_count(tmp_path, kind):
    ds = WRITERS[kind][0](tmp_path)
    wrong = ds.model_copy(update={"num_classes": ds.num_classes + 1})
    msg = _error(wrong)
    assert f"gives {ds.num_classes} classes" in msg and f"num_classes: {ds.num_classes + 1}" in msg
    assert WRITERS[kind][1] in msg and ds.source in msg


@pytest.mark.parametrize("kind", WRITERS)
def test_wrong_split_size(tmp_path, kind):
    ds = WRITERS[kind][0](tmp_path)
    n_val = ds.splits["val"].images
    wrong = ds.model_copy(
        update={"splits": {**ds.splits, "val": SplitSpec(img_dir=ds.splits["val"].img_dir, images=n_val + 1)}}
    )
    msg = _error(wrong, "val")
    assert f"lists {n_val} images, but the released split has {n_val + 1}" in msg and ds.source in msg
    no_check = ds.model_copy(update={"splits": {k: SplitSpec(img_dir=s.img_dir) for k, s in ds.splits.items()}})
    assert len(classification_samples(no_check, "val")[0]) == n_val  # no `images`: nothing to check


ANNOTATIONS = [
    ("flowers102", "setid.mat"),
    ("flowers102", "imagelabels.mat"),
    ("stanford_cars", "cars_annos.mat"),
    ("inat2018", "categories.json"),
    ("inat2018", "train2018.json"),  # the val split's classes come from it
    ("inat2019", "val2019.json"),
]


@pytest.mark.parametrize("kind,name", ANNOTATIONS)
def test_missing_annotation_file(tmp_path, kind, name):
    ds = WRITERS[kind][0](tmp_path)
    (tmp_path / name).unlink()
    msg = _error(ds, "val")
    assert f"annotation file(s) missing: {tmp_path / name}" in msg and ds.source in msg


def test_unreadable_annotation_files(tmp_path):
    ds = write_cars(tmp_path)
    (tmp_path / "cars_annos.mat").write_bytes(b"not a mat file")
    assert "cars_annos.mat: cannot be read as a MATLAB file" in _error(ds)
    ds = write_inat(tmp_path / "inat", 2018)
    (tmp_path / "inat/val2018.json").write_text("{")
    assert "val2018.json: cannot be read as json" in _error(ds, "val")


def test_other_kinds_are_sent_to_their_reader(tmp_path):
    spec = load_spec(ROOT / "benchmarks/datasets/cifar100.yaml", "datasets")
    assert "read_cifar" in _error(spec)
    spec = load_spec(ROOT / "benchmarks/datasets/imagenet.yaml", "datasets")
    assert "ImageFolder" in _error(spec)
    ds = write_flowers(tmp_path)
    assert "reads 'train' (train=True) and 'val'" in _error(ds, "test")


def test_flowers_listing_that_udi_would_shift_is_refused(tmp_path):
    ds = write_flowers(tmp_path)
    _jpeg(tmp_path / "jpg" / "image_00000_copy.jpg", 0)  # sorts first: UDI's n-th file is no longer image n
    msg = _error(ds)
    assert "image_00000_copy.jpg" in msg and "another image's label" in msg and "restore jpg/" in msg


def test_flowers_ids_outside_the_labels(tmp_path):
    ds = write_flowers(tmp_path)
    ids = scio.loadmat(tmp_path / "setid.mat")
    scio.savemat(
        tmp_path / "setid.mat",
        {"trnid": np.array([[5, 2, 30]], np.uint16), "valid": ids["valid"], "tstid": ids["tstid"]},
    )
    assert "image ids [30] are outside 1..24" in _error(ds)


def test_flowers_labels_stored_as_doubles(tmp_path):
    ds = write_flowers(tmp_path)
    before = classification_samples(ds, "val")
    labels = scio.loadmat(tmp_path / "imagelabels.mat")["labels"].astype(np.float64)
    scio.savemat(tmp_path / "imagelabels.mat", {"labels": labels})
    assert classification_samples(ds, "val") == before  # MATLAB's default type, whole numbers: the same labels
    scio.savemat(tmp_path / "imagelabels.mat", {"labels": labels + 0.5})
    assert "'labels' holds float64 values that are not whole numbers" in _error(ds)
    scio.savemat(tmp_path / "imagelabels.mat", {"labels": labels.T})
    assert "'labels' is [24, 1]; the released file holds one row [1, N]" in _error(ds)


def test_cars_file_of_other_fields_is_refused(tmp_path):
    ds = write_cars(tmp_path)
    a = np.zeros((1, 1), dtype=[("fname", "O"), ("class", "O")])
    a[0, 0] = (np.array(["00001.jpg"]), np.array([[1]], np.uint8))
    scio.savemat(tmp_path / "cars_annos.mat", {"annotations": a})
    msg = _error(ds)
    assert "cars_annos.mat: 'annotations' must be the released struct row" in msg and "fname" in msg


def test_inat_val_category_without_train_images(tmp_path):
    ds = write_inat(tmp_path, 2018)
    val = json.loads((tmp_path / "val2018.json").read_text())
    name = "train_val2018/Insecta/2/" + "f" * 32 + ".jpg"  # category 2 has no train annotation
    _jpeg(tmp_path / name, 7)
    val["images"].append({"id": 99, "width": 4, "height": 4, "file_name": name, "license": 1})
    (tmp_path / "val2018.json").write_text(json.dumps(val))
    msg = _error(ds, "val")
    assert "1 image(s) of categories no annotation of train2018.json has" in msg and name in msg


def test_inat_file_name_of_another_shape(tmp_path):
    ds = write_inat(tmp_path, 2019)
    val = json.loads((tmp_path / "val2019.json").read_text())
    val["images"][0]["file_name"] = "train_val2019/1/x.jpg"
    (tmp_path / "val2019.json").write_text(json.dumps(val))
    assert "train_val2019/1/x.jpg" in _error(ds, "val")


# ---------------------------------------------------------------------------------------------
# A changed annotation file makes the records of the split stale


@pytest.mark.parametrize("kind", WRITERS)
def test_fingerprint_follows_the_annotation_files(tmp_path, kind):
    ds = WRITERS[kind][0](tmp_path)
    forget_fingerprints()
    recorded = {"val": split_fingerprint(ds, "val")}
    assert data_change(ds, recorded) is None
    changed = tmp_path / WRITERS[kind][1]  # for iNat the train json, which the val split's classes come from
    if changed.suffix == ".json":
        data = json.loads(changed.read_text())
        data["annotations"] = data["annotations"][::-1]  # another order: other class indices
        changed.write_text(json.dumps(data, indent=1))
    else:  # the same variables and one more
        mat = {k: v for k, v in scio.loadmat(changed).items() if not k.startswith("__")}
        scio.savemat(changed, {**mat, "extra": np.zeros((1, 3))})
    forget_fingerprints()
    why = data_change(ds, recorded)
    assert why is not None and "the data it read changed" in why and "split 'val'" in why
    forget_fingerprints()


# ---------------------------------------------------------------------------------------------
# The dataset files

RELEASED = {
    "flowers102": (102, 2040, 6149),
    "stanford_cars": (196, 8144, 8041),
    "inat2018": (8142, 437513, 24426),
    "inat2019": (1010, 265213, 3030),
}


@pytest.mark.parametrize("name", RELEASED)
def test_dataset_files(name):
    ds = load_spec(ROOT / f"benchmarks/datasets/{name}.yaml", "datasets")
    assert (ds.name, ds.kind, ds.task) == (name, name, "classification")
    assert (ds.num_classes, ds.splits["train"].images, ds.splits["val"].images) == RELEASED[name]
    assert ds.root.startswith("${SDD_DATA_ROOT:-data}/") and "http" in ds.notes
    # the split size is a check, not part of a cell's config: dumping the spec leaves it out
    assert all("images" not in s for s in ds.model_dump(mode="json")["splits"].values())


def test_cars_deviation_is_written_down():
    ds = load_spec(ROOT / "benchmarks/datasets/stanford_cars.yaml", "datasets")
    assert "bbox_y2" in ds.notes and "1-based" in ds.notes and "label smoothing" in ds.notes

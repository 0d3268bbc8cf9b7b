"""Dataset specs -> paths on disk, checked against the layout each loader expects; and the dataset
I/O the jobs and the mini world's generator share (indexed-PNG label maps, ImageNet normalisation).

A missing root or a wrong layout gives one message that names every expected path that is absent.
"""
from __future__ import annotations

from pathlib import Path

from harness.kinds import DATASET_KINDS
from harness.registry import DatasetSpec, resolve_path

# ImageNet normalisation, on the [0, 1] scale; `imagenet_norm(255)` gives mmseg/detectron2's 0-255 scale.
# A deliberate difference (DINO's DAVIS evaluation uses std 0.228 for red) is named where it is used.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_norm(scale: float = 1.0) -> tuple[list[float], list[float]]:
    """(mean, std) as lists, multiplied by `scale`."""
    return [round(m * scale, 6) for m in IMAGENET_MEAN], [round(s * scale, 6) for s in IMAGENET_STD]


# Label maps as indexed (palette) PNGs, as DAVIS and VOC store them; the palette is made in code.
PALETTE = [0, 0, 0] + [v for i in range(1, 256) for v in ((37 * i) % 256, (91 * i) % 256, (163 * i) % 256)]


def write_indexed_png(label, path: Path) -> None:
    import numpy as np
    from PIL import Image

    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"{path}: label values {label.min()}..{label.max()} do not fit an indexed PNG (0..255)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(PALETTE)
    im.save(path)


def read_label_png(path: Path):
    """A label map as a 2-D integer array: the palette indices of an indexed PNG, or the values of a
    single-channel one. A colour (RGB) PNG is refused: its pixels are colours, not label ids."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise DatasetError(f"{path}: label map in mode {im.mode}; expected an indexed (P) or single-channel "
                               f"(L) PNG of label ids. Colour labels must be converted to ids first.")
        return np.array(im)


class DatasetError(Exception):
    """A dataset is missing or laid out differently from what its loader reads."""


def root_of(ds: DatasetSpec) -> Path:
    return resolve_path(ds.root, source=ds.source, key="root")


def _has(path: Path, suffix: str, recursive: bool) -> bool:
    pattern = f"**/*{suffix}" if recursive else f"*{suffix}"
    return next(iter(path.glob(pattern)), None) is not None


def check_layout(ds: DatasetSpec, splits=("train", "val")) -> Path:
    """Return the dataset root if every split is where the loader will look; else raise DatasetError."""
    root = root_of(ds)
    if not root.is_dir():
        raise DatasetError(f"dataset '{ds.name}': root {root} does not exist (from {ds.source}: root = {ds.root}; "
                           f"set SDD_DATA_ROOT or edit the file)")
    missing = []
    nested = DATASET_KINDS[ds.kind].nested
    for split in splits:
        if split not in ds.splits:
            missing.append(f"split '{split}' (not declared in {ds.source})")
            continue
        s = ds.splits[split]
        img = root / s.img_dir
        if not img.is_dir():
            missing.append(f"{img}/ (images of split '{split}')")
        elif not _has(img, ds.img_suffix, nested):
            missing.append(f"{img}/{'**/' if nested else ''}*{ds.img_suffix} (no image files)")
        if s.ann_dir:
            ann = root / s.ann_dir
            if not ann.is_dir():
                missing.append(f"{ann}/ (annotations of split '{split}')")
            elif not _has(ann, ds.seg_map_suffix, nested):
                missing.append(f"{ann}/{'**/' if nested else ''}*{ds.seg_map_suffix} (no annotation files)")
        for f in (s.split_file, s.ann_file):
            if f and not (root / f).is_file():
                missing.append(f"{root / f}")
    if missing:
        raise DatasetError(f"dataset '{ds.name}' ({ds.kind}) under {root} is not in the expected layout; missing:\n  "
                           + "\n  ".join(missing))
    return root


def check_labels(ds: DatasetSpec, root: Path, split: str = "train", max_files: int = 200) -> None:
    """Label values of (up to `max_files`) annotation maps must be class ids or the ignore index."""
    import numpy as np
    from PIL import Image

    s = ds.splits[split]
    if not s.ann_dir or not ds.num_classes:
        return
    nested = DATASET_KINDS[ds.kind].nested
    files = sorted((root / s.ann_dir).glob(f"{'**/' if nested else ''}*{ds.seg_map_suffix}"))[:max_files]
    for f in files:
        lab = np.array(Image.open(f)).astype(np.int64)
        if ds.reduce_zero_label:  # mmseg: 0 -> ignore, k -> k - 1
            lab = np.where(lab == 0, ds.ignore_index, lab - 1)
        bad = np.unique(lab[(lab != ds.ignore_index) & ((lab < 0) | (lab >= ds.num_classes))])
        if len(bad):
            raise DatasetError(f"dataset '{ds.name}': label values {bad[:10].tolist()} in {f} are outside the class "
                               f"range 0..{ds.num_classes - 1} (ignore index {ds.ignore_index}"
                               f"{', after reduce_zero_label' if ds.reduce_zero_label else ''})")

"""Dataset specs -> paths on disk, checked against the layout each loader expects; and the dataset
I/O the jobs and the mini world's generator share (indexed-PNG label maps, ImageNet normalisation).

A missing root or a wrong layout gives one message that names every expected path that is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError
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
            raise DatasetError(
                f"{path}: label map in mode {im.mode}; expected an indexed (P) or single-channel "
                f"(L) PNG of label ids. Colour labels must be converted to ids first."
            )
        return np.array(im)


class DatasetError(HarnessError):
    """A dataset is missing or laid out differently from what its loader reads."""


def root_of(ds: DatasetSpec) -> Path:
    return resolve_path(ds.root, source=ds.source, key="root")


def _variables_text(value: str) -> str:
    """What the variables of a path are here: their values, or that a default was used."""
    import os

    from harness.registry import env_vars

    names = list(dict.fromkeys(env_vars(value)))
    if not names:
        return "no variable in it"
    return ", ".join(
        f"{n}={os.environ[n]}" if n in os.environ else f"{n} not set (its default was used)" for n in names
    )


def _has(path: Path, suffix: str, recursive: bool) -> bool:
    pattern = f"**/*{suffix}" if recursive else f"*{suffix}"
    return next(iter(path.glob(pattern)), None) is not None


def check_layout(ds: DatasetSpec, splits=("train", "val")) -> Path:
    """Return the dataset root if every split is where the loader will look; else raise DatasetError."""
    root = root_of(ds)
    if not root.is_dir():
        raise DatasetError(
            f"dataset '{ds.name}': root {root} does not exist (from {ds.source}: root = {ds.root}; "
            f"{_variables_text(ds.root)}; set them or edit the file)"
        )
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
        elif s.files:
            missing += [f"{img / f} (split '{split}')" for f in s.files if not (img / f).is_file()]
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
    reads = dict.fromkeys(f for split in splits if split in ds.splits for f in udi_annotation_files(ds, split))
    missing += [f"{root / f} (an annotation file UDI's reader reads)" for f in reads if not (root / f).is_file()]
    if missing:
        raise DatasetError(
            f"dataset '{ds.name}' ({ds.kind}) under {root} is not in the expected layout; missing:\n  "
            + "\n  ".join(missing)
        )
    return root


# ---------------------------------------------------------------------------------------------
# Every file a job reads is checked before it trains: lists not empty, images readable and whole,
# label maps single-channel, of their image's size, with values that are class ids or the ignore
# index. Each problem names its file. The verdict on a split is cached against the dataset's spec, the code
# of the checks and what `stat` says of every file listed (`stat_stamp`), so the paper's 4,680 probe cells
# read each dataset's label maps once, and a file replaced after a check is checked again.

_PROBLEMS_SHOWN = 10


def _image_size(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) of a readable, complete image; (None, why) otherwise. A file that does
    not end with its format's end marker (a truncated download) is decoded in full to be sure."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size, fmt = im.size, im.format
            why = _mode_problem(im)
            if why:
                return None, f"{path}: {why}"
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 4096))
                tail = f.read()
            ended = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt)
            if ended is not None and ended not in tail:
                im.load()  # raises on a truncated file; a whole file with trailing bytes passes
    except FileNotFoundError:
        return None, f"{path}: missing"
    except (OSError, SyntaxError, ValueError) as e:
        return None, f"{path}: unreadable or truncated image ({e})"
    return size, None


# Image modes a job can meet and how each becomes 8-bit RGB. 16-bit greyscale is scaled down by 256 (as
# OpenCV does when mmseg's pipeline reads it); PIL's convert("RGB") would clip it to white. Alpha is
# dropped (the colour channels kept), a palette is looked up, CMYK and YCbCr are converted by PIL.
DECODABLE_MODES = {
    "RGB",
    "L",
    "P",
    "1",
    "RGBA",
    "RGBa",
    "RGBX",
    "LA",
    "La",
    "PA",
    "CMYK",
    "YCbCr",
    "I;16",
    "I;16L",
    "I;16B",
    "I;16N",
    "I",
}


def _mode_problem(im) -> str | None:
    if im.mode not in DECODABLE_MODES:
        return f"image mode {im.mode} cannot be read as 8-bit RGB"
    return None


def open_rgb(path: Path):
    """An image as 8-bit RGB (PIL), from any mode in DECODABLE_MODES (16-bit scaled, not clipped); a file
    that cannot be decoded, or a mode that cannot be made RGB, raises DatasetError naming it."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            why = _mode_problem(im)
            if why:
                raise DatasetError(f"image {path}: {why}; convert it to RGB")
            if im.mode.startswith("I"):  # 16-bit (or 32-bit integer holding 16-bit values) greyscale
                a = np.asarray(im, dtype=np.int64)
                if a.size and (a.min() < 0 or a.max() > 65535):
                    raise DatasetError(f"image {path}: integer values {a.min()}..{a.max()} are not 16-bit greyscale")
                return Image.fromarray((a >> 8).astype(np.uint8), mode="L").convert("RGB")
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"image {path} cannot be decoded ({e}); replace or remove the file") from None


def _label_problems(ds: DatasetSpec, img: Path, ann: Path) -> list[str]:
    import numpy as np

    size, why = _image_size(img)
    out = [why] if why else []
    try:
        lab = read_label_png(ann)
    except FileNotFoundError:
        return out + [f"{ann}: label map missing (for image {img.name})"]
    except DatasetError as e:
        return out + [str(e)]
    except (OSError, SyntaxError, ValueError) as e:
        return out + [f"{ann}: unreadable label map ({e})"]
    if size is not None and (lab.shape[1], lab.shape[0]) != size:
        out.append(f"{ann}: label map is {lab.shape[1]}x{lab.shape[0]} but its image {img.name} is {size[0]}x{size[1]}")
    if ds.num_classes:
        lab = lab.astype(np.int64)
        if ds.reduce_zero_label:  # mmseg's LoadAnnotations: 0 -> 255 (ignored), k -> k - 1, and 255 stays 255
            lab = np.where((lab == 0) | (lab == 255), ds.ignore_index, lab - 1)
        bad = np.unique(lab[(lab != ds.ignore_index) & ((lab < 0) | (lab >= ds.num_classes))])
        if len(bad):
            out.append(
                f"{ann}: label values {bad[:10].tolist()} are outside the class range 0..{ds.num_classes - 1} "
                f"(ignore index {ds.ignore_index}{', after reduce_zero_label' if ds.reduce_zero_label else ''})"
            )
    return out


def segmentation_pairs(ds: DatasetSpec, root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label map) pairs of a split, listed as mmseg lists them (the split file's names, or every
    image under the image folder, recursively)."""
    s = ds.splits[split]
    img_dir, ann_dir = root / s.img_dir, root / s.ann_dir
    if s.split_file:
        names = [line.strip() for line in (root / s.split_file).read_text().splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"dataset '{ds.name}': the split file {root / s.split_file} lists no images")
        _no_duplicates(names, root / s.split_file, "image")
        return [(img_dir / f"{n}{ds.img_suffix}", ann_dir / f"{n}{ds.seg_map_suffix}") for n in names]
    imgs = sorted(img_dir.rglob(f"*{ds.img_suffix}"))
    if not imgs:
        raise DatasetError(f"dataset '{ds.name}': no images {img_dir}/**/*{ds.img_suffix} in split '{split}'")
    return [(p, ann_dir / (str(p.relative_to(img_dir))[: -len(ds.img_suffix)] + ds.seg_map_suffix)) for p in imgs]


def _no_duplicates(names: list[str], listing: Path, what: str) -> None:
    """A split list naming an entry twice would evaluate (or train on) it twice: refused, naming the lines."""
    seen: dict[str, int] = {}
    twice = []
    for i, n in enumerate(names, 1):
        if n in seen:
            twice.append(f"'{n}' (lines {seen[n]} and {i})")
        seen.setdefault(n, i)
    if twice:
        raise DatasetError(
            f"{listing}: {len(twice)} {what}(s) listed twice: {', '.join(twice[:5])}"
            + (" ..." if len(twice) > 5 else "")
            + "; each must appear once"
        )


def stat_stamp(files, root: Path | None = None) -> str:
    """SHA-256 (16 hex digits) of what `stat` says of each file -- its path (relative to `root` when given,
    with `root` itself resolved), size, modification time, change time and inode -- in the given order.

    What a cache entry computed from files is keyed by: a file replaced by another (even of the same size,
    under the same name, with its modification time set back) changes it, because the kernel sets the change
    time to the present on every write, rename and `touch`, and nothing sets it back. A copy elsewhere, a
    `chmod` or a `touch` change it too: those cost a recomputation, never a wrong number."""
    import hashlib

    h = hashlib.sha256()
    if root is not None:
        h.update(f"root\t{os.path.realpath(root)}\n".encode())
    for f in files:
        name = Path(f).relative_to(root).as_posix() if root is not None else os.path.abspath(f)
        try:
            st = os.stat(f)
            h.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}\t{st.st_ino}\n".encode())
        except OSError:
            h.update(f"{name}\tmissing\n".encode())
    return h.hexdigest()[:16]


def source_digest(*objects) -> str:
    """SHA-256 (16 hex digits) of the source code of modules, classes or functions: the version of the code
    a cache entry was computed with (a change of it, even a comment, costs a recomputation)."""
    import hashlib
    import inspect

    h = hashlib.sha256()
    for obj in objects:
        try:
            h.update(inspect.getsource(obj).encode())
        except (OSError, TypeError):  # no source here (a frozen install): the object's name and repr
            h.update(f"{getattr(obj, '__qualname__', '')}{obj!r}".encode())
    return h.hexdigest()[:16]


_CHECK_CODE: list[str] = []


def _check_code() -> str:
    """The version of the checks whose verdicts `verify_segmentation` caches (computed once per process)."""
    if not _CHECK_CODE:
        code = source_digest(
            segmentation_pairs, _no_duplicates, _label_problems, _image_size, _mode_problem, read_label_png
        )
        _CHECK_CODE.append(f"{code}:{','.join(sorted(DECODABLE_MODES))}")
    return _CHECK_CODE[0]


def _listing_key(ds: DatasetSpec, split: str, files: list[Path]) -> str:
    """What a split's check verdict depends on: the dataset's spec (classes, ignore index, suffixes, its
    root), the split, the code of the checks, and the stat of every file listed (`stat_stamp`)."""
    import hashlib

    h = hashlib.sha256(ds.model_dump_json().encode() + split.encode() + _check_code().encode())
    h.update(stat_stamp(files).encode())
    return h.hexdigest()[:16]


def _run_checks(items, check, workers: int | None = None) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers or min(16, 2 * (os.cpu_count() or 1))) as pool:  # PIL frees the GIL
        return [p for probs in pool.map(lambda it: check(*it), items, chunksize=64) for p in probs]


def _raise_problems(ds: DatasetSpec, split: str, problems: list[str], checked: int) -> None:
    if problems:
        raise DatasetError(
            f"dataset '{ds.name}' split '{split}': {len(problems)} problem(s) in {checked} files; "
            f"fix or remove them:\n  "
            + "\n  ".join(problems[:_PROBLEMS_SHOWN])
            + (f"\n  ... {len(problems) - _PROBLEMS_SHOWN} more" if len(problems) > _PROBLEMS_SHOWN else "")
        )


def verify_segmentation(ds: DatasetSpec, root: Path, split: str) -> dict:
    """Check every (image, label map) pair a segmentation job will read; raise DatasetError naming each
    bad file. Returns {"pairs", "cache"} ("hit" when these very files, by `stat_stamp`, were checked before
    by the same code)."""
    from harness.atomic import write_json
    from harness.records import cache_root

    pairs = segmentation_pairs(ds, root, split)
    key = _listing_key(ds, split, [f for pair in pairs for f in pair])
    stamp = cache_root() / "datasets" / f"{ds.name}_{split}_{key}.json"
    if stamp.is_file():
        return {"pairs": len(pairs), "cache": "hit"}
    _raise_problems(ds, split, _run_checks(pairs, lambda img, ann: _label_problems(ds, img, ann)), 2 * len(pairs))
    write_json(stamp, {"dataset": ds.name, "split": split, "pairs": len(pairs), "ok": True})
    return {"pairs": len(pairs), "cache": "miss"}


def verify_images(ds: DatasetSpec, split: str, images: list[Path]) -> None:
    """Every listed image readable and complete (e.g. the metrics job's fixed image list)."""
    if not images:
        raise DatasetError(f"dataset '{ds.name}' split '{split}': no images")
    _raise_problems(
        ds, split, _run_checks([(p,) for p in images], lambda p: [w for w in [_image_size(p)[1]] if w]), len(images)
    )


def davis_sequences(ds: DatasetSpec, root: Path, split: str) -> dict[str, list[tuple[Path, Path]]]:
    """Sequence -> its (frame, annotation) pairs, paired by file name. Every frame of a DAVIS-2017
    train/val sequence is annotated: a missing annotation (the first frame's above all), an annotation
    without its frame, an empty sequence or split list is an error naming the files."""
    s = ds.splits[split]
    seqs = [line.strip() for line in (root / s.split_file).read_text().splitlines() if line.strip()]
    if not seqs:
        raise DatasetError(f"dataset '{ds.name}': the split file {root / s.split_file} lists no sequences")
    _no_duplicates(seqs, root / s.split_file, "sequence")
    out, problems = {}, []
    for seq in seqs:
        frames = {p.stem: p for p in (root / s.img_dir / seq).glob(f"*{ds.img_suffix}")}
        anns = {p.stem: p for p in (root / s.ann_dir / seq).glob(f"*{ds.seg_map_suffix}")}
        if not frames:
            problems.append(f"{root / s.img_dir / seq}/: no frames *{ds.img_suffix} for sequence '{seq}'")
            continue
        order = sorted(frames)
        if all(n.isdigit() for n in order):  # numbered frames: a missing one (and its annotation) is a gap
            have = {int(n) for n in order}
            gaps = sorted(set(range(min(have), max(have) + 1)) - have)
            if gaps:
                problems.append(
                    f"{root / s.img_dir / seq}/: frame(s) {', '.join(str(g) for g in gaps[:5])}"
                    + (" ..." if len(gaps) > 5 else "")
                    + f" missing between {order[0]} and {order[-1]}: "
                    "propagation would jump the gap"
                )
        if order[0] not in anns:
            problems.append(
                f"{root / s.ann_dir / seq / (order[0] + ds.seg_map_suffix)}: the first frame's annotation "
                f"is missing: propagation starts from it"
            )
        problems += [
            f"{root / s.ann_dir / seq / (n + ds.seg_map_suffix)}: annotation missing for frame {frames[n].name}"
            for n in order[1:]
            if n not in anns
        ]
        problems += [
            f"{anns[n]}: annotation without a frame {n}{ds.img_suffix}" for n in sorted(set(anns) - set(frames))
        ]
        out[seq] = [(frames[n], anns[n]) for n in order if n in anns]
    _raise_problems(ds, split, problems, sum(len(v) for v in out.values()))
    pairs = [pair for v in out.values() for pair in v]
    _raise_problems(ds, split, _run_checks(pairs, lambda img, ann: _label_problems(ds, img, ann)), 2 * len(pairs))
    return out


def verify_coco(ds: DatasetSpec, root: Path, split: str) -> None:
    """The instances file parses and lists images, and every image it names is on disk and readable."""
    import json

    s = ds.splits[split]
    ann_file = root / s.ann_file
    try:
        data = json.loads(ann_file.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"dataset '{ds.name}': {ann_file} cannot be read as COCO json ({e})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not images:
        raise DatasetError(f"dataset '{ds.name}': {ann_file} lists no images")

    def check(im: dict) -> list[str]:
        path = root / s.img_dir / im["file_name"]
        size, why = _image_size(path)
        if why:
            return [why]
        if size != (im.get("width"), im.get("height")):
            return [
                f"{path}: the image is {size[0]}x{size[1]} but {ann_file.name} says "
                f"{im.get('width')}x{im.get('height')}"
            ]
        return []

    _raise_problems(ds, split, _run_checks([(im,) for im in images], check), len(images))


# ---------------------------------------------------------------------------------------------
# NYU Depth v2 as the depth toolboxes read it: BTS's split of it (cleinc/bts @ 5e3406b,
# train_test_inputs/nyudepthv2_{train,test}_files_with_gt.txt), which DINOv3 (facebookresearch/dinov3 @ 6876159,
# DATASETS.md and dinov3/data/datasets/nyu.py) and the Monocular-Depth-Estimation-Toolbox (zhyever/Monocular-Depth-
# Estimation-Toolbox @ d8aff50, splits/nyu_{train,test}.txt: the same lines, and depth/datasets/nyu.py) read as
# nyu_train.txt and nyu_test.txt. A line is "<rgb> <depth> <focal>", the paths relative to the split's folder:
#   train (24,231 lines, 284 scene folders of BTS's sync.zip, every path with a leading "/"):
#     /kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png 518.8579
#   test (654 lines, the official test images of the labelled set in 16 scene-type folders, written by BTS's
#   utils/extract_official_train_test_set_from_mat.py under official_splits/test/; the number is the image's 0-based
#   index in nyu_depth_v2_labeled.mat, i.e. splits.mat's testNdxs - 1):
#     bathroom/rgb_00045.jpg bathroom/sync_depth_00045.png 518.8579
# Every focal of both files is 518.8579. BTS reads the lines with split() and joins "./" + path to its data_path
# (pytorch/bts_dataloader.py); DINOv3 strips the "/" and both it and the toolbox sort the lines. A depth map is a
# 16-bit greyscale PNG of millimetres, 0 where there is no depth (the extraction script writes rawDepths * 1000 as
# uint16 with cv2.imwrite); BTS divides by 1000 (bts_dataloader.py, utils/eval_with_pngs.py), the toolbox by its
# depth_scale=1000 (configs/_base_/datasets/nyu.py), DINOv3 by normalization_constant=1000.0 (eval/depth/config.py).

DEPTH_KINDS = ("nyu_depth_v2",)
DEPTH_SCALE = 1000.0  # PNG value per metre (millimetres)
# What PIL opens a 16-bit greyscale PNG (colour type 0, bit depth 16) as: "I;16" (the locked Pillow 13), "I" (older
# Pillow, whose PNG reader widened it to 32 bits). Within a PNG nothing else is one 16-bit channel: Pillow opens
# 16-bit colour as 8-bit "RGB", 16-bit grey with alpha as "RGBA" (PngImagePlugin's _MODES).
DEPTH_PNG_MODES = ("I;16", "I")
_DEPTH_LINE = (
    "<rgb path> <depth path> <focal>, e.g. /kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png 518.8579"
)


def read_depth_png(path: Path):
    """A depth map of NYU's kind as a float32 array [H, W] of metres: the 16-bit PNG's millimetres / 1000; 0 stays 0
    (no depth: leave it out of losses and metrics). Any other PNG (8-bit, colour) raises DatasetError naming it."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            why = _depth_mode_problem(im)
            if why:
                raise DatasetError(f"depth map {path}: {why}")
            mm = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"depth map {path} cannot be decoded ({e}); replace it with the released file") from None
    return (mm.astype(np.float32) / np.float32(DEPTH_SCALE)).astype(np.float32)


def _depth_mode_problem(im) -> str | None:
    if im.format == "PNG" and im.mode in DEPTH_PNG_MODES:
        return None
    if im.format != "PNG":
        return f"a {im.format} file; NYU's depth maps are 16-bit greyscale PNGs of millimetres"
    hint = {
        "L": "8 bits hold at most 255 mm: a visualisation or a converted copy",
        "P": "a palette image: a colour-mapped visualisation",
        "RGB": "colour: a colour-mapped visualisation, or a 16-bit colour PNG",
        "RGBA": "colour with alpha",
        "LA": "grey with alpha",
    }.get(im.mode, "not one 16-bit channel")
    return (
        f"PNG of mode {im.mode} ({hint}); NYU's depth maps are 16-bit single-channel PNGs of millimetres (PIL mode "
        f"{' or '.join(DEPTH_PNG_MODES)}). Put the released sync_depth_*.png there"
    )


def _read_depth_list(listing: Path, folder: Path) -> list[tuple[Path, Path, float]]:
    """The (rgb, depth, focal) of every line of a BTS list file, in the order of the rgb paths as written (DINOv3
    sorts the lines, the toolbox the joined image paths: the same order); blank lines are skipped."""
    import math

    rows, bad = [], []
    for i, line in enumerate(listing.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            focal = float(fields[2]) if len(fields) == 3 else math.nan
        except ValueError:
            focal = math.nan
        well_formed = len(fields) == 3 and fields[1].endswith(".png") and fields[0] != fields[1]
        if not (well_formed and math.isfinite(focal) and focal > 0):
            bad.append(f"line {i}: {line.strip()[:120]!r}")
            continue
        rows.append((fields[0].strip("/"), fields[1].strip("/"), focal))
    if bad:
        raise DatasetError(
            f"{listing}: {len(bad)} malformed line(s) ({'; '.join(bad[:_FIRST])}"
            f"{' ...' if len(bad) > _FIRST else ''}); each line is {_DEPTH_LINE} (a .png depth map, a positive "
            "focal). Put BTS's released list file there"
        )
    if not rows:
        raise DatasetError(f"{listing}: lists no images; put BTS's released list file there")
    _no_duplicates([r for r, _, _ in rows], listing, "rgb image")
    return [(folder / r, folder / d, f) for r, d, f in sorted(rows)]


def _depth_problems(rgb: Path, depth: Path) -> list[str]:
    """The rgb image readable and whole, its depth map a whole 16-bit single-channel PNG of the same size (its
    header read; the pixels decoded only when the file does not end with PNG's end marker)."""
    from PIL import Image

    size, why = _image_size(rgb)
    out = [why] if why else []
    dsize, dwhy = _image_size(depth)
    if dwhy:
        return out + [dwhy]
    try:
        with Image.open(depth) as im:
            mode_why = _depth_mode_problem(im)
    except (OSError, SyntaxError, ValueError) as e:
        return out + [f"{depth}: unreadable depth map ({e})"]
    if mode_why:
        return out + [f"{depth}: {mode_why}"]
    if size is not None and dsize is not None and dsize != size:
        out.append(f"{depth}: depth map is {dsize[0]}x{dsize[1]} but its image {rgb.name} is {size[0]}x{size[1]}")
    return out


def _depth_check_code() -> str:
    """The version of the checks whose verdicts `depth_pairs` caches."""
    code = source_digest(_read_depth_list, _depth_problems, _depth_mode_problem, _image_size, _mode_problem)
    return f"{code}:{','.join(DEPTH_PNG_MODES)}:{','.join(sorted(DECODABLE_MODES))}"


def depth_pairs(ds: DatasetSpec, split: str) -> list[tuple[Path, Path, float]]:
    """(rgb image, depth map, focal) of every line of a split's list file (its `split_file`, BTS's format above),
    the paths under the split's `img_dir`, sorted by the rgb path as the list writes it. Raises DatasetError, naming
    the file and what to do, for: a missing list file, a malformed line (its number), an rgb image listed twice, a
    number of lines other than the split's `images` (when the dataset file states it), listed files missing (the
    count and the first five), an unreadable or truncated image, a depth map that is not a 16-bit single-channel PNG
    or not of its image's size. The per-file verdict is cached like `verify_segmentation`'s (keyed by the spec, the
    checks' code and every file's stat), and checked on threads: NYU's 24,231 + 654 pairs are read once."""
    import hashlib

    from harness.atomic import write_json
    from harness.records import cache_root

    if ds.kind not in DEPTH_KINDS:
        raise DatasetError(f"dataset '{ds.name}' is of kind {ds.kind}; depth_pairs reads {', '.join(DEPTH_KINDS)}")
    if split not in ds.splits:
        raise DatasetError(f"dataset '{ds.name}': no split '{split}' in {ds.source or 'its dataset file'}")
    s = ds.splits[split]
    root = root_of(ds)
    if not root.is_dir():
        raise DatasetError(
            f"dataset '{ds.name}': root {root} does not exist (from {ds.source}: root = {ds.root}; "
            f"{_variables_text(ds.root)}; set them or edit the file)"
        )
    if not s.split_file:
        raise DatasetError(
            f"dataset '{ds.name}' split '{split}': no split_file in {ds.source or 'its dataset file'}; name the list "
            "file (BTS's nyudepthv2_*_files_with_gt.txt, as nyu_train.txt / nyu_test.txt)"
        )
    listing = root / s.split_file
    if not listing.is_file():
        raise DatasetError(
            f"dataset '{ds.name}' split '{split}': list file {listing} missing; put BTS's released list there "
            f"(where it comes from: the notes of {ds.source or 'the dataset file'})"
        )
    pairs = _read_depth_list(listing, root / s.img_dir)
    if s.images is not None and len(pairs) != s.images:
        raise DatasetError(
            f"dataset '{ds.name}' split '{split}': {listing} lists {len(pairs)} images, but the released split has "
            f"{s.images} (images: {s.images} in {ds.source or 'the dataset file'}); put the released list there"
        )
    absent = _absent([f for r, d, _ in pairs for f in (r, d)])
    if absent:
        raise DatasetError(
            f"dataset '{ds.name}' split '{split}': {len(absent)} of the {2 * len(pairs)} files listed in {listing} "
            f"are missing under {root / s.img_dir} (the split's img_dir): {', '.join(map(str, absent[:_FIRST]))}"
            f"{' ...' if len(absent) > _FIRST else ''}; extract the released data there, or correct img_dir (see the "
            f"notes of {ds.source or 'the dataset file'})"
        )
    h = hashlib.sha256(f"{ds.model_dump_json()}{split}{_depth_check_code()}".encode())
    h.update(stat_stamp([listing] + [f for r, d, _ in pairs for f in (r, d)]).encode())
    stamp = cache_root() / "datasets" / f"{ds.name}_{split}_depth_{h.hexdigest()[:16]}.json"
    if not stamp.is_file():
        problems = _run_checks([(r, d) for r, d, _ in pairs], _depth_problems)
        _raise_problems(ds, split, problems, 2 * len(pairs))
        write_json(stamp, {"dataset": ds.name, "split": split, "pairs": len(pairs), "ok": True})
    return pairs


# ---------------------------------------------------------------------------------------------
# What a cell read: a split's files by relative path and size (`digest`), and with their modification times
# (`times`). A record keeps this fingerprint; when the split's files change (fixed, added, removed) its cells
# become stale, with the reason. `digest` does not depend on where the data sits (a copied dataset keeps it);
# where the data sits where the record read it, `times` tells files rewritten in place with others of the
# same sizes (a replaced image of a fixed-size format) from untouched ones.

DATA_NOT_FOUND = "its data is not found here"
# per process, for a minute: a plan of thousands of cells lists each split once; `status --watch` sees a
# change at its next refresh after that
_FINGERPRINTS: dict[tuple, tuple[float, dict]] = {}
FINGERPRINT_TTL_S = 60.0


def forget_fingerprints() -> None:
    _FINGERPRINTS.clear()


# What an image-folder reader takes for an image whatever the dataset's `img_suffix` says (torchvision's
# ImageFolder, the metrics job's image list: any case): a split's fingerprint lists them too, so that a
# record follows every image its job may have read (ImageNet's *.JPEG under a dataset file that left
# `img_suffix` at its default, .jpg, were read but not fingerprinted).
READ_AS_IMAGES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _split_files(ds: DatasetSpec, root: Path, split: str) -> list[Path]:
    s = ds.splits[split]
    out = []
    if s.img_dir and (root / s.img_dir).is_dir():
        out += [
            p
            for p in (root / s.img_dir).rglob("*")
            if (p.name.endswith(ds.img_suffix) or p.suffix.lower() in READ_AS_IMAGES) and p.is_file()
        ]
    if s.ann_dir and (root / s.ann_dir).is_dir():
        out += [p for p in (root / s.ann_dir).rglob(f"*{ds.seg_map_suffix}") if p.is_file()]
    out += [root / f for f in (s.split_file, s.ann_file) if f and (root / f).is_file()]
    out += [root / s.img_dir / f for f in s.files if (root / s.img_dir / f).is_file()]
    out += [root / f for f in udi_annotation_files(ds, split) if (root / f).is_file()]  # the .mat / .json it reads
    return sorted(set(out))


CIFAR_LABELS = {"cifar10": b"labels", "cifar100": b"fine_labels"}

# What a CIFAR batch may contain: numpy arrays (and their dtypes), lists, dicts, bytes, numbers. A data
# file is untrusted like a checkpoint: any other global in the pickle is refused, never imported.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how a protocol-2 pickle written by Python 3 stores bytes
}


def _load_batch(f):
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _CIFAR_GLOBALS:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refused global {module}.{name} (a CIFAR batch holds arrays and lists)")

    return Restricted(f, encoding="bytes").load()  # the released files are Python-2 pickles


def read_cifar(ds: DatasetSpec, split: str):
    """(images [N, 32, 32, 3] uint8, labels [N] int64) of a CIFAR-10/100 split in its released layout:
    the pickled batches (dicts of b"data" [N, 3072] and b"labels" / b"fine_labels") named by the split's
    `files` (the meta file is skipped). Every problem names its file."""
    import numpy as np

    root = check_layout(ds, splits=(split,))
    s = ds.splits[split]
    key = CIFAR_LABELS[ds.kind]
    images, labels = [], []
    for name in s.files:
        path = root / s.img_dir / name
        try:
            with open(path, "rb") as f:
                batch = _load_batch(f)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise DatasetError(f"{path}: not a CIFAR batch ({type(e).__name__}: {e})") from None
        if not isinstance(batch, dict):
            raise DatasetError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, not a dict)")
        if b"data" not in batch:
            continue  # batches.meta / meta: class names only
        data = np.asarray(batch[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{path}: data must be uint8 [N, 3072] (32x32x3), got {data.dtype} {list(data.shape)}")
        if key not in batch:
            raise DatasetError(f"{path}: no {key.decode()} (is this {ds.kind}'s file?)")
        y = np.asarray(batch[key], dtype=np.int64)
        if len(y) != len(data):
            raise DatasetError(f"{path}: {len(data)} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or (ds.num_classes and y.max() >= ds.num_classes)):
            raise DatasetError(f"{path}: labels {y.min()}..{y.max()} outside 0..{(ds.num_classes or 0) - 1}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y)
    if not images:
        raise DatasetError(f"{root / s.img_dir}: no image batch among {list(s.files)}")
    return np.concatenate(images), np.concatenate(labels)


# ---------------------------------------------------------------------------------------------
# The fine-grained datasets of UDI's transfer learning, read from their released files by the rules of UDI's
# readers (ISL-CV/udi @ 133c2cbbef2373650fd441f06ad2808df4fe683b, eval/eval_transfer_learning/dataset.py, lines
# 24-115: INatDataset, CarsDataset, FlwrsDataset): the same images in the same order with the same labels, but
# for one bug of CarsDataset, fixed here (`_cars_samples`). UDI's `train=True` is the split `train`, its
# `train=False` the split `val` (Flowers' and Cars' test sets, iNaturalist's validation sets). The number of
# classes is the width of UDI's head, which build_dataset(is_train=True) takes from the train split: the same
# for both splits. Where UDI's code would go on silently (a missing image, a file that shifts Flowers' sorted
# listing, an image path of another shape) the harness stops, naming the file and what to do.

INAT_YEARS = {"inat2018": 2018, "inat2019": 2019}
# cars_annos.mat's struct fields in the released order: UDI reads them by position (elem[0] the image path,
# elem[4] bbox_y2, elem[5] the class, elem[-1] test), the harness by name; a file with other fields is refused
CARS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
_FIRST = 5  # the first few names shown of a longer list

# what reads the other kinds (classification_samples names it when called with one of them)
_OTHER_READERS = {
    "cifar10": "read_cifar (the pickled batches)",
    "cifar100": "read_cifar (the pickled batches)",
    "imagenet": "torchvision's ImageFolder on the split's img_dir (as the linear and low-shot jobs do)",
    "coco_instances": "verify_coco and the split's ann_file (COCO json, read by the Mask R-CNN job)",
    "davis2017": "davis_sequences",
    "nyu_depth_v2": "depth_pairs (rgb image, depth map, focal)",
}


def udi_annotation_files(ds: DatasetSpec, split: str) -> tuple[str, ...]:
    """The annotation files (relative to the root) that UDI's reader of the dataset's kind reads for a split:
    required by check_layout and part of the split's fingerprint. None for the other kinds."""
    if ds.kind == "flowers102":
        return ("imagelabels.mat", "setid.mat")
    if ds.kind == "stanford_cars":
        return ("cars_annos.mat",)
    if ds.kind in INAT_YEARS:
        year = INAT_YEARS[ds.kind]
        own = f"{'train' if split == 'train' else 'val'}{year}.json"
        # the classes are indexed over the train annotations, for the val split too
        return tuple(dict.fromkeys((own, f"train{year}.json", "categories.json")))
    return ()


def classification_samples(ds: DatasetSpec, split: str) -> tuple[list[tuple[Path, int]], int]:
    """(samples [(image path, class index)], number of classes) of split `train` or `val` of Flowers-102,
    Stanford Cars or iNaturalist 2018 / 2019 in its released layout, read by UDI's rules (above). Raises
    DatasetError, naming the file and what to do, for: a missing or unreadable annotation file, an image listed but
    missing, a number of classes other than the dataset's `num_classes`, a label outside the classes, a split
    size other than the split's `images` (when the dataset file states it)."""
    readers = {
        "flowers102": _flowers_samples,
        "stanford_cars": _cars_samples,
        "inat2018": _inat_samples,
        "inat2019": _inat_samples,
    }
    if ds.kind not in readers:
        raise DatasetError(
            f"dataset '{ds.name}' is of kind {ds.kind}, which classification_samples does not read (it reads UDI's "
            f"transfer datasets: {', '.join(readers)}); read it with "
            f"{_OTHER_READERS.get(ds.kind, 'segmentation_pairs / verify_segmentation (image, label map pairs)')}"
        )
    if split not in ("train", "val"):
        raise DatasetError(
            f"dataset '{ds.name}': no split '{split}' in UDI's reader of {ds.kind}, which reads 'train' "
            "(train=True) and 'val' (train=False)"
        )
    root = root_of(ds)
    if not root.is_dir():
        raise DatasetError(
            f"dataset '{ds.name}': root {root} does not exist (from {ds.source}: root = {ds.root}; "
            f"{_variables_text(ds.root)}; set them or edit the file)"
        )
    absent = [root / f for f in udi_annotation_files(ds, split) if not (root / f).is_file()]
    if absent:
        raise DatasetError(
            f"dataset '{ds.name}' ({ds.kind}): annotation file(s) missing: {', '.join(map(str, absent))}; put the "
            f"released files there (where they come from: the notes of {ds.source or 'its dataset file'})"
        )
    samples, n, listed_in = readers[ds.kind](ds, root, split)
    _check_classification(ds, split, samples, n, listed_in)
    return samples, n


def _check_classification(ds: DatasetSpec, split: str, samples: list, n: int, listed_in: Path) -> None:
    where = f"dataset '{ds.name}' split '{split}'"
    if ds.num_classes is not None and n != ds.num_classes:
        raise DatasetError(
            f"{where}: {listed_in} gives {n} classes by UDI's rule, but {ds.source or 'the dataset file'} says "
            f"num_classes: {ds.num_classes}; is {listed_in.name} the released file? If it is, correct num_classes"
        )
    outside = [(p, y) for p, y in samples if not 0 <= y < n]
    if outside:
        raise DatasetError(
            f"{where}: {len(outside)} image(s) have labels outside the {n} classes 0..{n - 1} of the train split "
            f"(first: {', '.join(f'{p.name} -> {y}' for p, y in outside[:_FIRST])}); {listed_in} is not as released"
        )
    expected = ds.splits[split].images if split in ds.splits else None
    if expected is not None and len(samples) != expected:
        raise DatasetError(
            f"{where}: {listed_in} lists {len(samples)} images, but the released split has {expected} (images: "
            f"{expected} in {ds.source or 'the dataset file'}); put the released {listed_in.name} there"
        )
    _raise_absent(ds, split, [p for p, _ in samples], listed_in)


def _raise_absent(ds: DatasetSpec, split: str, paths: list[Path], listed_in: Path) -> None:
    """An image listed but not on disk: the count and the first few, named. Each folder is listed once (iNat's
    437,513 train images sit in 8,142 folders)."""
    absent = _absent(paths)
    if absent:
        raise DatasetError(
            f"dataset '{ds.name}' split '{split}': {len(absent)} of the {len(paths)} images listed in {listed_in} are "
            f"missing: {', '.join(map(str, absent[:_FIRST]))}{' ...' if len(absent) > _FIRST else ''}; extract the "
            f"released image archive under {root_of(ds)} (see the notes of {ds.source or 'the dataset file'})"
        )


def _absent(paths: list[Path]) -> list[Path]:
    """The paths that are not on disk, each folder listed once."""
    listed: dict[Path, set[str] | None] = {}
    absent = []
    for p in paths:
        if p.parent not in listed:
            try:
                listed[p.parent] = set(os.listdir(p.parent))
            except OSError:
                listed[p.parent] = None
        names = listed[p.parent]
        if names is None or p.name not in names:
            absent.append(p)
    return absent


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except Exception as e:  # noqa: BLE001 - any failure to parse is a bad file
        raise DatasetError(
            f"{path}: cannot be read as a MATLAB file ({type(e).__name__}: {e}); download it again"
        ) from None


def _mat_row(mat: dict, key: str, path: Path):
    """`mat[key][0]` as UDI takes it, after checking that the variable is there as one row [1, N] of whole numbers
    (stored as integers in the release; as doubles, MATLAB's default, they are read the same)."""
    import numpy as np

    if key not in mat:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: no variable '{key}' (it holds {names}); is this the released file?")
    a = np.asarray(mat[key])
    if a.ndim != 2 or a.shape[0] != 1:
        raise DatasetError(
            f"{path}: '{key}' is {list(a.shape)}; the released file holds one row [1, N] (UDI reads [0])"
        )
    whole = a.dtype.kind in "iu" or (a.dtype.kind == "f" and bool(np.all(np.isfinite(a) & (a == np.round(a)))))
    if not whole:
        raise DatasetError(f"{path}: '{key}' holds {a.dtype} values that are not whole numbers; the release's are")
    return a[0]


def _flowers_samples(ds: DatasetSpec, root: Path, split: str) -> tuple[list[tuple[Path, int]], int, Path]:
    """UDI's FlwrsDataset: the sorted listing of jpg/, imagelabels.mat's labels - 1 (the label is not re-indexed),
    train = setid's trnid + valid (2,040 images), val = tstid (6,149), in the file's order; the classes: those
    of the train images (102)."""
    labels_file, setid_file = root / "imagelabels.mat", root / "setid.mat"
    labels = (_mat_row(_loadmat(labels_file), "labels", labels_file).astype("int64") - 1).tolist()
    ids = _loadmat(setid_file)
    rows = {k: _mat_row(ids, k, setid_file).astype("int64").tolist() for k in ("trnid", "valid", "tstid")}
    train_ids = rows["trnid"] + rows["valid"]
    split_ids = train_ids if split == "train" else rows["tstid"]
    bad = sorted({i for i in train_ids + split_ids if not 1 <= i <= len(labels)})
    if bad:
        raise DatasetError(
            f"{setid_file}: image ids {bad[:_FIRST]} are outside 1..{len(labels)} (the images {labels_file.name} "
            "labels); the .mat files are not of the same release"
        )
    # the n-th label is image_{n:05d}.jpg's (the release's naming); UDI takes the n-th file of the sorted listing
    jpg = root / "jpg"
    wanted = [jpg / f"image_{i:05d}.jpg" for i in split_ids]
    _raise_absent(ds, split, wanted, setid_file)
    listing = sorted(os.listdir(jpg))
    shifted = [p.name for i, p in zip(split_ids, wanted) if i > len(listing) or listing[i - 1] != p.name]
    if shifted:
        released = {f"image_{i:05d}.jpg" for i in range(1, len(labels) + 1)}
        extra, gone = sorted(set(listing) - released), sorted(released - set(listing))
        raise DatasetError(
            f"{jpg}/ is not the released folder ({len(extra)} file(s) the release does not have: "
            f"{', '.join(extra[:_FIRST]) or '-'}; {len(gone)} of its images missing: "
            f"{', '.join(gone[:_FIRST]) or '-'}): "
            f"UDI pairs the n-th file of its sorted listing with the n-th label of {labels_file.name}, so "
            f"{len(shifted)} image(s) of split '{split}' would take another image's label (first: {shifted[0]}); "
            "restore jpg/ as released"
        )
    n = len({labels[i - 1] for i in train_ids})
    return [(p, labels[i - 1]) for i, p in zip(split_ids, wanted)], n, labels_file


def _cars_samples(ds: DatasetSpec, root: Path, split: str) -> tuple[list[tuple[Path, int]], int, Path]:
    """UDI's CarsDataset: cars_annos.mat's annotations, train = test == 0 (8,144 images), val = test == 1 (8,041),
    in the file's order, the image at root / relative_im_path.

    A deviation from UDI, which has a bug here: CarsDataset counts its classes over elem[4], which is bbox_y2 (the
    box's bottom edge), not elem[5] (the class), and takes the 1-based class elem[5] as the label. Its head is
    therefore as wide as the number of distinct bbox_y2 values of the train images (not 196), and its labels run
    1..196: logit 0 and those above 196 are never a target, but take part in the softmax and in the label
    smoothing (and mixup) spread over all of them. The harness labels class - 1 (0..195) and counts the distinct
    classes of the train annotations (196)."""
    path = root / "cars_annos.mat"
    ann = _loadmat(path).get("annotations")
    if ann is None or ann.dtype.names != CARS_FIELDS or ann.ndim != 2 or ann.shape[0] != 1:
        got = "none" if ann is None else f"{ann.dtype.names} {list(ann.shape)}"
        raise DatasetError(
            f"{path}: 'annotations' must be the released struct row [1, N] of fields {CARS_FIELDS} (UDI reads them "
            f"by position); got {got}. Download cars_annos.mat again"
        )
    try:
        rows = [(str(r[0].item()), int(r[5].item()), int(r[6].item())) for r in ann[0].tolist()]
    except (ValueError, TypeError, AttributeError) as e:
        raise DatasetError(f"{path}: an annotation is not (one path, one class, one test flag): {e}") from None
    flags = sorted({t for _, _, t in rows} - {0, 1})
    if flags:
        raise DatasetError(f"{path}: 'test' flags {flags[:_FIRST]}; the released file flags 0 (train) or 1 (test)")
    n = len({c for _, c, t in rows if t == 0})
    wanted = 0 if split == "train" else 1
    return [(root / rel, c - 1) for rel, c, t in rows if t == wanted], n, path


def _inat_samples(ds: DatasetSpec, root: Path, split: str) -> tuple[list[tuple[Path, int]], int, Path]:
    """UDI's INatDataset with category='name': the classes are indexed by first appearance of the category's name
    (categories.json, indexed by category id) over the annotations of train{year}.json; each image of the split's
    json is the file root / file_name, of the category id file_name.split('/')[2] (train_val{year}/<super
    category>/<category id>/<name>.jpg)."""
    year = INAT_YEARS[ds.kind]
    own = root / f"{split}{year}.json"
    data = _load_json(own, "images")
    cats_file = root / "categories.json"
    cats = _load_json(cats_file, None)
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "name" in c for c in cats):
        raise DatasetError(f"{cats_file}: must be the released list of categories (each with a 'name'), by id")

    def name(cid, where: str) -> str:  # UDI: data_catg[int(category id)], a position in the list
        i = int(cid) if (isinstance(cid, int) and not isinstance(cid, bool)) or str(cid).isdigit() else -1
        if not 0 <= i < len(cats):
            raise DatasetError(f"{where}: category id {cid!r} is not one of categories.json's 0..{len(cats) - 1}")
        return cats[i]["name"]

    train_file = root / f"train{year}.json"
    train_data = data if split == "train" else _load_json(train_file, "annotations")
    targeter: dict[str, int] = {}
    for a in train_data.get("annotations") or []:
        targeter.setdefault(name(a.get("category_id"), str(train_file)), len(targeter))
    samples, odd, unseen = [], [], []
    for im in data["images"]:
        cut = str(im.get("file_name", "")).split("/")
        if len(cut) != 4 or not cut[2].isdigit():
            odd.append("/".join(cut))
            continue
        label = targeter.get(name(int(cut[2]), f"{own}: {im['file_name']}"))
        if label is None:
            unseen.append(im["file_name"])
        samples.append((root.joinpath(*cut), -1 if label is None else label))
    if odd:
        raise DatasetError(
            f"{own}: {len(odd)} file_name(s) not of the form <folder>/<super category>/<category id>/<image> "
            f"(first: {odd[:_FIRST]}); UDI reads the category from the third part"
        )
    if unseen:
        raise DatasetError(
            f"{own}: {len(unseen)} image(s) of categories no annotation of {train_file.name} has (first: "
            f"{unseen[:_FIRST]}): UDI's classes are those of the train annotations; are the files of one release?"
        )
    return samples, len(targeter), own


def _load_json(path: Path, key: str | None):
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot be read as json ({e}); download it again") from None
    if key is not None and (not isinstance(data, dict) or not isinstance(data.get(key), list)):
        raise DatasetError(f"{path}: no list '{key}' (the released file holds images, annotations, categories ...)")
    return data


def split_fingerprint(ds: DatasetSpec, split: str) -> dict:
    """{"root", "files", "digest", "times"} of a split: `digest` is the SHA-256 (16 hex digits) of its files'
    relative paths and sizes (images, annotations, split and annotation files), `times` the same with their
    modification times. Raises DatasetError when the root is not there. Computed once per process and split
    (for a minute)."""
    import hashlib

    root = root_of(ds)
    if not root.is_dir():
        raise DatasetError(f"dataset '{ds.name}': root {root} does not exist ({_variables_text(ds.root)})")
    import time

    key = (str(root.resolve()), split, ds.model_dump_json())
    held = _FINGERPRINTS.get(key)
    if held is None or time.monotonic() - held[0] > FINGERPRINT_TTL_S:
        h, times, n = hashlib.sha256(), hashlib.sha256(), 0
        for f in _split_files(ds, root, split):
            try:
                st = f.stat()
            except OSError:
                continue
            line = f"{f.relative_to(root).as_posix()}\t{st.st_size}"
            h.update(f"{line}\n".encode())
            times.update(f"{line}\t{st.st_mtime_ns}\n".encode())
            n += 1
        fp = {"root": str(root), "files": n, "digest": h.hexdigest()[:16], "times": times.hexdigest()[:16]}
        _FINGERPRINTS[key] = (time.monotonic(), fp)
    return _FINGERPRINTS[key][1]


def data_change(ds: DatasetSpec, recorded: dict) -> str | None:
    """Why the splits a record read (`inputs.data`: split -> fingerprint) are not what is on disk now, or
    None when they are the same."""
    for split, fp in sorted((recorded or {}).items()):
        if not isinstance(fp, dict) or "digest" not in fp or split not in ds.splits:
            continue
        try:
            now = split_fingerprint(ds, split)
        except DatasetError as e:
            return f"{DATA_NOT_FOUND} ({e})"
        if now["digest"] != fp["digest"]:
            return (
                f"the data it read changed: dataset '{ds.name}' split '{split}' ({fp.get('files')} -> "
                f"{now['files']} files, digest {fp['digest']} -> {now['digest']})"
            )
        # the same names and sizes where the record read them, but not the same modification times: files
        # rewritten in place (a record from before `times`, or data read from elsewhere, is judged as above)
        if "times" in fp and fp.get("root") == now["root"] and fp["times"] != now["times"]:
            return (
                f"the data it read changed: dataset '{ds.name}' split '{split}' under {now['root']} has the same "
                f"{now['files']} files of the same sizes, but files were rewritten since (modification times "
                f"{fp['times']} -> {now['times']}): replaced by others of the same size, or touched"
            )
    return None

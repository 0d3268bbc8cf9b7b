"""Small synthetic datasets in the real on-disk layouts of the SDD datasets.

Images have learnable structure: a scene is a textured background plus a few objects, each object
class with its own colour and stripe orientation, so that probes, metrics and detectors give
meaningful, varied numbers. Everything is deterministic from a seed.

Layouts (as mmseg / pycocotools / DAVIS / torchvision read them):
- imagenet:        <root>/{train,val}/<wnid>/*.JPEG
- ade20k:          <root>/{images,annotations}/{training,validation}/*.{jpg,png}  labels 0 = "other", 1..K
- voc12_aug:       <root>/{JPEGImages,SegmentationClass,SegmentationClassAug},
                   ImageSets/Segmentation/{train,val,aug,trainaug}.txt
- coco_stuff164k:  <root>/images/{train2017,val2017}/*.jpg, annotations/{..}/*_labelTrainIds.png
- cityscapes:      <root>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png, gtFine/.../*_gtFine_labelTrainIds.png
- coco_instances:  <root>/{train2017,val2017}/*.jpg, annotations/instances_{train,val}2017.json (polygons)
- davis2017:       <root>/JPEGImages/480p/<seq>/%05d.jpg, Annotations/480p/<seq>/%05d.png (indexed),
                   ImageSets/2017/{train,val}.txt
- cifar10 / 100:   <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta},
                   <root>/cifar-100-python/{train,test,meta} (the released Python pickles)
- imagenet subsets: <root>/subsets/{1percent,10percent}.txt (SimCLRv2's format: one file name per line)
- nyu_depth_v2:    <root>/sync/<scene>/{rgb_XXXXX.jpg,sync_depth_XXXXX.png} (train),
                   <root>/official_splits/test/<type>/... (val), nyu_train.txt / nyu_test.txt (BTS's lists);
                   depth maps 16-bit PNGs of millimetres, 0 = no depth
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from harness.datasets import write_indexed_png


class Painter:
    """Draws scenes: class c has a colour and a stripe direction; background is low-contrast noise.
    `paired`: classes 2k-1 and 2k share a colour and differ only by their stripes, at 0° and 90°, so
    telling them apart takes an oriented-texture feature, not the mean colour a random network sees."""

    def __init__(self, n_classes: int, seed: int = 0, paired: bool = False):
        rng = np.random.default_rng(seed)
        self.colours = rng.uniform(30, 225, (n_classes + 1, 3))
        self.angles = rng.uniform(0, np.pi, n_classes + 1)
        if paired:  # stripes at 0° and 90°: a horizontal flip (a pre-training augmentation) keeps each class
            for c in range(2, n_classes + 1, 2):
                self.colours[c] = self.colours[c - 1]
                self.angles[c - 1], self.angles[c] = 0.0, np.pi / 2
        self.rng = np.random.default_rng(seed + 1)

    def texture(self, c: int, h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[:h, :w]
        a = self.angles[c]
        stripes = np.sin((xx * np.cos(a) + yy * np.sin(a)) / 2.5)[..., None] * 35
        return self.colours[c] + stripes

    def scene(self, h: int, w: int, classes: list[int], shapes: int = 3, bg: int = 0):
        """(RGB uint8 image, label map with class ids, instance list [(class, mask)])."""
        label = np.full((h, w), bg, dtype=np.int32)
        img = self.texture(bg, h, w) * 0.4 + self.rng.normal(0, 8, (h, w, 3)) + 60
        instances = []
        yy, xx = np.mgrid[:h, :w]
        for _ in range(shapes):
            c = int(self.rng.choice(classes))
            ch, cw = self.rng.integers(h // 5, h // 2), self.rng.integers(w // 5, w // 2)
            y0, x0 = self.rng.integers(0, h - ch), self.rng.integers(0, w - cw)
            if self.rng.random() < 0.5:
                mask = (yy >= y0) & (yy < y0 + ch) & (xx >= x0) & (xx < x0 + cw)
            else:
                cy, cx, r = y0 + ch / 2, x0 + cw / 2, min(ch, cw) / 2
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            tex = self.texture(c, h, w)
            img[mask] = tex[mask] + self.rng.normal(0, 6, (int(mask.sum()), 3))
            label[mask] = c
            for inst in instances:  # occlusion
                inst[1][mask] = False
            instances.append([c, mask])
        return np.clip(img, 0, 255).astype(np.uint8), label, [(c, m) for c, m in instances if m.sum() > 20]


def _save(img: np.ndarray, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, **kw)


def imagenet(
    root: Path, classes: int = 4, train: int = 12, val: int = 4, size: int = 64, seed: int = 0, paired: bool = False
) -> Path:
    p = Painter(classes, seed, paired)
    for split, n in (("train", train), ("val", val)):
        for c in range(1, classes + 1):
            for i in range(n):
                img, _, _ = p.scene(size, size, [c], shapes=2, bg=0)
                _save(img, root / split / f"n{c:08d}" / f"{split}_{c}_{i:04d}.JPEG", quality=95)
    return root


def ade20k(
    root: Path,
    train: int = 16,
    val: int = 6,
    size: int = 64,
    classes=(1, 2, 3, 4),
    seed: int = 0,
    paired: bool = False,
    palette: int | None = None,
) -> Path:
    """`palette`: the painter's number of classes (default: the largest class); the mini world paints ADE's
    classes 1-4 as the mini ImageNet's classes 1-4 by sharing its painter (16 classes, same seed)."""
    p = Painter(palette or max(classes), seed, paired)
    for split, sub, n in (("train", "training", train), ("val", "validation", val)):
        for i in range(n):
            img, lab, _ = p.scene(size, size, list(classes), bg=0)  # 0 = "other", ignored (reduce_zero_label)
            name = f"ADE_{sub[:5]}_{i:08d}"
            _save(img, root / "images" / sub / f"{name}.jpg", quality=95)
            _save(lab.astype(np.uint8), root / "annotations" / sub / f"{name}.png")
    return root


def voc12_aug(root: Path, train: int = 16, val: int = 6, size: int = 64, classes=(1, 2, 3), seed: int = 1) -> Path:
    p = Painter(max(classes), seed)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    names = {"train": [], "val": []}
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            img, lab, _ = p.scene(size, size, list(classes), bg=0)  # 0 = background (a class in VOC)
            name = f"2007_{split[:2]}{i:05d}"
            _save(img, root / "JPEGImages" / f"{name}.jpg", quality=95)
            write_indexed_png(lab, root / "SegmentationClass" / f"{name}.png")
            _save(lab.astype(np.uint8), root / "SegmentationClassAug" / f"{name}.png")  # SBD-converted: plain PNG
            names[split].append(name)
    (sets / "train.txt").write_text("\n".join(names["train"]) + "\n")
    (sets / "val.txt").write_text("\n".join(names["val"]) + "\n")
    (sets / "aug.txt").write_text("\n".join(names["train"]) + "\n")
    (sets / "trainaug.txt").write_text("\n".join(names["train"]) + "\n")
    return root


def coco_stuff164k(
    root: Path, train: int = 16, val: int = 6, size: int = 64, classes=(0, 1, 2, 3), seed: int = 2
) -> Path:
    p = Painter(max(classes) + 1, seed)
    for split, n in (("train2017", train), ("val2017", val)):
        for i in range(n):
            img, lab, _ = p.scene(size, size, [c + 1 for c in classes[1:]], bg=classes[0] + 1)
            name = f"{i:012d}"
            _save(img, root / "images" / split / f"{name}.jpg", quality=95)
            _save((lab - 1).astype(np.uint8), root / "annotations" / split / f"{name}_labelTrainIds.png")
    return root


def cityscapes(root: Path, train: int = 12, val: int = 4, size=(64, 128), classes=(0, 1, 2, 3), seed: int = 3) -> Path:
    p = Painter(max(classes) + 1, seed)
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            city = ["aachen", "bremen"][i % 2] if split == "train" else "frankfurt"
            img, lab, _ = p.scene(size[0], size[1], [c + 1 for c in classes[1:]], bg=classes[0] + 1)
            stem = f"{city}_{i:06d}_000019"
            _save(img, root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            _save((lab - 1).astype(np.uint8), root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
    return root


def _polygon(mask: np.ndarray) -> list[float]:
    """A simple outline polygon of a mask: the convex-ish boundary traced by cv2."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    c = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(float)
    return c.flatten().tolist()


def coco_instances(
    root: Path, train: int = 16, val: int = 6, size: int = 96, categories=("square", "disc", "blob"), seed: int = 4
) -> Path:
    from pycocotools import mask as mask_utils

    p = Painter(len(categories), seed)
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(categories)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split, n in (("train2017", train), ("val2017", val)):
        images, anns = [], []
        for i in range(n):
            img, _, inst = p.scene(size, size, list(range(1, len(categories) + 1)), bg=0)
            name = f"{i + (0 if split == 'train2017' else 100000):012d}.jpg"
            _save(img, root / split / name, quality=95)
            images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
            for c, m in inst:
                poly = _polygon(m)
                if len(poly) < 6:
                    continue
                rle = mask_utils.frPyObjects([poly], size, size)
                area = float(mask_utils.area(mask_utils.merge(rle)))
                x, y, w, h = mask_utils.toBbox(mask_utils.merge(rle)).tolist()
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": i + 1,
                        "category_id": c,
                        "segmentation": [poly],
                        "area": area,
                        "bbox": [x, y, w, h],
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    return root


def davis2017(
    root: Path, sequences: int = 2, frames: int = 8, size=(128, 192), objects: int = 2, seed: int = 5
) -> Path:
    """Short videos of textured shapes moving over a textured background; indexed PNG masks."""
    rng = np.random.default_rng(seed)
    p = Painter(objects + 1, seed)
    h, w = size
    names = []
    yy, xx = np.mgrid[:h, :w]
    for s in range(sequences):
        name = f"shapes-{s}"
        names.append(name)
        bg = p.texture(objects + 1, h, w) * 0.5 + 50
        starts = [(rng.uniform(0.25, 0.75) * h, rng.uniform(0.2, 0.4 + 0.2 * o) * w) for o in range(objects)]
        vel = [(rng.uniform(-0.01, 0.01) * h, rng.uniform(0.03, 0.05) * w) for _ in range(objects)]  # px per frame
        for f in range(frames):
            img = bg.copy()
            lab = np.zeros((h, w), dtype=np.uint8)
            for o in range(objects):
                cy, cx = starts[o][0] + vel[o][0] * f, starts[o][1] + vel[o][1] * f
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= (min(h, w) / 6) ** 2
                img[m] = p.texture(o + 1, h, w)[m]
                lab[m] = o + 1
            img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
            _save(img, root / "JPEGImages" / "480p" / name / f"{f:05d}.jpg", quality=95)
            write_indexed_png(lab, root / "Annotations" / "480p" / name / f"{f:05d}.png")
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("\n".join(names) + "\n")
    (sets / "train.txt").write_text("\n".join(names) + "\n")
    return root


def imagenet_subsets(root: Path, per_class: dict[str, int]) -> Path:
    """Labelled subsets of the generated ImageNet train split in SimCLRv2's format (one image file name
    per line), the first n images of every class: {"1percent": 1, "10percent": 4} -> subsets/<name>.txt."""
    out = root / "subsets"
    out.mkdir(parents=True, exist_ok=True)
    for name, n in per_class.items():
        names = [f.name for c in sorted((root / "train").iterdir()) for f in sorted(c.glob("*.JPEG"))[:n]]
        (out / f"{name}.txt").write_text("\n".join(names) + "\n")
    return root


def cifar(root: Path, hundred: bool, train: int, val: int, seed: int = 6) -> Path:
    """CIFAR-10 (10 classes) or CIFAR-100 (100 fine labels) in the released Python layout: pickled dicts
    of b"data" (uint8 [N, 3072], channel-planar 32x32) and the labels, split into its batch files."""
    import pickle

    classes = 100 if hundred else 10
    p = Painter(classes, seed, False)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    key = b"fine_labels" if hundred else b"labels"

    def batch(n_per_class: int) -> dict:
        imgs, labels = [], []
        for c in range(classes):
            for _ in range(n_per_class):
                img, _, _ = p.scene(32, 32, [c + 1], shapes=1, bg=0)
                imgs.append(img.transpose(2, 0, 1).reshape(-1))
                labels.append(c)
        order = np.random.default_rng(seed).permutation(len(labels))
        return {b"data": np.stack(imgs)[order].astype(np.uint8), key: [labels[i] for i in order]}

    def dump(obj, name: str) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    names = [f"class_{c}".encode() for c in range(classes)]
    if hundred:
        dump(batch(train), "train")
        dump(batch(val), "test")
        dump({b"fine_label_names": names, b"coarse_label_names": names[:20]}, "meta")
    else:
        whole = batch(train)
        for i in range(5):  # five training batches, as released
            part = slice(i * len(whole[key]) // 5, (i + 1) * len(whole[key]) // 5)
            dump({b"data": whole[b"data"][part], key: whole[key][part]}, f"data_batch_{i + 1}")
        dump(batch(val), "test_batch")
        dump({b"label_names": names}, "batches.meta")
    return root


# NYU Depth v2 in BTS's layout (harness.datasets, the comment above depth_pairs; benchmarks/datasets/nyu_depth_v2.yaml)
NYU_FOCAL = 518.8579  # every line's focal in BTS's lists, in pixels of the 640-wide image
NYU_TRAIN_SCENES = ("kitchen_0001a", "bedroom_0002b", "living_room_0003", "bathroom_0004a")
NYU_TEST_TYPES = ("bathroom", "bedroom", "kitchen")
DEPTH_DROPOUT = 0.02  # the share of pixels without depth (0), as the Kinect's holes leave them


def _depth_texture(p: Painter, c: int, depth: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Class c's colour and stripes, seen at `depth` metres: the stripes finer the farther (a receding surface's
    texture gradient), the colour darker (a light at the camera). Two cues a model's features can read depth from."""
    a = p.angles[c]
    stripes = np.sin((xx * np.cos(a) + yy * np.sin(a)) * depth / 4.0) * 35
    shade = 1.3 / (1.0 + 0.3 * depth)
    return (p.colours[c] + stripes[..., None]) * shade[..., None]


def depth_scene(p: Painter, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB uint8 [h, w, 3], depth float [h, w] in metres, region map int32 [h, w]) of a room: a back wall (region 1),
    a plane at 3-5 m tilted sideways, above a floor (2), a plane whose depth falls from the wall's at its foot to about
    1 m at the bottom row, and two boxes (two of the regions 3-5) standing on the floor, each a plane at the floor's
    depth where it stands, tilted a little. Painted far to near, so nearer boxes hide farther ones. Each region is
    painted with its class's colour and stripes as `_depth_texture` sees them at its depth. No holes here (see
    `nyu_depth`)."""
    rng = p.rng
    yy, xx = np.mgrid[:h, :w].astype(float)
    horizon = int(rng.uniform(0.4, 0.6) * h)
    wall = rng.uniform(3.0, 5.0) + rng.uniform(-0.8, 0.8) * (xx / w - 0.5)
    near = rng.uniform(0.8, 1.2)
    below = np.clip((yy - horizon) / max(h - 1 - horizon, 1), 0, 1)
    floor = wall + (near - wall[horizon, w // 2]) * below  # a plane through the wall's foot
    depth = np.where(yy < horizon, wall, floor)
    label = np.where(yy < horizon, 1, 2).astype(np.int32)
    boxes = []
    for c in rng.choice([3, 4, 5], 2, replace=False):  # two boxes of two classes: one region, one plane
        bottom = int(rng.integers(horizon + 2, h))
        bh, bw = int(rng.integers(h // 5, h // 2)), int(rng.integers(w // 6, w // 3))
        x0 = int(rng.integers(0, w - bw))
        boxes.append((float(floor[bottom - 1, x0 + bw // 2]), bottom, bh, x0, bw, int(c)))
    for d, bottom, bh, x0, bw, c in sorted(boxes, reverse=True):  # far to near
        m = (yy >= max(bottom - bh, 0)) & (yy < bottom) & (xx >= x0) & (xx < x0 + bw)
        depth = np.where(m, d + rng.uniform(-0.3, 0.3) * (xx - x0 - bw / 2) / w, depth)
        label[m] = c
    img = np.zeros((h, w, 3))
    for c in np.unique(label):
        m = label == c
        img[m] = _depth_texture(p, int(c), depth, yy, xx)[m]
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), depth, label


def nyu_depth(root: Path, train: int = 24, val: int = 8, size=(64, 48), seed: int = 0) -> Path:
    """NYU Depth v2 in BTS's layout (as benchmarks/datasets/nyu_depth_v2.yaml reads it): `train` pairs in
    sync/<scene>/ over four scenes, `val` in official_splits/test/<scene type>/ numbered across the split (the
    official test images' numbers are their indices in the labelled set), and the lists nyu_train.txt (lines with a
    leading "/", in no sorted order, as BTS's) and nyu_test.txt (no leading "/", no newline after the last line, as
    BTS's). Each pair: rgb_XXXXX.jpg and sync_depth_XXXXX.png, the scene's depth (`depth_scene`) in millimetres as
    16-bit greyscale, with DEPTH_DROPOUT of the pixels 0 (no depth). `size` is (width, height), NYU's 640x480 / 10;
    the focal is NYU's scaled to that width."""
    w, h = size
    p = Painter(5, seed)
    focal = f"{NYU_FOCAL * w / 640:.4f}"
    holes = np.random.default_rng(seed + 2)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            if split == "train":
                folder, rel = root / "sync", f"/{NYU_TRAIN_SCENES[i % len(NYU_TRAIN_SCENES)]}"
                number = i // len(NYU_TRAIN_SCENES)
            else:
                folder, rel, number = root / "official_splits" / "test", NYU_TEST_TYPES[i % len(NYU_TEST_TYPES)], i
            img, depth, _ = depth_scene(p, h, w)
            mm = np.round(depth * 1000).astype(np.uint16)
            mm[holes.random(mm.shape) < DEPTH_DROPOUT] = 0
            rgb, dep = f"{rel}/rgb_{number:05d}.jpg", f"{rel}/sync_depth_{number:05d}.png"
            _save(img, folder / rgb.strip("/"), quality=95)
            _save(mm, folder / dep.strip("/"))  # uint16: PIL writes a 16-bit greyscale PNG
            lines[split].append(f"{rgb} {dep} {focal}")
    order = np.random.default_rng(seed + 3).permutation(len(lines["train"]))
    root.mkdir(parents=True, exist_ok=True)
    (root / "nyu_train.txt").write_text("".join(f"{lines['train'][k]}\n" for k in order))
    (root / "nyu_test.txt").write_text("\n".join(lines["val"]))
    return root


# The mini world's version: `sdd demo` regenerates data (and retrains) made by another version
WORLD = (
    "mini world 4: 16 classes in same-colour pairs, stripes at 0 and 90 degrees; CIFAR batches and "
    "ImageNet 1%/10% lists; NYU depth scenes (docs/demo.md)"
)

GENERATORS = {
    "imagenet": imagenet,
    "ade20k": ade20k,
    "voc12_aug": voc12_aug,
    "coco_stuff164k": coco_stuff164k,
    "cityscapes": cityscapes,
    "coco_instances": coco_instances,
    "davis2017": davis2017,
    "nyu_depth_v2": nyu_depth,
}


def generate_all(root: Path, seed: int = 0) -> dict[str, Path]:
    """Every dataset under `root` in the directory names the registry expects below SDD_DATA_ROOT."""
    root = Path(root)
    return {
        # docs/demo.md: 16 classes in 8 same-colour pairs; ADE's 4 classes are two of those pairs
        "imagenet": imagenet(root / "imagenet-1k", classes=16, train=24, val=16, seed=seed, paired=True),
        "ade20k": ade20k(root / "ade" / "ADEChallengeData2016", train=48, val=24, seed=seed, paired=True, palette=16),
        "voc12_aug": voc12_aug(root / "VOCdevkit" / "VOC2012", seed=seed + 1),
        "coco_stuff164k": coco_stuff164k(root / "coco_stuff164k", seed=seed + 2),
        "cityscapes": cityscapes(root / "cityscapes", seed=seed + 3),
        "coco_instances": coco_instances(root / "coco", seed=seed + 4),
        "davis2017": davis2017(root / "DAVIS", seed=seed + 5),
        "cifar10": cifar(root / "cifar10", hundred=False, train=20, val=10, seed=seed + 6),
        "cifar100": cifar(root / "cifar100", hundred=True, train=3, val=2, seed=seed + 7),
        "imagenet_subsets": imagenet_subsets(root / "imagenet-1k", {"1percent": 1, "10percent": 4}),
        # scenes of planes at their own depths, 128x96 (an 8x6 patch grid for the tiny ViTs): the depth probe's world
        "nyu_depth_v2": nyu_depth(root / "nyu_depth_v2", train=48, val=16, size=(128, 96), seed=seed + 8),
    }

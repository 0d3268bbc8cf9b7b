"""Dense features of a backbone on a fixed, recorded list of images, with an optional on-disk cache.

- `image_list`: a fixed sample of an ImageFolder tree (class folders), drawn once from a seed over the
  sorted file list and identified by the hash of its relative paths. Every checkpoint of every method
  sees the same images (the official code's subset depended on each architecture's RNG use).
- `extract_dense`: ([images, tokens, d] last-layer dense tokens, [images, d] image-level embeddings)
  from one forward pass (`Backbone.dense_and_embedding`: patch tokens after the final norm; the class
  token for ViTs that have one, else global average pooling). float32 throughout: rounding the dense
  features to float16 raised M_dim by up to 1.4% on rank-deficient features, so the cache stores float32
  and a cache hit gives bit-identical metrics.
- `extract_views`: image-level embeddings of q augmented views per image, for LiDAR.

The feature cache is keyed by everything the features were computed from (`cache_inputs`): the caller's key
(the checkpoint's SHA-256 and the method's loader), the resolved image root, the image list, what `stat`
says of every image read (`harness.datasets.stat_stamp`: an image replaced, even by one of the same size,
is another entry), the transform, the forward precision, and the code that computes them (this module, the
model factory and checkpoint loader, image decoding, the versions of torch, torchvision, timm and Pillow).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.atomic import save_tensors
from harness.datasets import IMAGENET_MEAN, IMAGENET_STD, open_rgb, source_digest, stat_stamp
from harness.records import cache_root

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageList:
    root: Path
    paths: tuple[str, ...]  # relative to root, in sample order
    seed: int

    @property
    def hash(self) -> str:
        return hashlib.sha256("\n".join(self.paths).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.paths)


def image_list(root: str | Path, num_images: int, seed: int = 0) -> ImageList:
    """`num_images` files drawn without replacement (seeded) from the class folders under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected class folders <root>/<class>/*.JPEG)")
    files = sorted(str(p.relative_to(root)) for p in root.glob("*/*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"no images under {root}/<class>/ (extensions {', '.join(IMAGE_EXTS)})")
    if len(files) < num_images:
        raise ValueError(f"{root} holds {len(files)} images, fewer than the {num_images} the protocol asks for")
    perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:num_images]
    return ImageList(root, tuple(files[i] for i in perm.tolist()), seed)


def eval_transform(resize: int = 256, crop: int = 224):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def view_transform(
    crop: int = 224, scale=(0.2, 1.0), flip: float = 0.5, color_jitter: float = 0.4, grayscale: float = 0.2
):
    """The SSL-style augmentation LiDAR's views are drawn with (settings from the protocol file)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(crop, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(flip),
            T.RandomApply([T.ColorJitter(color_jitter, color_jitter, color_jitter / 2, color_jitter / 4)], p=0.8),
            T.RandomGrayscale(grayscale),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: ImageList, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(open_rgb(self.images.root / self.images.paths[i]))


def _progress(it, total: int, desc: str, enabled: bool):
    import sys

    from tqdm.auto import tqdm

    # a bar only on a terminal: in a cell's log file its frames would be noise
    return tqdm(it, total=total, desc=desc, unit="batch", disable=not (enabled and sys.stderr.isatty()), leave=False)


def maybe_autocast(device: str, dtype: torch.dtype | None):
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


_CODE: list[str] = []


def features_code() -> str:
    """The version of the code that turns a checkpoint and images into features: the source of this module,
    of the model factory and the checkpoint loader, of image decoding, and the libraries' versions."""
    if not _CODE:
        import sys

        import PIL
        import timm
        import torchvision

        from harness.datasets import _mode_problem
        from harness.models import archs, checkpoints

        code = source_digest(sys.modules[__name__], archs, checkpoints, open_rgb, _mode_problem)
        libs = f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}"
        _CODE.append(f"{code} ({libs}, Pillow {PIL.__version__})")
    return _CODE[0]


def cache_inputs(images: ImageList, resize: int, crop: int, precision: str) -> dict:
    """What cached features were computed from, besides the backbone (the caller's key): the images (their
    resolved root, list and every file's `stat`), the transform, the precision and the code."""
    import os

    return {
        "root": os.path.realpath(images.root),
        "images": images.hash,
        "seed": images.seed,
        "files": stat_stamp([images.root / p for p in images.paths], images.root),
        "transform": repr(eval_transform(resize, crop)),
        "precision": precision,
        "code": features_code(),
    }


@torch.no_grad()
def extract_dense(
    backbone,
    images: ImageList,
    *,
    resize: int = 256,
    crop: int = 224,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_key: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    autocast: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(dense [images, tokens, d], embeddings [images, d], how they were obtained), float32 on the CPU.
    The backbone runs on `device` (under autocast to `autocast` when given); `num_workers` processes
    decode and crop, into pinned memory when the device is a GPU. `cache_key` must cover the backbone (the
    checkpoint's content and how it is loaded); the entry is keyed besides by `cache_inputs` (the images'
    root, list and stat, the transform, the precision, the code), which the cached file also holds: a file
    whose inputs are not these is recomputed, never used."""
    path = inputs = None
    if cache_key is not None:
        import hashlib
        import json

        precision = "float32" if autocast is None else str(autocast).removeprefix("torch.")
        inputs = cache_inputs(images, resize, crop, precision)
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
        name = f"{cache_key}_{images.hash}_{resize}_{crop}_{precision}_{digest}.pt"
        path = Path(cache_dir or cache_root() / "features") / name
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                if cached.get("inputs") == inputs:
                    return cached["features"], cached["embeddings"], {"cache": "hit", "path": str(path)}
            except Exception:  # a torn or older cache file is recomputed, never trusted
                pass
            path.unlink(missing_ok=True)
    backbone.eval()
    cuda = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(
        _Images(images, eval_transform(resize, crop)),
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        pin_memory=cuda,
        persistent_workers=False,
    )
    dense, emb = [], []
    with maybe_autocast(device, autocast):
        for x in _progress(loader, len(loader), "features", progress):
            d, e = backbone.dense_and_embedding(x.to(device, non_blocking=cuda))
            dense.append(d.float().cpu())
            emb.append(e.float().cpu())
    feats, embeddings = torch.cat(dense), torch.cat(emb)
    info = {"cache": "miss" if path else "off"}
    if path is not None:
        save_tensors({"features": feats, "embeddings": embeddings, "inputs": inputs}, path)
        info["path"] = str(path)
    return feats, embeddings, info


@torch.no_grad()
def extract_views(
    backbone,
    images: ImageList,
    views: int,
    *,
    seed: int = 0,
    batch_size: int = 64,
    augment: dict | None = None,
    progress: bool = True,
    device: str = "cpu",
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """[images, views, d] image-level embeddings (`Backbone.embed`) of augmented views, on the CPU. The
    augmentations draw from torch's global RNG in this process (no workers), so they are the same on every
    device."""
    tf = view_transform(**(augment or {}))
    ds = _Images(images, lambda im: torch.stack([tf(im) for _ in range(views)]))
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the augmentations draw from torch's global RNG; restored below
    try:
        loader = torch.utils.data.DataLoader(ds, batch_size=max(1, batch_size // views), shuffle=False)
        out = []
        with maybe_autocast(device, autocast):
            for x in _progress(loader, len(loader), "views", progress):
                b = x.shape[0]
                emb = backbone.embed(x.flatten(0, 1).to(device)).float().view(b, views, -1)
                out.append(emb.cpu())
    finally:
        torch.random.set_rng_state(torch_state)
    return torch.cat(out)

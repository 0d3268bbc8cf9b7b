"""The linear probe's faster train pipeline (issue 15), checked against mmseg's own transforms.

PhotoMetricDistortion on the device: the batched tensor op gives mmseg's transform's pixels for the
same draws, draws from the same distribution, and the augmented batches have the same statistics; the
data preprocessor applies it to training batches only, and cells place it where it is faster.
SDDRandomCrop: mmseg's crops, draw for draw."""

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from harness.jobs import photometric
from harness.mini.generate import Painter
from harness.mmcv_shim import import_mmseg


@pytest.fixture(scope="module")
def transform():
    import_mmseg()
    from mmseg.datasets.transforms import PhotoMetricDistortion

    return PhotoMetricDistortion()


def images(n: int, seed: int = 0, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """BGR 8-bit scenes as the generated datasets draw them, and one of uniform noise (every colour)."""
    painter = Painter(6, seed)
    out = [
        np.clip(painter.scene(h, w, [1, 2, 3, 4, 5, 6])[0], 0, 255).astype(np.uint8)[..., ::-1].copy()
        for _ in range(n - 1)
    ]
    out.append(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return out


def mmseg_draws() -> dict:
    """One image's parameters, consuming numpy's global generator in the order mmseg's transform does."""
    r = np.random
    d = {"brightness_on": r.randint(2)}
    d["brightness"] = r.uniform(-32, 32) if d["brightness_on"] else 0.0
    d["contrast_first"] = r.randint(2)  # mmseg's mode == 1
    if d["contrast_first"]:
        d["contrast_on"] = r.randint(2)
        d["contrast"] = r.uniform(0.5, 1.5) if d["contrast_on"] else 1.0
    d["saturation_on"] = r.randint(2)
    d["saturation"] = r.uniform(0.5, 1.5) if d["saturation_on"] else 1.0
    d["hue_on"] = r.randint(2)
    d["hue"] = r.randint(-18, 18) if d["hue_on"] else 0
    if not d["contrast_first"]:
        d["contrast_on"] = r.randint(2)
        d["contrast"] = r.uniform(0.5, 1.5) if d["contrast_on"] else 1.0
    return d


def as_params(draws: list[dict]) -> dict:
    out = {}
    for k in draws[0]:
        v = [d[k] for d in draws]
        out[k] = (
            torch.tensor(v, dtype=torch.bool)
            if k.endswith(("_on", "_first"))
            else torch.tensor(v, dtype=torch.int64 if k == "hue" else torch.float64)
        )
    return out


def to_tensor(imgs):
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()


def test_the_batched_op_gives_mmsegs_pixels_for_the_same_draws(transform):
    imgs = images(24)
    refs, draws = [], []
    for k, img in enumerate(imgs * 4):  # each image under 4 different draws
        np.random.seed(k)
        refs.append(transform.transform({"img": img.copy()})["img"])
        np.random.seed(k)
        draws.append(mmseg_draws())
    ours = photometric.distort(to_tensor(imgs * 4), as_params(draws)).permute(0, 2, 3, 1).numpy()
    diff = np.abs(ours - np.stack(refs).astype(np.float32))
    # BGR->HSV is bit-exact; OpenCV's 8-bit HSV->BGR truncates in its vector lanes and rounds in a row's
    # tail, so a value may differ by a level, which a later step can stretch (hue of a grey-ish pixel)
    assert (diff == 0).mean() >= 0.99, (diff == 0).mean()
    assert (diff <= 1).mean() >= 0.999, (diff <= 1).mean()
    assert diff.max() <= 3, diff.max()
    assert np.abs(ours.mean() - np.stack(refs).mean()) < 0.5
    identity = {k: torch.zeros(1, dtype=v.dtype) for k, v in as_params(draws[:1]).items()}
    x = to_tensor(imgs[:1])
    assert torch.equal(photometric.distort(x, identity), x)  # every step off: the image unchanged


def test_the_draws_have_mmsegs_distribution():
    n = 20000
    ours = photometric.sample(n, torch.Generator().manual_seed(0))
    np.random.seed(0)
    ref = as_params([mmseg_draws() for _ in range(n)])
    for key in ("brightness_on", "contrast_first", "contrast_on", "saturation_on", "hue_on"):
        assert abs(ours[key].float().mean().item() - ref[key].float().mean().item()) < 0.02, key
    for key, lo, hi in (("brightness", -32, 32), ("contrast", 0.5, 1.5), ("saturation", 0.5, 1.5)):
        a, b = ours[key].numpy(), ref[key][ref[f"{key}_on"]].numpy()
        assert lo <= a.min() and a.max() <= hi
        assert ks_2samp(a, b).pvalue > 0.001, key
    assert set(ours["hue"].tolist()) == set(range(-18, 18)) == set(ref["hue"][ref["hue_on"]].tolist())


def test_augmented_batches_have_the_statistics_of_mmsegs_transform(transform):
    imgs = images(8, seed=3)
    np.random.seed(1)
    ref = np.stack([transform.transform({"img": img.copy()})["img"] for _ in range(150) for img in imgs])
    x = to_tensor(imgs * 150)
    ours = photometric.distort(x, photometric.sample(len(x), torch.Generator().manual_seed(1)))
    ours = ours.permute(0, 2, 3, 1).numpy()
    ref_means, our_means = ref.reshape(len(ref), -1, 3).mean(1), ours.reshape(len(ours), -1, 3).mean(1)
    ref_stds, our_stds = ref.reshape(len(ref), -1, 3).std(1), ours.reshape(len(ours), -1, 3).std(1)
    assert np.abs(ref_means.mean(0) - our_means.mean(0)).max() < 3  # per-channel mean over the batches
    assert np.abs(ref_means.std(0) / our_means.std(0) - 1).max() < 0.15  # spread of image means
    assert np.abs(ref_stds.mean(0) / our_stds.mean(0) - 1).max() < 0.1  # contrast within images
    assert ks_2samp(ref_means[:, 1], our_means[:, 1]).pvalue > 0.001


def test_the_preprocessor_distorts_training_batches_only():
    import harness.jobs.mm_modules as mm

    kw = dict(mean=[0, 0, 0], std=[1, 1, 1], bgr_to_rgb=True, size=(48, 64), pad_val=0, seg_pad_val=255)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    def batch():
        imgs = images(3, seed=5)
        imgs[1] = imgs[1][:40, :50].copy()  # two shapes: grouped, padded after the distortion
        samples = []
        for im in imgs:
            s = SegDataSample()
            s.gt_sem_seg = PixelData(data=torch.zeros(1, *im.shape[:2], dtype=torch.long))
            samples.append(s)
        return {"inputs": [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in imgs], "data_samples": samples}

    plain = mm.SDDSegDataPreProcessor(photometric=False, **kw)(batch(), training=True)["inputs"]
    pre = mm.SDDSegDataPreProcessor(photometric=True, seed=3, **kw)
    distorted = pre(batch(), training=True)["inputs"]
    assert distorted.shape == plain.shape == (3, 3, 48, 64)
    assert not torch.equal(distorted, plain)
    assert torch.all(distorted[1, :, 40:, :] == 0) and torch.all(distorted[1, :, :, 50:] == 0)  # padding untouched
    again = mm.SDDSegDataPreProcessor(photometric=True, seed=3, **kw)(batch(), training=True)["inputs"]
    assert torch.equal(distorted, again)  # seeded
    test_batch = batch()
    test_batch["inputs"] = [test_batch["inputs"][0]]
    test_batch["data_samples"] = test_batch["data_samples"][:1]
    assert torch.equal(
        pre(test_batch, training=False)["inputs"],
        mm.SDDSegDataPreProcessor(photometric=False, **kw)(batch(), training=True)["inputs"][:1],
    )


def test_the_random_crop_gives_mmsegs_crops_draw_for_draw():
    from mmseg.datasets.transforms import RandomCrop

    import harness.jobs.mm_modules as mm

    rng = np.random.default_rng(0)
    ours, ref = (
        mm.SDDRandomCrop(crop_size=(32, 48), cat_max_ratio=0.75),
        RandomCrop(crop_size=(32, 48), cat_max_ratio=0.75),
    )
    retried = 0
    for k in range(200):
        h, w = rng.integers(20, 90, 2)
        seg = np.zeros((h, w), np.uint8)
        for _ in range(rng.integers(0, 4)):  # a few regions, sometimes one class fills the image
            y, x = rng.integers(0, h), rng.integers(0, w)
            seg[y : y + rng.integers(5, 40), x : x + rng.integers(5, 40)] = rng.choice([1, 2, 7, 255])
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.random.seed(k)
        a = ours.transform({"img": img.copy(), "gt_seg_map": seg.copy(), "seg_fields": ["gt_seg_map"]})
        state = np.random.get_state()[2]
        np.random.seed(k)
        b = ref.transform({"img": img.copy(), "gt_seg_map": seg.copy(), "seg_fields": ["gt_seg_map"]})
        assert np.array_equal(a["img"], b["img"]) and np.array_equal(a["gt_seg_map"], b["gt_seg_map"]), k
        assert state == np.random.get_state()[2]  # the same number of draws
        retried += state > 2
    assert retried > 0  # the class-ratio rule did redraw crops


def test_cells_place_the_distortion_where_it_is_faster():
    from harness.jobs.segmentation import photometric_where
    from harness.params import LinearParams

    assert photometric_where(LinearParams(), cuda=True) == "device"
    assert photometric_where(LinearParams(), cuda=False) == "pipeline"  # OpenCV beats the op on a CPU
    assert photometric_where(LinearParams(photometric_on="device"), cuda=False) == "device"
    assert photometric_where(LinearParams(photometric=False), cuda=True) == "off"

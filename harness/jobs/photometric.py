"""mmseg's PhotoMetricDistortion as one batched tensor op on the cell's device.

On the CPU side of a segmentation train pipeline, PhotoMetricDistortion costs a data worker as much as
the resize (two HSV round trips through OpenCV per image; see `make bench`), while on a GPU the same
arithmetic over a whole batch is a few small kernels. So the probes' train pipelines stop at the crop
and flip, and `SDDSegDataPreProcessor` distorts the batch on the device, before normalisation.

What is kept: the distribution (each of brightness, contrast, saturation and hue applied with
probability 1/2, contrast before or after the colour steps with probability 1/2, the same ranges,
numpy's exclusive upper bound on the hue shift), the order of the steps, mmseg's truncation to 8 bits
after each step and OpenCV's 8-bit HSV (H in 0..179, S and V in 0..255, each step its own round trip).
Tested against mmseg's transform with the same draws (99% of values equal, 99.9% within one level:
OpenCV's HSV->BGR truncates in its vector lanes and rounds in a row's tail) and on the statistics of
augmented batches (tests/test_probe_pipeline.py).
"""

from __future__ import annotations

import torch

BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18


def sample(n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-image parameters for `distort`, drawn on the CPU (the same numbers on every device)."""

    def uniform(lo, hi):
        return torch.empty(n, dtype=torch.float64).uniform_(lo, hi, generator=generator)

    coin = torch.randint(0, 2, (n, 5), generator=generator).bool()
    return {
        "brightness_on": coin[:, 0],
        "brightness": uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA),
        "contrast_first": coin[:, 1],
        "contrast_on": coin[:, 2],
        "contrast": uniform(*CONTRAST_RANGE),
        "saturation_on": coin[:, 3],
        "saturation": uniform(*SATURATION_RANGE),
        "hue_on": coin[:, 4],
        "hue": torch.randint(-HUE_DELTA, HUE_DELTA, (n,), generator=generator),
    }


def _convert(x: torch.Tensor, alpha=1.0, beta=0.0) -> torch.Tensor:
    """mmseg's `convert`: float32 multiply-add, clip to 0..255, truncate to 8 bits."""
    return (x * alpha + beta).clamp_(0, 255).floor_()


_SHIFT = 12  # OpenCV's 8-bit BGR2HSV works in fixed point: reciprocal tables scaled by 2^12, rounded
_LEVELS = torch.arange(256, dtype=torch.float64).clamp(min=1)
_SDIV = torch.round((255 << _SHIFT) / _LEVELS).long()
_HDIV = torch.round((180 << _SHIFT) / (6 * _LEVELS)).long()


def bgr_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's COLOR_BGR2HSV on 8-bit values, bit for bit: H ~ 30 * (sector offset) / (max - min) in
    0..179, S ~ 255 * (max - min) / max, V = max, through OpenCV's fixed-point tables; red wins ties,
    then green."""
    b, g, r = x.long().unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (_SHIFT - 1)
    s = torch.where(v > 0, (diff * _SDIV.to(x.device)[v] + half) >> _SHIFT, 0)
    raw = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = torch.where(diff > 0, torch.div(raw * _HDIV.to(x.device)[diff] + half, 1 << _SHIFT, rounding_mode="floor"), 0)
    h = torch.where(h < 0, h + 180, h)
    return torch.stack([h, s, v], 1).to(x.dtype)


# OpenCV's HSV2RGB: for each of the six hue sectors, which of (v, p, q, t) is (b, g, r)
_SECTORS = torch.tensor([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def hsv_to_bgr(hsv: torch.Tensor) -> torch.Tensor:
    """OpenCV's COLOR_HSV2BGR on 8-bit values: through float (H * 6/180, S/255, V/255), truncated to 8 bits
    as OpenCV's vector lanes do (its scalar tail rounds, so OpenCV itself differs by a level with the
    pixel's position in a row)."""
    h, s, v = hsv.unbind(1)
    h = torch.remainder(h * (6.0 / 180.0), 6.0)
    s, v = s / 255.0, v / 255.0
    sector = torch.floor(h)
    f = h - sector
    sector = sector.long().clamp_(0, 5)
    tab = torch.stack([v, v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))], 1)  # (N, 4, H, W)
    idx = _SECTORS.to(hsv.device)[sector].permute(0, 3, 1, 2)  # (N, 3, H, W): the tab entry of b, g, r
    bgr = torch.gather(tab, 1, idx)
    bgr = torch.where((s == 0).unsqueeze(1), v.unsqueeze(1).expand_as(bgr), bgr)
    return torch.floor(bgr * 255).clamp_(0, 255)


def distort(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """PhotoMetricDistortion of a batch (N, 3, H, W) of BGR pixel values (integers 0..255, any float dtype
    computed as float32), per-image parameters from `sample`. Returns float32 values 0..255."""
    x = x.float()
    p = {k: v.to(x.device) for k, v in params.items()}
    col = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    f32 = lambda t: col(t.float())  # noqa: E731  (mmseg multiplies float32 pixels by the drawn value)

    def step(x, on, out):
        return torch.where(col(on), out, x)

    def contrast(x, when):
        return step(x, p["contrast_on"] & when, _convert(x, alpha=f32(p["contrast"])))

    x = step(x, p["brightness_on"], _convert(x, beta=f32(p["brightness"])))
    x = contrast(x, p["contrast_first"])
    if p["saturation_on"].any():
        hsv = bgr_to_hsv(x)
        hsv[:, 1] = _convert(hsv[:, 1], alpha=f32(p["saturation"]).squeeze(1))
        x = step(x, p["saturation_on"], hsv_to_bgr(hsv))
    if p["hue_on"].any():
        hsv = bgr_to_hsv(x)
        hsv[:, 0] = torch.remainder(hsv[:, 0] + col(p["hue"]).squeeze(1).float(), 180)
        x = step(x, p["hue_on"], hsv_to_bgr(hsv))
    return contrast(x, ~p["contrast_first"])

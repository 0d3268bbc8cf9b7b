"""W2Loss: the Wasserstein uniformity loss of Fang et al. (ICLR 2024), `loss = task_loss + lambda * W2Loss()(z)`.

The closed form of statsle/WassersteinSSL (code/*/module.py `calc_wasserstein_loss`): the 2-Wasserstein
distance between N(mu, Sigma) of the L2-normalised rows and N(0, I/m),

    W2 = sqrt(|mu|^2 + 1 + tr(Sigma) - (2 / sqrt(m)) tr(Sigma^(1/2))),    Sigma with 1/N,

where the reference concatenates the two views' normalised projector outputs and takes Sigma^(1/2) from
`torch.eig` (absolute eigenvalues). Here the symmetric eigensolver gives the same eigenvalues; they are
clamped at `eps` before the square root, so a degenerate batch (identical rows: Sigma = 0) has a finite
loss and gradient instead of sqrt(0)'s infinite derivative. The metric version (no gradient) is
`harness.metrics.spectrum.w2_uniformity`.

    w2 = W2Loss()
    for x1, x2 in loader:                                  # two augmented views
        z1, z2 = model(x1), model(x2)                      # projector outputs [B, m]
        loss = task_loss(z1, z2) + 0.2 * w2(torch.cat([z1, z2]))
        loss.backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class W2Loss(nn.Module):
    """W2 distance of [N, m] rows (L2-normalised first unless `normalize=False`) to N(0, I/m); lower is
    more uniform. A differentiable scalar."""

    def __init__(self, normalize: bool = True, eps: float = 1e-12):
        super().__init__()
        self.normalize, self.eps = normalize, eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or len(z) < 2:
            raise ValueError(f"W2Loss: expected [N >= 2, m] rows, got {tuple(z.shape)}")
        if self.normalize:
            z = F.normalize(z, dim=1)
        n, m = z.shape
        mu = z.mean(dim=0)
        centred = z - mu
        cov = centred.T @ centred / n
        ev = torch.linalg.eigvalsh(cov)
        root_trace = ev.clamp_min(self.eps).sqrt().sum()
        w2sq = mu.dot(mu) + 1 + cov.trace() - 2 / math.sqrt(m) * root_trace
        return w2sq.clamp_min(self.eps).sqrt()

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"

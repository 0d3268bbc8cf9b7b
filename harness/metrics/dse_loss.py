"""DSELoss: DSE as a differentiable regulariser, `loss = task_loss - beta * DSELoss()(tokens)`.

Follows the official `DSE_regularizer.py` (protocols §1.8, §2.11) where it differs from the estimator:
k-means runs without gradient, seeded (k-means++, distance-weighted) from every point, an empty cluster
re-initialised to a random point, labels re-assigned with the final centroids; epsilon 1e-12 in the
avg_l2 denominators, images without a valid local cluster are skipped (not counted as 1.0), and the
dimensionality term is one effective rank over all B·N tokens divided by min(B·N, d). Gradients flow
through the cluster nuclear norms, the distances to the (differentiable) cluster means and the
effective rank.

Deliberate difference: the official regulariser reseeds the *global* RNG on every call (which also
resets the training's augmentation and dropout randomness); here k-means draws from a private
generator, so training randomness is untouched.

    dse = DSELoss()                                        # one per run: its k-means generator is seeded
    for x1, x2 in loader:                                  # two augmented views
        loss = task_loss(model, x1, x2)                    # the method's own objective
        tokens = model.backbone.forward_features(x1)[:, 1:]    # [B, N, d] patch tokens (no CLS / registers)
        loss = loss - 0.001 * dse(tokens)                  # beta = 0.001, the SDD paper's resumed runs
        opt.zero_grad(); loss.backward(); opt.step()

The mini world's pre-trainer does exactly this (`harness/mini/pretrain.py --dse-beta`), and
`sdd demo --interventions` measures what it does there (docs/demo.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.metrics.kmeans import kmeans_batched, sqdist

EPS = 1e-12


def _cluster_means(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    onehot = F.one_hot(labels, k).to(x.dtype)  # [P, n, k]
    counts = onehot.sum(dim=1)  # [P, k]
    means = onehot.transpose(1, 2) @ x / counts.clamp_min(1)[..., None]
    return means, counts


def _radii(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[P, k] nuclear norm of each centred cluster / sqrt(max(n-1, d)), differentiable, and validity."""
    p, n, d = x.shape
    means, counts = _cluster_means(x, labels, k)
    centred = x - torch.gather(means, 1, labels[..., None].expand(p, n, d))
    masks = F.one_hot(labels, k).to(x.dtype).permute(0, 2, 1)[..., None]  # [P, k, n, 1]
    per_cluster = centred[:, None] * masks  # [P, k, n, d]; rows of other clusters are zero
    nuc = torch.linalg.svdvals(per_cluster).sum(dim=-1)
    return nuc / torch.sqrt(torch.clamp(counts - 1, min=d)), counts > 1


class DSELoss(nn.Module):
    """Returns DSE (higher = better dense structure) of [B, N, d] tokens as a differentiable scalar."""

    def __init__(
        self,
        local_clusters: int = 3,
        global_clusters: int = 24,
        normalize: bool = True,
        iters: int = 20,
        tol: float = 1e-4,
        seed: int = 0,
    ):
        super().__init__()
        self.kl, self.kg, self.normalize, self.iters, self.tol = local_clusters, global_clusters, normalize, iters, tol
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def _labels(self, x: torch.Tensor, k: int) -> torch.Tensor:
        gen = (
            self.generator
            if x.device.type == "cpu"
            else torch.Generator(device=x.device).manual_seed(
                int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
            )
        )
        p, _, _ = x.shape
        u = torch.rand(p, k, generator=gen, device=x.device)

        def random_points(xw):  # the regulariser re-initialises an empty cluster to a random point
            w, n, _ = xw.shape
            pick = torch.randint(0, n, (w, k), generator=gen, device=xw.device)
            return xw[torch.arange(w, device=xw.device)[:, None], pick].float()

        # seeded from every point (no subsample), as the regulariser's k-means++; in x's dtype
        _, c = kmeans_batched(x, k, u, None, self.iters, self.tol, seed_points=None, refill=random_points)
        # labels re-assigned with the final centroids, as the regulariser does
        return sqdist(x, c.to(x.dtype)).argmin(dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 3 or z.shape[1] < self.kl:
            raise ValueError(f"DSELoss: expected [B, N >= {self.kl}, d] tokens, got {tuple(z.shape)}")
        if self.normalize:
            z = F.normalize(z, dim=-1)
        b, n, d = z.shape
        flat = z.reshape(-1, d)
        avg_l2 = (flat - flat.mean(dim=0)).norm(dim=1).mean() + EPS

        lab = self._labels(z.detach(), self.kl)
        r, valid = _radii(z, lab, self.kl)
        nvalid = valid.sum(dim=1)
        keep = nvalid > 0  # images without a valid cluster are skipped
        per_img = (r * valid).sum(dim=1)[keep] / nvalid[keep]
        intra_image = per_img.mean() / avg_l2 if keep.any() else z.new_tensor(1.0)

        group = max(1, self.kg // self.kl)
        usable = (b // group) * group or b
        xs = z[:usable].reshape(-1, min(group, usable) * n, d)
        glab = self._labels(xs.detach(), self.kg)
        r, valid = _radii(xs, glab, self.kg)
        intra_batch = r[valid].mean() / avg_l2 if valid.any() else z.new_tensor(1.0)
        means, _ = _cluster_means(xs, glab, self.kg)
        dist = torch.cdist(xs, means) + 1e9 * F.one_hot(glab, self.kg).to(xs.dtype)  # mask own centroid
        inter = dist.min(dim=-1).values.mean() / avg_l2

        s = torch.linalg.svdvals(flat)
        p = s / (s.sum() + EPS) + EPS
        dim = torch.exp(-(p * p.log()).sum()) / min(b * n, d)
        return inter + dim - (intra_batch + intra_image) / 2

    def extra_repr(self) -> str:
        return f"local_clusters={self.kl}, global_clusters={self.kg}, normalize={self.normalize}"

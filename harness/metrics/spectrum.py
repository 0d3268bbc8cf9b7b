"""Uniformity and spectrum metrics, pure functions of [n, d] embedding matrices (protocols §3).

- `w2_uniformity`: Wasserstein-2 distance between N(mu, Sigma) of L2-normalised features and N(0, I/m)
  (Fang et al.): sqrt(|mu|² + 1 + tr Sigma - 2/sqrt(m) tr Sigma^1/2), Sigma biased (1/n); computed with
  `eigh` + clamp in float64 (the reference uses `eig` + 1e-8, which can NaN on tiny negative eigenvalues).
  Report -W2 as the uniformity (higher = more uniform).
- `lu_uniformity`: Wang & Isola -L_U = -log mean_{i<j} exp(-t |x_i - x_j|²), t = 2, on a fixed subsample.
- `rankme`: exp entropy of the normalised singular values of the (uncentred) matrix, eps 1e-7.
- `effective_rank`: the same without eps (Roy & Vetterli).
- `alpha_req`: power-law exponent of the centred covariance eigenspectrum, weighted least squares with
  weights 1/rank on ranks [fit_min, fit_max] (reptrix's recipe: ranks 6..100); the range is returned.
- `singular_spectrum`: log singular values of the covariance of L2-normalised embeddings (DirectCLR),
  and the number of collapsed dimensions below a threshold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check(z: torch.Tensor, name: str) -> torch.Tensor:
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"{name}: expected an [n >= 2, d] matrix, got shape {tuple(z.shape)}")
    if not torch.isfinite(z.sum()) and not torch.isfinite(z).all():  # the full mask only if the sum is off
        raise ValueError(f"{name}: embeddings contain NaN/inf")
    return z.double()


def normalised_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, biased covariance, n) of the L2-normalised rows, float64: shared by W2 and the spectrum."""
    x = F.normalize(_check(z, "moments"), dim=1)
    mu = x.mean(dim=0)
    xc = x - mu
    return mu, xc.T @ xc / len(x), len(x)


def _rows(z: torch.Tensor | None) -> torch.Tensor:
    if z is None:
        raise ValueError("give the rows z, or their moments")
    return z


def w2_uniformity(z: torch.Tensor | None = None, *, moments: tuple | None = None) -> float:
    """W2 distance to N(0, I/m) of the L2-normalised rows (lower = more uniform)."""
    mu, cov, _ = moments if moments is not None else normalised_moments(_rows(z))
    m = len(mu)
    ev = torch.linalg.eigvalsh(cov).clamp_min(0)
    w2sq = mu.dot(mu) + 1 + cov.trace() - 2 / math.sqrt(m) * ev.sqrt().sum()
    return math.sqrt(max(w2sq.item(), 0.0))


def lu_uniformity(z: torch.Tensor, t: float = 2.0, max_vectors: int = 10000, seed: int = 0) -> float:
    """-L_U of Wang & Isola on L2-normalised rows (a fixed subsample above `max_vectors`)."""
    if z.ndim == 2 and len(z) > max_vectors:
        z = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:max_vectors].to(z.device)]
    x = F.normalize(_check(z, "L_U"), dim=1).float()
    # log-mean-exp over the pairs i < j, accumulated over row blocks (no n² matrix in memory);
    # for unit vectors -t |x_i - x_j|² = 2t x_i·x_j - 2t, so each block needs one product and one scale
    n = len(x)
    parts = []
    for s0 in range(0, n - 1, 512):  # 512 x 10,000 float32 blocks stay below glibc's mmap threshold (reused)
        block = x[s0 : s0 + 512]
        m = len(block)
        logits = (block @ x[s0 + 1 :].T).mul_(2 * t)
        w = min(m, logits.shape[1])  # column c is vector s0 + 1 + c: pairs j <= i sit in the first m columns
        logits[:, :w].masked_fill_(
            torch.arange(w, device=x.device)[None, :] < torch.arange(m, device=x.device)[:, None], float("-inf")
        )
        parts.append(torch.logsumexp(logits.flatten(), dim=0).double())
    pairs = n * (n - 1) / 2
    return -(torch.logsumexp(torch.stack(parts), dim=0) - 2 * t - math.log(pairs)).item()


def _entropy_rank(s: torch.Tensor, eps: float) -> float:
    p = s / s.sum() + eps
    return math.exp(-(p * p.log()).sum().item())


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    return _entropy_rank(torch.linalg.svdvals(_check(z, "RankMe")), eps)


def effective_rank(z: torch.Tensor) -> float:
    s = torch.linalg.svdvals(_check(z, "erank"))
    s = s[s > 0]
    return _entropy_rank(s, 0.0)


def alpha_req(z: torch.Tensor, fit_min: int = 11, fit_max: int = 100) -> dict:
    """Power-law decay alpha of the covariance eigenspectrum (lambda_i ~ i^-alpha, eigenvalues normalised to
    sum 1): a least-squares line through (log i, log lambda_i) weighted by 1/sqrt(i), over the ranks
    fit_min..min(fit_max, number of positive eigenvalues) (reptrix's 11..100 by default). The ranks actually
    used are returned; fewer than three is an error."""
    x = _check(z, "alpha-ReQ")
    x = x - x.mean(dim=0)
    ev = torch.linalg.eigvalsh(x.T @ x / (len(x) - 1)).flip(0)
    ev = ev / ev.sum()
    hi = min(fit_max, int((ev > 0).sum()))
    if hi - fit_min < 2:
        raise ValueError(f"alpha-ReQ: only {hi} positive eigenvalues, need ranks {fit_min}..{fit_max}")
    ranks = torch.arange(fit_min, hi + 1, dtype=torch.float64, device=ev.device)
    y = ev[fit_min - 1 : hi].log()
    a = torch.stack([-ranks.log(), torch.ones_like(ranks)], dim=1)
    w = (1 / ranks).sqrt()[:, None]
    sol = torch.linalg.lstsq(a * w, y[:, None] * w).solution
    return {"alpha": sol[0, 0].item(), "fit_ranks": [fit_min, hi]}


def singular_spectrum(
    z: torch.Tensor | None = None, collapse_threshold: float = 1e-6, *, moments: tuple | None = None
) -> dict:
    """log singular values (descending) of the covariance of L2-normalised rows, and the number of
    dimensions whose singular value is below `collapse_threshold` times the largest."""
    _, cov, n = moments if moments is not None else normalised_moments(_rows(z))
    # the unbiased covariance (torch.cov) is symmetric PSD: its singular values are |eigenvalues|
    s = (torch.linalg.eigvalsh(cov * (n / (n - 1))).abs()).sort(descending=True).values
    collapsed = int((s < collapse_threshold * s[0]).sum())
    return {"log_sv": s.clamp_min(1e-30).log().tolist(), "collapsed_dims": collapsed}


def lidar(views: torch.Tensor, delta: float = 1e-6, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al.): effective rank of the LDA matrix Sw^-1/2 Sb Sw^-1/2, from embeddings of
    q augmented views of n source images, `views` [n, q, d]. Eigenvalues of the LDA matrix are used
    directly (reptrix instead takes a PCA of its rows, which is not the definition)."""
    if views.ndim != 3 or views.shape[0] < 2 or views.shape[1] < 2:
        raise ValueError(f"LiDAR: expected [n >= 2 images, q >= 2 views, d], got shape {tuple(views.shape)}")
    if not torch.isfinite(views.sum()) and not torch.isfinite(views).all():
        raise ValueError("LiDAR: embeddings contain NaN/inf")
    n, q, d = views.shape
    sw = torch.zeros(d, d, dtype=torch.float64, device=views.device)
    means = []
    step = max(1, (16 << 20) // (q * d * 8))  # float64 slices of ~16 MB: no copy of all views at once
    for i in range(0, n, step):
        e = views[i : i + step].double()
        means.append(e.mean(dim=1))
        within = (e - means[-1][:, None]).reshape(-1, d)
        sw += within.T @ within
    mu_x = torch.cat(means)
    mu = mu_x.mean(dim=0)
    sb = (mu_x - mu).T @ (mu_x - mu) / n
    sw = sw / (n * q) + delta * torch.eye(d, dtype=torch.float64, device=views.device)
    w_ev, w_vec = torch.linalg.eigh(sw)
    inv_sqrt = w_vec @ torch.diag(w_ev.clamp_min(1e-30).rsqrt()) @ w_vec.T
    lam = torch.linalg.eigvalsh(inv_sqrt @ sb @ inv_sqrt).clamp_min(0)
    return _entropy_rank(lam, eps)

"""DSE (Dense representation Structure Estimator) as the official code computes it.

Quantity of `estimator.py` / `get_DSE.py` of EldercatSAM/SSL-Degradation (protocols §2), per batch
of B images with N tokens of dimension d:

    DSE_raw = inter + dim - (intra_batch + intra_image) / 2        (λ = 1; λ is applied per method
                                                                     across checkpoints, `dse_lambda`)
- tokens L2-normalised; radius and distance terms divided by avg_l2 (mean distance of a token to
  the batch mean);
- intra_image: k-means (k=3) per image; per cluster with > 1 point the nuclear norm of the centred
  cluster / sqrt(max(n-1, d)); mean over clusters (1.0 if none), mean over images;
- intra_batch / inter: k-means (k=24) per group of 8 images; cluster radii as above, averaged over
  the flat list of all groups' clusters; inter = per group, the point-mean of the (non-squared)
  distance to the nearest *other* centroid, averaged over groups;
- dim: one random token per image per slot (an independent permutation per image), the effective
  rank of each uncentred B×d slot matrix / min(B, d), averaged over the N slots.

Two modes:
- "parity": the official algorithm's semantics: k-means++ with D-weighted (not D²) sampling, the
  generator reseeded to `seed` for every k-means problem, 20 Lloyd iterations, tol 1e-4 on the
  Frobenius centroid shift, an empty cluster keeps its centroid, labels from the last assignment
  (computed with the previous centroids) against the updated centroids, permutations drawn from the
  generator state the last global k-means left. Lloyd steps run batched over problems (each frozen
  at its own stopping iteration), cluster radii per cluster as in the reference. On CPU the random
  draws come from the CPU generator; the official code draws its multinomials on CUDA.
- "fast": the same quantity with batched k-means++ (inverse-CDF sampling from one generator),
  batched Lloyd, and batched Gram-matrix eigenvalues for the radii (no loops over images, clusters
  or points). It differs from parity only through k-means local optima.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

COMPONENTS = ("dse", "inter", "intra_image", "intra_batch", "dim")


@dataclass
class DSEResult:
    dse: float  # raw DSE, λ = 1
    inter: float
    intra_image: float
    intra_batch: float
    dim: float  # effective dimensionality (= dense RankMe, "RankMe†")
    separability: float  # inter - (intra_batch + intra_image) / 2
    batches: int
    mode: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_features(z: torch.Tensor, *, min_tokens: int = 1) -> None:
    if z.ndim != 3:
        raise ValueError(f"dense features must be [images, tokens, dim], got shape {tuple(z.shape)}")
    if z.shape[0] < 1 or z.shape[1] < min_tokens:
        raise ValueError(f"need at least 1 image and {min_tokens} tokens per image (k-means clusters), "
                         f"got {z.shape[0]} images x {z.shape[1]} tokens")
    bad = (~torch.isfinite(z)).sum().item()
    if bad:
        raise ValueError(f"dense features contain {bad} NaN/inf values out of {z.numel()}; DSE is undefined")


def eigvalsh(a: torch.Tensor) -> torch.Tensor:
    """Batched symmetric eigenvalues, the batch split over torch's intra-op threads: LAPACK's batched
    call runs its matrices one after another, which leaves all but one core idle for small matrices."""
    workers = torch.get_num_threads()
    if a.device.type != "cpu" or workers < 2 or a.shape[0] < 2 * workers:
        return torch.linalg.eigvalsh(a)
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(1)  # one LAPACK thread per worker; restored below
    try:
        with ThreadPoolExecutor(workers) as ex:
            return torch.cat(list(ex.map(torch.linalg.eigvalsh, a.chunk(workers))))
    finally:
        torch.set_num_threads(workers)


# ---------------------------------------------------------------------------------------------
# k-means


def _kmeanspp_parity(x: torch.Tensor, k: int, seed: int, cache_bytes: int = 32 << 20) -> torch.Tensor:
    """k-means++ init of P problems ([P, n, d] -> [P, k, d]) with the reference's random stream: every
    problem reseeded to `seed`, the first centroid from randint, the next k-1 from a multinomial
    proportional to D (not D²). Distances are batched (running minimum to the chosen centroids, the
    same numbers as the reference's cdist to all of them); only the draws run per problem."""
    p, n, d = x.shape
    per = max(1, cache_bytes // max(1, n * d * x.element_size()))
    out = []
    for s0 in range(0, p, per):
        xs = x[s0:s0 + per]
        q = xs.shape[0]
        gens = [torch.Generator(device=x.device).manual_seed(seed) for _ in range(q)]
        idx = torch.cat([torch.randint(0, n, (1,), generator=g, device=x.device) for g in gens])
        ar = torch.arange(q, device=x.device)
        cents = [xs[ar, idx]]
        xx = (xs * xs).sum(-1)

        def to(c):  # what cdist computes for large inputs: sqrt(clamp(|x|² - 2 x·c + |c|²))
            return torch.baddbmm(xx[:, None], c[:, None], xs.transpose(1, 2), alpha=-2).squeeze(1).add_(
                (c * c).sum(-1)[:, None]).clamp_min_(0).sqrt_()

        dist = to(cents[0])  # [q, n]
        for _ in range(1, k):
            total = dist.sum(dim=1, keepdim=True)
            prob = torch.where(total > 0, dist / total.clamp_min(1e-30), torch.full_like(dist, 1.0 / n))
            idx = torch.cat([torch.multinomial(prob[i], 1, generator=gens[i]) for i in range(q)])
            cents.append(xs[ar, idx])
            dist = torch.minimum(dist, to(cents[-1]))
        out.append(torch.stack(cents, dim=1))
    return torch.cat(out)


def _kmeanspp_batched(x: torch.Tensor, k: int, g: torch.Generator, cache_bytes: int = 8 << 20) -> torch.Tensor:
    """k-means++ init for P problems at once ([P, n, d] -> [P, k, d]), D-weighted, inverse-CDF draws.
    Problems are taken in chunks that fit in cache: the k sequential steps then reread cached data
    instead of streaming every problem from memory k times."""
    p, n, d = x.shape
    per = max(1, cache_bytes // max(1, n * d * x.element_size()))
    draws = torch.rand(p, k, generator=g, device=x.device)  # all randomness drawn up front, chunk-independent
    first = (draws[:, 0] * n).long().clamp_max(n - 1)
    out = []
    for s0 in range(0, p, per):
        xs, u = x[s0:s0 + per], draws[s0:s0 + per]
        q = xs.shape[0]
        ar = torch.arange(q, device=x.device)
        xx = (xs * xs).sum(-1)
        cents = [xs[ar, first[s0:s0 + per]]]

        def dist(c):
            return torch.baddbmm(xx[:, None], c[:, None], xs.transpose(1, 2), alpha=-2).squeeze(1).add_(
                (c * c).sum(-1)[:, None]).clamp_min_(0).sqrt_()

        dmin = dist(cents[0])  # [q, n]
        for j in range(1, k):
            cdf = dmin.cumsum(dim=1)
            total = cdf[:, -1:]
            idx = torch.searchsorted(cdf, u[:, j:j + 1] * total).squeeze(1).clamp_max(n - 1)
            flat = total.squeeze(1) <= 0  # degenerate problem (every point identical): uniform
            idx = torch.where(flat, (u[:, j] * n).long().clamp_max(n - 1), idx)
            c = xs[ar, idx]
            cents.append(c)
            dmin = torch.minimum(dmin, dist(c))
        out.append(torch.stack(cents, dim=1))
    return torch.cat(out)


def _sqdist(x: torch.Tensor, c: torch.Tensor, xx: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances [P, n, k] by the |x|² + |c|² - 2 x·c expansion (what torch.cdist
    does internally for large inputs, without its batched overhead)."""
    xx = (x * x).sum(-1, keepdim=True) if xx is None else xx
    d2 = torch.baddbmm(xx + (c * c).sum(-1)[:, None, :], x, c.transpose(1, 2), alpha=-2)
    return d2.clamp_min_(0)


def _centroids(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster sums and counts by scatter-add ([P, k, d], [P, k]); O(n·d) instead of a one-hot matmul."""
    p, n, d = x.shape
    cid = (torch.arange(p, device=x.device)[:, None] * k + labels).reshape(-1)
    sums = torch.zeros(p * k, d, dtype=x.dtype, device=x.device).index_add_(0, cid, x.reshape(-1, d))
    counts = torch.bincount(cid, minlength=p * k).to(x.dtype)
    return sums.view(p, k, d), counts.view(p, k)


def lloyd(x: torch.Tensor, c: torch.Tensor, iters: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lloyd on [P, n, d] from centroids [P, k, d]. Each problem stops at its own iteration
    (Frobenius shift < tol), an empty cluster keeps its centroid; returns the labels of the last
    assignment (made with the previous centroids) and the updated centroids, as the reference.

    Problems that have stopped keep their result; the working set is compacted (a copy of the
    remaining problems) only when it has shrunk by half, not at every iteration."""
    p, n, _ = x.shape
    k = c.shape[1]
    c = c.clone()
    labels = torch.zeros(p, n, dtype=torch.long, device=x.device)
    xx_all = (x * x).sum(-1, keepdim=True)
    idx = torch.arange(p, device=x.device)  # problems in the working set
    xw, xxw = x, xx_all
    running = torch.ones(p, dtype=torch.bool, device=x.device)  # per working-set row
    for _ in range(iters):
        cw = c[idx]
        lab = _sqdist(xw, cw, xxw).argmin(dim=-1)
        sums, counts = _centroids(xw, lab, k)
        new = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], cw)
        shift = (new - cw).flatten(1).norm(dim=1)
        upd = idx[running]
        c[upd], labels[upd] = new[running], lab[running]
        running = running & (shift >= tol)
        n_run = int(running.sum())
        if n_run == 0:
            break
        if n_run <= len(idx) // 2:  # compact the working set
            idx, xw, xxw = idx[running], xw[running], xxw[running]
            running = torch.ones(len(idx), dtype=torch.bool, device=x.device)
    return labels, c


# ---------------------------------------------------------------------------------------------
# cluster statistics


def _css_batched(x: torch.Tensor, labels: torch.Tensor, k: int, *, exact: bool,
                 chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cluster with > 1 point: nuclear norm of the centred cluster / sqrt(max(n-1, d)), for P
    problems at once: [P, k] values and a [P, k] validity mask.

    Clusters are sorted by size and taken in chunks; the points of a chunk are one contiguous run
    (points ordered by their cluster's place in the size order), copied into a zero-padded
    [clusters, largest size, d] block and centred there. The nuclear norm of a centred cluster is the
    sum of sqrt(eigenvalues) of its Gram matrix (the smaller of X Xᵀ and Xᵀ X; padding rows add only
    zero eigenvalues). Centring in float32 as the reference; with `exact` the Gram matrix and its
    eigenvalues are float64."""
    p, n, d = x.shape
    q = p * k
    cid = (torch.arange(p, device=x.device)[:, None] * k + labels).reshape(-1)
    cnt = torch.bincount(cid, minlength=q)
    by_size = torch.argsort(cnt, stable=True)
    place = torch.empty_like(by_size)
    place[by_size] = torch.arange(q, device=x.device)
    pl = place[cid]
    order = torch.argsort(pl, stable=True)
    pts = x.reshape(p * n, d)[order]
    size_sorted = cnt[by_size]
    first_pt = torch.cumsum(size_sorted, 0) - size_sorted  # first point of each cluster (sorted order)
    local_place = pl[order]
    rank = torch.arange(p * n, device=x.device) - first_pt[local_place]
    nuc = torch.zeros(q, dtype=torch.float64, device=x.device)
    start = int((size_sorted <= 1).sum())  # clusters with < 2 points have no radius
    # chunks of similar sizes: at most `chunk` clusters, largest at most 1.25x the smallest (padding
    # costs cubically in the eigen-decomposition)
    bounds, c0 = [], start
    sizes_list = size_sorted.tolist()
    while c0 < q:
        c1 = c0 + 1
        while c1 < q and c1 - c0 < chunk and (c1 - c0 < 16 or sizes_list[c1] <= 1.25 * sizes_list[c0]):
            c1 += 1
        bounds.append((c0, c1))
        c0 = c1
    for c0, c1 in bounds:
        m, s_max = c1 - c0, int(size_sorted[c1 - 1])
        p0, p1 = int(first_pt[c0]), int(first_pt[c1 - 1] + size_sorted[c1 - 1])
        padded = torch.zeros(m * s_max, d, dtype=x.dtype, device=x.device)
        padded.index_copy_(0, (local_place[p0:p1] - c0) * s_max + rank[p0:p1], pts[p0:p1])
        padded = padded.view(m, s_max, d)
        sizes = size_sorted[c0:c1].to(x.dtype)
        rows = (torch.arange(s_max, device=x.device)[None, :] < size_sorted[c0:c1, None]).to(x.dtype)
        mean = padded.sum(dim=1) / sizes[:, None]  # [m, d]
        if exact:  # centre the points, float64: the centred cluster's zero singular value must stay near zero
            padded = (padded - mean[:, None, :] * rows[..., None]).double()
            gram = padded @ padded.transpose(1, 2) if s_max <= d else padded.transpose(1, 2) @ padded
        elif s_max <= d:  # centre the Gram matrix instead of the points (no pass over [m, s, d] writes)
            a = (padded @ mean[..., None]).squeeze(-1)  # x_i . mu
            mm = (mean * mean).sum(-1)[:, None, None]
            gram = padded @ padded.transpose(1, 2) - a[:, :, None] - a[:, None, :] + mm
            gram = gram * (rows[:, :, None] * rows[:, None, :])
        else:  # scatter matrix: X^T X - n mu mu^T
            gram = padded.transpose(1, 2) @ padded - sizes[:, None, None] * mean[:, :, None] * mean[:, None, :]
        nuc[by_size[c0:c1]] = eigvalsh(gram).clamp_min(0).sqrt().sum(dim=-1).double()
    val = nuc / torch.sqrt(torch.clamp(cnt - 1, min=d).double())
    return val.reshape(p, k), (cnt > 1).reshape(p, k)


def _inter(x: torch.Tensor, labels: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per problem: point-mean of the Euclidean distance to the nearest centroid other than its label's."""
    dist = _sqdist(x, c).sqrt_()  # [P, n, k]
    dist = dist.scatter(-1, labels[..., None], float("inf"))
    return dist.min(dim=-1).values.mean(dim=-1)


def effective_dim(z: torch.Tensor, perms: torch.Tensor) -> float:
    """Mean over token slots of erank(one token per image, uncentred B×d) / min(B, d).
    Singular values from the eigenvalues of the smaller Gram matrix, in float32 in both modes (the
    reference's own float32 SVDs agree to 4e-9)."""
    b, n, d = z.shape
    slots = torch.gather(z, 1, perms[..., None].expand(b, n, d)).transpose(0, 1)  # [N, B, d]
    gram = slots.transpose(1, 2) @ slots if b >= d else slots @ slots.transpose(1, 2)
    # float32 eigenvalues of the float32 Gram: 4e-9 relative to the reference's float32 SVDs at 1024 x 384
    s = eigvalsh(gram).clamp_min(0).sqrt().double()
    p = s / s.sum(dim=-1, keepdim=True) + 1e-12
    erank = torch.exp(-(p * torch.log(p)).sum(dim=-1)) / min(b, d)
    return erank.mean().item()


def _reference_perms(b: int, n: int, seed: int, last_problem_size: int, device) -> torch.Tensor:
    """The permutations of the reference: the CPU generator as the last global k-means left it
    (manual_seed, one randint over that problem's size), then one randperm(N) per image."""
    g = torch.Generator().manual_seed(seed)
    torch.randint(0, last_problem_size, (1,), generator=g)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(b)]).to(device)


# ---------------------------------------------------------------------------------------------


def dse_batch(z: torch.Tensor, *, mode: str = "parity", local_clusters: int = 3, global_clusters: int = 24,
              group_size: int | None = None, normalize: bool = True, iters: int = 20, tol: float = 1e-4,
              seed: int = 0, checked: bool = False) -> dict[str, float]:
    """The five DSE numbers of one batch of images ([B, N, d])."""
    if mode not in ("parity", "fast"):
        raise ValueError(f"mode must be 'parity' or 'fast', got {mode!r}")
    if not checked:
        check_features(z, min_tokens=local_clusters)
    exact = mode == "parity"
    z = z.float()
    if normalize:
        z = F.normalize(z, dim=-1)
    b, n, d = z.shape
    group = group_size or max(1, global_clusters // local_clusters)
    flat = z.reshape(-1, d)
    avg_l2 = (flat - flat.mean(dim=0)).norm(dim=1).mean().item()
    if avg_l2 == 0:
        raise ValueError("all tokens are identical (avg_l2 = 0): DSE is undefined for fully collapsed features")
    gen = torch.Generator(device=z.device).manual_seed(seed)

    def init(x, k):
        if exact:  # reseeded per problem, sequential draws, as the reference
            return _kmeanspp_parity(x, k, seed)
        return _kmeanspp_batched(x, k, gen)

    # local: k-means per image; image value = mean radius of its clusters (1.0 if none has > 1 point)
    lab, _ = lloyd(z, init(z, local_clusters), iters, tol)
    css, valid = _css_batched(z, lab, local_clusters, exact=exact)
    nvalid = valid.sum(dim=1)
    per_img = torch.where(nvalid > 0, (css * valid).sum(dim=1) / nvalid.clamp_min(1), torch.ones_like(css[:, 0]))
    intra_image = per_img.mean().item()

    # global: k-means per group of `group` images (the last group may be smaller)
    starts = list(range(0, b, group))
    sizes = [min(group, b - s0) * n for s0 in starts]
    if sizes[-1] < global_clusters:
        raise ValueError(f"a group of {sizes[-1]} tokens is smaller than global_clusters={global_clusters}")
    css_sum, css_n, inter_sum = 0.0, 0, 0.0
    full = (b // group) * group
    parts = [z[:full].reshape(-1, group * n, d)] if full else []
    if full < b:
        parts.append(z[full:].reshape(1, -1, d))
    for xs in parts:
        glab, gc = lloyd(xs, init(xs, global_clusters), iters, tol)
        inter_sum += _inter(xs, glab, gc).sum().item()
        css, valid = _css_batched(xs, glab, global_clusters, exact=exact)
        css_sum += css[valid].sum().item()
        css_n += int(valid.sum())
    intra_batch = css_sum / css_n if css_n else 1.0
    inter = inter_sum / len(starts)

    if exact:
        perms = _reference_perms(b, n, seed, sizes[-1], z.device)
    else:
        perms = torch.rand(b, n, generator=gen, device=z.device).argsort(dim=1)
    dim = effective_dim(z, perms)

    intra_image /= avg_l2
    intra_batch /= avg_l2
    inter /= avg_l2
    return {"dse": inter + dim - (intra_batch + intra_image) / 2, "inter": inter, "intra_image": intra_image,
            "intra_batch": intra_batch, "dim": dim}


def dse(features: torch.Tensor, *, batch_size: int = 1024, mode: str = "parity", **kw) -> DSEResult:
    """DSE of [images, tokens, dim] features: per batch of `batch_size` images, averaged over batches."""
    check_features(features, min_tokens=kw.get("local_clusters", 3))
    rows = [dse_batch(features[i:i + batch_size], mode=mode, checked=True, **kw) for i in range(0, len(features), batch_size)]
    avg = {k: sum(r[k] for r in rows) / len(rows) for k in COMPONENTS}
    return DSEResult(**avg, separability=avg["inter"] - (avg["intra_batch"] + avg["intra_image"]) / 2,
                     batches=len(rows), mode=mode)


def dse_lambda(separability: list[float], dim: list[float]) -> float:
    """λ = Std(separability) / Std(dim) across one method's checkpoints (the paper's normalisation)."""
    import statistics

    if len(dim) < 2:
        return 1.0
    sd = statistics.pstdev(dim)
    return statistics.pstdev(separability) / sd if sd > 0 else 1.0


def dse_normalised(separability: list[float], dim: list[float]) -> list[float]:
    """DSE = separability + λ·dim with λ from `dse_lambda` (applied at analysis time, per method)."""
    lam = dse_lambda(separability, dim)
    return [s + lam * m for s, m in zip(separability, dim)]

"""Batched k-means for DSE: P independent problems [P, n, d] solved at once.

Two flavours share the Lloyd semantics of the official estimator (protocols §2): at most `iters`
iterations, each problem stopping at its own iteration once the Frobenius centroid shift is < tol, an
empty cluster keeps its centroid, and the labels returned are those of the last assignment (made
with the previous centroids) next to the updated centroids.
- parity (`kmeanspp_parity`, `lloyd`): the reference's random stream and its float32 arithmetic,
  down to the rounding of distances and cluster means;
- batched (`kmeans_batched`; fast mode and DSELoss): in the tokens' dtype. Fast mode passes bfloat16,
  so the distance and centroid-sum products run on the CPU's matrix units (AMX) with float32
  accumulation (float32 where the hardware has no native bfloat16, `lowp_dtype`). Only near-ties
  between two centroids can be assigned differently, so it finds a k-means optimum of the same
  problem, not the same one.
"""

from __future__ import annotations

import torch


def sqdist(x: torch.Tensor, c: torch.Tensor, xx: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances [P, n, k] by the |x|² + |c|² - 2 x·c expansion (what torch.cdist
    does internally for large inputs, without its batched overhead)."""
    xx = (x * x).sum(-1, keepdim=True) if xx is None else xx
    d2 = torch.baddbmm(xx + (c * c).sum(-1)[:, None, :], x, c.transpose(1, 2), alpha=-2)
    return d2.clamp_min_(0)


def kmeanspp_parity(x: torch.Tensor, k: int, seed: int, cache_bytes: int = 32 << 20) -> torch.Tensor:
    """k-means++ init of P problems ([P, n, d] -> [P, k, d]) with the reference's random stream: every
    problem reseeded to `seed`, the first centroid from randint, the next k-1 from a multinomial
    proportional to D (not D²). Distances are batched (running minimum to the chosen centroids, the
    same numbers as the reference's cdist to all of them); only the draws run per problem."""
    p, n, d = x.shape
    per = max(1, cache_bytes // max(1, n * d * x.element_size()))
    out = []
    for s0 in range(0, p, per):
        xs = x[s0 : s0 + per]
        q = xs.shape[0]
        # the CPU generator on every device: the same draws, so the same clusters, wherever it runs
        gens = [torch.Generator().manual_seed(seed) for _ in range(q)]
        idx = torch.cat([torch.randint(0, n, (1,), generator=g) for g in gens]).to(x.device)
        ar = torch.arange(q, device=x.device)
        cents = [xs[ar, idx]]
        xx = (xs * xs).sum(-1)

        def to(c):  # what cdist computes for large inputs: sqrt(clamp(|x|² - 2 x·c + |c|²))
            return (
                torch.baddbmm(xx[:, None], c[:, None], xs.transpose(1, 2), alpha=-2)
                .squeeze(1)
                .add_((c * c).sum(-1)[:, None])
                .clamp_min_(0)
                .sqrt_()
            )

        dist = to(cents[0])  # [q, n]
        for _ in range(1, k):
            total = dist.sum(dim=1, keepdim=True)
            prob = torch.where(total > 0, dist / total.clamp_min(1e-30), torch.full_like(dist, 1.0 / n))
            p_host = prob.cpu()  # one copy per centroid step; the draws stay on the CPU generator
            idx = torch.cat([torch.multinomial(p_host[i], 1, generator=gens[i]) for i in range(q)]).to(x.device)
            cents.append(xs[ar, idx])
            dist = torch.minimum(dist, to(cents[-1]))
        out.append(torch.stack(cents, dim=1))
    return torch.cat(out)


def _kmeanspp_draws(x: torch.Tensor, k: int, u: torch.Tensor, dist) -> torch.Tensor:
    """D-weighted k-means++ of [q, n, d] with uniform draws u [q, k] by inverse CDF; `dist(c)` gives
    the [q, n] distances of every point to the centroids c [q, d]."""
    q, n, _ = x.shape
    ar = torch.arange(q, device=x.device)
    cents = [x[ar, (u[:, 0] * n).long().clamp_max(n - 1)]]
    dmin = dist(cents[0])
    for j in range(1, k):
        cdf = dmin.cumsum(dim=1)
        total = cdf[:, -1:]
        idx = torch.searchsorted(cdf, u[:, j : j + 1] * total).squeeze(1).clamp_max(n - 1)
        flat = total.squeeze(1) <= 0  # degenerate problem (every point identical): uniform
        idx = torch.where(flat, (u[:, j] * n).long().clamp_max(n - 1), idx)
        cents.append(x[ar, idx])
        dmin = torch.minimum(dmin, dist(cents[-1]))
    return torch.stack(cents, dim=1)


def _centroids(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster sums and counts by scatter-add ([P, k, d], [P, k]); O(n·d) instead of a one-hot matmul."""
    p, n, d = x.shape
    cid = (torch.arange(p, device=x.device)[:, None] * k + labels).reshape(-1)
    sums = torch.zeros(p * k, d, dtype=x.dtype, device=x.device).index_add_(0, cid, x.reshape(-1, d))
    counts = torch.bincount(cid, minlength=p * k).to(x.dtype)
    return sums.view(p, k, d), counts.view(p, k)


def centroids(x: torch.Tensor, labels: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Cluster means of x under `labels` ([P, k, d]); an empty cluster keeps its `previous` centroid."""
    sums, counts = _centroids(x, labels, previous.shape[1])
    return torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], previous)


def _lloyd(x: torch.Tensor, c: torch.Tensor, iters: int, tol: float, step) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's loop with per-problem stopping. `step(xw, cw, rows)` returns (labels, new centroids) of
    the working set. Problems that have stopped keep their result; the working set is compacted (a
    copy of the remaining problems) only when it has shrunk by half, not at every iteration."""
    p, n, _ = x.shape
    c = c.float().clone()
    labels = torch.zeros(p, n, dtype=torch.long, device=x.device)
    idx = torch.arange(p, device=x.device)  # problems in the working set
    xw = x
    running = torch.ones(p, dtype=torch.bool, device=x.device)  # per working-set row
    for _ in range(iters):
        cw = c[idx]
        lab, new = step(xw, cw, idx)
        shift = (new - cw).flatten(1).norm(dim=1)
        upd = idx[running]
        c[upd], labels[upd] = new[running], lab[running]
        running = running & (shift >= tol)
        n_run = int(running.sum())
        if n_run == 0:
            break
        if n_run <= len(idx) // 2:  # compact the working set
            idx, xw, running = idx[running], xw[running], running[running]
    return labels, c


def cluster_means(
    x: torch.Tensor, labels: torch.Tensor, previous: torch.Tensor, problems: torch.Tensor | None = None
) -> torch.Tensor:
    """X[labels == j].mean(dim=0) for every problem and cluster j, rounded as the reference rounds it
    (an empty cluster keeps its `previous` centroid). x: [P, n, d] tokens; labels [w, n] and previous
    [w, k, d] belong to the problems `problems` (default: all P). Rounding matters where points are
    nearly tied between two centroids (near-duplicate tokens): a last-bit difference flips them.

    torch sums some columns in interleaved partial sums, so padding rows, zero or not, and a wider
    row change how the terms are grouped. Each cluster's rows are therefore gathered, in their
    original order, into a block of exactly its size and width d, one block per distinct size
    (checked bit for bit against the per-cluster mean for several d)."""
    _, n, d = x.shape
    w, k = previous.shape[:2]
    problems = torch.arange(w, device=x.device) if problems is None else problems
    cid = (torch.arange(w, device=x.device)[:, None] * k + labels).reshape(-1)
    counts = torch.bincount(cid, minlength=w * k)
    order = torch.argsort(cid, stable=True)  # rows grouped by cluster, original order within
    src_rows = (problems[:, None] * n + torch.arange(n, device=x.device)).reshape(-1)[order]
    starts = torch.cumsum(counts, 0) - counts
    rows = x.reshape(-1, d)
    out = previous.reshape(w * k, d).clone()
    for size in torch.unique(counts).tolist():
        if size == 0:
            continue
        cl = torch.nonzero(counts == size).squeeze(1)
        src = src_rows[starts[cl][:, None] + torch.arange(size, device=x.device)]
        out[cl] = rows.index_select(0, src.reshape(-1)).view(len(cl), size, d).sum(dim=1) / size
    return out.view(w, k, d)


def lloyd(x: torch.Tensor, c: torch.Tensor, iters: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched float32 Lloyd on [P, n, d] from centroids [P, k, d] (see the module docstring), with the
    reference's own arithmetic: torch.cdist's distances and per-cluster means (`cluster_means`).

    For more than 25 points or centroids cdist computes sqrt(clamp_min([-2x, |x|², 1] · [c, 1, |c|²],
    0)) with one matrix product; the augmented points are built once here instead of at every
    iteration, and the product is the same call, so the distances are the same bits (tested against
    torch.cdist, exact duplicates included)."""
    p, n, d = x.shape
    k = c.shape[1]
    tokens = x
    if n <= 25 and k <= 25:  # cdist's direct (not matrix-product) path

        def step(xw, cw, idx):
            lab = torch.cdist(xw, cw).argmin(dim=-1)
            return lab, cluster_means(tokens, lab, cw, idx)
    else:
        sq = x.pow(2).sum(-1, keepdim=True)
        x = torch.cat([x.mul(-2), sq, torch.ones_like(sq)], -1)  # Lloyd's working set: the augmented points

        def step(xa, cw, idx):
            csq = cw.pow(2).sum(-1, keepdim=True)
            lab = xa.matmul(torch.cat([cw, torch.ones_like(csq), csq], -1).mT).clamp_min_(0).sqrt_().argmin(dim=-1)
            return lab, cluster_means(tokens, lab, cw, idx)

    return _lloyd(x, c, iters, tol, step)


def lowp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the hardware multiplies it natively (CPU AMX or AVX512-BF16, CUDA with bf16),
    else float32: emulated bfloat16 products would be slower than float32 ones."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    native = any(
        getattr(torch.cpu, f, lambda: False)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )
    return torch.bfloat16 if native else torch.float32


SEED_POINTS = 512  # fast-mode k-means++ seeds from at most this many points per problem


def kmeans_batched(
    x: torch.Tensor,
    k: int,
    u: torch.Tensor,
    keys: torch.Tensor | None,
    iters: int,
    tol: float,
    *,
    seed_points: int | None = SEED_POINTS,
    refill=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ then Lloyd on tokens [P, n, d], in their dtype (fast mode passes `lowp_dtype`, bfloat16
    where native): labels [P, n] and float32 centroids [P, k, d].

    Seeding (D-weighted, inverse-CDF draws u [P, k]) runs on a uniform subsample of at most
    SEED_POINTS points per problem, the smallest of the random keys [P, n] (all points when n is
    smaller; keys may then be None): the k sequential steps then touch little data. The randomness
    is given per problem, so results do not depend on how problems are batched.
    Lloyd's distances and cluster sums are matrix products in the tokens' dtype with float32
    accumulation; the assignment drops |x|² (constant per point) and ranks |c|² - 2 x·c.

    `seed_points=None` seeds from every point; `refill(xw) -> [w, k, d]` gives an empty cluster a new
    centroid (default: it keeps its old one)."""
    p, n, d = x.shape
    m = n if seed_points is None else min(n, seed_points)
    if m < n:
        if keys is None:
            raise ValueError(f"{n} points per problem need the random keys of the seeding subsample")
        pick = keys[:, :n].argsort(dim=1)[:, :m]
        cand = x[torch.arange(p, device=x.device)[:, None], pick]
    else:
        cand = x
    cc = cand.float().pow(2).sum(-1)  # not in place: cand may be the caller's float32 tokens

    def dist(c):  # [p, m] distances of the candidates to c [p, d]
        dots = torch.bmm(cand, c[:, :, None]).squeeze(-1).float()
        return (cc - 2 * dots + c.float().pow(2).sum(-1)[:, None]).clamp_min_(0).sqrt_()

    c0 = _kmeanspp_draws(cand, k, u, dist).float()

    def step(xw, cw, idx):
        cost = torch.bmm(xw, cw.to(x.dtype).transpose(1, 2)).float().mul_(-2).add_(cw.pow(2).sum(-1)[:, None, :])
        lab = cost.argmin(dim=-1)
        w = len(idx)
        onehot = torch.zeros(w, k, n, dtype=x.dtype, device=x.device).scatter_(1, lab[:, None, :], 1.0)
        sums = torch.bmm(onehot, xw).float()
        counts = (
            torch.bincount((torch.arange(w, device=x.device)[:, None] * k + lab).reshape(-1), minlength=w * k)
            .view(w, k)
            .float()
        )
        fallback = cw if refill is None or bool((counts > 0).all()) else refill(xw)
        return lab, torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], fallback)

    return _lloyd(x, c0, iters, tol, step)

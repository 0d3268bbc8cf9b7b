"""DSE (Dense representation Structure Estimator) as the official code computes it.

Quantity of `estimator.py` / `get_DSE.py` of EldercatSAM/SSL-Degradation (protocols §2), per batch
of B images with N tokens of dimension d:

    DSE_raw = inter + dim - (intra_batch + intra_image) / 2        (λ = 1; λ is applied per method
                                                                     across checkpoints, harness.selection)
- tokens L2-normalised; radius and distance terms divided by avg_l2 (mean distance of a token to
  the batch mean);
- intra_image: k-means (k=3) per image; per cluster with > 1 point the nuclear norm of the centred
  cluster / sqrt(max(n-1, d)); mean over clusters (1.0 if none), mean over images;
- intra_batch / inter: k-means (k=24) per group of 8 images; cluster radii as above, averaged over
  the flat list of all groups' clusters; inter = per group, the point-mean of the (non-squared)
  distance to the nearest *other* centroid, averaged over groups;
- dim: one random token per image per slot (an independent permutation per image), the effective
  rank of each uncentred B×d slot matrix / min(B, d), averaged over the N slots.

Both modes stream each batch in cache-sized chunks of whole groups and share the cluster radii
(`cluster_radii`: float32 Gram eigenvalues with the centring direction deflated, float64 for nearly
rank-deficient clusters; equal to float64 SVDs to ~1e-6).
- "parity": the official algorithm's semantics: k-means++ with D-weighted (not D²) sampling, the
  generator reseeded to `seed` for every k-means problem, 20 Lloyd iterations, tol 1e-4 on the
  Frobenius centroid shift, an empty cluster keeps its centroid, labels from the last assignment
  (computed with the previous centroids) against the updated centroids, permutations drawn from the
  generator state the last global k-means left. Lloyd steps run batched over problems (each frozen
  at its own stopping iteration). On CPU the random draws come from the CPU generator; the official
  code draws its multinomials on CUDA.
- "fast": the same quantity, estimated more cheaply: k-means on bfloat16 tokens (matrix units, float32
  accumulation) seeded from at most 512 points per problem, updated centroids and radii from the
  float32 tokens, and the dimensionality term averaged over FAST_SLOTS random token slots instead of
  all N. It differs from parity through k-means local optima (within parity's own seed-to-seed
  spread) and the slot sample (~1e-4 relative).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from harness.metrics.kmeans import (
    SEED_POINTS,
    centroids,
    kmeans_batched,
    kmeanspp_parity,
    lloyd,
    lowp_dtype,
    sqdist,
)

COMPONENTS = ("dse", "inter", "intra_image", "intra_batch", "dim")
FAST_SLOTS = 32  # token slots averaged by fast mode's dimensionality term (parity: all N)


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
        raise ValueError(
            f"need at least 1 image and {min_tokens} tokens per image (k-means clusters), "
            f"got {z.shape[0]} images x {z.shape[1]} tokens"
        )
    per = max(1, (16 << 20) // max(1, z.shape[1] * z.shape[2] * 4))
    # one float32 sum per slice (no mask the size of the features, no float16 overflow); a slice whose
    # sum is not finite holds a NaN/inf or overflows, and only then the values are counted
    if all(torch.isfinite(z[i : i + per].float().sum()) for i in range(0, len(z), per)):
        return
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
# cluster statistics

# float32 Gram eigenvalues are exact to ~eps·λmax: a cluster (slot matrix) whose smallest eigenvalue is
# below this fraction of its largest is redone in float64 (calibrated: <= 2e-6 and 1e-7 relative error above)
COND_FLOOR = 1e-4
SLOT_COND_FLOOR = 1e-5
EPS32 = float(torch.finfo(torch.float32).eps)


def _deflate(gram: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Remove the all-ones direction from centred Gram matrices [m, s, s] (rows past each cluster's
    size are padding): a Householder reflection maps 1 to e1, whose row and column are then dropped.
    A centred cluster has 1 in its null space exactly; in floating point that eigenvalue would come
    out at ~eps·λmax, and its square root would bias the nuclear norm."""
    s_max = gram.shape[1]
    n = sizes.to(gram.dtype)
    v = (torch.arange(s_max, device=gram.device)[None, :] < sizes[:, None]).to(gram.dtype)
    v[:, 0] += n.sqrt()
    beta = 1.0 / (n + n.sqrt())  # 2 / |v|²
    p = (gram @ v[..., None]).squeeze(-1) * beta[:, None]
    q = p - (0.5 * beta * (v * p).sum(-1))[:, None] * v
    # P G P = G - v qᵀ - q vᵀ, one rank-2 update, kept only past the first row and column
    return torch.baddbmm(
        gram[:, 1:, 1:], torch.stack([v, q], dim=2)[:, 1:], torch.stack([q, v], dim=1)[:, :, 1:], alpha=-1
    )


def _cluster_eigs(centred: torch.Tensor, sizes: torch.Tensor, deflate: bool = True) -> torch.Tensor:
    """Ascending eigenvalues (>= 0) of each centred cluster's Gram matrix, the smaller of X Xᵀ
    (deflated: s-1 values) and Xᵀ X (d values); padding rows add only zeros."""
    m, s_max, d = centred.shape
    if s_max <= d:
        gram = torch.baddbmm(centred.new_empty(m, s_max, s_max), centred, centred.transpose(1, 2), beta=0)
        if deflate:
            gram = _deflate(gram, sizes)
    else:
        gram = centred.transpose(1, 2) @ centred
    return eigvalsh(gram).clamp_min(0)


def _chunk_bounds(sizes: list[int], start: int, d: int, row_bytes: int, max_bytes: int) -> list[tuple[int, int]]:
    """Runs of size-sorted clusters: sizes within 1.25x (padding costs cubically in the eigen-solver),
    never straddling d (the Gram form changes there), and a padded block of at most max_bytes."""
    bounds, c0, q = [], start, len(sizes)
    while c0 < q:
        c1 = c0 + 1
        while (
            c1 < q
            and (c1 - c0 + 1) * sizes[c1] * row_bytes <= max_bytes
            and (sizes[c1] <= d) == (sizes[c0] <= d)
            and (c1 - c0 < 16 or sizes[c1] <= 1.25 * sizes[c0])
        ):
            c1 += 1
        bounds.append((c0, c1))
        c0 = c1
    return bounds


def cluster_radii(
    tokens: torch.Tensor,
    scale: torch.Tensor | None,
    rows: torch.Tensor,
    cid: torch.Tensor,
    q: int,
    *,
    float32_centring: bool = False,
    max_bytes: int = 16 << 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Radius of each of q clusters: nuclear norm of the centred cluster / sqrt(max(n-1, d)) (float64
    [q]), and whether it is defined (> 1 point). Cluster j holds the points tokens[rows[i]] *
    scale[rows[i]] (scale: inverse norms, or ones; None: each row divided by its norm as F.normalize
    does, bit for bit the reference's normalised tokens) for every i with cid[i] == j.

    Clusters are sorted by size and processed in runs of similar sizes: their points are gathered
    into a zero-padded [clusters, largest size, d] block and centred in float32 (as the reference),
    and the nuclear norm is the sum of square roots of the Gram eigenvalues. With the exact null
    direction deflated, float32 Gram eigenvalues are within 1e-6 of float64 SVDs unless a cluster is
    nearly rank-deficient; such clusters (smallest/largest eigenvalue < COND_FLOOR) are redone in
    float64.

    `float32_centring` (parity) reproduces the reference's own rounding as well: its float32-centred
    points do not sum exactly to zero, and its SVD sees that residual as one more singular value, of
    at most ~2·eps·|X|_F. Where that could exceed 1e-7 of the radius (tight clusters), the cluster
    is redone in float64 without deflation, which keeps it."""
    d = tokens.shape[1]
    cnt = torch.bincount(cid, minlength=q)
    by_size = torch.argsort(cnt, stable=True)
    place = torch.empty_like(by_size)
    place[by_size] = torch.arange(q, device=cid.device)
    pl = place[cid]
    order = torch.argsort(pl, stable=True)
    src = rows[order]  # token of each entry, clusters contiguous in size order
    size_sorted = cnt[by_size]
    first_pt = torch.cumsum(size_sorted, 0) - size_sorted
    nuc = torch.zeros(q, dtype=torch.float64, device=cid.device)
    start = int((size_sorted <= 1).sum())  # clusters with < 2 points have no radius
    for c0, c1 in _chunk_bounds(size_sorted.tolist(), start, d, d * 4, max_bytes):
        m, s_max = c1 - c0, int(size_sorted[c1 - 1])
        sizes = size_sorted[c0:c1]
        slot = torch.arange(s_max, device=cid.device)[None, :]
        real = slot < sizes[:, None]  # [m, s_max]
        entry = torch.where(real, first_pt[c0:c1, None] + slot, first_pt[c0:c1, None])  # padding repeats a point...
        tok = src[entry.reshape(-1)]
        w = real.reshape(-1).float() if scale is None else scale.reshape(-1)[tok] * real.reshape(-1)  # ...with weight 0
        padded = tokens.index_select(0, tok).float()
        if scale is None:
            padded = F.normalize(padded, dim=-1)
        padded = padded.mul_(w[:, None]).view(m, s_max, d)
        mean = padded.sum(dim=1) / sizes[:, None].float()
        padded -= mean[:, None, :] * real[..., None]
        lam = _cluster_eigs(padded, sizes).double()
        r = lam.shape[1]
        smallest = lam.gather(1, (r - torch.clamp(sizes - 1, max=r)).clamp(max=r - 1)[:, None]).squeeze(1)
        val = lam.sqrt().sum(dim=-1)
        redo = smallest < COND_FLOOR * lam[:, -1]
        if float32_centring:  # |X|_F² = |X_c|_F² + n |mean|²
            fro = (lam.sum(dim=-1) + sizes * mean.double().pow(2).sum(dim=-1)).sqrt()
            redo |= 2 * EPS32 * fro > 1e-7 * val
        if redo.any():
            val[redo] = _cluster_eigs(padded[redo].double(), sizes[redo], deflate=not float32_centring).sqrt().sum(-1)
        nuc[by_size[c0:c1]] = val
    val = nuc / torch.sqrt(torch.clamp(cnt - 1, min=d).double())
    return val, cnt > 1


def _inter(x: torch.Tensor, labels: torch.Tensor, c: torch.Tensor, xb: torch.Tensor | None = None) -> torch.Tensor:
    """Per problem: point-mean of the Euclidean distance to the nearest centroid other than its label's.
    With xb (the bfloat16 tokens, fast mode) the x·c products run on the bfloat16 units: each distance
    is then off by ~1e-3 at random, which averages out over the points."""
    if xb is None:
        dist = sqdist(x, c).sqrt_()  # [P, n, k]
    else:
        dots = torch.bmm(xb, c.to(xb.dtype).transpose(1, 2)).float()
        dist = dots.mul_(-2).add_((x * x).sum(-1, keepdim=True)).add_((c * c).sum(-1)[:, None, :]).clamp_min_(0).sqrt_()
    dist = dist.scatter(-1, labels[..., None], float("inf"))
    return dist.min(dim=-1).values.mean(dim=-1)


def effective_dim(
    z: torch.Tensor, scale: torch.Tensor | None, perms: torch.Tensor, *, max_bytes: int = 24 << 20
) -> float:
    """Mean over slots of erank(one token per image, uncentred B×d) / min(B, d); perms [B, m] gives the
    token of each image in each of the m slots, scale [B, N] the tokens' inverse norms or ones (None:
    F.normalize, as the reference).
    Singular values from the float32 eigenvalues of the smaller Gram matrix, float64 for ill-conditioned
    slot matrices (smallest/largest eigenvalue < SLOT_COND_FLOOR): float32 would turn their tiny singular
    values into ~sqrt(eps·λmax) and raise the effective rank (by 6% for a 1/i² power-law spectrum).
    Within 1e-7 of the reference's float32 SVDs otherwise."""
    b, n, d = z.shape
    per = max(1, max_bytes // (b * d * 4))
    out = []
    for j0 in range(0, perms.shape[1], per):
        idx = perms[:, j0 : j0 + per].T  # [c, B]
        img = torch.arange(b, device=z.device)[None, :]
        slots = z[img, idx].float()  # [c, B, d], rows copied whole
        slots = F.normalize(slots, dim=-1) if scale is None else slots.mul_(scale[img, idx][..., None])
        gram = slots.transpose(1, 2) @ slots if b >= d else slots @ slots.transpose(1, 2)
        lam = eigvalsh(gram).clamp_min(0).double()
        redo = lam[:, 0] < SLOT_COND_FLOOR * lam[:, -1]
        if redo.any():  # ill-conditioned (e.g. steep or collapsed spectra): float64 Gram and eigenvalues
            s64 = slots[redo].double()
            lam[redo] = eigvalsh(s64.transpose(1, 2) @ s64 if b >= d else s64 @ s64.transpose(1, 2)).clamp_min(0)
        s = lam.sqrt()
        p = s / s.sum(dim=-1, keepdim=True) + 1e-12
        out.append(torch.exp(-(p * torch.log(p)).sum(dim=-1)) / min(b, d))
    return torch.cat(out).mean().item()


def _reference_perms(b: int, n: int, seed: int, last_problem_size: int, device) -> torch.Tensor:
    """The permutations of the reference: the CPU generator as the last global k-means left it
    (manual_seed, one randint over that problem's size), then one randperm(N) per image."""
    g = torch.Generator().manual_seed(seed)
    torch.randint(0, last_problem_size, (1,), generator=g)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(b)]).to(device)


# ---------------------------------------------------------------------------------------------


def dse_batch(
    z: torch.Tensor,
    *,
    mode: str = "parity",
    local_clusters: int = 3,
    global_clusters: int = 24,
    group_size: int | None = None,
    normalize: bool = True,
    iters: int = 20,
    tol: float = 1e-4,
    seed: int = 0,
    slots: int | None = None,
    checked: bool = False,
    chunk_bytes: int = 16 << 20,
) -> dict[str, float]:
    """The five DSE numbers of one batch of images ([B, N, d]).

    The batch is streamed in chunks of whole groups of images (about `chunk_bytes` of float32 tokens):
    each chunk is normalised, clustered at both levels and measured while it is in cache, so no
    normalised copy of the batch is ever held. `slots` (fast mode) uses that many random token slots
    for the dimensionality term instead of all N (parity always uses all N)."""
    if mode not in ("parity", "fast"):
        raise ValueError(f"mode must be 'parity' or 'fast', got {mode!r}")
    if not checked:
        check_features(z, min_tokens=local_clusters)
    exact = mode == "parity"
    b, n, d = z.shape
    kl, kg = local_clusters, global_clusters
    group = group_size or max(1, kg // kl)
    sizes = [min(group, b - s0) * n for s0 in range(0, b, group)]
    if sizes[-1] < kg:
        raise ValueError(f"a group of {sizes[-1]} tokens is smaller than global_clusters={kg}")
    per = max(group, (chunk_bytes // (n * d * 4)) // group * group)

    # first pass: inverse token norms (F.normalize's eps, float32 whatever the input dtype) and the
    # mean normalised token, one matrix-vector product per chunk
    scale = torch.ones(b, n, device=z.device)
    mu = torch.zeros(d, dtype=torch.float64, device=z.device)
    for c0 in range(0, b, per):
        x = z[c0 : c0 + per].float()
        if normalize:
            scale[c0 : c0 + per] = 1 / x.norm(dim=-1).clamp_min(1e-12)
        mu += (scale[c0 : c0 + per].reshape(1, -1) @ x.reshape(-1, d)).squeeze(0)
    mu = (mu / (b * n)).float()

    def chunks():
        for c0 in range(0, b, per):
            x = z[c0 : c0 + per].float()
            if normalize:  # parity divides as the reference; fast multiplies by the inverse norms
                x = F.normalize(x, dim=-1) if exact else x * scale[c0 : c0 + per, :, None]
            yield c0, x

    gen = torch.Generator().manual_seed(seed)  # CPU draws on every device: values independent of the device
    lowp = lowp_dtype(z.device)
    if not exact:  # every problem's randomness drawn up front: results independent of the streaming

        def draws(problems, k, size):
            u = torch.rand(problems, k, generator=gen).to(z.device)
            return u, (torch.rand(problems, size, generator=gen).to(z.device) if size > SEED_POINTS else None)

        u_local, keys_local = draws(b, kl, n)
        u_global, keys_global = draws(len(sizes), kg, group * n)
    local_lab = torch.empty(b, n, dtype=torch.long, device=z.device)
    global_lab = torch.empty(b * n, dtype=torch.long, device=z.device)  # per token, within its group
    l2_sum, inter_sum = 0.0, 0.0
    for c0, x in chunks():
        c1 = c0 + len(x)
        l2_sum += (x - mu).norm(dim=-1).sum(dtype=torch.float64).item()
        xb = x if exact else x.to(lowp)  # the tokens the fast mode's k-means reads (unused in parity mode)
        if exact:
            local_lab[c0:c1] = lloyd(x, kmeanspp_parity(x, kl, seed), iters, tol)[0]
        else:
            local_lab[c0:c1] = kmeans_batched(
                xb, kl, u_local[c0:c1], keys_local if keys_local is None else keys_local[c0:c1], iters, tol
            )[0]
        full = (len(x) // group) * group  # whole groups, then the batch's last partial group
        parts = [(0, full, group * n)] if full else []
        if full < len(x):
            parts.append((full, len(x), (len(x) - full) * n))
        for i0, i1, size in parts:
            xs = x[i0:i1].reshape(-1, size, d)
            g0 = (c0 + i0) // group
            g1 = g0 + len(xs)
            if exact:
                glab, gc = lloyd(xs, kmeanspp_parity(xs, kg, seed), iters, tol)
            else:
                glab, gc = kmeans_batched(
                    xb[i0:i1].reshape(-1, size, d),
                    kg,
                    u_global[g0:g1],
                    None if keys_global is None else keys_global[g0:g1],
                    iters,
                    tol,
                )
                gc = centroids(xs, glab, gc)  # the updated centroids, from the float32 tokens
            inter_sum += (
                _inter(xs, glab, gc, None if exact else xb[i0:i1].reshape(-1, size, d)).sum(dtype=torch.float64).item()
            )
            global_lab[(c0 + i0) * n : (c0 + i1) * n] = glab.reshape(-1)
    avg_l2 = l2_sum / (b * n)
    if avg_l2 == 0:
        raise ValueError("all tokens are identical (avg_l2 = 0): DSE is undefined for fully collapsed features")

    # cluster radii of both levels in one pass (one size-sorted order over all clusters)
    flat = z.reshape(b * n, d)
    tok = torch.arange(b * n, device=z.device)
    cid_local = (torch.arange(b, device=z.device)[:, None] * kl + local_lab).reshape(-1)
    cid_global = b * kl + tok // (group * n) * kg + global_lab
    exact_rows = None if exact and normalize else scale  # parity: normalised by division, as the reference
    rad, valid = cluster_radii(
        flat,
        exact_rows,
        torch.cat([tok, tok]),
        torch.cat([cid_local, cid_global]),
        b * kl + len(sizes) * kg,
        float32_centring=exact,
    )
    css, ok = rad[: b * kl].view(b, kl), valid[: b * kl].view(b, kl)
    nvalid = ok.sum(dim=1)
    per_img = torch.where(nvalid > 0, (css * ok).sum(dim=1) / nvalid.clamp_min(1), torch.ones_like(css[:, 0]))
    intra_image = per_img.mean().item()
    gvalid = valid[b * kl :]
    intra_batch = rad[b * kl :][gvalid].mean().item() if gvalid.any() else 1.0
    inter = inter_sum / len(sizes)

    if exact:
        perms = _reference_perms(b, n, seed, sizes[-1], z.device)
    else:
        perms = torch.rand(b, n, generator=gen).argsort(dim=1)[:, : slots or FAST_SLOTS].to(z.device)
    dim = effective_dim(z, exact_rows, perms)

    intra_image /= avg_l2
    intra_batch /= avg_l2
    inter /= avg_l2
    return {
        "dse": inter + dim - (intra_batch + intra_image) / 2,
        "inter": inter,
        "intra_image": intra_image,
        "intra_batch": intra_batch,
        "dim": dim,
    }


def dse(features: torch.Tensor, *, batch_size: int = 1024, mode: str = "parity", **kw) -> DSEResult:
    """DSE of [images, tokens, dim] features: per batch of `batch_size` images, averaged over batches."""
    check_features(features, min_tokens=kw.get("local_clusters", 3))
    rows = [
        dse_batch(features[i : i + batch_size], mode=mode, checked=True, **kw)
        for i in range(0, len(features), batch_size)
    ]
    avg = {k: sum(r[k] for r in rows) / len(rows) for k in COMPONENTS}
    return DSEResult(
        **avg, separability=avg["inter"] - (avg["intra_batch"] + avg["intra_image"]) / 2, batches=len(rows), mode=mode
    )

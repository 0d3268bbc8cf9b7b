"""Representation metrics: pure functions of tensors (no registry, no models, no jobs).

`compute_all` evaluates every metric of the `metrics` protocol on one checkpoint's features."""

from __future__ import annotations

import time

import torch

from harness.metrics import (
    dse as dse_estimator,  # the module: `dse` stays the submodule's name
)
from harness.metrics.spectrum import (
    alpha_req,
    effective_rank,
    lidar,
    lu_uniformity,
    normalised_moments,
    rankme,
    singular_spectrum,
    w2_uniformity,
)


def token_subsample(dense: torch.Tensor, per_image: int, seed: int) -> torch.Tensor:
    """A fixed subsample of `per_image` tokens of every image, flattened to [images * per_image, d]."""
    b, n, d = dense.shape
    k = min(per_image, n)
    idx = torch.rand(b, n, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)[:, :k].to(dense.device)
    return dense[torch.arange(b, device=dense.device)[:, None], idx].reshape(-1, d)


def rank_bound(emb: torch.Tensor) -> dict:
    """The sample count N and dimension d behind the image-level RankMe, effective rank, alpha-ReQ and
    spectrum: their rank can never exceed min(N, d), so with N <= d (2,048 images of ResNet-50's 2,048
    dimensions) it measures the sample count as much as the representation. Warned on the cell log."""
    n, d = int(emb.shape[0]), int(emb.shape[1])
    out: dict[str, int | str] = {"images": n, "dim": d, "rank_bound": min(n, d)}
    if n <= d:
        out["warning"] = (
            f"RankMe, effective rank, alpha-ReQ and the spectrum come from {n} embeddings of dimension {d}: "
            f"their rank is capped by the sample count, not the representation; raise the metrics protocol's "
            f"num_images above {d} (e.g. {4 * d}) for these metrics"
        )
        print(f"warning: {out['warning']}")
    return out


def compute_all(
    dense: torch.Tensor, params, views: torch.Tensor | None = None, embeddings: torch.Tensor | None = None
) -> tuple[dict, dict, dict]:
    """(metrics: flat floats, details: spectra and fit ranges, seconds per metric) of [images, tokens, d].
    The dense metrics (DSE, W2, -L_U, the dense spectrum) read the patch tokens; the image-level ones
    (RankMe, effective rank, alpha-ReQ, the spectrum, LiDAR's views) read `embeddings` [images, d], the
    backbone's image-level embedding (class token / global average pool; the mean of the dense tokens
    when none is given). `params`: the metrics protocol's parameters (harness.params.MetricsParams, or a
    dict of some of them: the schema's defaults fill the rest)."""
    from harness.params import MetricsParams

    if not isinstance(params, MetricsParams):
        params = MetricsParams.model_validate({"num_images": len(dense), **params})
    timings, details = {}, {}
    seed = params.image_list_seed

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t
        return out

    d = params.dse
    r = timed(
        "dse",
        lambda: dse_estimator.dse(
            dense,
            batch_size=params.batch_size,
            mode=d.mode,
            iters=d.kmeans_iters,
            tol=d.kmeans_tol,
            local_clusters=d.local_clusters,
            global_clusters=d.global_clusters,
            group_size=d.group_size,
            normalize=d.normalize,
            seed=d.seed,
        ),
    )
    m = {
        "dse": r.dse,
        "dse_inter": r.inter,
        "dse_intra_image": r.intra_image,
        "dse_intra_batch": r.intra_batch,
        "dse_dim": r.dim,
        "dse_separability": r.separability,
        "dense_rankme": r.dim,
    }
    tokens = token_subsample(dense, params.tokens_per_image, seed)
    ucfg = params.uniformity

    def w2():
        mom = normalised_moments(tokens)  # shared with the dense spectrum below
        return mom, w2_uniformity(moments=mom)

    moments, m["w2"] = timed("w2", w2)
    m["neg_w2"] = -m["w2"]
    m["neg_lu"] = timed("lu", lambda: lu_uniformity(tokens, t=ucfg.t, max_vectors=ucfg.max_vectors, seed=seed))
    emb = embeddings if embeddings is not None else dense.mean(dim=1)
    details["image_level_samples"] = rank_bound(emb)
    m["rankme"] = timed("rankme", lambda: rankme(emb))
    m["effective_rank"] = effective_rank(emb)
    acfg = params.alpha_req
    a = timed("alpha_req", lambda: alpha_req(emb, acfg.fit_min_rank, acfg.fit_max_rank))
    m["alpha_req"], details["alpha_req_fit_ranks"] = a["alpha"], a["fit_ranks"]
    sp, spd = singular_spectrum(emb), singular_spectrum(moments=moments)
    m["collapsed_dims"], m["collapsed_dims_dense"] = sp["collapsed_dims"], spd["collapsed_dims"]
    details["log_sv"], details["log_sv_dense"] = sp["log_sv"], spd["log_sv"]
    if views is not None:
        m["lidar"] = timed("lidar", lambda: lidar(views, params.lidar.delta, params.lidar.eps))
    return m, details, timings

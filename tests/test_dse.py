"""DSE: parity mode equals a loop-based transcription of the reference algorithm (protocols §2),
component by component; fast mode agrees with it and ranks feature sets the same way."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau

from harness.metrics.dse import dse, dse_batch
from harness.metrics.kmeans import lloyd
from harness.selection import dse_lambda


# ---- a straightforward transcription of estimator.py's algorithm, loops everywhere -------------
def ref_kmeans(X, k, iters=20, tol=1e-4, seed=0):
    g = torch.Generator().manual_seed(seed)  # the reference reseeds on every k-means call
    C = [X[torch.randint(0, X.shape[0], (1,), generator=g)[0]]]
    for _ in range(1, k):
        dists = torch.cdist(X, torch.stack(C)).min(dim=1).values
        C.append(X[torch.multinomial(dists / dists.sum(), 1, generator=g)[0]])  # D-, not D²-weighted
    return ref_lloyd(X, torch.stack(C), iters, tol)


def ref_lloyd(X, C, iters=20, tol=1e-4):
    k = len(C)
    for _ in range(iters):
        labels = torch.cdist(X, C).argmin(dim=1)
        new = C.clone()
        for j in range(k):
            if (labels == j).any():
                new[j] = X[labels == j].mean(dim=0)  # an empty cluster keeps its centroid
        shift = torch.norm(new - C)
        C = new
        if shift < tol:
            break
    return labels, C  # labels of the last assignment, updated centroids


def ref_css(X, labels, k):
    d, out = X.shape[1], []
    for j in range(k):
        xj = X[labels == j]
        if len(xj) > 1:
            out.append(torch.linalg.svdvals(xj - xj.mean(0)).sum().item() / math.sqrt(max(len(xj) - 1, d)))
    return out


def ref_dse(z, kl=3, kg=24):
    z = F.normalize(z.float(), dim=-1)
    B, N, d = z.shape
    flat = z.reshape(-1, d)
    avg_l2 = torch.stack([torch.norm(t - flat.mean(0)) for t in flat]).mean().item()
    img = []
    for b in range(B):
        lab, _ = ref_kmeans(z[b], kl)
        css = ref_css(z[b], lab, kl)
        img.append(sum(css) / len(css) if css else 1.0)
    css_all, inter = [], []
    for s in range(0, B, kg // kl):
        X = z[s : s + kg // kl].reshape(-1, d)
        lab, C = ref_kmeans(X, kg)
        css_all += ref_css(X, lab, kg)
        D = torch.cdist(X, C)
        for i in range(len(X)):
            D[i, lab[i]] = float("inf")
        inter.append(D.min(dim=1).values.mean().item())
    g = torch.Generator().manual_seed(0)  # state the last global k-means left on the CPU generator
    torch.randint(0, len(X), (1,), generator=g)
    perms = [torch.randperm(N, generator=g) for _ in range(B)]
    eranks = []
    for n in range(N):
        R = torch.stack([z[b, perms[b][n]] for b in range(B)])
        s = torch.linalg.svdvals(R)
        p = s / s.sum() + 1e-12
        eranks.append(math.exp(-(p * p.log()).sum().item()) / min(B, d))
    out = {
        "intra_image": sum(img) / B / avg_l2,
        "intra_batch": sum(css_all) / len(css_all) / avg_l2,
        "inter": sum(inter) / len(inter) / avg_l2,
        "dim": sum(eranks) / N,
    }
    out["dse"] = out["inter"] + out["dim"] - (out["intra_batch"] + out["intra_image"]) / 2
    return out


def structured(B=16, N=36, d=32, n_classes=6, noise=0.5, seed=0):
    """Images made of a few 'objects' drawn from shared class prototypes, plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(n_classes, d, generator=g) * 2
    cls = torch.randint(0, n_classes, (B, 3), generator=g)
    which = torch.randint(0, 3, (B, N), generator=g)
    return protos[torch.gather(cls, 1, which)] + noise * torch.randn(B, N, d, generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_equals_reference_transcription(seed):
    z = structured(seed=seed)
    ref = ref_dse(z)
    got = dse_batch(z, mode="parity")
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k


def test_parity_with_a_partial_last_group_and_resnet_like_shapes():
    z = structured(B=11, N=49, d=64, seed=3)  # 11 images: groups of 8 and 3
    ref, got = ref_dse(z), dse_batch(z, mode="parity")
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k


def test_fast_agrees_with_parity_and_ranks_the_same():
    noises = [0.3, 0.6, 1.0, 1.6, 2.5, 4.0, 6.0, 9.0]
    par, fast = [], []
    for i, s in enumerate(noises):
        z = structured(B=64, N=36, d=32, n_classes=24, noise=s, seed=10 + i)
        a, b = dse(z, mode="parity"), dse(z, mode="fast")
        assert b.dim == pytest.approx(a.dim, rel=0.02)  # same quantity, other token draws
        for k in ("inter", "intra_image", "intra_batch"):
            assert getattr(b, k) == pytest.approx(getattr(a, k), rel=0.15), (s, k)  # k-means local optima
        par.append(a.dse)
        fast.append(b.dse)
    tau = kendalltau(par, fast).statistic
    assert tau >= 0.95, (par, fast)
    assert par[0] > par[-1]  # more structure -> higher DSE


def test_batches_are_averaged():
    z = structured(B=16)
    r = dse(z, batch_size=8, mode="parity")
    a, b = dse_batch(z[:8]), dse_batch(z[8:])
    assert r.batches == 2 and r.dse == pytest.approx((a["dse"] + b["dse"]) / 2, rel=1e-6)
    assert r.separability == pytest.approx(r.inter - (r.intra_batch + r.intra_image) / 2)


def test_bad_input_is_refused_clearly():
    z = structured()
    bad = z.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/inf values"):
        dse(bad)
    with pytest.raises(ValueError, match="at least 1 image and 3 tokens"):
        dse(z[:, :2])
    with pytest.raises(ValueError, match="avg_l2 = 0"):
        dse(torch.ones(8, 30, 16))
    with pytest.raises(ValueError, match=r"\[images, tokens, dim\]"):
        dse(z[0])


def test_single_image_is_defined():
    r = dse(structured(B=1, N=40), mode="parity")
    assert r.dim == pytest.approx(1.0) and math.isfinite(r.dse)


def test_empty_cluster_keeps_its_centroid():
    x = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [1.0, 1.0], [1.1, 1.0]]])
    c0 = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [50.0, 50.0]]])
    labels, c = lloyd(x, c0, iters=20, tol=1e-4)
    assert torch.equal(c[0, 2], c0[0, 2]) and set(labels[0].tolist()) == {0, 1}


def test_lambda_normalisation():
    assert dse_lambda([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]) == pytest.approx(10.0)
    assert dse_lambda([1.0], [0.5]) == 1.0 and dse_lambda([1.0, 2.0], [0.5, 0.5]) == 1.0


def test_cluster_radii_match_float64_svds_even_for_nearly_rank_deficient_clusters():
    """Float32 Gram eigenvalues with the centring direction deflated, float64 where a cluster is close
    to rank-deficient: every radius equals the float64 SVD of the centred cluster."""
    from harness.metrics.dse import cluster_radii

    g = torch.Generator().manual_seed(0)
    d = 24
    clusters = [
        torch.randn(30, d, generator=g),  # well conditioned
        torch.randn(30, 1, generator=g) * torch.randn(1, d, generator=g) + 1e-4 * torch.randn(30, d, generator=g),
        torch.randn(3, d, generator=g).repeat(10, 1),  # 30 points, exactly rank 2 after centring
        torch.randn(2, d, generator=g),  # the smallest cluster with a radius
        torch.randn(60, d, generator=g) * torch.logspace(0, -5, d),  # more points than dims, steep spectrum
        torch.randn(1, d, generator=g),  # a single point: no radius
    ]
    tokens = F.normalize(torch.cat(clusters) + 0.5, dim=-1)
    cid = torch.cat([torch.full((len(c),), j) for j, c in enumerate(clusters)])
    rad, valid = cluster_radii(tokens, torch.ones(len(tokens)), torch.arange(len(tokens)), cid, len(clusters))
    assert valid.tolist() == [True] * 5 + [False]
    for j in range(5):
        x = tokens[cid == j].double()
        ref = torch.linalg.svdvals(x - x.mean(0)).sum().item() / math.sqrt(max(len(x) - 1, d))
        assert rad[j].item() == pytest.approx(ref, rel=1e-6), j


@pytest.mark.parametrize("mode", ["parity", "fast"])
def test_results_do_not_depend_on_how_the_batch_is_streamed(mode):
    z = structured(B=44, N=36, d=32, n_classes=24, noise=0.6, seed=4)  # 5 full groups and a partial one
    whole = dse_batch(z, mode=mode)
    streamed = dse_batch(z, mode=mode, chunk_bytes=1)  # one group of images per chunk
    for k, v in whole.items():
        assert streamed[k] == pytest.approx(v, rel=1e-6), k


def test_effective_rank_of_steep_spectra_matches_the_reference_svds():
    """Float32 Gram eigenvalues turn tiny singular values into ~sqrt(eps·λmax); ill-conditioned slot
    matrices are therefore redone in float64 (a 1/i² spectrum was 6% off before)."""
    from harness.metrics.dse import effective_dim

    g = torch.Generator().manual_seed(0)
    b, n, d = 96, 4, 48
    for decay in (0.5, 2.0, 3.0):
        z = torch.randn(b, n, d, generator=g) * torch.arange(1, d + 1) ** -decay + 0.3
        perms = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
        got = effective_dim(z, None, perms)
        zn = F.normalize(z, dim=-1)
        ref = []
        for j in range(n):
            s = torch.linalg.svdvals(torch.stack([zn[i, perms[i, j]] for i in range(b)]))
            p = s / s.sum() + 1e-12
            ref.append(math.exp(-(p * p.log()).sum().item()) / min(b, d))
        assert got == pytest.approx(sum(ref) / n, rel=1e-5), decay


def test_parity_radii_keep_the_references_float32_centring_on_tight_clusters():
    """The reference centres in float32, so its centred points keep a tiny residual mean that its SVD
    sees; for a tight cluster that residual is a visible share of the radius, and parity keeps it."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(24, 32, generator=g) * 3
    which = torch.arange(8)[:, None] * 3 + torch.arange(30)[None, :] % 3  # 3 tight objects per image
    for spread in (1e-3, 1e-4):
        z = protos[which] + spread * torch.randn(8, 30, 32, generator=g)
        ref, got = ref_dse(z), dse_batch(z, mode="parity")
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-5), (spread, k)


def test_fast_mode_token_slots():
    """Fast mode averages the effective rank over a random subset of token slots: the same quantity in
    expectation, with a spread that shrinks with the number of slots."""
    z = structured(B=256, N=36, d=32, seed=5)
    parity = dse_batch(z, mode="parity")["dim"]
    for slots, tol in ((36, 2e-3), (8, 5e-3)):
        assert dse_batch(z, mode="fast", slots=slots)["dim"] == pytest.approx(parity, rel=tol), slots


def test_float16_features_are_measured_in_float32():
    """Cached features are float16; every norm, sum and radius is computed in float32 or better, so the
    result equals that of the same values upcast first."""
    z = structured(B=16, N=36, d=32, seed=6).half()
    for mode in ("parity", "fast"):
        a, b = dse_batch(z, mode=mode), dse_batch(z.float(), mode=mode)
        for k, v in b.items():
            assert a[k] == pytest.approx(v, rel=1e-6), (mode, k)
    big = torch.full((4, 40, 16), 60000.0, dtype=torch.float16)  # a float16 sum would overflow
    big[:, ::2] = -60000.0
    big[:, :, 0] += torch.arange(40, dtype=torch.float16) * 100
    dse(big, mode="fast")  # finite input is accepted


def test_fast_mode_without_native_bfloat16_clusters_in_float32(monkeypatch):
    import harness.metrics.dse as dse_module

    z = structured(B=64, N=36, d=32, n_classes=24, noise=0.6, seed=7)
    par = dse(z, mode="parity")
    monkeypatch.setattr(dse_module, "lowp_dtype", lambda device: torch.float32)
    f32 = dse(z, mode="fast")
    for k in ("inter", "intra_image", "intra_batch"):
        assert getattr(f32, k) == pytest.approx(getattr(par, k), rel=0.15), k


@pytest.mark.parametrize("d,n", [(32, 36), (48, 36), (40, 16), (100, 36)])
def test_lloyd_reproduces_the_reference_bit_for_bit_on_near_duplicate_tokens(d, n):
    """Near-duplicate tokens sit on near-ties between centroids, where a last-bit difference in a
    distance or a centroid flips the assignment: parity's Lloyd uses cdist's arithmetic and the
    per-cluster means' rounding, so its labels and centroids equal the loop's exactly, for widths
    that torch reduces in different vector layouts and for both of cdist's paths (n <= 25 or not)."""
    from harness.metrics.kmeans import kmeanspp_parity

    z = F.normalize(structured(B=16, N=n, d=d, n_classes=6, noise=1e-3, seed=2), dim=-1)
    groups = z.reshape(2, 8 * n, d)
    for x, k in ((z, 3), (groups, 24)):
        init = kmeanspp_parity(x, k, 0)
        labels, cents = lloyd(x, init, iters=20, tol=1e-4)
        for p in range(len(x)):
            ref_lab, ref_c = ref_lloyd(x[p], init[p].clone())
            assert torch.equal(labels[p], ref_lab) and torch.equal(cents[p], ref_c), (k, p)


def test_lloyd_distances_are_cdists_bits_including_exact_duplicates():
    from harness.metrics.kmeans import lloyd as parity_lloyd

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 8, generator=g) * 1e-17  # tiny scale: every distance near zero
    c = x[:, :3].clone()  # centroids on exact duplicates of points
    labels, _ = parity_lloyd(x, c, iters=1, tol=0.0)
    assert torch.equal(labels, torch.cdist(x, c).argmin(dim=-1))


def test_cluster_means_round_as_the_per_cluster_mean():
    from harness.metrics.kmeans import cluster_means

    g = torch.Generator().manual_seed(0)
    for d in (40, 48, 384):
        x = torch.randn(3, 500, d, generator=g)
        labels = torch.randint(0, 7, (3, 500), generator=g) * (torch.rand(3, 500, generator=g) < 0.9)  # 0 is common
        labels[2][labels[2] == 5] = 6  # cluster 5 of problem 2 is empty
        prev = torch.randn(3, 7, d, generator=g)
        out = cluster_means(x, labels, prev)
        sub = cluster_means(x, labels[1:], prev[1:], problems=torch.tensor([1, 2]))
        for p in range(3):
            for j in range(7):
                m = labels[p] == j
                assert torch.equal(out[p, j], x[p][m].mean(dim=0) if m.any() else prev[p, j]), (d, p, j)
        assert torch.equal(sub, out[1:])

"""Closed-form and property checks of the uniformity and spectrum metrics."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.metrics.spectrum import (
    alpha_req,
    effective_rank,
    lu_uniformity,
    rankme,
    singular_spectrum,
    w2_uniformity,
)

G = lambda s=0: torch.Generator().manual_seed(s)


def test_w2_goes_to_zero_for_isotropic_gaussian():
    small = w2_uniformity(torch.randn(500, 16, generator=G()))
    big = w2_uniformity(torch.randn(50000, 16, generator=G()))
    assert big < small and big < 0.05


def test_w2_of_fully_collapsed_features_is_analytic():
    z = torch.ones(100, 16) * torch.arange(1, 17.0)  # every row the same direction
    assert w2_uniformity(z) == pytest.approx(math.sqrt(2.0), rel=1e-9)  # |mu|² = 1, Sigma = 0


def test_w2_properties_permutation_replication_redundancy_collapse():
    z = torch.randn(400, 8, generator=G())
    w = w2_uniformity(z)
    assert w2_uniformity(z[torch.randperm(400, generator=G(1))]) == pytest.approx(w, rel=1e-9)
    assert w2_uniformity(torch.cat([z, z])) == pytest.approx(w, rel=1e-9)  # replication invariance
    assert w2_uniformity(torch.cat([z, z], dim=1)) > w  # redundant features
    collapsed = z.clone()
    collapsed[:, 4:] = 0
    assert w2_uniformity(collapsed) > w  # dimensional collapse


def test_lu_breaks_replication_invariance():
    z = torch.randn(200, 8, generator=G())
    assert lu_uniformity(torch.cat([z, z])) != pytest.approx(lu_uniformity(z), rel=1e-3)


def test_rankme_of_rank_r_matrix():
    a = torch.randn(300, 5, generator=G()) @ torch.randn(5, 64, generator=G(1))
    q, _ = torch.linalg.qr(torch.randn(300, 5, generator=G(2)))
    assert effective_rank(q * 3) == pytest.approx(5.0, rel=1e-6)
    assert 1 < rankme(a) <= 5.0 + 1e-6


def test_alpha_req_recovers_a_power_law():
    n, d, alpha = 4000, 200, 1.3
    scales = torch.arange(1, d + 1, dtype=torch.float64).pow(-alpha / 2)
    z = torch.randn(n, d, generator=G(), dtype=torch.float64) * scales
    got = alpha_req(z)
    assert got["alpha"] == pytest.approx(alpha, abs=0.1) and got["fit_ranks"] == [11, 100]  # reptrix's range


def test_spectrum_counts_collapsed_dimensions():
    z = torch.randn(500, 10, generator=G())
    z[:, 7:] = 0
    out = singular_spectrum(z)
    assert out["collapsed_dims"] >= 3 and len(out["log_sv"]) == 10


def test_bad_input():
    with pytest.raises(ValueError, match="NaN/inf"):
        rankme(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\[n >= 2, d\]"):
        w2_uniformity(torch.ones(1, 4))


def test_lidar_counts_the_discriminable_directions():
    from harness.metrics.spectrum import lidar

    n, q, d, r = 400, 8, 32, 6
    centres = torch.zeros(n, d, dtype=torch.float64)
    centres[:, :r] = torch.randn(n, r, generator=G(), dtype=torch.float64) * 10  # between-image spread in r dims
    views = centres[:, None] + torch.randn(n, q, d, generator=G(1), dtype=torch.float64)  # isotropic view noise
    assert lidar(views) == pytest.approx(r, abs=0.5)
    collapsed = centres.clone()
    collapsed[:, 1:] = 0
    assert lidar(collapsed[:, None] + torch.randn(n, q, d, generator=G(2), dtype=torch.float64)) < 1.5
    with pytest.raises(ValueError, match="q >= 2 views"):
        lidar(views[:, :1])


# ---- the W2 paper's four properties, as property-based tests -----------------------------------


def _features(seed, n, d):
    return torch.randn(n, d, generator=G(seed), dtype=torch.float64) + torch.randn(
        d, generator=G(seed + 1), dtype=torch.float64
    )


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 200), d=st.integers(2, 24))
def test_w2_instance_permutation_invariance(seed, n, d):
    z = _features(seed, n, d)
    perm = torch.randperm(n, generator=G(seed + 2))
    assert w2_uniformity(z[perm]) == pytest.approx(w2_uniformity(z), rel=1e-6)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 200), d=st.integers(2, 24), copies=st.integers(2, 4))
def test_w2_sample_replication_invariance_and_lu_breaks_it(seed, n, d, copies):
    z = _features(seed, n, d)
    rep = z.repeat(copies, 1)
    # rel 1e-6: with n < d the covariance is rank-deficient and sqrt(eigenvalue) turns 1e-16 rounding into 1e-8
    assert w2_uniformity(rep) == pytest.approx(w2_uniformity(z), rel=1e-6)
    assert lu_uniformity(rep) < lu_uniformity(z)  # identical pairs (distance 0) pull -L_U down


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 16))
def test_w2_sensitive_to_feature_redundancy(seed, d):
    z = torch.randn(2000, d, generator=G(seed), dtype=torch.float64)
    assert w2_uniformity(torch.cat([z, z], dim=1)) > w2_uniformity(z)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), d=st.integers(4, 16), keep=st.integers(1, 3))
def test_w2_sensitive_to_dimensional_collapse(seed, d, keep):
    z = torch.randn(2000, d, generator=G(seed), dtype=torch.float64)
    collapsed = z.clone()
    collapsed[:, keep:] = 0
    assert w2_uniformity(collapsed) > w2_uniformity(z)

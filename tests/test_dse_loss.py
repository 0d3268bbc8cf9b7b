"""The DSE regulariser is differentiable and optimising it raises DSE."""

import torch

from harness.metrics.dse import dse
from harness.metrics.dse_loss import DSELoss


def tokens(seed=0, B=16, N=24, d=16):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(6, d, generator=g)
    which = torch.randint(0, 6, (B, N), generator=g)
    return protos[which] + 0.8 * torch.randn(B, N, d, generator=g)


def test_gradient_is_finite_and_nonzero():
    z = tokens().requires_grad_(True)
    value = DSELoss()(z)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_a_few_steps_on_a_toy_encoder_raise_dse():
    torch.manual_seed(0)
    x = tokens(seed=1)
    enc = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    reg = DSELoss(seed=0)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    with torch.no_grad():
        before = dse(enc(x), mode="parity").dse
    for _ in range(25):
        opt.zero_grad()
        (-reg(enc(x))).backward()  # loss = task_loss - beta * DSE, with no task loss here
        opt.step()
    with torch.no_grad():
        after = dse(enc(x), mode="parity").dse
    assert after > before + 0.05, (before, after)


def test_global_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DSELoss()(tokens())
    assert torch.equal(torch.rand(3), expected)


def test_kmeans_seeds_from_every_point_and_refills_empty_clusters_as_the_regulariser():
    """DSELoss's k-means (the official DSE_regularizer.py): k-means++ over every token, not a subsample,
    and an empty cluster re-initialised to a point (here: asked of `refill`)."""
    import pytest

    from harness.metrics.kmeans import kmeans_batched

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 600, 4, generator=g)
    u = torch.rand(1, 3, generator=g)
    with pytest.raises(ValueError, match="random keys of the seeding subsample"):
        kmeans_batched(x, 3, u, None, 5, 1e-4)  # the estimator's fast mode subsamples 512 seeds
    _, c = kmeans_batched(x, 3, u, None, 5, 1e-4, seed_points=None)
    assert c.shape == (1, 3, 4) and torch.isfinite(c).all()

    two_values = torch.tensor([[[0.0, 0.0]] * 3 + [[1.0, 1.0]] * 3])  # 3 clusters of 2 distinct points: one empty
    calls = []

    def refill(xw):
        calls.append(len(xw))
        return xw[:, :3].float()

    labels, _ = kmeans_batched(two_values, 3, torch.rand(1, 3, generator=g), None, 5, 1e-4, refill=refill)
    assert calls and len(labels.unique()) <= 2


def test_dse_loss_is_deterministic_for_a_seed_with_more_tokens_than_the_seeding_subsample():
    z = tokens(seed=3, B=8, N=100)  # each global problem: 8 x 100 = 800 tokens (> 512)
    a, b = DSELoss(seed=5)(z), DSELoss(seed=5)(z)
    assert torch.isfinite(a) and a == b

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


# ---- W2Loss and gradient checks (issue 26) -------------------------------------------------------------


def test_w2_loss_equals_the_metric_and_the_reference_closed_form():
    """The same number as the W2 metric (harness.metrics.spectrum.w2_uniformity) and as WassersteinSSL's
    formula written out with a general eigensolver on the 1/N covariance."""
    import math

    from harness.metrics.spectrum import w2_uniformity
    from harness.metrics.w2_loss import W2Loss

    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = W2Loss()(z).item()
    zn = torch.nn.functional.normalize(z, dim=1)
    mu = zn.mean(0)
    cov = (zn - mu).T @ (zn - mu) / len(zn)
    ev = torch.linalg.eigvals(cov).real.abs()  # the reference's torch.eig + abs
    reference = math.sqrt((mu @ mu + 1 + cov.trace() - 2 / math.sqrt(16) * ev.sqrt().sum()).item())
    assert abs(got - reference) < 1e-10
    assert abs(got - w2_uniformity(zn.float())) < 1e-5


def test_w2_loss_gradient_matches_finite_differences():
    from harness.metrics.w2_loss import W2Loss

    z = torch.randn(12, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(W2Loss(), (z,), eps=1e-6, atol=1e-6)


def test_dse_loss_gradient_matches_finite_differences():
    """With the k-means labels fixed by the step (they are piecewise constant), DSE is smooth in the tokens:
    the analytic gradient agrees with central differences."""
    z = tokens(seed=4, B=8, N=10, d=6).double().requires_grad_(True)
    loss = DSELoss(seed=0)
    assert torch.autograd.gradcheck(lambda t: loss_with_fixed_seed(loss, t), (z,), eps=1e-6, atol=1e-5)


def loss_with_fixed_seed(loss, t):
    loss.generator.manual_seed(0)  # the same k-means draws for every evaluation of the finite differences
    return loss(t)


def test_degenerate_batches_give_finite_losses_and_gradients():
    """A batch of identical tokens (a collapsed representation): both regularisers stay finite, value and
    gradient, so a training step can recover instead of writing NaN into the weights."""
    from harness.metrics.w2_loss import W2Loss

    same = torch.ones(8, 10, 6, dtype=torch.float64).requires_grad_(True)
    value = DSELoss()(same)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(same.grad).all()
    rows = torch.ones(16, 6, dtype=torch.float64).requires_grad_(True)
    w = W2Loss()(rows)
    w.backward()
    assert torch.isfinite(w) and torch.isfinite(rows.grad).all()
    assert abs(w.item() - 2**0.5) < 1e-5  # all mass on one point of the sphere: |mu|^2 = 1, Sigma = 0

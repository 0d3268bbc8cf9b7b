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

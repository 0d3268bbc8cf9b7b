"""DINOv3's Gram anchoring loss: its value against a direct computation and against a transcription of the
upstream forward, its gradient, degenerate batches, the detached teacher and the shape checks."""

import doctest
import itertools

import pytest
import torch
import torch.nn.functional as F

import harness.metrics.gram_loss as gram_module
from harness.metrics.gram_loss import GramLoss, gram_matrix

OPTIONS = [  # (apply_norm, img_level, remove_neg, remove_only_teacher_neg), both removals never together
    opts for opts in itertools.product([True, False], repeat=4) if not (opts[2] and opts[3])
]


def pair(seed=0, B=3, N=7, D=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, D, generator=g, dtype=dtype), torch.randn(B, N, D, generator=g, dtype=dtype)


def direct(student, teacher, apply_norm, img_level, remove_neg, remove_only_teacher_neg):
    """The loss written out: normalise, flatten (batch level), bmm, clamp, mean squared difference."""
    s, t = student, teacher
    if apply_norm:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    if not img_level:
        s, t = s.reshape(1, -1, s.shape[-1]), t.reshape(1, -1, t.shape[-1])
    gs, gt = torch.bmm(s, s.transpose(1, 2)), torch.bmm(t, t.transpose(1, 2))
    if remove_neg:
        gs, gt = gs.clamp_min(0), gt.clamp_min(0)
    if remove_only_teacher_neg:
        gt = gt.clamp_min(0)  # the student's Gram is untouched (see test_remove_only_teacher_neg_...)
    return ((gs - gt) ** 2).sum() / gs.numel()


def upstream_forward(output_feats, target_feats, apply_norm, img_level, remove_neg, remove_only_teacher_neg):
    """dinov3/loss/gram_loss.py lines 46-84 @ 6876159, transcribed verbatim (self.* made arguments)."""
    if img_level:
        assert len(target_feats.shape) == 3 and len(output_feats.shape) == 3
    output_feats = output_feats.float()
    target_feats = target_feats.float()
    if apply_norm:
        target_feats = F.normalize(target_feats, dim=-1)
    if not img_level and len(target_feats.shape) == 3:
        target_feats = target_feats.flatten(0, 1)
    target_sim = torch.matmul(target_feats, target_feats.transpose(-1, -2))
    if apply_norm:
        output_feats = F.normalize(output_feats, dim=-1)
    if not img_level and len(output_feats.shape) == 3:
        output_feats = output_feats.flatten(0, 1)
    student_sim = torch.matmul(output_feats, output_feats.transpose(-1, -2))
    if remove_neg:
        target_sim[target_sim < 0] = 0.0
        student_sim[student_sim < 0] = 0.0
    elif remove_only_teacher_neg:
        target_sim[target_sim < 0] = 0.0
        student_sim[(student_sim < 0) & (target_sim < 0)] = 0.0
    return torch.nn.MSELoss()(student_sim, target_sim)


def test_zero_for_identical_tokens_and_positive_otherwise():
    s, t = pair()
    for opts in OPTIONS:
        loss = GramLoss(*opts)
        assert loss(s, t) > 0, opts
        if opts[3]:  # remove_only_teacher_neg: the teacher's negatives are zeroed, the student's are not
            g = gram_matrix(s, normalize=opts[0])
            g = g if opts[1] else gram_matrix(s.flatten(0, 1), normalize=opts[0])
            assert (g < 0).any()
            torch.testing.assert_close(loss(s, s.clone()), (g.clamp_max(0) ** 2).mean())
        else:
            assert loss(s, s.clone()) == 0, opts
    assert GramLoss(remove_only_teacher_neg=True)(s.abs(), s.abs()) == 0  # no negative similarity: zero


def test_invariant_to_token_scale_when_normalised():
    """Cosine Grams: rescaling each token by a positive factor changes nothing (and does without norm)."""
    s, t = pair()
    scale = torch.rand(*s.shape[:2], 1, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
    torch.testing.assert_close(GramLoss()(s * scale, t), GramLoss()(s, t))
    assert not torch.allclose(GramLoss(apply_norm=False)(s * scale, t), GramLoss(apply_norm=False)(s, t))


@pytest.mark.parametrize("opts", OPTIONS)
def test_equals_the_direct_computation_and_the_upstream_transcription(opts):
    s, t = pair(seed=2)
    expected = direct(s.double(), t.double(), *opts)
    got = GramLoss(*opts)(s.double(), t.double())
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(GramLoss(*opts)(s, t), upstream_forward(s, t, *opts), rtol=1e-6, atol=1e-7)


def test_batch_level_accepts_selected_tokens_and_image_level_differs():
    """img_level=False: one Gram over all B*N tokens (or over [M, D] selected tokens, as DINOv3's
    tokens_used=masked passes); it includes cross-image pairs, so it is not the per-image loss."""
    s, t = pair(seed=3)
    flat = GramLoss(img_level=False)
    torch.testing.assert_close(flat(s, t), flat(s.flatten(0, 1), t.flatten(0, 1)))
    assert not torch.allclose(flat(s, t), GramLoss()(s, t))
    one = GramLoss()(s[:1], t[:1])
    torch.testing.assert_close(flat(s[:1], t[:1]), one)  # one image: the two agree


def test_remove_only_teacher_neg_leaves_the_student_gram_as_upstream_does():
    """Upstream line 82's mask `(student_sim < 0) & (target_sim < 0)` is read after line 81 zeroed
    the teacher's negatives, so it never selects anything: the student's negative similarities stay."""
    s, t = pair(seed=4)
    teacher_only = GramLoss(remove_only_teacher_neg=True)(s, t)
    gs, gt = gram_matrix(s), gram_matrix(t).clamp_min(0)
    assert (gs < 0).any() and (gram_matrix(t) < 0).any()  # the case is exercised
    torch.testing.assert_close(teacher_only, F.mse_loss(gs, gt))
    assert not torch.allclose(teacher_only, F.mse_loss(gs.clamp_min(0), gt))


def test_gradcheck_float64():
    s, t = pair(seed=5, B=2, N=4, D=3, dtype=torch.float64)
    for opts in OPTIONS:
        loss = GramLoss(*opts)
        x = s.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda z: loss(z, t), (x,), eps=1e-6, atol=1e-6), opts


@pytest.mark.parametrize("collapsed", ["identical", "zero"])
@pytest.mark.parametrize("opts", OPTIONS)
def test_collapsed_student_is_finite(collapsed, opts):
    """All tokens identical, or all zero: F.normalize's eps (1e-12, DINOv3's) keeps it finite."""
    _, t = pair(seed=6)
    s = torch.ones_like(t) * 0.3 if collapsed == "identical" else torch.zeros_like(t)
    x = s.clone().requires_grad_(True)
    value = GramLoss(*opts)(x, t)
    value.backward()
    assert torch.isfinite(value) and value > 0 and x.grad is not None and torch.isfinite(x.grad).all()
    y = s.clone().requires_grad_(True)
    both = GramLoss(*opts)(y, s)  # student and teacher both collapsed
    both.backward()
    assert both == 0 and y.grad is not None and torch.isfinite(y.grad).all()


def test_a_fully_collapsed_student_gets_no_gradient_from_cosine_grams():
    """All tokens parallel: every cosine similarity is at its maximum 1, a stationary point; the
    loss is positive but cannot pull the student out (all-zero tokens likewise get exactly 0)."""
    _, t = pair(seed=10)
    for s in (torch.ones_like(t) * 0.3, torch.zeros_like(t)):
        x = s.clone().requires_grad_(True)
        value = GramLoss()(x, t)
        value.backward()
        assert value > 0 and x.grad is not None and x.grad.abs().max() < 1e-6
    x = (torch.ones_like(t) * 0.3).requires_grad_(True)
    GramLoss(apply_norm=False)(x, t).backward()
    assert x.grad is not None and x.grad.abs().max() > 1e-3  # without normalisation it does move


def test_zero_tokens_have_zero_similarity_rows():
    """A zero token normalises to zero (not NaN): its Gram row and column are 0."""
    s, _ = pair(seed=7)
    s[0, 2] = 0
    g = gram_matrix(s)
    assert torch.isfinite(g).all() and (g[0, 2] == 0).all() and (g[0, :, 2] == 0).all()
    torch.testing.assert_close(torch.diagonal(g[1], dim1=-2, dim2=-1), torch.ones(s.shape[1]))


def test_no_gradient_reaches_the_teacher():
    s, t = pair(seed=8)
    s.requires_grad_(True)
    t.requires_grad_(True)
    GramLoss()(s, t).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_low_precision_is_computed_in_float32_and_float64_stays():
    s, t = pair(seed=9)
    half = GramLoss()(s.bfloat16(), t.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, GramLoss()(s.bfloat16().float(), t.bfloat16().float()))
    assert GramLoss()(s.double(), t.double()).dtype == torch.float64


@pytest.mark.parametrize(
    "student, teacher, kwargs, message",
    [
        ((3, 7, 5), (3, 7, 4), {}, r"same shape.*\(3, 7, 5\).*\(3, 7, 4\)"),
        ((3, 7, 5), (3, 6, 5), {}, r"resizes the Gram teacher's patch grid"),
        ((21, 5), (21, 5), {}, r"img_level=True\): expected \[B, N, D\] patch tokens, got student \(21, 5\)"),
        ((2, 3, 7, 5), (2, 3, 7, 5), {"img_level": False}, r"\[B, N, D\] or \[M, D\]"),
        ((3, 0, 5), (3, 0, 5), {}, r"non-empty"),
    ],
)
def test_shape_errors_are_clear(student, teacher, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GramLoss(**kwargs)(torch.randn(student), torch.randn(teacher))


def test_both_negative_removals_are_refused():
    with pytest.raises(ValueError, match="exclude each other"):
        GramLoss(remove_neg=True, remove_only_teacher_neg=True)


def test_defaults_are_dinov3_gram_anchoring_config():
    """dinov3/configs/train/dinov3_vit7b16_gram_anchor.yaml @ 6876159, lines 57-60, verbatim."""
    source = {
        "apply_norm": "  normalized: true",
        "img_level": "  img_level: true",
        "remove_neg": "  remove_neg: false",
        "remove_only_teacher_neg": "  remove_only_teacher_neg: false",
    }
    loss = GramLoss()
    for attr, line in source.items():
        assert getattr(loss, attr) == (line.split(": ")[1] == "true"), (attr, line)
    assert "img_level=True" in repr(loss)


def test_docstring_example_runs():
    result = doctest.testmod(gram_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0

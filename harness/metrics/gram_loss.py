"""GramLoss: DINOv3's Gram anchoring, `loss = task_loss + weight * GramLoss()(student_patches, gram_teacher_patches)`.

Source: facebookresearch/dinov3 @ 6876159a11b4df116f30f667f8c9888617df0751, `dinov3/loss/gram_loss.py`
lines 11-84 (`class GramLoss`), called from `dinov3/train/ssl_meta_arch.py` lines 651-665. The MSE between
the patch-similarity (Gram) matrices of the student and of the Gram teacher:

    G = X_hat X_hat^T  per image,   X_hat = F.normalize(X, dim=-1)   (X: [N, D] patch tokens),
    loss = mean over b, i, j of (G_student[b, i, j] - G_teacher[b, i, j])^2      (nn.MSELoss, line 84)

It constrains the *structure* of the patch features (which patches look alike), not the features
themselves: the student may drift, as long as its patch similarities stay those of the teacher.

Options (DINOv3's, same names; the defaults are those of DINOv3's Gram-anchoring run,
`dinov3/configs/train/dinov3_vit7b16_gram_anchor.yaml`):
- `apply_norm=True`: L2-normalise each token first, so the Gram holds cosine similarities (upstream lines
  54-55, 65-66; config line 57 `normalized: true`). F.normalize's eps = 1e-12 (PyTorch's default, which
  DINOv3 keeps): an all-zero token normalises to zero, its Gram row and column are 0, the loss stays finite.
- `img_level=True`: one [N, N] Gram per image (line 46-47); `False` flattens the batch into one
  [B*N, B*N] Gram over all tokens (lines 57-59, 68-70), and then also accepts [M, D] tokens, as DINOv3's
  `tokens_used: masked/unmasked` selection passes (ssl_meta_arch.py lines 515-520). Config line 58
  `img_level: true`; `ssl_default_config.yaml` line 57 has `img_level: false` (with `use_loss: false`).
- `remove_neg=False`: set negative similarities of both Grams to 0 (lines 75-77). Config line 59
  `remove_neg: false`. DINOv3's class default is `remove_neg=True` (line 18), but its trainer always
  passes the config's value (ssl_meta_arch.py lines 172-176), so training runs with False.
- `remove_only_teacher_neg=False`: set the teacher's negative similarities to 0 (lines 79-82). Config
  line 60 `remove_only_teacher_neg: false`. Upstream line 82 then zeroes the student's entries where
  `(student_sim < 0) & (target_sim < 0)`, but line 81 has already set those `target_sim` to 0, so that
  mask is always empty: the student's Gram is left as is. Reproduced here as the code behaves; so with
  this option identical student and teacher tokens give a positive loss (the mean of the squared
  negative similarities), which pushes the student's negative similarities up to 0.
  Setting both options is refused (upstream line 31-32 asserts they differ).

What the teacher is in DINOv3 (ssl_meta_arch.py, train.py, configs at the commit above):
- Student tokens: `x_norm_patchtokens` (after the final norm; no class or storage tokens) of the
  student's *global* crops (ssl_meta_arch.py lines 478, 545, 570), which carry iBOT's masks unless
  distillation is on (line 539). Teacher tokens: the Gram teacher's `x_norm_patchtokens`, computed under
  `torch.no_grad()` (lines 489-491); here the teacher is detached in `forward`.
- The Gram teacher is a frozen copy of an *earlier* EMA teacher: loaded from `gram.ckpt` (lines 308-323;
  the config's `ckpt: ignore` (line 51) is a placeholder, README.md line 686 sets
  `gram.ckpt=<PATH/TO/GRAM_TEACHER_FROM_PREVIOUS_STEP>`) or copied from the EMA teacher at iteration
  `gram.it_load_ema_teacher` (train.py lines 471-473; config line 52 `it_load_ema_teacher: -1`, i.e.
  never). It is refreshed from the EMA teacher (`update_gram`, m = 0: a plain copy, ssl_meta_arch.py
  lines 728-745) after every iteration `it` with `(it + 1) >= it_first_update` and
  `(it + 1) % update_frequency == 0`, at most `max_updates` times (train.py lines 534-544): config lines
  53-56 `rep_update: true`, `update_frequency: 10000`, `it_first_update: 1010000`, `max_updates: 3`, so
  refreshes after iterations 1,009,999, 1,019,999 and 1,029,999, then fixed.
- The Gram teacher sees the same global crops at a higher resolution, undistorted: config line 163
  `global_crops_size: 256`, line 165 `gram_teacher_crops_size: 512`, line 169
  `gram_teacher_no_distortions: true`; its [32x32] patch grid is resized to the student's [16x16] with
  `interpolate(mode="bicubic", antialias=False)` (ssl_meta_arch.py lines 494-510; config lines 62-63)
  *before* this loss. GramLoss itself wants equal shapes: resize the teacher's tokens first.
- Weight: `loss_accumulator += gram_loss * gram_loss_weight` (ssl_meta_arch.py line 665), with
  `loss_weight_schedule` (lines 187-200, `linear_warmup_cosine_decay` in cosine_lr_scheduler.py lines
  54-85) from config lines 64-69 `start: 0`, `peak: 0`, `end: 2.0`, `warmup_epochs: 1000`,
  `cosine_epochs: 1`, with `OFFICIAL_EPOCH_LENGTH: 1000` (line 76) and `epochs: 1200` (line 137): weight 0
  for iterations 0-999,999, a half-cosine from 0 to 2.0 over iterations 1,000,000-1,000,999, then 2.0 to
  the end (1,200,000). The later high-resolution adaptation
  (`dinov3_vit7b16_high_res_adapt.yaml` lines 46-68) keeps the loss at a constant 1.5 with a fixed
  teacher (`rep_update: false`).

Deliberate difference: DINOv3 casts both inputs to float32 (`.float()`, lines 50-51); here float16 and
bfloat16 are raised to float32 as there, but float64 stays float64 (so `torch.autograd.gradcheck` works).

    >>> import torch
    >>> from harness.metrics.gram_loss import GramLoss
    >>> gram = GramLoss()                                  # DINOv3's Gram-anchoring options
    >>> student = torch.randn(2, 196, 384, requires_grad=True)    # [B, N, D] patch tokens
    >>> teacher = torch.randn(2, 196, 384)                 # the Gram teacher's, same grid
    >>> loss = gram(student, teacher)
    >>> loss.backward()
    >>> bool(loss > 0), student.grad.shape
    (True, torch.Size([2, 196, 384]))
    >>> float(gram(teacher, teacher))                      # identical tokens: identical Grams
    0.0

In a training loop (the weight as DINOv3's schedule gives it, 2.0 after its ramp):

    gram = GramLoss()
    for x in loader:
        loss = task_loss(model, x)
        s = model.backbone.forward_features(x)[:, 1:]                 # [B, N, D] patch tokens
        with torch.no_grad():
            t = gram_teacher.forward_features(x)[:, 1:]              # an earlier EMA teacher, frozen
        loss = loss + 2.0 * gram(s, t)
        opt.zero_grad(); loss.backward(); opt.step()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gram_matrix(tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """[..., N, D] tokens -> [..., N, N] similarities `X X^T` (cosine similarities when `normalize`, each
    token L2-normalised with F.normalize's eps 1e-12, as DINOv3)."""
    if normalize:
        tokens = F.normalize(tokens, dim=-1)
    return tokens @ tokens.transpose(-1, -2)


def _check(student: torch.Tensor, teacher: torch.Tensor, img_level: bool) -> None:
    shapes = f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)}"
    want = "[B, N, D] patch tokens" if img_level else "[B, N, D] or [M, D] patch tokens"
    if student.ndim not in ((3,) if img_level else (2, 3)):
        raise ValueError(f"GramLoss(img_level={img_level}): expected {want}, got {shapes}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"GramLoss: student and teacher tokens must have the same shape, got {shapes} "
            "(DINOv3 resizes the Gram teacher's patch grid to the student's before the loss)"
        )
    if student.numel() == 0:
        raise ValueError(f"GramLoss: expected non-empty {want}, got {shapes}")
    if not (student.is_floating_point() and teacher.is_floating_point()):
        raise ValueError(f"GramLoss: expected floating-point tokens, got {student.dtype} and {teacher.dtype}")


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class GramLoss(nn.Module):
    """MSE between the (cosine) Gram matrices of the student's and the Gram teacher's patch tokens,
    [B, N, D] each (or [M, D] with `img_level=False`); the teacher is detached. A differentiable scalar,
    0 when the two Grams are equal."""

    def __init__(
        self,
        apply_norm: bool = True,
        img_level: bool = True,
        remove_neg: bool = False,
        remove_only_teacher_neg: bool = False,
    ):
        super().__init__()
        if remove_neg and remove_only_teacher_neg:
            raise ValueError("GramLoss: remove_neg and remove_only_teacher_neg exclude each other (set one)")
        self.apply_norm, self.img_level = apply_norm, img_level
        self.remove_neg, self.remove_only_teacher_neg = remove_neg, remove_only_teacher_neg

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check(student, teacher, self.img_level)
        student, teacher = _at_least_float32(student), _at_least_float32(teacher.detach())
        if not self.img_level:
            student, teacher = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
        student_sim = gram_matrix(student, self.apply_norm)
        teacher_sim = gram_matrix(teacher, self.apply_norm)
        if self.remove_neg or self.remove_only_teacher_neg:
            teacher_sim = teacher_sim.clamp_min(0.0)
        if self.remove_neg:  # as upstream's `student_sim[student_sim < 0] = 0.0`: no gradient there
            student_sim = torch.where(student_sim < 0, torch.zeros_like(student_sim), student_sim)
        return F.mse_loss(student_sim, teacher_sim)

    def extra_repr(self) -> str:
        return (
            f"apply_norm={self.apply_norm}, img_level={self.img_level}, remove_neg={self.remove_neg}, "
            f"remove_only_teacher_neg={self.remove_only_teacher_neg}"
        )

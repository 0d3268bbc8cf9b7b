"""The harness's pieces inside MMSegmentation (registered on import, after the mmcv shim):

- SDDBackbone: a registry method's checkpoint loaded by the harness (weights_only, every key), never by
  mmengine's `load_from`. Frozen (linear probe): always in eval mode, no gradients, run under
  no_grad. Fine-tuned (UperNet): trains with the head.
- BNHead: the DINOv2 linear head (BatchNorm + 1x1 conv over resized, concatenated inputs); mmseg ships none.
- SDDSegDataPreProcessor: mmseg's SegDataPreProcessor that also applies PhotoMetricDistortion to the
  training batch on the device (harness.jobs.photometric), so data workers only decode, resize and crop.
- SDDEncoderDecoder: mmseg's EncoderDecoder whose slide inference runs the windows of a batch as
  batches (mmseg runs one window at a time).
- SDDRandomCrop: mmseg's RandomCrop (same draws, same crops) counting the labels of a candidate crop
  with a bincount instead of np.unique's sort, the pipeline's costliest step after decoding.
- SDDIoUMetric: mmseg's IoUMetric, also returning per-class IoU and how the predictions spread over the
  classes (a probe that predicts one class everywhere is named in the record).
- SDDFiniteLossHook: stops training at the first iteration whose loss is not finite, naming it.
- SDDResumeHook: saves the trainable state (model part that trains, optimizer, schedulers, iteration)
  as plain tensors every N iterations, and restores it at start, so a preempted job resumes. The file
  is read with weights_only=True; mmengine's own checkpoints are never reloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from harness.atomic import save_tensors
from harness.jobs.mm_adapter import set_start_iteration, unwrap
from harness.mmcv_shim import import_mmseg

import_mmseg()

from mmcv.transforms.utils import cache_randomness  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModule  # noqa: E402
from mmengine.optim import DefaultOptimWrapperConstructor  # noqa: E402
from mmseg.datasets.transforms import RandomCrop  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.models.data_preprocessor import SegDataPreProcessor  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.models.segmentors import EncoderDecoder  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import HOOKS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS  # noqa: E402


@MODELS.register_module(force=True)
class SDDBackbone(BaseModule):
    def __init__(
        self,
        method: str,
        epoch: int,
        registry_root: str = "",
        mode: str = "last",
        frozen: bool = True,
        arch_overrides: dict | None = None,
        autocast: str | None = None,
        eval_autocast: str | None = None,
        levels: tuple[int, ...] | None = None,
        protocol_kind: str | None = None,
        init_cfg=None,
    ):
        super().__init__(init_cfg)
        from harness.models.checkpoints import load_backbone
        from harness.registry import load_registry

        reg = load_registry(registry_root or None)
        loaded = load_backbone(method, epoch, registry=reg, arch_overrides=arch_overrides, kind=protocol_kind)
        self.loaded = loaded.summary()
        self.backbone = loaded.backbone
        self.mode, self.frozen = mode, frozen
        self.level_indices = tuple(levels) if levels else None  # ViT blocks of mode "levels" (default: the arch's)
        # a frozen probe's backbone may run in bfloat16 (autocast) while its head trains in float32
        self.autocast = getattr(torch, autocast) if autocast else None
        # evaluation may run at another precision than training (SDDEncoderDecoder.predict switches)
        self.eval_autocast = getattr(torch, eval_autocast) if eval_autocast else None
        self.evaluating = False
        if frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def init_weights(self):
        pass  # the weights come from the checkpoint; mmengine's initialisers must not touch them

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # a frozen probe never runs its backbone in training mode
        return self

    def forward(self, x):
        import contextlib

        ctx = torch.no_grad() if self.frozen else torch.enable_grad()
        dtype = self.eval_autocast if self.evaluating else self.autocast
        cast = torch.autocast(device_type=x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx, cast:
            out = (
                (self.backbone.dense_map(x),)
                if self.mode == "last"
                else tuple(self.backbone.levels(x, self.level_indices))
            )
        return tuple(o.float() for o in out) if dtype else out


@MODELS.register_module(force=True)
class BNHead(BaseDecodeHead):
    """BatchNorm + 1x1 conv (DINOv2 linear head) over the resized, concatenated inputs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        assert self.in_channels == self.channels, "BNHead: channels must equal the concatenated in_channels"
        self.bn = (
            nn.SyncBatchNorm(self.in_channels)
            if (self.norm_cfg or {}).get("type") == "SyncBN"
            else nn.BatchNorm2d(self.in_channels)
        )

    def _transform_inputs(self, inputs):
        inputs = (
            [inputs[i] for i in self.in_index] if isinstance(self.in_index, (list, tuple)) else [inputs[self.in_index]]
        )
        size = inputs[0].shape[2:]
        return torch.cat([resize(x, size=size, mode="bilinear", align_corners=self.align_corners) for x in inputs], 1)

    def forward(self, inputs):
        return self.cls_seg(self.bn(self._transform_inputs(inputs)))


@MODELS.register_module(force=True)
class SDDSegDataPreProcessor(SegDataPreProcessor):
    """SegDataPreProcessor, plus mmseg's PhotoMetricDistortion on the training batch, on the device, before
    the BGR->RGB swap and normalisation (where mmseg's pipeline applies it: on the cropped, flipped 8-bit
    BGR image). Images of one shape are distorted as one batch. Each rank draws its own parameters from
    a CPU generator seeded with (seed, rank), so the draws do not depend on the device."""

    def __init__(self, photometric: bool = False, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.photometric, self.seed = photometric, seed
        self._generator = None

    def forward(self, data: dict, training: bool = False) -> dict:
        if training and self.photometric:
            data = self.cast_data(data)
            data = {**data, "inputs": self._distort(data["inputs"])}
        return super().forward(data, training)

    def _distort(self, inputs: list) -> list:
        from mmengine.dist import get_rank

        from harness.jobs import photometric

        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed * 100_003 + get_rank())
        params = photometric.sample(len(inputs), self._generator)
        out = list(inputs)
        shapes: dict = {}
        for i, x in enumerate(inputs):
            shapes.setdefault(tuple(x.shape), []).append(i)
        for idx in shapes.values():
            batch = photometric.distort(torch.stack([inputs[i] for i in idx]), {k: v[idx] for k, v in params.items()})
            for j, i in enumerate(idx):
                out[i] = batch[j]
        return out


@MODELS.register_module(force=True)
class SDDEncoderDecoder(EncoderDecoder):
    """EncoderDecoder whose slide inference cuts every window of the batch first and runs them through
    the network `window_batch` at a time; the windows, their logits and the averaging are mmseg's."""

    def __init__(self, window_batch: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.window_batch = window_batch

    def predict(self, inputs, data_samples=None):
        """Evaluation: the backbone at its evaluation precision (`eval_autocast`), not its training one."""
        self.backbone.evaluating = True
        try:
            return super().predict(inputs, data_samples)
        finally:
            self.backbone.evaluating = False

    def slide_inference(self, inputs: torch.Tensor, batch_img_metas: list) -> torch.Tensor:
        h_stride, w_stride = self.test_cfg.stride
        h_crop, w_crop = self.test_cfg.crop_size
        n, _, h_img, w_img = inputs.size()
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        boxes = []
        for hi in range(h_grids):
            for wi in range(w_grids):
                y2, x2 = min(hi * h_stride + h_crop, h_img), min(wi * w_stride + w_crop, w_img)
                boxes.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
        crops = torch.cat([inputs[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])  # window-major
        meta = {**batch_img_metas[0], "img_shape": crops.shape[2:]}
        step = max(self.window_batch, 1)
        logits = torch.cat(
            [
                self.encode_decode(crops[i : i + step], [meta] * len(crops[i : i + step]))
                for i in range(0, len(crops), step)
            ]
        )
        preds = inputs.new_zeros((n, self.out_channels, h_img, w_img))
        count = inputs.new_zeros((n, 1, h_img, w_img))
        for k, (y1, y2, x1, x2) in enumerate(boxes):
            preds[:, :, y1:y2, x1:x2] += logits[k * n : (k + 1) * n]
            count[:, :, y1:y2, x1:x2] += 1
        return preds / count


@TRANSFORMS.register_module(force=True)
class SDDRandomCrop(RandomCrop):
    """RandomCrop with mmseg's draws and rule (up to 10 draws until no class, ignore excluded, covers
    `cat_max_ratio` or more of the crop), its class counts from np.bincount instead of np.unique."""

    @cache_randomness
    def crop_bbox(self, results: dict) -> tuple:
        import numpy as np

        seg = results["gt_seg_map"]
        if self.cat_max_ratio >= 1.0 or not np.issubdtype(seg.dtype, np.integer) or seg.min(initial=0) < 0:
            return super().crop_bbox(results)

        def draw():
            margin_h = max(results["img"].shape[0] - self.crop_size[0], 0)
            margin_w = max(results["img"].shape[1] - self.crop_size[1], 0)
            y, x = np.random.randint(0, margin_h + 1), np.random.randint(0, margin_w + 1)
            return y, y + self.crop_size[0], x, x + self.crop_size[1]

        bbox = draw()
        for _ in range(10):
            cnt = np.bincount(self.crop(seg, bbox).ravel())
            if self.ignore_index < len(cnt):
                cnt[self.ignore_index] = 0
            cnt = cnt[cnt > 0]
            if len(cnt) > 1 and cnt.max() / cnt.sum() < self.cat_max_ratio:
                break
            bbox = draw()
        return bbox


@METRICS.register_module(force=True)
class SDDIoUMetric(IoUMetric):
    """IoUMetric plus per-class IoU as `IoU.<class>` (percent, NaN for classes absent from GT and prediction)."""

    def compute_metrics(self, results: list) -> dict:
        out = super().compute_metrics(results)
        results = tuple(zip(*results))
        inter, union, pred = sum(results[0]), sum(results[1]), sum(results[2])
        iou = (inter / union).numpy() * 100
        for name, v in zip(self.dataset_meta["classes"], iou):
            out[f"IoU.{name}"] = float(v)
        total = float(pred.sum())
        top = int(pred.argmax())
        # not metrics: the job moves them into the record's `prediction`
        out["_pred.classes"] = int((pred > 0).sum())
        out["_pred.dominant_class"] = self.dataset_meta["classes"][top]
        out["_pred.dominant_share"] = float(pred[top]) / total if total else float("nan")
        return out


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class SDDParamGroupsConstructor(DefaultOptimWrapperConstructor):
    """mmengine's optimizer built on the harness's one rule (harness.jobs.optim.param_groups): no weight
    decay on 1-D parameters and tokens, ViT layer-wise lr decay under `paramwise_cfg.backbone_prefix`."""

    def add_params(self, params: list, module, **kwargs) -> None:
        from harness.jobs.optim import param_groups

        cfg = self.paramwise_cfg
        params.extend(
            param_groups(
                module,
                lr=self.base_lr,
                weight_decay=self.base_wd or 0.0,
                layer_decay_rate=cfg.get("layer_decay_rate", 1.0),
                backbone_prefix=cfg.get("backbone_prefix", "backbone."),
            )
        )


@HOOKS.register_module(force=True)
class SDDFiniteLossHook(Hook):
    """A loss that is NaN or inf at any iteration ends the run there, naming the iteration, the loss terms
    and the learning rate: a probe trained on through NaNs would score as a constant predictor."""

    priority = "VERY_HIGH"

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        terms = {
            k: float(v.detach()) for k, v in (outputs or {}).items() if isinstance(v, torch.Tensor) and v.numel() == 1
        }
        bad = {k: v for k, v in terms.items() if not torch.isfinite(torch.tensor(v))}
        if bad:
            lr = runner.optim_wrapper.get_lr()
            raise FloatingPointError(
                f"the training loss is not finite at iteration {runner.iter + 1}: {bad} "
                f"(lr {lr}); the recipe diverges here (lower the lr?)"
            )


@HOOKS.register_module(force=True)
class SDDResumeHook(Hook):
    priority = "LOW"

    def __init__(self, path: str, interval: int = 500, skip_prefixes: tuple = ()):
        self.path, self.interval, self.skip = Path(path), interval, tuple(skip_prefixes)
        self.resumed_from = 0

    def before_train(self, runner):
        if not self.path.is_file():
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        unwrap(runner.model).load_state_dict(state["model"], strict=False)
        runner.optim_wrapper.load_state_dict(state["optim"])
        for sched, s in zip(runner.param_schedulers, state["schedulers"]):
            sched.load_state_dict(s)
        set_start_iteration(runner, state["iter"])
        self.resumed_from = int(state["iter"])
        runner.logger.info(f"resumed from {self.path} at iteration {self.resumed_from}")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        from mmengine.dist import is_main_process

        it = runner.iter + 1
        if (it % self.interval and it != runner.max_iters) or not is_main_process():  # rank 0 saves, all resume
            return
        model = {k: v for k, v in unwrap(runner.model).state_dict().items() if not k.startswith(self.skip)}
        state = {
            "iter": it,
            "model": model,
            "optim": runner.optim_wrapper.state_dict(),
            "schedulers": [s.state_dict() for s in runner.param_schedulers],
        }
        save_tensors(state, self.path)

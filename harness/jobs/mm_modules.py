"""The harness's pieces inside MMSegmentation (registered on import, after the mmcv shim):

- SDDBackbone: a registry method's checkpoint loaded by the harness (weights_only, every key), never by
  mmengine's `load_from`. Frozen (linear probe): always in eval mode, no gradients, run under
  no_grad. Fine-tuned (UperNet): trains with the head.
- BNHead: the DINOv2 linear head (BatchNorm + 1x1 conv over resized, concatenated inputs); mmseg ships none.
- SDDIoUMetric: mmseg's IoUMetric, also returning per-class IoU.
- SDDResumeHook: saves the trainable state (model part that trains, optimizer, schedulers, iteration)
  as plain tensors every N iterations, and restores it at start, so a preempted job resumes. The file
  is read with weights_only=True; mmengine's own checkpoints are never reloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from harness.atomic import save_tensors
from harness.mmcv_shim import import_mmseg

import_mmseg()

from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModule  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import HOOKS, METRICS, MODELS  # noqa: E402


@MODELS.register_module(force=True)
class SDDBackbone(BaseModule):
    def __init__(self, method: str, epoch: int, registry_root: str = "", mode: str = "last", frozen: bool = True,
                 arch_overrides: dict | None = None, autocast: str | None = None, init_cfg=None):
        super().__init__(init_cfg)
        from harness.models.checkpoints import load_backbone
        from harness.registry import load_registry

        reg = load_registry(registry_root or None)
        loaded = load_backbone(method, epoch, registry=reg, arch_overrides=arch_overrides)
        self.loaded = loaded.summary()
        self.backbone = loaded.backbone
        self.mode, self.frozen = mode, frozen
        # a frozen probe's backbone may run in bfloat16 (autocast) while its head trains in float32
        self.autocast = getattr(torch, autocast) if autocast else None
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
        cast = torch.autocast(device_type=x.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with ctx, cast:
            out = (self.backbone.dense_map(x),) if self.mode == "last" else tuple(self.backbone.levels(x))
        return tuple(o.float() for o in out) if self.autocast else out


@MODELS.register_module(force=True)
class BNHead(BaseDecodeHead):
    """BatchNorm + 1x1 conv (DINOv2 linear head) over the resized, concatenated inputs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        assert self.in_channels == self.channels, "BNHead: channels must equal the concatenated in_channels"
        self.bn = nn.SyncBatchNorm(self.in_channels) if (self.norm_cfg or {}).get("type") == "SyncBN" \
            else nn.BatchNorm2d(self.in_channels)

    def _transform_inputs(self, inputs):
        inputs = [inputs[i] for i in self.in_index] if isinstance(self.in_index, (list, tuple)) else [inputs[self.in_index]]
        size = inputs[0].shape[2:]
        return torch.cat([resize(x, size=size, mode="bilinear", align_corners=self.align_corners) for x in inputs], 1)

    def forward(self, inputs):
        return self.cls_seg(self.bn(self._transform_inputs(inputs)))


@METRICS.register_module(force=True)
class SDDIoUMetric(IoUMetric):
    """IoUMetric plus per-class IoU as `IoU.<class>` (percent, NaN for classes absent from GT and prediction)."""

    def compute_metrics(self, results: list) -> dict:
        out = super().compute_metrics(results)
        results = tuple(zip(*results))
        inter, union = sum(results[0]), sum(results[1])
        iou = (inter / union).numpy() * 100
        for name, v in zip(self.dataset_meta["classes"], iou):
            out[f"IoU.{name}"] = float(v)
        return out


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
        net = runner.model.module if hasattr(runner.model, "module") else runner.model
        net.load_state_dict(state["model"], strict=False)
        runner.optim_wrapper.load_state_dict(state["optim"])
        for sched, s in zip(runner.param_schedulers, state["schedulers"]):
            sched.load_state_dict(s)
        runner.train_loop._iter = int(state["iter"])
        self.resumed_from = int(state["iter"])
        runner.logger.info(f"resumed from {self.path} at iteration {self.resumed_from}")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        from mmengine.dist import is_main_process

        it = runner.iter + 1
        if (it % self.interval and it != runner.max_iters) or not is_main_process():  # rank 0 saves, all resume
            return
        net = runner.model.module if hasattr(runner.model, "module") else runner.model  # DDP-wrapped or not
        model = {k: v for k, v in net.state_dict().items() if not k.startswith(self.skip)}
        state = {"iter": it, "model": model, "optim": runner.optim_wrapper.state_dict(),
                 "schedulers": [s.state_dict() for s in runner.param_schedulers]}
        save_tensors(state, self.path)

"""Every touch of detectron2 that is version-sensitive, behind named functions, through its own extension
points only (no module globals, no private attributes):

- `feature_pyramid`: the harness's backbone as a detectron2 `Backbone` (its `output_shape`): a ViT's
  blocks rescaled as UDI's under `FPN`, or its last block under ViTDet's `SimpleFeaturePyramid`;
  ResNets and Swin under `FPN`;
- `build_model`: detectron2's `GeneralizedRCNN` built from the config with that backbone handed in (its
  `@configurable` constructor takes a built backbone: the documented way to bring one's own);
- `ensure_local_group`: detectron2's per-machine process group, made once when a multi-process cell
  did not start through `detectron2.engine.launch`.
"""

from __future__ import annotations


def feature_pyramid(backbone, params):
    """A detectron2 backbone from the harness's: a ViT's blocks `vit_levels` rescaled as UDI's (multilevel)
    or its last block (ViTDet's SimpleFeaturePyramid, simple); a CNN's or Swin's four stages. Under
    detectron2's FPN with a max-pooled fifth level, `params.out_channels` wide."""
    from detectron2.modeling import Backbone, ShapeSpec
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
    from detectron2.modeling.backbone.vit import SimpleFeaturePyramid
    from torch import nn

    from harness.jobs.detection_parts import rescale_stage

    vit = backbone.info.family == "vit"
    simple = vit and params.pyramid == "simple"
    names = ["last_feat"] if simple else ["res2", "res3", "res4", "res5"]
    channels = [backbone.dim] * len(names) if vit else list(backbone.level_channels)
    strides = [backbone.stride] if simple else [4, 8, 16, 32]

    class HarnessBottomUp(Backbone):
        def __init__(self):
            super().__init__()
            self.body = backbone
            if vit and not simple:
                self.rescale = nn.ModuleList(rescale_stage(backbone.dim, s) for s in params.vit_scale_factors)

        def forward(self, x):
            if simple:
                return {"last_feat": self.body.levels(x)[-1]}
            if vit:
                maps = [
                    op(m) for op, m in zip(self.rescale, self.body.levels(x, params.blocks_for(backbone.info.depth)))
                ]
            else:
                maps = self.body.levels(x)
            return dict(zip(names, maps))

        def output_shape(self):
            return {n: ShapeSpec(channels=c, stride=s) for n, c, s in zip(names, channels, strides)}

    bottom_up = HarnessBottomUp()
    if simple:
        return SimpleFeaturePyramid(
            net=bottom_up,
            in_feature="last_feat",
            out_channels=params.out_channels,
            scale_factors=tuple(params.vit_scale_factors),
            top_block=LastLevelMaxPool(),
            norm="LN",
            square_pad=params.max_size,
        )
    return FPN(
        bottom_up=bottom_up, in_features=names, out_channels=params.out_channels, norm="", top_block=LastLevelMaxPool()
    )


def build_model(cfg, backbone):
    """detectron2's Mask R-CNN (its config's proposal generator and RoI heads) around `backbone`."""
    from detectron2.modeling import GeneralizedRCNN
    from detectron2.modeling.proposal_generator import build_proposal_generator
    from detectron2.modeling.roi_heads import build_roi_heads

    shape = backbone.output_shape()
    model = GeneralizedRCNN(
        backbone=backbone,
        proposal_generator=build_proposal_generator(cfg, shape),
        roi_heads=build_roi_heads(cfg, shape),
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        input_format=cfg.INPUT.FORMAT,
        vis_period=cfg.VIS_PERIOD,
    )
    return model.to(cfg.MODEL.DEVICE)


def ensure_local_group(processes_per_machine: int) -> None:
    """detectron2's local process group (its `launch` makes it; a submitit task did not go through it)."""
    from detectron2.utils import comm

    try:
        comm.get_local_process_group()
    except AssertionError:  # detectron2's own "not created yet"
        comm.create_local_process_group(processes_per_machine)

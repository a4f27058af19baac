# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The dense panoptic head (METHOD.md section 2.2): classification and localization towers shared
across FPN levels, FCOS box outputs, and the two fused heads built on the towers: semantic
segmentation (classification tower, the finest level's stride: 8 on P3-P7) and levelness
(localization tower, stride 4).

Attribute names follow the released head (``cls_tower``, ``bbox_tower``, ``box_cls_logits``,
``bbox_pred``, ``centerness``, ``scales.{i}.scale``, ``cls_logits``, ``levelness``).
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.utils.registry import Registry

from ..data.class_layout import class_layout_from_config

__all__ = [
    "BOX_PANOPTIC_HEADS_REGISTRY",
    "LEVELNESS_HEAD_REGISTRY",
    "BoxPanopticHead",
    "BoxPanopticSemanticHead",
    "LevelnessHead",
    "Scale",
    "build_box_panoptic_head",
    "build_levelness_head",
    "fused_conv3x3",
]

BOX_PANOPTIC_HEADS_REGISTRY = Registry("BOX_PANOPTIC_HEADS")
BOX_PANOPTIC_HEADS_REGISTRY.__doc__ = """Dense heads of BoxPanoptic: FPN features -> box outputs and
tower features. Called with (cfg, input_shape: Dict[str, ShapeSpec])."""

LEVELNESS_HEAD_REGISTRY = Registry("LEVELNESS_HEAD")
LEVELNESS_HEAD_REGISTRY.__doc__ = """Levelness predictors: localization tower features of every
level -> (N, L + 1, H/4, W/4) logits. Called with (cfg, input_shape)."""


class Scale(nn.Module):
    """A learnable scalar multiplier (per FPN level), initialised to ``init``."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init)]))

    def forward(self, x):
        return x * self.scale


def _tower(in_ch: int, ch: int, num_convs: int, norm: str, groups: int) -> nn.Sequential:
    """num_convs x [conv3x3 -> norm -> ReLU], indices 0,3,6,9 conv and 1,4,7,10 norm."""
    layers = []
    for i in range(num_convs):
        layers.append(nn.Conv2d(in_ch if i == 0 else ch, ch, 3, padding=1))
        if norm == "GN":
            layers.append(nn.GroupNorm(groups, ch))
        elif norm:
            layers.append(get_norm(norm, ch))
        else:
            layers.append(nn.Identity())
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _init_normal(modules, std: float):
    for m in modules:
        for layer in m.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=std)
                nn.init.constant_(layer.bias, 0)


@BOX_PANOPTIC_HEADS_REGISTRY.register()
class BoxPanopticHead(nn.Module):
    """FCOS-style head with a classification tower and a localization tower.

    NOTE: this interface is experimental.
    """

    @configurable
    def __init__(
        self,
        input_shape: List[ShapeSpec],
        *,
        num_thing_classes: int,
        num_convs: int = 4,
        cls_channels: int = 128,
        bbox_channels: int = 256,
        norm: str = "GN",
        cls_gn_groups: int = 16,
        bbox_gn_groups: int = 32,
        prior_prob: float = 0.01,
        init_std: float = 0.01,
        exp_clamp: float = 10000.0,
        reg_stride_units: bool = False,
    ):
        """
        Args:
            input_shape: shapes of the FPN levels fed to the head (same channels for all).
            num_thing_classes: K_th, outputs of ``box_cls_logits``.
            num_convs, cls_channels, bbox_channels, norm, cls_gn_groups, bbox_gn_groups: towers.
            prior_prob: focal-loss prior written into the ``box_cls_logits`` bias.
            init_std: std of the normal init of every conv.
            exp_clamp: regression is exp(min(s * x, ln(exp_clamp))).
            reg_stride_units: regress ltrb in units of the level's stride, stride * exp(s * x)
                (FCOS-imprv's normalised targets), instead of pixels (the released model).
        """
        super().__init__()
        in_ch = {s.channels for s in input_shape}
        if len(in_ch) != 1:
            raise ValueError(f"BoxPanopticHead: FPN levels must share channels, got {in_ch}")
        in_ch = in_ch.pop()
        self.num_levels = len(input_shape)
        self.cls_tower = _tower(in_ch, cls_channels, num_convs, norm, cls_gn_groups)
        self.bbox_tower = _tower(in_ch, bbox_channels, num_convs, norm, bbox_gn_groups)
        self.box_cls_logits = nn.Conv2d(cls_channels, num_thing_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(bbox_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(bbox_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(self.num_levels)])
        self.log_exp_clamp = math.log(exp_clamp)
        # log(stride) of each level added to s * x (0: pixels), from the input shapes
        self.log_units = [
            math.log(s.stride) if reg_stride_units and s.stride else 0.0 for s in input_shape
        ]
        _init_normal(
            [self.cls_tower, self.bbox_tower, self.box_cls_logits, self.bbox_pred, self.centerness],
            init_std,
        )
        # METHOD 2.2: the release writes the prior into the semantic conv (a slip); FCOS puts it
        # on the box classifier, which is what training needs.
        nn.init.constant_(self.box_cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        bp = cfg.MODEL.BOX_PANOPTIC
        return {
            "input_shape": [input_shape[f] for f in bp.IN_FEATURES],
            "num_thing_classes": class_layout_from_config(cfg).num_thing_classes,
            "num_convs": bp.NUM_CONVS,
            "cls_channels": bp.CLS_TOWER_CHANNELS,
            "bbox_channels": bp.BBOX_TOWER_CHANNELS,
            "norm": bp.NORM,
            "cls_gn_groups": bp.CLS_TOWER_GN_GROUPS,
            "bbox_gn_groups": bp.BBOX_TOWER_GN_GROUPS,
            "prior_prob": bp.PRIOR_PROB,
            "init_std": bp.INIT_STD,
            "exp_clamp": bp.BBOX_EXP_CLAMP,
            "reg_stride_units": bp.REG_STRIDE_UNITS,
        }

    def forward(self, features: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        """
        Args:
            features: FPN maps P3..P7, each (N, C, H_l, W_l).

        Returns:
            dict of per-level lists: "box_cls" (N, K_th, H_l, W_l) logits, "box_reg" (N, 4, H_l,
            W_l) ltrb distances in input pixels, "centerness" (N, 1, H_l, W_l) logits,
            "cls_feats" (N, C_cls, H_l, W_l) and "bbox_feats" (N, C_box, H_l, W_l) tower outputs.
        """
        out = {k: [] for k in ("box_cls", "box_reg", "centerness", "cls_feats", "bbox_feats")}
        for level, x in enumerate(features):
            cls_feat = self.cls_tower(x)
            bbox_feat = self.bbox_tower(x)
            reg = self.scales[level](self.bbox_pred(bbox_feat))
            out["box_cls"].append(self.box_cls_logits(cls_feat))
            if self.log_units[level]:
                reg = reg + self.log_units[level]
            out["box_reg"].append(torch.exp(reg.clamp(max=self.log_exp_clamp)))
            out["centerness"].append(self.centerness(bbox_feat))
            out["cls_feats"].append(cls_feat)
            out["bbox_feats"].append(bbox_feat)
        return out


def fused_conv3x3(conv: nn.Conv2d, feats: List[torch.Tensor], size: Tuple[int, int]):
    """conv3x3(concat_l(bilinear_resize(feats[l], size))) without the concatenation.

    A convolution over a channel concatenation is the sum of convolutions over its parts with the
    matching weight slices, so each level is resized, convolved and added in turn; the
    (N, L * C, H, W) tensor is never built. Equal to the released head's concat + conv.

    A level with more channels than 9 x the outputs (the levelness head: 256 in, 6 out) is not
    resized at all: :func:`_resized_then_conv3x3` mixes its channels first.

    Args:
        conv: Conv2d with in_channels = sum of the feats' channels, padding 1.
        feats: L tensors (N, C_l, H_l, W_l).
        size: output (H, W).
    Returns:
        (N, conv.out_channels, H, W).
    """
    out = None
    start = 0
    for f in feats:
        c = f.shape[1]
        weight = conv.weight[:, start : start + c]
        if tuple(f.shape[-2:]) == tuple(size):
            y = F.conv2d(f, weight, None, 1, 1)
        elif 9 * weight.shape[0] < c:
            y = _resized_then_conv3x3(f, weight, size)
        else:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            y = F.conv2d(f, weight, None, 1, 1)
        out = y if out is None else out + y
        start += c
    return out + conv.bias.view(1, -1, 1, 1)


def _resized_then_conv3x3(f: torch.Tensor, weight: torch.Tensor, size: Tuple[int, int]):
    """conv3x3(bilinear_resize(f, size), weight), padding 1, with the resize on O x 9 channels
    instead of C.

    A 3x3 convolution is a sum over its nine taps of a 1x1 convolution shifted by the tap's
    offset. A 1x1 convolution mixes channels only and the bilinear resize acts on each channel
    alone, so the two commute: mix (N, C, h, w) into the 9 O tap maps at the input resolution,
    resize those, then add them shifted (zeros outside, like the padding).

    Args:
        f: (N, C, h, w). weight: (O, C, 3, 3). size: output (H, W).
    Returns:
        (N, O, H, W).
    """
    o, c = int(weight.shape[0]), int(weight.shape[1])  # static: exporters need the kernel shape
    taps = weight.permute(2, 3, 0, 1).reshape(9 * o, c, 1, 1)  # tap t = 3 ky + kx, then o
    g = F.interpolate(F.conv2d(f, taps), size=size, mode="bilinear", align_corners=False)
    g = F.pad(g, (1, 1, 1, 1))
    h, w = size
    out = None
    for t in range(9):
        ky, kx = divmod(t, 3)
        y = g[:, t * o : (t + 1) * o, ky : ky + h, kx : kx + w]
        out = y if out is None else out + y
    return out


@SEM_SEG_HEADS_REGISTRY.register()
class BoxPanopticSemanticHead(nn.Module):
    """Semantic logits at the finest level's stride (8 on P3-P7, released; 4 when the head starts
    at P2) from the classification tower of all levels (METHOD 2.2).

    NOTE: this interface is experimental.
    """

    @configurable
    def __init__(
        self, *, in_channels: int, num_levels: int, num_classes: int, init_std: float = 0.01
    ):
        super().__init__()
        self.cls_logits = nn.Conv2d(in_channels * num_levels, num_classes, 3, padding=1)
        _init_normal([self.cls_logits], init_std)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        bp = cfg.MODEL.BOX_PANOPTIC
        return {
            "in_channels": bp.CLS_TOWER_CHANNELS,
            "num_levels": len(bp.IN_FEATURES),
            "num_classes": class_layout_from_config(cfg).num_classes,
            "init_std": bp.INIT_STD,
        }

    def forward(self, cls_feats: List[torch.Tensor]) -> torch.Tensor:
        """cls_feats: per level (N, C, H_l, W_l), finest first -> (N, C_sem, H_0, W_0) logits on
        the finest level's grid."""
        return fused_conv3x3(self.cls_logits, cls_feats, tuple(cls_feats[0].shape[-2:]))


@LEVELNESS_HEAD_REGISTRY.register()
class LevelnessHead(nn.Module):
    """Levelness logits on the stride-4 grid (2x the P3 grid), L + 1 channels, 0 = background.

    NOTE: this interface is experimental.
    """

    @configurable
    def __init__(
        self, *, in_channels: int, num_levels: int, init_std: float = 0.01, upsample: int = 2
    ):
        """
        Args:
            in_channels: localization tower channels. num_levels: L.
            init_std: std of the normal init.
            upsample: the finest level's stride / 4: 2 on P3-P7 (released), 1 when the finest
                level is P2. The output is always on the stride-4 grid.
        """
        super().__init__()
        if upsample < 1:
            raise ValueError(f"LevelnessHead: upsample must be >= 1, got {upsample}")
        self.levelness = nn.Conv2d(in_channels * num_levels, num_levels + 1, 3, padding=1)
        self.upsample = int(upsample)
        _init_normal([self.levelness], init_std)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        bp = cfg.MODEL.BOX_PANOPTIC
        return {
            "in_channels": bp.BBOX_TOWER_CHANNELS,
            "num_levels": len(bp.IN_FEATURES),
            "init_std": bp.INIT_STD,
            "upsample": levelness_upsample(finest_stride(cfg, input_shape)),
        }

    def forward(self, bbox_feats: List[torch.Tensor]) -> torch.Tensor:
        """bbox_feats: per level (N, C, H_l, W_l), finest first -> (N, L+1, H/4, W/4)."""
        h, w = bbox_feats[0].shape[-2:]
        return fused_conv3x3(self.levelness, bbox_feats, (self.upsample * h, self.upsample * w))


def finest_stride(cfg, input_shape: Optional[Dict[str, ShapeSpec]] = None) -> int:
    """Stride of the finest level fed to the head: the backbone's if shapes are given, else
    ``MODEL.BOX_PANOPTIC.FPN_STRIDES[0]``."""
    bp = cfg.MODEL.BOX_PANOPTIC
    if input_shape and bp.IN_FEATURES[0] in input_shape and input_shape[bp.IN_FEATURES[0]].stride:
        return int(input_shape[bp.IN_FEATURES[0]].stride)
    return int(bp.FPN_STRIDES[0])


def levelness_upsample(stride: int) -> int:
    """Factor from the finest level (stride 4 or a multiple) to the stride-4 levelness grid."""
    if stride < 4 or stride % 4:
        raise ValueError(
            f"BoxPanoptic: the finest head level must have stride 4 or a multiple of 4 (the "
            f"levelness and mask grid is stride 4), got {stride}"
        )
    return stride // 4


def build_box_panoptic_head(cfg, input_shape: Dict[str, ShapeSpec]):
    """Build the dense head named by ``cfg.MODEL.BOX_PANOPTIC.HEAD_NAME``."""
    return BOX_PANOPTIC_HEADS_REGISTRY.get(cfg.MODEL.BOX_PANOPTIC.HEAD_NAME)(cfg, input_shape)


def build_levelness_head(cfg, input_shape=None):
    """Build the levelness predictor named by ``cfg.MODEL.BOX_PANOPTIC.LEVELNESS_HEAD_NAME``."""
    name = cfg.MODEL.BOX_PANOPTIC.LEVELNESS_HEAD_NAME
    return LEVELNESS_HEAD_REGISTRY.get(name)(cfg, input_shape)

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The BoxPanoptic meta-architecture: preprocess -> network (backbone, dense head, semantic and
levelness heads) -> criterion (training) or post-processor (inference)."""

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.structures import ImageList

from .head import build_box_panoptic_head, build_levelness_head
from .postprocess import BoxPanopticPostProcessor

__all__ = ["BoxPanoptic"]


@META_ARCH_REGISTRY.register()
class BoxPanoptic(nn.Module):
    """Real-time panoptic segmentation from dense detections (Hou et al., CVPR 2020).

    NOTE: this interface is experimental.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        sem_seg_head: nn.Module,
        levelness_head: nn.Module,
        postprocessor: nn.Module,
        in_features: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        size_divisibility: int = 32,
        criterion: Optional[nn.Module] = None,
        channels_last: bool = True,
        benchmark_network_speed: bool = False,
    ):
        """
        Args:
            backbone: returns FPN features named ``in_features`` (P3..P7).
            head: dense head (BOX_PANOPTIC_HEADS_REGISTRY); sem_seg_head: semantic head;
                levelness_head: levelness predictor (LEVELNESS_HEAD_REGISTRY).
            postprocessor: network outputs -> detectron2's outputs
                (:class:`~.postprocess.BoxPanopticPostProcessor`).
            criterion: training losses (:class:`~.losses.BoxPanopticCriterion`); required only
                for training.
            pixel_mean, pixel_std, input_format: input normalisation (METHOD 9.3).
            size_divisibility: inputs are padded to a multiple of this (at least 32).
            channels_last: run the network on NHWC tensors (oneDNN's faster CPU path).
            benchmark_network_speed: inference returns empty dicts after the network.
        """
        super().__init__()
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"BoxPanoptic: input_format must be BGR or RGB, got {input_format!r}")
        for key, name in (
            ("dense_box_source", "DENSE_BOX_SOURCE"),
            ("thing_semantics", "THING_SEMANTICS"),
        ):
            trained = getattr(criterion, key, None)
            read = getattr(postprocessor, key, None)
            if trained is not None and read is not None and trained != read:
                # a LazyConfig sets the two apart; a yaml config has one key for both
                raise ValueError(
                    f"BoxPanoptic: the criterion trains with {key} {trained!r} but the "
                    f"postprocessor reads {read!r} ({name})"
                )
        self.backbone = backbone
        self.head = head
        self.sem_seg_head = sem_seg_head
        self.levelness_head = levelness_head
        self.postprocessor = postprocessor
        self.criterion = criterion
        self.in_features = list(in_features)
        self.input_format = input_format
        self.size_divisibility = max(int(size_divisibility), 32)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.channels_last = channels_last
        self.benchmark_network_speed = benchmark_network_speed

    @classmethod
    def from_config(cls, cfg):
        bp = cfg.MODEL.BOX_PANOPTIC
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in bp.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"BoxPanoptic: backbone has no features {missing} (has {list(shapes)})"
            )
        strides = [shapes[f].stride for f in bp.IN_FEATURES]
        from .losses import BoxPanopticCriterion  # training only

        return {
            "backbone": backbone,
            "head": build_box_panoptic_head(cfg, shapes),
            "sem_seg_head": build_sem_seg_head(cfg, shapes),
            "levelness_head": build_levelness_head(cfg, shapes),
            "postprocessor": BoxPanopticPostProcessor(cfg, strides),
            "criterion": BoxPanopticCriterion(cfg, strides),
            "in_features": bp.IN_FEATURES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "size_divisibility": backbone.size_divisibility,
            "channels_last": bp.CHANNELS_LAST,
            "benchmark_network_speed": bp.BENCHMARK_NETWORK_SPEED,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def strides(self) -> List[int]:
        return self.postprocessor.strides

    @property
    def output_category_ids(self) -> Optional[List[int]]:
        return self.postprocessor.output_category_ids

    def checkpoint_settings(self) -> Dict:
        """Settings that change what the weights mean, saved with every checkpoint and checked
        on load (:mod:`box_panoptic.checkpoint`)."""
        settings = {"MODEL.BOX_PANOPTIC.FPN_STRIDES": [int(s) for s in self.strides]}
        units = getattr(self.head, "log_units", None)
        if units is not None:
            settings["MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS"] = any(units)
        source = getattr(self.postprocessor, "dense_box_source", None)
        if source is not None:  # "finest" weights regress every thing cell at the finest level
            settings["MODEL.BOX_PANOPTIC.DENSE_BOX_SOURCE"] = source
        return settings

    # ---------------------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Check, normalise and pad the "image" (3, H, W) tensors of ``batched_inputs``."""
        images = []
        for i, x in enumerate(batched_inputs):
            img = x["image"]
            if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != 3:
                shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise ValueError(
                    f"BoxPanoptic: input {i} ('image') must be a (3, H, W) tensor in "
                    f"{self.input_format} order, got {shape}"
                )
            if img.dtype != torch.uint8 and not img.dtype.is_floating_point:
                raise ValueError(
                    f"BoxPanoptic: input {i} ('image') must be uint8 or float in [0, 255], "
                    f"got dtype {img.dtype}"
                )
            img = img.to(self.device).float()
            if not torch.isfinite(img).all():
                raise ValueError(f"BoxPanoptic: input {i} ('image') holds NaN or inf values")
            images.append((img - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def network(self, images: ImageList) -> Dict:
        """Backbone + heads. Returns the head's per-level dict plus "sem_seg" (N, C, H/8, W/8)
        and "levelness" (N, L + 1, H/4, W/4) logits."""
        x = images.tensor
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        out = self.head([features[f] for f in self.in_features])
        out["sem_seg"] = self.sem_seg_head(out["cls_feats"])
        out["levelness"] = self.levelness_head(out["bbox_feats"])
        return out

    def forward(self, batched_inputs: List[Dict]):
        """detectron2's contract: training returns {"loss_*": Tensor}; inference returns per
        image {"panoptic_seg": (ids (H, W) int32, segments_info), "sem_seg": (C, H, W) logits,
        "instances": Instances(pred_boxes, scores, pred_classes, pred_masks)}."""
        images = self.preprocess_image(batched_inputs)
        out = self.network(images)
        if self.training:
            if self.criterion is None:
                raise RuntimeError("BoxPanoptic: training needs a criterion (build from a cfg)")
            return self.criterion(out, batched_inputs, images)
        if self.benchmark_network_speed:
            return [{} for _ in batched_inputs]
        return self.inference(out, batched_inputs, images)

    def inference(self, out: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """The post-processor's outputs, at each input's "height" x "width" (default: the
        network input's size)."""
        return self.postprocessor(out, images, output_sizes(batched_inputs, images))


def output_sizes(batched_inputs: List[Dict], images: ImageList):
    """Per input, the (height, width) outputs are reported at (detectron2's contract)."""
    return [
        (x.get("height", size[0]), x.get("width", size[1]))
        for x, size in zip(batched_inputs, images.image_sizes)
    ]

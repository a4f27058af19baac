# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The BoxPanoptic meta-architecture: backbone -> dense head -> semantic and levelness heads ->
decoding, mask construction and panoptic assembly (inference) or losses (training)."""

import contextlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, ImageList, Instances

from ..data.class_layout import class_layout_from_config
from .assembly import PANOPTIC_ASSEMBLY_REGISTRY
from .head import build_box_panoptic_head, build_levelness_head
from .inference import decode_detections
from .mask_candidates import soft_mask_candidates
from .mask_construction import boxes_from_ltrb, dense_box_map, resized_level_regressions, soft_masks
from .semantic_labels import semantic_labels
from .upsampling import Candidates, OutputGrid, output_grid

__all__ = ["BoxPanoptic", "instance_masks", "segments_info"]


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
        in_features: Sequence[str],
        strides: Sequence[int],
        thing_semantic_ids: Sequence[int],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        size_divisibility: int = 32,
        criterion: Optional[nn.Module] = None,
        pre_nms_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        agnostic_nms_thresh: float = 0.97,
        post_nms_top_n: int = 100,
        mask_thresh: float = 0.4,
        location_term: str = "giou_plus1",
        use_levelness: bool = True,
        assembly: str = "assemble_argmax",
        det_score_thresh: float = 0.3,
        overlap_thresh: float = 0.5,
        instance_area_min: int = 0,
        stuff_area_min: int = 2048,
        assembly_candidates: int = 4,
        channels_last: bool = True,
        benchmark_network_speed: bool = False,
        output_category_ids: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            backbone: returns FPN features named ``in_features`` (P3..P7).
            head: dense head (BOX_PANOPTIC_HEADS_REGISTRY); sem_seg_head: semantic head;
                levelness_head: levelness predictor (LEVELNESS_HEAD_REGISTRY).
            strides: stride of each of ``in_features``.
            thing_semantic_ids: semantic class index of each thing label (K_th entries).
            output_category_ids: the dataset contiguous id that outputs report for each semantic
                class (``ClassLayout.output_ids``); default: the semantic index itself.
            pixel_mean, pixel_std, input_format: input normalisation (METHOD 9.3).
            size_divisibility: inputs are padded to a multiple of this.
            criterion: training losses; required only for training.
            the rest: inference and assembly settings (``add_box_panoptic_config`` documents each).
        """
        super().__init__()
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"BoxPanoptic: input_format must be BGR or RGB, got {input_format!r}")
        if assembly not in PANOPTIC_ASSEMBLY_REGISTRY:
            raise ValueError(f"BoxPanoptic: unknown assembly {assembly!r}")
        if int(assembly_candidates) < 1:
            raise ValueError(
                f"BoxPanoptic: assembly_candidates must be >= 1, got {assembly_candidates}"
            )
        self.backbone = backbone
        self.head = head
        self.sem_seg_head = sem_seg_head
        self.levelness_head = levelness_head
        self.criterion = criterion
        self.in_features = list(in_features)
        self.strides = list(strides)
        self.input_format = input_format
        self.size_divisibility = max(int(size_divisibility), 32)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.register_buffer("thing_semantic_ids", torch.tensor(thing_semantic_ids).long(), False)
        self.output_category_ids = (
            None if output_category_ids is None else [int(c) for c in output_category_ids]
        )
        # fmt: off
        self.pre_nms_thresh          = pre_nms_thresh
        self.pre_nms_top_n           = pre_nms_top_n
        self.nms_thresh              = nms_thresh
        self.agnostic_nms_thresh     = agnostic_nms_thresh
        self.post_nms_top_n          = post_nms_top_n
        self.mask_thresh             = mask_thresh
        self.location_term           = location_term
        self.use_levelness           = use_levelness
        self.assembly                = assembly
        self.det_score_thresh        = det_score_thresh
        self.overlap_thresh          = overlap_thresh
        self.instance_area_min       = instance_area_min
        self.stuff_area_min          = stuff_area_min
        self.assembly_candidates     = int(assembly_candidates)
        self.channels_last           = channels_last
        self.benchmark_network_speed = benchmark_network_speed
        # fmt: on

    @classmethod
    def from_config(cls, cfg):
        layout = class_layout_from_config(cfg)  # checks explicit class keys against the metadata
        bp = cfg.MODEL.BOX_PANOPTIC
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in bp.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"BoxPanoptic: backbone has no features {missing} (has {list(shapes)})"
            )
        from .losses import BoxPanopticCriterion  # training only

        return {
            "backbone": backbone,
            "head": build_box_panoptic_head(cfg, shapes),
            "sem_seg_head": build_sem_seg_head(cfg, shapes),
            "levelness_head": build_levelness_head(cfg, shapes),
            "criterion": BoxPanopticCriterion(cfg),
            "in_features": bp.IN_FEATURES,
            "strides": [shapes[f].stride for f in bp.IN_FEATURES],
            "thing_semantic_ids": list(layout.thing_ids),
            "output_category_ids": list(layout.output_ids),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "size_divisibility": backbone.size_divisibility,
            "pre_nms_thresh": bp.PRE_NMS_THRESH,
            "pre_nms_top_n": bp.PRE_NMS_TOP_N,
            "nms_thresh": bp.NMS_THRESH,
            "agnostic_nms_thresh": bp.AGNOSTIC_NMS_THRESH,
            "post_nms_top_n": bp.POST_NMS_TOP_N,
            "mask_thresh": bp.MASK_THRESH,
            "location_term": bp.LOCATION_TERM,
            "use_levelness": bp.USE_LEVELNESS,
            "assembly": bp.ASSEMBLY,
            "det_score_thresh": bp.DET_SCORE_THRESH,
            "overlap_thresh": bp.OVERLAP_THRESH,
            "instance_area_min": bp.INSTANCE_AREA_MIN,
            "stuff_area_min": bp.STUFF_AREA_MIN,
            "assembly_candidates": bp.ASSEMBLY_CANDIDATES,
            "channels_last": bp.CHANNELS_LAST,
            "benchmark_network_speed": bp.BENCHMARK_NETWORK_SPEED,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def checkpoint_settings(self) -> Dict:
        """Settings that change what the weights mean, saved with every checkpoint and checked
        on load (:mod:`box_panoptic.checkpoint`)."""
        units = getattr(self.head, "log_units", None)
        return {} if units is None else {"MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS": any(units)}

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
            return self.criterion(out, batched_inputs, images, self.strides)
        if self.benchmark_network_speed:
            return [{} for _ in batched_inputs]
        return self.inference(out, batched_inputs, images)

    # ---------------------------------------------------------------------------------------------
    def dense_boxes(self, out: Dict) -> torch.Tensor:
        """(N, 4, h4, w4) levelness-chosen boxes, or (N, L, 4, h4, w4) every level's boxes."""
        if self.use_levelness:
            return dense_box_map(out["box_reg"], out["levelness"], stride=4)
        size = tuple(out["levelness"].shape[-2:])
        return boxes_from_ltrb(resized_level_regressions(out["box_reg"], size), 4)

    def inference(self, out: Dict, batched_inputs: List[Dict], images: ImageList):
        """Decode every image (:meth:`decode`), then post-process it (:meth:`postprocess`)."""
        with _stage("decode"):
            caches = self.decode(out, batched_inputs, images)
        return [self.postprocess(c) for c in caches]

    def decode(self, out: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Everything mask construction and assembly need, per image, independent of sigma and
        the detection score threshold (what the sigma search caches).

        Returns per image: "boxes" (D, 4), "scores" (D,), "classes" (D,) semantic index,
        "dense" (4, h4, w4) or (L, 4, h4, w4) dense boxes, "sem_seg_stride8" (C, h8, w8) logits,
        "padded_size", "image_size", "output_size".
        """
        padded = tuple(images.tensor.shape[-2:])
        dense = self.dense_boxes(out)
        caches = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            boxes, scores, labels, _, _ = decode_detections(
                [c[i] for c in out["box_cls"]],
                [r[i] for r in out["box_reg"]],
                [t[i] for t in out["centerness"]],
                self.strides,
                image_size,
                self.pre_nms_thresh,
                self.pre_nms_top_n,
                self.nms_thresh,
                self.agnostic_nms_thresh,
                self.post_nms_top_n,
            )
            caches.append(
                {
                    "boxes": boxes,
                    "scores": scores,
                    "classes": self.thing_semantic_ids[labels],
                    "dense": dense[i],
                    "sem_seg_stride8": out["sem_seg"][i],
                    "padded_size": padded,
                    "image_size": tuple(image_size),
                    "output_size": (x.get("height", image_size[0]), x.get("width", image_size[1])),
                }
            )
        return caches

    def construct(self, cache: Dict) -> Tuple[torch.Tensor, torch.Tensor, OutputGrid]:
        """Semantic logits (C, H, W) at output resolution, semantic probabilities (C, h4, w4) on
        the stride-4 grid (step 4) and where the output pixels fall on that grid (step 6)."""
        padded, image_size, output_size = (
            cache["padded_size"],
            cache["image_size"],
            cache["output_size"],
        )
        sem8 = cache["sem_seg_stride8"][None].contiguous()  # NCHW resizes faster on CPU
        h4, w4 = cache["dense"].shape[-2:]
        sem_prob4 = F.interpolate(sem8, size=(h4, w4), mode="bilinear", align_corners=False)
        sem_full = F.interpolate(sem8, size=padded, mode="bilinear", align_corners=False)[0]
        if tuple(image_size) == tuple(output_size):  # sem_seg_postprocess would resize anyway
            sem_seg = sem_full[:, : image_size[0], : image_size[1]].contiguous()
        else:
            sem_seg = sem_seg_postprocess(sem_full, image_size, *output_size)
        grid = output_grid((h4, w4), padded, image_size, output_size, sem8.device)
        return sem_seg, sem_prob4[0].softmax(dim=0), grid

    def soft_masks(self, cache: Dict, sem_prob4: torch.Tensor) -> torch.Tensor:
        """Soft masks S_j (D, h4, w4) on the stride-4 grid (step 5), all at once; inference
        computes them fused with step 6 instead (:meth:`candidates`)."""
        return soft_masks(
            cache["boxes"], cache["classes"], cache["dense"], sem_prob4, self.location_term
        )

    def candidates(
        self,
        cache: Dict,
        sem_prob4: torch.Tensor,
        grid: OutputGrid,
        mask_thresh: float,
        tau: float,
    ) -> Candidates:
        """Each output pixel's candidate detections and their soft masks (steps 5-6), those
        scoring >= tau first."""
        if not mask_thresh > 0:
            raise ValueError(f"BoxPanoptic: mask_thresh (sigma) must be > 0, got {mask_thresh}")
        return soft_mask_candidates(
            cache["boxes"],
            cache["classes"],
            cache["dense"],
            sem_prob4,
            grid,
            self.assembly_candidates,
            mask_thresh,
            cache["scores"] >= tau,
            self.location_term,
        )

    def semantic_argmax(self, cache: Dict, sem_seg: torch.Tensor) -> torch.Tensor:
        """(H, W) argmax of the output logits ``sem_seg`` (C, H, W), mostly read off the
        stride-8 logits (:func:`semantic_labels`); the logits themselves when tracing or after
        a test-time resize (the assembly then takes their maximum)."""
        if torch.jit.is_tracing() or cache["image_size"] != cache["output_size"]:
            return sem_seg
        sem8 = cache["sem_seg_stride8"]
        size = cache["image_size"]
        grid = output_grid(tuple(sem8.shape[-2:]), cache["padded_size"], size, size, sem8.device)
        return semantic_labels(sem_seg, sem8, grid)

    def panoptic_tensors(
        self,
        cache: Dict,
        sem_seg: torch.Tensor,
        candidates: Candidates,
        mask_thresh: float,
        det_score_thresh: float,
    ) -> Dict[str, torch.Tensor]:
        """Assembly of one image as tensors (see :func:`assemble_panoptic`)."""
        is_thing = torch.zeros(sem_seg.shape[0], dtype=torch.bool, device=sem_seg.device)
        is_thing[self.thing_semantic_ids] = True
        fn: Callable = PANOPTIC_ASSEMBLY_REGISTRY.get(self.assembly)
        return fn(
            candidates,
            cache["classes"],
            cache["scores"],
            cache["scores"] >= det_score_thresh,
            self.semantic_argmax(cache, sem_seg),
            is_thing,
            mask_thresh=mask_thresh,
            overlap_thresh=self.overlap_thresh,
            instance_area_min=self.instance_area_min,
            stuff_area_min=self.stuff_area_min,
        )

    def panoptic_outputs(
        self,
        cache: Dict,
        mask_thresh: Optional[float] = None,
        det_score_thresh: Optional[float] = None,
    ) -> Tuple[torch.Tensor, Candidates, Dict[str, torch.Tensor]]:
        """Steps 4-7 of one decoded image: semantic logits (C, H, W), the per-pixel candidates
        and the assembly's tensors. ``mask_thresh`` (sigma) and ``det_score_thresh`` default to
        the model's settings."""
        sigma = self.mask_thresh if mask_thresh is None else mask_thresh
        tau = self.det_score_thresh if det_score_thresh is None else det_score_thresh
        with _stage("construct"):
            sem_seg, sem_prob4, grid = self.construct(cache)
        with _stage("candidates"):
            candidates = self.candidates(cache, sem_prob4, grid, sigma, tau)
        with _stage("assembly"):
            r = self.panoptic_tensors(cache, sem_seg, candidates, sigma, tau)
        return sem_seg, candidates, r

    def postprocess(
        self,
        cache: Dict,
        mask_thresh: Optional[float] = None,
        det_score_thresh: Optional[float] = None,
    ) -> Dict:
        """Mask construction, upsampling and assembly of one decoded image (METHOD 4, steps 4-7)
        into detectron2's output contract. ``mask_thresh`` (sigma) and ``det_score_thresh``
        default to the model's settings."""
        sigma = self.mask_thresh if mask_thresh is None else mask_thresh
        sem_seg, candidates, r = self.panoptic_outputs(cache, sigma, det_score_thresh)
        image_size, (oh, ow) = cache["image_size"], cache["output_size"]
        out_boxes = Boxes(cache["boxes"].clone())
        out_boxes.scale(ow / image_size[1], oh / image_size[0])
        out_boxes.clip((oh, ow))
        with _stage("instance_masks"):
            masks = instance_masks(candidates, sigma, len(cache["scores"]))
        ids = self.output_category_ids
        instances = Instances(
            (oh, ow),
            pred_boxes=out_boxes,
            scores=cache["scores"],
            pred_classes=(
                cache["classes"]
                if ids is None
                else cache["classes"].new_tensor(ids)[cache["classes"]]
            ),
            pred_masks=masks,
        )
        return {
            "sem_seg": sem_seg,
            "instances": instances,
            "panoptic_seg": (r["panoptic"], segments_info(r, ids)),
        }


def _stage(name: str):
    """A named range ``box_panoptic.<name>`` for torch.profiler (``tools/benchmark.py
    --stages``); nothing while tracing."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return contextlib.nullcontext()
    return torch.profiler.record_function(f"box_panoptic.{name}")


def instance_masks(candidates: Candidates, sigma: float, num: int) -> torch.Tensor:
    """(num, H, W) bool: each detection's accepted pixels (S_j >= sigma, overlaps allowed)."""
    h, w = candidates.values.shape[-2:]
    # torch.zeros: fresh memory touched once by memset; sparser schemes (calloc, huge pages)
    # measured slower after the network has run (page faults, compaction)
    masks = torch.zeros((num + 1, h * w), dtype=torch.bool, device=candidates.values.device)
    for slot in range(candidates.values.shape[0]):  # K slots; a pixel's ids are distinct
        ids = candidates.per_pixel(candidates.window_ids[slot : slot + 1]).view(1, -1)
        masks.scatter_(0, ids, (candidates.values[slot] >= sigma).view(1, -1))
    return masks[1:].view(num, h, w)


def segments_info(
    r: Dict[str, torch.Tensor], output_category_ids: Optional[Sequence[int]] = None
) -> List[Dict]:
    """detectron2's ``segments_info`` from :func:`assemble_panoptic`'s segment table, with
    ``category_id`` the dataset contiguous id of each semantic class (``output_category_ids``;
    default: the semantic index)."""
    ids = output_category_ids
    return [
        {
            "id": k + 1,
            "category_id": int(c) if ids is None else ids[c],
            "isthing": bool(t),
            "area": int(a),
            **({"score": float(s)} if t else {}),
        }
        for k, (c, t, s, a) in enumerate(
            zip(
                r["segment_category"].tolist(),
                r["segment_isthing"].tolist(),
                r["segment_score"].tolist(),
                r["segment_area"].tolist(),
            )
        )
    ]

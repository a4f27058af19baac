# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Inference post-processing (METHOD.md section 4): the network's outputs -> detections, soft
masks, panoptic assembly -> detectron2's output contract, behind one ``@configurable`` module
with typed stages:

    decode(outputs, images, output_sizes) -> [DecodedImage]        steps 1-3 (per image)
    panoptic(decoded, sigma, tau)          -> ImagePanoptic         steps 4-7
    to_outputs(decoded, panoptic, sigma)   -> {"panoptic_seg", "sem_seg", "instances"}

The sigma search caches :class:`DecodedImage` (everything independent of sigma and the score
threshold); export traces ``decode`` + ``panoptic``.
"""

import contextlib
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, ImageList, Instances

from ..data.class_layout import class_layout_from_config
from .assembly import PANOPTIC_ASSEMBLY_REGISTRY, PanopticSegments
from .class_vote import box_mean_probabilities, location_class_probabilities, vote_thing_classes
from .inference import decode_detections
from .mask_candidates import soft_mask_candidates
from .mask_construction import (
    DENSE_BOX_SOURCES,
    THING_PIXELS,
    THING_SEMANTICS,
    boxes_from_ltrb,
    dense_boxes,
    resized_level_regressions,
    soft_masks,
    thing_semantic_probabilities,
)
from .semantic_labels import semantic_labels
from .upsampling import Candidates, OutputGrid, output_grid

__all__ = [
    "BoxPanopticPostProcessor",
    "DecodedImage",
    "ImagePanoptic",
    "instance_masks",
    "segments_info",
    "stage",
]

DETECTION_CLASSES = ("box", "box_and_semantic")


@dataclasses.dataclass
class DecodedImage:
    """One image after decoding (steps 1-3): what mask construction and assembly read.

    Attributes:
        boxes: (D, 4) XYXY detections in input (resized) pixels; scores: (D,);
        classes: (D,) semantic class index of each detection.
        dense: (4, h4, w4) levelness-chosen dense boxes, or (L, 4, h4, w4) every level's.
        sem_seg_stride8: (C, h8, w8) semantic logits on the semantic head's grid (stride 8 on
            P3-P7, the name's; stride 4 when the head starts at P2).
        padded_size, image_size: the network input, padded and unpadded (H, W);
        output_size: the (height, width) outputs are reported at.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    dense: torch.Tensor
    sem_seg_stride8: torch.Tensor
    padded_size: Tuple[int, int]
    image_size: Tuple[int, int]
    output_size: Tuple[int, int]

    def to(self, device) -> "DecodedImage":
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in dataclasses.fields(self)
                if torch.is_tensor(getattr(self, f.name))
            },
        )

    def replace(self, **changes) -> "DecodedImage":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class ImagePanoptic:
    """Steps 4-7 of one image: ``sem_seg`` (C, H, W) output logits, each output pixel's
    candidate detections, and the assembled segments."""

    sem_seg: torch.Tensor
    candidates: Candidates
    segments: PanopticSegments


def stage(name: str):
    """A named range ``box_panoptic.<name>`` for torch.profiler (``tools/benchmark.py
    --stages``); nothing while tracing."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return contextlib.nullcontext()
    return torch.profiler.record_function(f"box_panoptic.{name}")


class BoxPanopticPostProcessor(nn.Module):
    """Network outputs -> panoptic, semantic and instance outputs (METHOD 4, steps 1-7).

    Exact by default: every detection that reaches sigma in a 2x2 window of the stride-4 grid is
    a candidate there (``exact=True``); ``exact=False`` keeps at most ``candidates`` per window
    (a fixed cost; traced exports always use it, a trace cannot grow the slot count).
    """

    @configurable
    def __init__(
        self,
        *,
        strides: Sequence[int],
        thing_semantic_ids: Sequence[int],
        output_category_ids: Optional[Sequence[int]] = None,
        pre_nms_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        agnostic_nms_thresh: float = 0.97,
        post_nms_top_n: int = 100,
        mask_thresh: float = 0.4,
        location_term: str = "giou_plus1",
        use_levelness: bool = True,
        dense_box_source: str = "levelness",
        thing_semantics: str = "class",
        detection_class: str = "box",
        thing_pixels: str = "soft_mask",
        assembly: str = "assemble_argmax",
        det_score_thresh: float = 0.3,
        overlap_thresh: float = 0.5,
        instance_area_min: int = 0,
        stuff_area_min: int = 2048,
        candidates: int = 4,
        exact: bool = True,
    ):
        """
        Args:
            strides: stride of each FPN level the dense head predicts on.
            thing_semantic_ids: semantic class index of each thing label (K_th entries).
            output_category_ids: the dataset contiguous id outputs report for each semantic
                class (``ClassLayout.output_ids``); default: the semantic index itself.
            candidates: candidate slots per output pixel (K); with ``exact`` a minimum.
            the rest: ``add_box_panoptic_config`` documents each (same names, upper case).
        """
        super().__init__()
        if assembly not in PANOPTIC_ASSEMBLY_REGISTRY:
            raise ValueError(f"BoxPanoptic: unknown assembly {assembly!r}")
        if int(candidates) < 1:
            raise ValueError(f"BoxPanoptic: assembly candidates must be >= 1, got {candidates}")
        if dense_box_source not in DENSE_BOX_SOURCES:
            raise ValueError(
                f"BoxPanoptic: unknown DENSE_BOX_SOURCE {dense_box_source!r} "
                f"(one of {DENSE_BOX_SOURCES})"
            )
        if dense_box_source != "levelness" and not use_levelness:
            raise ValueError(
                f"BoxPanoptic: USE_LEVELNESS False (every level's box per pixel) needs "
                f"DENSE_BOX_SOURCE 'levelness', not {dense_box_source!r}"
            )
        if thing_semantics not in THING_SEMANTICS:
            raise ValueError(
                f"BoxPanoptic: unknown THING_SEMANTICS {thing_semantics!r} "
                f"(one of {THING_SEMANTICS})"
            )
        if detection_class not in DETECTION_CLASSES:
            raise ValueError(
                f"BoxPanoptic: unknown DETECTION_CLASS {detection_class!r} "
                f"(one of {DETECTION_CLASSES})"
            )
        if thing_pixels not in THING_PIXELS:
            raise ValueError(
                f"BoxPanoptic: unknown THING_PIXELS {thing_pixels!r} (one of {THING_PIXELS})"
            )
        if not mask_thresh > 0:
            raise ValueError(f"BoxPanoptic: mask_thresh (sigma) must be > 0, got {mask_thresh}")
        self.strides = [int(s) for s in strides]
        self.register_buffer("thing_semantic_ids", torch.tensor(thing_semantic_ids).long(), False)
        self.output_category_ids = (
            None if output_category_ids is None else [int(c) for c in output_category_ids]
        )
        # fmt: off
        self.pre_nms_thresh      = pre_nms_thresh
        self.pre_nms_top_n       = pre_nms_top_n
        self.nms_thresh          = nms_thresh
        self.agnostic_nms_thresh = agnostic_nms_thresh
        self.post_nms_top_n      = post_nms_top_n
        self.mask_thresh         = mask_thresh
        self.location_term       = location_term
        self.use_levelness       = use_levelness
        self.dense_box_source    = dense_box_source
        self.thing_semantics     = thing_semantics
        self.detection_class     = detection_class
        self.thing_pixels        = thing_pixels
        self.assembly            = assembly
        self.det_score_thresh    = det_score_thresh
        self.overlap_thresh      = overlap_thresh
        self.instance_area_min   = instance_area_min
        self.stuff_area_min      = stuff_area_min
        self.candidates          = int(candidates)
        self.exact               = bool(exact)
        # fmt: on

    @classmethod
    def from_config(cls, cfg, strides: Sequence[int]):
        layout = class_layout_from_config(cfg)
        bp = cfg.MODEL.BOX_PANOPTIC
        return {
            "strides": strides,
            "thing_semantic_ids": list(layout.thing_ids),
            "output_category_ids": list(layout.output_ids),
            "pre_nms_thresh": bp.PRE_NMS_THRESH,
            "pre_nms_top_n": bp.PRE_NMS_TOP_N,
            "nms_thresh": bp.NMS_THRESH,
            "agnostic_nms_thresh": bp.AGNOSTIC_NMS_THRESH,
            "post_nms_top_n": bp.POST_NMS_TOP_N,
            "mask_thresh": bp.MASK_THRESH,
            "location_term": bp.LOCATION_TERM,
            "use_levelness": bp.USE_LEVELNESS,
            "dense_box_source": bp.DENSE_BOX_SOURCE,
            "thing_semantics": bp.THING_SEMANTICS,
            "detection_class": bp.DETECTION_CLASS,
            "thing_pixels": bp.THING_PIXELS,
            "assembly": bp.ASSEMBLY,
            "det_score_thresh": bp.DET_SCORE_THRESH,
            "overlap_thresh": bp.OVERLAP_THRESH,
            "instance_area_min": bp.INSTANCE_AREA_MIN,
            "stuff_area_min": bp.STUFF_AREA_MIN,
            "candidates": bp.ASSEMBLY_CANDIDATES,
            "exact": bp.ASSEMBLY_EXACT,
        }

    # ---- steps 1-3 -------------------------------------------------------------------------------
    def dense_boxes(self, out: Dict) -> torch.Tensor:
        """(N, 4, h4, w4) dense boxes (``dense_box_source``), or (N, L, 4, h4, w4) every level's
        boxes (levelness source with ``use_levelness`` False)."""
        if self.use_levelness:
            return dense_boxes(out["box_reg"], out["levelness"], self.dense_box_source, stride=4)
        size = tuple(out["levelness"].shape[-2:])
        return boxes_from_ltrb(resized_level_regressions(out["box_reg"], size), 4)

    def decode(
        self, out: Dict, images: ImageList, output_sizes: Sequence[Tuple[int, int]]
    ) -> List[DecodedImage]:
        """Detections, dense boxes and semantic logits of every image (independent of sigma and
        the detection score threshold). ``output_sizes``: per image, (height, width)."""
        padded = tuple(images.tensor.shape[-2:])
        dense = self.dense_boxes(out)
        decoded = []
        for i, (image_size, output_size) in enumerate(zip(images.image_sizes, output_sizes)):
            boxes, scores, labels, levels, loc_idx = decode_detections(
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
            if self.detection_class == "box_and_semantic":
                labels = self.vote_classes(out, i, padded, boxes, levels, loc_idx)
            decoded.append(
                DecodedImage(
                    boxes=boxes,
                    scores=scores,
                    classes=self.thing_semantic_ids[labels],
                    dense=dense[i],
                    sem_seg_stride8=out["sem_seg"][i],
                    padded_size=padded,
                    image_size=tuple(image_size),
                    output_size=tuple(output_size),
                )
            )
        return decoded

    def vote_classes(self, out: Dict, i: int, padded, boxes, levels, loc_idx) -> torch.Tensor:
        """``detection_class`` "box_and_semantic": image ``i``'s (D,) 0-based thing labels from
        the box classifier at each detection's location and the semantic head inside its box
        (:mod:`.class_vote`)."""
        sem = out["sem_seg"][i]  # (C, h, w) logits on a grid of padded / h input pixels
        stride = padded[0] // sem.shape[-2]
        sem_prob = sem.softmax(dim=0)[self.thing_semantic_ids]
        box_prob = location_class_probabilities([c[i] for c in out["box_cls"]], levels, loc_idx)
        return vote_thing_classes(box_prob, box_mean_probabilities(sem_prob, boxes, stride))

    # ---- steps 4-7 -------------------------------------------------------------------------------
    def construct(self, d: DecodedImage) -> Tuple[torch.Tensor, torch.Tensor, OutputGrid]:
        """Semantic logits (C, H, W) at output resolution, the semantic probabilities (C, h4, w4)
        that soft masks read, on the stride-4 grid (step 4; thing rows as ``thing_semantics``
        says), and where the output pixels fall on that grid (step 6)."""
        sem8 = d.sem_seg_stride8[None].contiguous()  # NCHW resizes faster on CPU
        h4, w4 = d.dense.shape[-2:]
        sem_prob4 = F.interpolate(sem8, size=(h4, w4), mode="bilinear", align_corners=False)
        sem_full = F.interpolate(sem8, size=d.padded_size, mode="bilinear", align_corners=False)
        sem_full = sem_full[0]
        if tuple(d.image_size) == tuple(d.output_size):  # sem_seg_postprocess would resize anyway
            sem_seg = sem_full[:, : d.image_size[0], : d.image_size[1]].contiguous()
        else:
            sem_seg = sem_seg_postprocess(sem_full, d.image_size, *d.output_size)
        grid = output_grid((h4, w4), d.padded_size, d.image_size, d.output_size, sem8.device)
        sem_prob4 = thing_semantic_probabilities(
            sem_prob4[0].softmax(dim=0), self.thing_semantic_ids, self.thing_semantics
        )
        return sem_seg, sem_prob4, grid

    def soft_masks(self, d: DecodedImage, sem_prob4: torch.Tensor) -> torch.Tensor:
        """Soft masks S_j (D, h4, w4) on the stride-4 grid (step 5), all at once: the reference
        for :meth:`pixel_candidates`, which computes them fused with step 6."""
        return soft_masks(d.boxes, d.classes, d.dense, sem_prob4, self.location_term)

    def pixel_candidates(
        self, d: DecodedImage, sem_prob4: torch.Tensor, grid: OutputGrid, sigma: float, tau: float
    ) -> Candidates:
        """Each output pixel's candidate detections and their soft masks (steps 5-6), those
        scoring >= tau first."""
        if not sigma > 0:
            raise ValueError(f"BoxPanoptic: mask_thresh (sigma) must be > 0, got {sigma}")
        return soft_mask_candidates(
            d.boxes,
            d.classes,
            d.dense,
            sem_prob4,
            grid,
            self.candidates,
            sigma,
            d.scores >= tau,
            self.location_term,
            exact=self.exact and not torch.jit.is_tracing(),
        )

    def semantic_argmax(self, d: DecodedImage, sem_seg: torch.Tensor) -> torch.Tensor:
        """(H, W) argmax of the output logits ``sem_seg`` (C, H, W), mostly read off the
        stride-8 logits (:func:`semantic_labels`); the logits themselves when tracing or after
        a test-time resize (the assembly then takes their maximum)."""
        if torch.jit.is_tracing() or d.image_size != d.output_size:
            return sem_seg
        sem8 = d.sem_seg_stride8
        size = d.image_size
        grid = output_grid(tuple(sem8.shape[-2:]), d.padded_size, size, size, sem8.device)
        return semantic_labels(sem_seg, sem8, grid)

    def is_thing(self, sem_seg: torch.Tensor) -> torch.Tensor:
        """(C,) bool: the thing rows of the semantic classes."""
        is_thing = torch.zeros(sem_seg.shape[0], dtype=torch.bool, device=sem_seg.device)
        is_thing[self.thing_semantic_ids] = True
        return is_thing

    def restrict_to_things(
        self, candidates: Candidates, sem_seg: torch.Tensor, semantic: torch.Tensor
    ) -> Candidates:
        """``thing_pixels`` "semantic_things": the candidates accepted only at output pixels
        whose semantic argmax (``semantic``: (H, W) labels or (C, H, W) logits, as
        :meth:`semantic_argmax` returns) is a thing class."""
        labels = semantic if semantic.dim() == 2 else semantic.argmax(dim=0)
        return candidates.restricted_to(self.is_thing(sem_seg)[labels])

    def assemble(
        self,
        d: DecodedImage,
        sem_seg: torch.Tensor,
        candidates: Candidates,
        sigma: float,
        tau: float,
        semantic: Optional[torch.Tensor] = None,
    ) -> PanopticSegments:
        """Step 7 (the registered assembly rule); ``semantic``: :meth:`semantic_argmax`'s
        result when the caller has it."""
        fn: Callable = PANOPTIC_ASSEMBLY_REGISTRY.get(self.assembly)
        return fn(
            candidates,
            d.classes,
            d.scores,
            d.scores >= tau,
            self.semantic_argmax(d, sem_seg) if semantic is None else semantic,
            self.is_thing(sem_seg),
            mask_thresh=sigma,
            overlap_thresh=self.overlap_thresh,
            instance_area_min=self.instance_area_min,
            stuff_area_min=self.stuff_area_min,
        )

    def panoptic(
        self, d: DecodedImage, sigma: Optional[float] = None, tau: Optional[float] = None
    ) -> ImagePanoptic:
        """Steps 4-7 of one image; ``sigma`` (mask threshold) and ``tau`` (detection score
        threshold) default to the settings."""
        sigma = self.mask_thresh if sigma is None else sigma
        tau = self.det_score_thresh if tau is None else tau
        with stage("construct"):
            sem_seg, sem_prob4, grid = self.construct(d)
        with stage("candidates"):
            candidates = self.pixel_candidates(d, sem_prob4, grid, sigma, tau)
        with stage("assembly"):
            semantic = self.semantic_argmax(d, sem_seg)
            if self.thing_pixels == "semantic_things":
                candidates = self.restrict_to_things(candidates, sem_seg, semantic)
            segments = self.assemble(d, sem_seg, candidates, sigma, tau, semantic)
        return ImagePanoptic(sem_seg, candidates, segments)

    # ---- detectron2's output contract ------------------------------------------------------------
    def to_outputs(self, d: DecodedImage, p: ImagePanoptic, sigma: float) -> Dict:
        """{"panoptic_seg": (ids (H, W) int32, segments_info), "sem_seg": (C, H, W) logits,
        "instances": Instances(pred_boxes, scores, pred_classes, pred_masks)}."""
        (oh, ow), image_size = d.output_size, d.image_size
        out_boxes = Boxes(d.boxes.clone())
        out_boxes.scale(ow / image_size[1], oh / image_size[0])
        out_boxes.clip((oh, ow))
        with stage("instance_masks"):
            masks = instance_masks(p.candidates, sigma, len(d.scores))
        ids = self.output_category_ids
        classes = d.classes if ids is None else d.classes.new_tensor(ids)[d.classes]
        instances = Instances(
            (oh, ow), pred_boxes=out_boxes, scores=d.scores, pred_classes=classes, pred_masks=masks
        )
        return {
            "sem_seg": p.sem_seg,
            "instances": instances,
            "panoptic_seg": (p.segments.panoptic, segments_info(p.segments, ids)),
        }

    def postprocess(
        self, d: DecodedImage, sigma: Optional[float] = None, tau: Optional[float] = None
    ) -> Dict:
        """Steps 4-7 and the output contract of one decoded image."""
        sigma = self.mask_thresh if sigma is None else sigma
        return self.to_outputs(d, self.panoptic(d, sigma, tau), sigma)

    def forward(self, out: Dict, images: ImageList, output_sizes: Sequence[Tuple[int, int]]):
        """Every image's outputs (the contract of :meth:`to_outputs`)."""
        with stage("decode"):
            decoded = self.decode(out, images, output_sizes)
        return [self.postprocess(d) for d in decoded]


def instance_masks(candidates: Candidates, sigma: float, num: int) -> torch.Tensor:
    """(num, H, W) bool: each detection's accepted pixels (S_j >= sigma, overlaps allowed)."""
    h, w = candidates.values.shape[-2:]
    # torch.zeros: fresh memory touched once by memset; sparser schemes (calloc, huge pages)
    # measured slower after the network has run (page faults, compaction)
    masks = torch.zeros((num + 1, h * w), dtype=torch.bool, device=candidates.values.device)
    for slot in range(candidates.values.shape[0]):  # K slots; a pixel's ids are distinct
        ids = candidates.per_pixel(candidates.window_ids[slot : slot + 1]).view(1, -1)
        masks.scatter_(0, ids, (candidates.values[slot] >= sigma).view(1, -1))
    if candidates.has_extra:  # crowded windows' further detections (exact mode)
        accepted = candidates.extra_values >= sigma
        pixels = candidates.extra_pixels.expand_as(candidates.extra_ids)
        masks[candidates.extra_ids[accepted], pixels[accepted]] = True
    return masks[1:].view(num, h, w)


def segments_info(
    segments: PanopticSegments, output_category_ids: Optional[Sequence[int]] = None
) -> List[Dict]:
    """detectron2's ``segments_info`` from the assembled segment table, with ``category_id``
    the dataset contiguous id of each semantic class (``output_category_ids``; default: the
    semantic index)."""
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
                segments.category.tolist(),
                segments.isthing.tolist(),
                segments.score.tolist(),
                segments.area.tolist(),
            )
        )
    ]

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Dataset mapper: detectron2 panoptic records -> model inputs for training and evaluation.

Produces "image" (3, H, W) uint8 in ``INPUT.FORMAT``, and for training "instances" (gt_boxes,
gt_classes = thing label 0..K_th-1, gt_masks unless weak supervision), "sem_seg" (H, W) long with
255 = ignore, and "crowd_mask" (H, W) bool. Crowd segments are neither instances nor negatives.
In weak supervision no instance mask is used: boxes come from the JSON's ``bbox`` and semantic
labels from ``sem_seg_file_name`` (or, for datasets without semantic PNGs, from the panoptic PNG
collapsed to classes).

Segment categories arrive as the dataset's contiguous ids (with ``isthing``) and are mapped to
the model's semantic classes by the :class:`~.class_layout.ClassLayout`.
"""

import copy
import logging
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from .augmentation import PanopticAugInput, ThingAwareCrop
from .class_layout import ClassLayout, class_layout_from_config
from .datasets import PanopticDatasetError, rgb2id

__all__ = ["BoxPanopticDatasetMapper", "build_augmentations", "semantic_from_panoptic"]

logger = logging.getLogger("detectron2." + __name__)  # shown by detectron2's logger setup


def build_augmentations(cfg, is_train: bool) -> List[T.Augmentation]:
    """Short-side resize (range or choice, with a max size), optional crop that keeps things,
    horizontal flip."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(ThingAwareCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.RANDOM_FLIP == "horizontal":
        augs.append(T.RandomFlip(horizontal=True, vertical=False))
    return augs


def semantic_from_panoptic(ids: np.ndarray, segments: List[Dict], ignore_label: int = 255):
    """(H, W) int64 class of each pixel's segment (``category_id``); ``ignore_label`` where the
    panoptic id map ``ids`` (H, W) is 0 (void) or names no segment."""
    keys = np.array([0] + [s["id"] for s in segments], np.int64)
    values = np.array([ignore_label] + [s["category_id"] for s in segments], np.int64)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    pos = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
    return np.where(keys[pos] == ids, values[pos], ignore_label)


class BoxPanopticDatasetMapper:
    """Maps one detectron2 panoptic record (``file_name``, ``pan_seg_file_name``,
    ``segments_info`` with contiguous ``category_id``/``isthing``/``iscrowd``) to model inputs."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List,
        image_format: str,
        class_layout: ClassLayout,
        weak_supervision: bool = False,
        ignore_label: int = 255,
        bad_sample_policy: str = "raise",
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.layout = class_layout
        self.thing_label = {c: k for k, c in enumerate(class_layout.thing_ids)}
        self.model_class = class_layout.model_classes()
        self.weak = weak_supervision
        self.ignore_label = ignore_label
        if bad_sample_policy not in ("raise", "skip"):
            raise ValueError(
                f"bad_sample_policy must be 'raise' or 'skip', got {bad_sample_policy!r}"
            )
        self.bad_sample_policy = bad_sample_policy
        self.skipped = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "class_layout": class_layout_from_config(cfg),
            "weak_supervision": cfg.MODEL.BOX_PANOPTIC.WEAK_SUPERVISION,
            "bad_sample_policy": cfg.INPUT.BAD_SAMPLE_POLICY if is_train else "raise",
        }

    @staticmethod
    def _read_label_png(d: Dict, path: str, kind: str, shape, to_array) -> np.ndarray:
        """Read a label PNG of the image of ``d``; errors name the image and the PNG."""
        try:
            arr = to_array(Image.open(path))
        except OSError as e:
            raise PanopticDatasetError(f"image {d['file_name']}: cannot read {path}: {e}") from e
        if arr.shape != shape:
            raise PanopticDatasetError(
                f"image {d['file_name']}: {kind} PNG {path} is {arr.shape[1]}x{arr.shape[0]} but "
                f"the image is {shape[1]}x{shape[0]}"
            )
        return arr

    def _read_panoptic(self, d: Dict, shape) -> np.ndarray:
        return self._read_label_png(
            d,
            d["pan_seg_file_name"],
            "panoptic",
            shape,
            lambda im: rgb2id(np.asarray(im.convert("RGB"))),
        )

    def _read_sem_seg(self, d: Dict, segs: List[Dict], shape) -> np.ndarray:
        """(H, W) model classes, 255 = ignore: the semantic PNG when the dataset has one in the
        model's classes, else the panoptic PNG collapsed to each segment's class."""
        path = d.get("sem_seg_file_name")
        if path is not None and self.layout.is_identity:
            return self._read_label_png(
                d, path, "semantic", shape, lambda im: np.asarray(im, dtype=np.int64)
            )
        ids = self._read_panoptic(dict(d, segments_info=segs), shape)
        return semantic_from_panoptic(ids, segs, self.ignore_label)

    def _to_model_classes(self, d: Dict, seg: Dict) -> Dict:
        """``seg`` with ``category_id`` the model's semantic class (:class:`ClassLayout`) and
        ``isthing`` set from it."""
        cat, isthing = seg["category_id"], seg.get("isthing")
        if isthing is None and self.layout.is_identity:
            isthing = cat in self.thing_label
        cls = self.model_class.get((cat, bool(isthing)))
        if cls is None:
            kind = "thing" if isthing else "stuff"
            known = sorted(o for o, t in self.model_class if t == bool(isthing))
            raise PanopticDatasetError(
                f"image {d['file_name']}: segment {seg['id']} has {kind} category {cat}, not a "
                f"{kind} class of the model ({known})"
            )
        return dict(seg, category_id=cls, isthing=cls in self.thing_label)

    def _check_segments(self, d: Dict, ids: np.ndarray):
        """PNG ids and JSON segments must agree both ways (before any crop)."""
        present = set(np.unique(ids).tolist()) - {0}
        known = {s["id"] for s in d["segments_info"]}
        if present - known:
            raise PanopticDatasetError(
                f"image {d['file_name']}: panoptic PNG {d['pan_seg_file_name']} holds segment id "
                f"{sorted(present - known)[0]} missing from segments_info"
            )
        if known - present:
            raise PanopticDatasetError(
                f"image {d['file_name']}: segments_info lists segment id "
                f"{sorted(known - present)[0]} that the panoptic PNG {d['pan_seg_file_name']} "
                "does not contain"
            )

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        """Map one record. A bad sample raises PanopticDatasetError naming the file, or, with
        ``bad_sample_policy="skip"``, is logged and returns None (detectron2's loader then draws
        another sample). Any other error is re-raised naming the record."""
        try:
            return self._map(dataset_dict)
        except PanopticDatasetError as e:
            if self.bad_sample_policy == "raise":
                raise
            self.skipped += 1
            logger.warning(f"skipping bad sample ({self.skipped} skipped so far): {e}")
            return None
        except Exception as e:
            raise RuntimeError(
                f"mapping the record of {dataset_dict.get('file_name')} (image_id "
                f"{dataset_dict.get('image_id')}, pan_seg_file_name "
                f"{dataset_dict.get('pan_seg_file_name')}) failed: {type(e).__name__}: {e}"
            ) from e

    def _map(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        try:
            image = utils.read_image(d["file_name"], format=self.image_format)
        except (OSError, ValueError, SyntaxError) as e:
            raise PanopticDatasetError(f"image {d['file_name']} cannot be read: {e}") from e
        try:
            utils.check_image_size(d, image)
        except Exception as e:  # detectron2 raises SizeMismatchError (a ValueError subclass)
            raise PanopticDatasetError(f"image {d['file_name']}: {e}") from e
        shape = image.shape[:2]
        segs = [self._to_model_classes(d, s) for s in d.pop("segments_info")]
        if self.weak and self.is_train:
            return self._weak(d, image, segs, shape)
        ids = self._read_panoptic(dict(d, segments_info=segs), shape)
        self._check_segments(dict(d, segments_info=segs), ids)
        thing_ids = [s["id"] for s in segs if s.get("isthing")]
        aug = PanopticAugInput(
            image, sem_seg=ids.astype(np.float64), thing_mask=np.isin(ids, thing_ids)
        )
        self.augmentations(aug)
        image, ids = aug.image, aug.sem_seg.astype(np.int64)
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            return d
        sem = np.full(ids.shape, self.ignore_label, np.int64)
        crowd = np.zeros(ids.shape, bool)
        masks, classes = [], []
        for s in segs:
            m = ids == s["id"]
            sem[m] = s["category_id"]
            if s.get("iscrowd", 0):
                crowd |= m
            elif s.get("isthing") and m.any():
                masks.append(m)
                classes.append(self.thing_label[s["category_id"]])
        inst = Instances(image.shape[:2])
        bm = BitMasks(
            torch.from_numpy(np.stack(masks))
            if masks
            else torch.zeros((0,) + image.shape[:2], dtype=torch.bool)
        )
        inst.gt_masks = bm
        inst.gt_boxes = bm.get_bounding_boxes()
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        d["instances"] = inst
        d["sem_seg"] = torch.from_numpy(sem)
        d["crowd_mask"] = torch.from_numpy(crowd)
        return d

    def _weak(self, d, image, segs, shape):
        """Boxes from the JSON bbox and semantic labels; never an instance mask."""
        sem = self._read_sem_seg(d, segs, shape)
        aug = PanopticAugInput(
            image, sem_seg=sem.astype(np.float64), thing_mask=np.isin(sem, list(self.thing_label))
        )
        transforms = self.augmentations(aug)
        image = aug.image
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        things = [s for s in segs if s.get("isthing") and not s.get("iscrowd", 0)]
        boxes = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (s["bbox"] for s in things)], np.float64
        ).reshape(-1, 4)
        boxes = transforms.apply_box(boxes).clip(min=0)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(max=image.shape[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(max=image.shape[0])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        inst = Instances(image.shape[:2])
        inst.gt_boxes = Boxes(torch.as_tensor(boxes[keep], dtype=torch.float32))
        inst.gt_classes = torch.tensor(
            [self.thing_label[s["category_id"]] for s, k in zip(things, keep) if k],
            dtype=torch.int64,
        )
        d["instances"] = inst
        d["sem_seg"] = torch.from_numpy(aug.sem_seg.astype(np.int64))
        return d

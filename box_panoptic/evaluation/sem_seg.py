# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Semantic segmentation metrics of a panoptic model, with the ground truth taken from the
panoptic annotation itself.

detectron2's ``SemSegEvaluator`` needs a semantic PNG per image (``sem_seg_file_name``), which a
COCO-panoptic dataset registered with ``register_coco_panoptic`` does not have, and names classes
by ``stuff_classes`` only. Here each image's ground truth is its panoptic PNG collapsed to the
class of each segment (crowd segments included, void = ignore), in the model's classes
(:class:`~box_panoptic.data.class_layout.ClassLayout`); the metrics are detectron2's (mIoU, fwIoU,
mACC, pACC, IoU-/ACC- per class, in percent) under the same names.
"""

import itertools
import logging
from collections import OrderedDict
from typing import Dict

import numpy as np
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.class_layout import ClassLayout
from ..data.datasets import rgb2id
from ..data.loading import load_panoptic_dicts
from ..data.mapper import semantic_from_panoptic

__all__ = ["PanopticSemSegEvaluator", "semantic_metrics"]

logger = logging.getLogger("detectron2." + __name__)


def semantic_metrics(conf: np.ndarray, names) -> Dict[str, float]:
    """detectron2's semantic metrics from a (C + 1, C + 1) confusion matrix ``conf[pred, gt]``
    whose last row and column count ignored pixels. Classes absent from the ground truth are
    left out of the means (their IoU/ACC are NaN)."""
    c = conf.shape[0] - 1
    conf = conf[:c, :c].astype(np.float64)
    tp = np.diag(conf)
    gt = conf.sum(axis=0)
    pred = conf.sum(axis=1)
    union = gt + pred - tp
    valid = gt > 0
    acc = np.full(c, np.nan)
    iou = np.full(c, np.nan)
    acc[valid] = tp[valid] / gt[valid]
    iou[valid] = tp[valid] / union[valid]
    total = gt.sum()
    res = {
        "mIoU": 100 * float(np.mean(iou[valid])) if valid.any() else float("nan"),
        "fwIoU": 100 * float(np.sum(iou[valid] * gt[valid] / total)) if total else float("nan"),
    }
    res.update({f"IoU-{n}": 100 * float(v) for n, v in zip(names, iou)})
    res["mACC"] = 100 * float(np.mean(acc[valid])) if valid.any() else float("nan")
    res["pACC"] = 100 * float(tp.sum() / total) if total else float("nan")
    res.update({f"ACC-{n}": 100 * float(v) for n, v in zip(names, acc)})
    return res


class PanopticSemSegEvaluator(DatasetEvaluator):
    """mIoU & co. of ``output["sem_seg"]`` (C, H, W) against the panoptic ground truth."""

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir=None):
        meta = MetadataCatalog.get(dataset_name)
        self._layout = ClassLayout.from_metadata(meta, dataset_name)
        self._ignore = self._layout.num_classes  # the confusion matrix's last row/column
        self._distributed = distributed
        self._model_class = self._layout.model_classes()
        self._records = {r["file_name"]: r for r in load_panoptic_dicts([dataset_name])}

    def reset(self):
        n = self._layout.num_classes + 1
        self._conf = np.zeros((n, n), dtype=np.int64)

    def ground_truth(self, file_name: str) -> np.ndarray:
        """(H, W) int64 model class of every pixel of the image ``file_name``; ``C`` = void."""
        record = self._records[file_name]
        ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        segments = [
            dict(s, category_id=self._model_class[(s["category_id"], bool(s["isthing"]))])
            for s in record["segments_info"]
        ]
        return semantic_from_panoptic(ids, segments, self._ignore)

    def process(self, inputs, outputs):
        n = self._layout.num_classes + 1
        for x, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy().astype(np.int64)
            gt = self.ground_truth(x["file_name"])
            if gt.shape != pred.shape:
                raise ValueError(
                    f"semantic prediction for {x['file_name']} is {pred.shape[1]}x"
                    f"{pred.shape[0]} but its panoptic ground truth is {gt.shape[1]}x{gt.shape[0]}"
                )
            self._conf += np.bincount(n * pred.ravel() + gt.ravel(), minlength=n * n).reshape(n, n)

    def evaluate(self):
        conf = self._conf
        if self._distributed:
            comm.synchronize()
            gathered = comm.all_gather(self._conf)
            if not comm.is_main_process():
                return None
            conf = sum(itertools.islice(gathered, 1, None), gathered[0])
        res = semantic_metrics(conf, self._layout.names)
        logger.info(f"Semantic segmentation: mIoU {res['mIoU']:.2f}, pACC {res['pACC']:.2f}")
        return OrderedDict({"sem_seg": res})

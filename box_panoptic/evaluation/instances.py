# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""COCO box and mask AP of the things of any COCO-panoptic dataset, with detectron2's
``COCOEvaluator``.

* Ground truth: the dataset's instances JSON when its metadata names one (``json_file``: builtin
  COCO, separated datasets); otherwise one derived from the panoptic annotation (each non-void
  thing segment an instance, its mask RLE-encoded from the panoptic PNG, crowd kept as crowd),
  written once to ``output_dir/instances_from_panoptic.json``.
* Classes: COCOEvaluator wants thing ids ``0 .. K-1``; the model reports the dataset's thing
  contiguous ids (``pred_classes``), which may lie anywhere (Cityscapes 11-18). They are mapped
  to the things' rank by dataset id, under an alias metadata entry, and back in the results.
* The fast evaluator needs detectron2's compiled extension; without it pycocotools' COCOeval is
  used (:func:`box_panoptic.compat.has_compiled_ops`).
"""

import json
import os
from typing import Dict, List

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Instances
from detectron2.utils import comm

from ..atomic_file import atomic_write
from ..compat import has_compiled_ops
from ..data.datasets import rgb2id
from ..data.loading import load_panoptic_dicts

__all__ = ["PanopticInstanceEvaluator", "instances_from_panoptic"]

DERIVED_JSON = "instances_from_panoptic.json"


def instances_from_panoptic(dataset_name: str) -> Dict:
    """A COCO instances JSON (dict) of the things of a panoptic dataset."""
    meta = MetadataCatalog.get(dataset_name)
    thing_map = meta.thing_dataset_id_to_contiguous_id
    contiguous_to_dataset = {c: d for d, c in thing_map.items()}
    with open(meta.panoptic_json) as f:
        categories = [c for c in json.load(f)["categories"] if c["id"] in thing_map]
    images: List[Dict] = []
    annotations: List[Dict] = []
    for record in load_panoptic_dicts([dataset_name]):
        ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        h, w = ids.shape
        images.append(
            {"id": record["image_id"], "file_name": record["file_name"], "height": h, "width": w}
        )
        for s in record["segments_info"]:
            if not s["isthing"]:
                continue
            mask = ids == s["id"]
            if not mask.any():
                continue
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record["image_id"],
                    "category_id": contiguous_to_dataset[s["category_id"]],
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": int(s.get("iscrowd", 0)),
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}


class PanopticInstanceEvaluator(COCOEvaluator):
    """COCOEvaluator (tasks bbox and segm) for the things of panoptic dataset ``dataset_name``."""

    def __init__(self, dataset_name: str, output_dir: str, distributed: bool = True):
        meta = MetadataCatalog.get(dataset_name)
        thing_map = meta.thing_dataset_id_to_contiguous_id
        dataset_ids = sorted(thing_map)
        json_file = getattr(meta, "json_file", None)
        if not json_file:
            json_file = os.path.join(output_dir, DERIVED_JSON)
            if comm.is_main_process():
                os.makedirs(output_dir, exist_ok=True)
                content = instances_from_panoptic(dataset_name)
                atomic_write(json_file, lambda f: json.dump(content, f), text=True)
            if distributed:
                comm.synchronize()
        names = list(getattr(meta, "thing_classes", []))
        by_contiguous = {c: names[c] if c < len(names) else str(d) for d, c in thing_map.items()}
        alias = f"{dataset_name}__box_panoptic_instances"
        if alias in MetadataCatalog.list():
            MetadataCatalog.remove(alias)
        MetadataCatalog.get(alias).set(
            json_file=json_file,
            thing_dataset_id_to_contiguous_id={d: k for k, d in enumerate(dataset_ids)},
            thing_classes=[by_contiguous[thing_map[d]] for d in dataset_ids],
        )
        # model's thing contiguous id -> rank among the things
        table = torch.full((max(thing_map.values()) + 1,), -1, dtype=torch.long)
        for k, d in enumerate(dataset_ids):
            table[thing_map[d]] = k
        self._to_rank = table
        super().__init__(
            alias,
            tasks=("bbox", "segm"),
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=has_compiled_ops(),
        )

    def process(self, inputs, outputs):
        ranked = []
        for out in outputs:
            inst = out.get("instances")
            if inst is not None:
                fields = dict(inst.get_fields())
                fields["pred_classes"] = self._to_rank.to(inst.pred_classes.device)[
                    inst.pred_classes
                ]
                out = dict(out, instances=Instances(inst.image_size, **fields))
            ranked.append(out)
        super().process(inputs, ranked)

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""A user's own COCO-panoptic dataset, written the way users have theirs: category ids that are
not 1..N, things not first in the contiguous order, no semantic PNGs; and the same data in
Panoptic FPN's "separated" layout (COCO instances JSON + stuff-only semantic PNGs), for
detectron2's ``register_coco_panoptic`` / ``register_coco_panoptic_separated``."""

import json
import os
import shutil
from typing import Dict

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from box_panoptic.data import SyntheticSpec, generate_synthetic_panoptic
from box_panoptic.data.datasets import rgb2id

# synthetic category id -> the user's id; the user's contiguous order interleaves things and
# stuff (things at contiguous ids 1, 3, 5)
USER_IDS = {1: 7, 2: 3, 3: 12, 4: 20, 5: 21, 6: 40}
USER_ORDER = [20, 7, 21, 3, 40, 12]
SPEC = dict(height=96, width=128, min_object_size=8, max_instances=5)


def write_user_split(root: str, split: str, num_images: int, seed: int) -> Dict[str, str]:
    """One split under ``root/synthetic_panoptic``: images, panoptic PNGs, JSON (user ids,
    categories in USER_ORDER); no semantic PNGs."""
    spec = SyntheticSpec(num_images=num_images, seed=seed, **SPEC)
    paths = generate_synthetic_panoptic(root, split, spec)
    shutil.rmtree(paths.pop("sem_seg_root"))
    with open(paths["panoptic_json"]) as f:
        js = json.load(f)
    for c in js["categories"]:
        c["id"] = USER_IDS[c["id"]]
    by_id = {c["id"]: c for c in js["categories"]}
    js["categories"] = [by_id[i] for i in USER_ORDER]
    for a in js["annotations"]:
        for s in a["segments_info"]:
            s["category_id"] = USER_IDS[s["category_id"]]
    with open(paths["panoptic_json"], "w") as f:
        json.dump(js, f)
    return paths


def write_separated_files(paths: Dict[str, str], split: str) -> Dict[str, str]:
    """Panoptic FPN's layout of a split written by :func:`write_user_split`: a COCO instances
    JSON (RLE masks) and stuff-only semantic PNGs (0 = things, stuff 1..S, 255 = void)."""
    with open(paths["panoptic_json"]) as f:
        js = json.load(f)
    things = [c for c in js["categories"] if c["isthing"]]
    stuff = [c for c in js["categories"] if not c["isthing"]]
    stuff_label = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    base = os.path.dirname(paths["image_root"])
    sem_root = os.path.join(base, f"panoptic_stuff_{split}2017")
    os.makedirs(sem_root, exist_ok=True)
    annotations = []
    for ann in js["annotations"]:
        ids = rgb2id(np.asarray(Image.open(os.path.join(paths["panoptic_root"], ann["file_name"]))))
        sem = np.full(ids.shape, 255, np.uint8)
        for s in ann["segments_info"]:
            mask = ids == s["id"]
            if s["category_id"] in stuff_label:
                sem[mask] = stuff_label[s["category_id"]]
                continue
            sem[mask] = 0
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": ann["image_id"],
                    "category_id": s["category_id"],
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": s["iscrowd"],
                }
            )
        Image.fromarray(sem).save(os.path.join(sem_root, ann["file_name"]))
    instances_json = os.path.join(base, "annotations", f"instances_{split}2017.json")
    with open(instances_json, "w") as f:
        json.dump({"images": js["images"], "annotations": annotations, "categories": things}, f)
    return {"sem_seg_root": sem_root, "instances_json": instances_json}


def separated_metadata(panoptic_json: str) -> Dict:
    """detectron2's separated metadata convention (as its builtin COCO one): things 0..K-1,
    stuff 1..S with dataset id 0 -> 0 for the merged "things" class."""
    with open(panoptic_json) as f:
        cats = json.load(f)["categories"]
    things = sorted((c for c in cats if c["isthing"]), key=lambda c: c["id"])
    stuff = [c for c in cats if not c["isthing"]]
    stuff_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_map[0] = 0
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_classes": ["things"] + [c["name"] for c in stuff],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
    }

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Reading a registered dataset, whoever registered it: the boundary where the trainer, the
loaders and the evaluators get their records.

* Any error of a dataset's loader (detectron2's own included) becomes a
  :class:`PanopticDatasetError` naming the dataset and its annotation files, and, where it can be
  found, the file and the record at fault (an annotation file that is not JSON, a segment with an
  unknown category).
* Records of ``register_coco_panoptic_separated`` datasets (COCO instances + stuff-only semantic
  PNGs) get the panoptic annotation the metadata names (``panoptic_json``, ``panoptic_root``):
  ``pan_seg_file_name`` and ``segments_info`` with contiguous ids and ``isthing``, as standard
  records have.
"""

import json
import os
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .datasets import PanopticDatasetError, unknown_category_error

__all__ = ["load_panoptic_dicts", "explain_load_error"]

# metadata fields naming a dataset's annotation files, in the order they are reported
ANNOTATION_FIELDS = ("panoptic_json", "json_file", "panoptic_root", "sem_seg_root", "image_root")


def _annotation_files(meta) -> Dict[str, str]:
    return {k: getattr(meta, k) for k in ANNOTATION_FIELDS if getattr(meta, k, None)}


def explain_load_error(meta, error: BaseException) -> str:
    """What went wrong reading the annotation files of ``meta``, as precisely as it can be said."""
    for field in ("panoptic_json", "json_file"):
        path = getattr(meta, field, None)
        if not path or not isinstance(error, (ValueError, KeyError)):
            continue
        if not os.path.isfile(path):
            return f"{field} {path} does not exist"
        try:
            with open(path) as f:
                json.load(f)
        except ValueError as e:
            return f"{field} {path} is not valid JSON: {e}"
    if isinstance(error, KeyError) and getattr(meta, "panoptic_json", None):
        known = set(getattr(meta, "thing_dataset_id_to_contiguous_id", {})) | set(
            getattr(meta, "stuff_dataset_id_to_contiguous_id", {})
        )
        found = unknown_category_error(meta.panoptic_json, known)
        if found:
            return found
    return f"{type(error).__name__}: {error}"


def _load_one(name: str) -> List[Dict]:
    meta = MetadataCatalog.get(name)
    try:
        records = DatasetCatalog.get(name)
    except PanopticDatasetError as e:
        raise PanopticDatasetError(f"dataset {name!r}: {e}") from e
    except Exception as e:  # a loader of detectron2 or of the user: say which dataset and file
        files = ", ".join(f"{k}={v}" for k, v in _annotation_files(meta).items()) or "none"
        raise PanopticDatasetError(
            f"dataset {name!r} (annotation files: {files}) cannot be loaded: "
            f"{explain_load_error(meta, e)}"
        ) from e
    if not records:
        raise PanopticDatasetError(f"dataset {name!r} has no records")
    if "pan_seg_file_name" not in records[0]:
        records = _attach_panoptic_annotations(records, meta, name)
    return records


def _attach_panoptic_annotations(records: List[Dict], meta, name: str) -> List[Dict]:
    """Records of a separated dataset with the panoptic annotation of each image."""
    path, root = getattr(meta, "panoptic_json", None), getattr(meta, "panoptic_root", None)
    if not path or not root:
        raise PanopticDatasetError(
            f"dataset {name!r}: records have no pan_seg_file_name and the metadata names no "
            "panoptic_json / panoptic_root to read them from (is it a panoptic dataset?)"
        )
    try:
        with open(path) as f:
            annotations = json.load(f)["annotations"]
    except (OSError, ValueError, KeyError) as e:
        raise PanopticDatasetError(f"dataset {name!r}: {path} cannot be read: {e}") from e
    by_id = {a["image_id"]: a for a in annotations}
    by_stem = {os.path.splitext(a["file_name"])[0]: a for a in annotations}
    thing_map = meta.thing_dataset_id_to_contiguous_id
    stuff_map = meta.stuff_dataset_id_to_contiguous_id
    out = []
    for r in records:
        stem = os.path.splitext(os.path.basename(r["file_name"]))[0]
        ann = by_id.get(r.get("image_id"), by_stem.get(stem))
        if ann is None:
            raise PanopticDatasetError(
                f"dataset {name!r}: image {r['file_name']} (image_id {r.get('image_id')}) has no "
                f"annotation in {path}"
            )
        segments = []
        for s in ann["segments_info"]:
            cat = s["category_id"]
            if cat not in thing_map and cat not in stuff_map:
                raise PanopticDatasetError(
                    f"dataset {name!r}: {path}: segment {s['id']} of {ann['file_name']} has "
                    f"unknown category {cat}"
                )
            isthing = cat in thing_map
            segments.append(
                dict(s, category_id=(thing_map if isthing else stuff_map)[cat], isthing=isthing)
            )
        pan = os.path.join(root, ann["file_name"])
        out.append(dict(r, pan_seg_file_name=pan, segments_info=segments))
    return out


def load_panoptic_dicts(names: Sequence[str]) -> List[Dict]:
    """The records of the registered datasets ``names``, each with ``file_name``,
    ``pan_seg_file_name`` and ``segments_info`` (contiguous ``category_id``, ``isthing``).

    Raises:
        PanopticDatasetError naming the dataset, its annotation files and what is wrong.
    """
    if isinstance(names, str):
        names = (names,)
    records: List[Dict] = []
    for name in names:
        records.extend(_load_one(name))
    return records

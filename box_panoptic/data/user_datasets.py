# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Registering a user's COCO-panoptic dataset with detectron2's own ``register_coco_panoptic``,
its metadata read from the JSON's ``categories`` (what ``train_net.py --coco-panoptic`` does).

The metadata follows detectron2's standard panoptic convention: every class in one contiguous
space in the JSON's category order, ``thing_classes`` = ``stuff_classes`` = all class names, so
the model's class layout (:mod:`.class_layout`) and the Visualizer read it directly.
"""

import json
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic

from .datasets import PanopticDatasetError

__all__ = [
    "add_coco_panoptic_argument",
    "coco_panoptic_metadata",
    "register_coco_panoptic_from_json",
    "register_from_args",
]


def coco_panoptic_metadata(categories: List[Dict]) -> Dict:
    """detectron2 metadata of a COCO-panoptic JSON's ``categories`` (JSON order)."""
    names = [c["name"] for c in categories]
    colors = [list(c["color"]) if "color" in c else None for c in categories]
    meta = {
        "thing_classes": names,
        "stuff_classes": names,
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c.get("isthing")
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if not c.get("isthing")
        },
    }
    if all(colors):
        meta["thing_colors"] = meta["stuff_colors"] = colors
    return meta


def register_coco_panoptic_from_json(
    name: str, image_root: str, panoptic_root: str, panoptic_json: str
) -> None:
    """``register_coco_panoptic(name, metadata, ...)`` with the metadata of the JSON's categories.

    Raises:
        PanopticDatasetError naming the JSON when it cannot be read or has no categories.
    """
    try:
        with open(panoptic_json) as f:
            categories = json.load(f)["categories"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PanopticDatasetError(
            f"dataset {name!r}: {panoptic_json} cannot be read as a COCO-panoptic JSON with "
            f"'categories': {type(e).__name__}: {e}"
        ) from e
    if not categories:
        raise PanopticDatasetError(f"dataset {name!r}: {panoptic_json} lists no categories")
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_panoptic(
        name, coco_panoptic_metadata(categories), image_root, panoptic_root, panoptic_json
    )


def add_coco_panoptic_argument(parser) -> None:
    """``--coco-panoptic NAME IMAGE_ROOT PANOPTIC_ROOT PANOPTIC_JSON`` (repeatable), for
    train_net.py, the demo and the tools."""
    parser.add_argument(
        "--coco-panoptic",
        nargs=4,
        action="append",
        default=[],
        metavar=("NAME", "IMAGE_ROOT", "PANOPTIC_ROOT", "PANOPTIC_JSON"),
        help="register a COCO-panoptic dataset with detectron2's register_coco_panoptic, its "
        "class layout read from the JSON's categories (repeatable)",
    )


def register_from_args(args) -> None:
    """Register the datasets of :func:`add_coco_panoptic_argument`."""
    for name, image_root, panoptic_root, panoptic_json in (
        getattr(args, "coco_panoptic", None) or ()
    ):
        register_coco_panoptic_from_json(name, image_root, panoptic_root, panoptic_json)

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Dataset registration: the synthetic panoptic set, and fixes for detectron2 0.6's builtin
panoptic loaders (``coco_2017_*_panoptic``, ``cityscapes_fine_panoptic_*``).

Every record that leaves these loaders has ``file_name``, ``image_id``, ``pan_seg_file_name``,
``sem_seg_file_name`` (when the dataset has one) and ``segments_info`` whose entries carry a
contiguous ``category_id`` and ``isthing``. Missing files and PNG ids that the JSON does not
describe fail with :class:`PanopticDatasetError` naming the file and the id.
"""

import json
import os
from typing import Dict, Iterable, List, Optional

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

from .synthetic import DEFAULT_SPECS, LABEL_DIVISOR, dataset_paths, ensure_synthetic_split

__all__ = [
    "PanopticDatasetError",
    "SYNTHETIC_SPLITS",
    "check_panoptic_png",
    "check_record_files",
    "unknown_category_error",
    "load_synthetic_panoptic",
    "register_synthetic_panoptic",
    "fix_builtin_panoptic_datasets",
    "synthetic_metadata",
]

SYNTHETIC_SPLITS = ("train", "val")


class PanopticDatasetError(ValueError):
    """A panoptic dataset on disk is inconsistent (missing file, id mismatch, bad category)."""


def rgb2id(color: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int64 segment ids, id = R + 256 G + 256^2 B (panopticapi)."""
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def check_record_files(record: Dict) -> None:
    """Raise PanopticDatasetError if a file named by ``record`` is missing."""
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        path = record.get(key)
        if path is not None and not os.path.isfile(path):
            raise PanopticDatasetError(
                f"image {record.get('image_id')!r}: {key} {path} does not exist"
            )


def check_panoptic_png(record: Dict) -> np.ndarray:
    """Read ``record['pan_seg_file_name']`` and check its ids against ``segments_info``.

    Returns:
        (H, W) int64 id map.
    Raises:
        PanopticDatasetError naming the PNG and the offending id when the PNG holds an id that
        segments_info lacks, or segments_info names an id absent from the PNG.
    """
    path = record["pan_seg_file_name"]
    try:
        ids = rgb2id(np.asarray(Image.open(path).convert("RGB")))
    except (OSError, ValueError) as e:
        raise PanopticDatasetError(f"panoptic PNG {path} cannot be read: {e}") from e
    in_png = set(np.unique(ids).tolist()) - {0}
    in_json = {int(s["id"]) for s in record["segments_info"]}
    extra = sorted(in_png - in_json)
    if extra:
        raise PanopticDatasetError(
            f"panoptic PNG {path} holds segment id {extra[0]} that its JSON segments_info does not "
            f"list (all such ids: {extra[:10]})"
        )
    missing = sorted(in_json - in_png)
    if missing:
        raise PanopticDatasetError(
            f"segments_info of {path} lists segment id {missing[0]} that the PNG does not contain"
        )
    return ids


def _read_json(path: str) -> Dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise PanopticDatasetError(f"{path} cannot be read as JSON: {e}") from e


def synthetic_metadata(panoptic_json: str, split: str = "train", specs=None) -> Dict:
    """detectron2 metadata for a synthetic split: from the categories of its JSON, or, before the
    split exists, from those of ``specs[split]`` (default :data:`DEFAULT_SPECS`: what a first use
    generates).

    Like detectron2's standard COCO/Cityscapes panoptic metadata, ``thing_classes`` and
    ``stuff_classes`` both list every class (contiguous id order), so the Visualizer can index
    either by contiguous id.
    """
    if os.path.isfile(panoptic_json):
        cats = _read_json(panoptic_json)["categories"]
    else:
        specs = specs or DEFAULT_SPECS
        cats = specs.get(split, specs["train"]).categories()
    names = [c["name"] for c in cats]
    colors = [list(c["color"]) for c in cats]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(cats) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(cats) if not c["isthing"]
        },
    }


def unknown_category_error(panoptic_json: str, known) -> Optional[str]:
    """The first segment of ``panoptic_json`` whose category is not in ``known``, described
    (None when there is none or the file cannot be read)."""
    try:
        with open(panoptic_json) as f:
            annotations = json.load(f).get("annotations", [])
    except (OSError, ValueError):
        return None
    for ann in annotations:
        for seg in ann.get("segments_info", []):
            if seg.get("category_id") not in known:
                return (
                    f"{panoptic_json}: segment {seg.get('id')} of {ann.get('file_name')} has "
                    f"unknown category {seg.get('category_id')} (known: {sorted(known)})"
                )
    return None


def _load_coco_format(json_path: str, load, thing_map: Dict, stuff_map: Dict):
    """Run ``load()`` (detectron2's COCO-panoptic loader); its KeyError on a category id that
    the metadata lacks becomes an error naming the JSON, the segment and the category."""
    try:
        return load()
    except KeyError as e:
        found = unknown_category_error(json_path, set(thing_map) | set(stuff_map))
        if found:
            raise PanopticDatasetError(found) from e
        raise


def load_synthetic_panoptic(paths: Dict[str, str], meta: Dict, check_pixels: bool = True):
    """Load a synthetic split as detectron2 dicts, validating every file (and PNG ids)."""
    if not os.path.isfile(paths["panoptic_json"]):
        raise PanopticDatasetError(
            f"{paths['panoptic_json']} does not exist: generate the synthetic dataset with "
            "`python -m box_panoptic.data.synthetic --root $DETECTRON2_DATASETS`"
        )
    records = _load_coco_format(
        paths["panoptic_json"],
        lambda: load_coco_panoptic_json(
            paths["panoptic_json"], paths["image_root"], paths["panoptic_root"], meta
        ),
        meta["thing_dataset_id_to_contiguous_id"],
        meta["stuff_dataset_id_to_contiguous_id"],
    )
    for r in records:
        name = os.path.splitext(os.path.basename(r["pan_seg_file_name"]))[0]
        r["sem_seg_file_name"] = os.path.join(paths["sem_seg_root"], name + ".png")
        check_record_files(r)
        if check_pixels:
            check_panoptic_png(r)
    return records


def register_synthetic_panoptic(
    root: Optional[str] = None, splits: Iterable[str] = SYNTHETIC_SPLITS
):
    """Register ``synthetic_panoptic_{split}`` (the shapes style) and ``synthetic_street_{split}``
    (the street style) under ``root`` (default ``$DETECTRON2_DATASETS``). Their metadata is there
    before the files; the first load of a missing default split generates it.

    Safe to call again (e.g. with another root): earlier registrations are replaced.
    """
    from .synthetic_street import STREET_DEFAULT_SPECS

    root = root if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets")
    for dataset, specs in (
        ("synthetic_panoptic", DEFAULT_SPECS),
        ("synthetic_street", STREET_DEFAULT_SPECS),
    ):
        for split in splits:
            _register_synthetic_split(root, dataset, split, specs)


def _register_synthetic_split(root: str, dataset: str, split: str, specs) -> None:
    name = f"{dataset}_{split}"
    paths = dataset_paths(root, split, dataset)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def _load():
        if not os.path.isfile(paths["panoptic_json"]) and split in specs:
            # first use: generate the embedded dataset (deterministic, logged)
            ensure_synthetic_split(root, split, specs[split])
        meta = synthetic_metadata(paths["panoptic_json"], split, specs)
        return load_synthetic_panoptic(paths, meta)

    DatasetCatalog.register(name, _load)
    meta = MetadataCatalog.get(name)
    meta.set(
        image_root=paths["image_root"],
        panoptic_root=paths["panoptic_root"],
        panoptic_json=paths["panoptic_json"],
        sem_seg_root=paths["sem_seg_root"],
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=LABEL_DIVISOR,
    )
    meta.set(**synthetic_metadata(paths["panoptic_json"], split, specs))


def _cityscapes_sem_seg_file(image_file: str) -> str:
    """``leftImg8bit/val/city/x_leftImg8bit.png`` -> ``gtFine/val/city/x_gtFine_labelTrainIds.png``.

    detectron2 0.6 computes this with ``.split(".")[0]``, which breaks on any dot in the dataset
    root (``/data/v1.0/cityscapes``): the path is cut at the first dot.
    """
    head, base = os.path.split(image_file)
    split_dir, city = os.path.split(head)
    img_root, split = os.path.split(split_dir)
    gt_root = os.path.join(os.path.dirname(img_root), "gtFine")
    stem = base[: -len("_leftImg8bit.png")] if base.endswith("_leftImg8bit.png") else base
    return os.path.join(gt_root, split, city, stem + "_gtFine_labelTrainIds.png")


def _wrap_cityscapes(name: str):
    """A loader for ``name`` equal to detectron2 0.6's, with its bugs fixed and clear errors."""
    from detectron2.data.datasets.cityscapes_panoptic import get_cityscapes_panoptic_files

    meta = MetadataCatalog.get(name)

    def _load():
        image_dir, gt_dir, gt_json = meta.image_root, meta.panoptic_root, meta.panoptic_json
        for path in (image_dir, gt_json):
            if not os.path.exists(path):
                raise PanopticDatasetError(
                    f"{name}: {path} does not exist (see cityscapesscripts' createPanopticImgs.py "
                    "and createTrainIdLabelImgs.py)"
                )
        with open(gt_json) as f:
            json_info = json.load(f)
        try:
            files = get_cityscapes_panoptic_files(image_dir, gt_dir, json_info)
        except AssertionError as e:
            raise PanopticDatasetError(f"{name}: {e}") from e
        thing_map = meta.thing_dataset_id_to_contiguous_id
        stuff_map = meta.stuff_dataset_id_to_contiguous_id
        records = []
        for image_file, label_file, segments_info in files:
            segs = []
            for s in segments_info:
                cat = s["category_id"]
                if cat not in thing_map and cat not in stuff_map:
                    raise PanopticDatasetError(
                        f"{gt_json}: segment {s['id']} of {label_file} has unknown category {cat}"
                    )
                isthing = cat in thing_map
                segs.append(
                    dict(s, category_id=(thing_map if isthing else stuff_map)[cat], isthing=isthing)
                )
            stem = os.path.basename(image_file)[: -len("_leftImg8bit.png")]
            record = {
                "file_name": image_file,
                "image_id": "_".join(stem.split("_")[:3]),
                "sem_seg_file_name": _cityscapes_sem_seg_file(image_file),
                "pan_seg_file_name": label_file,
                "segments_info": segs,
            }
            check_record_files(record)
            records.append(record)
        return records

    return _load


def _wrap_coco(name: str, orig_loader):
    """detectron2's COCO panoptic loader with clear errors for missing files."""
    meta = MetadataCatalog.get(name)

    def _load():
        for path in (meta.panoptic_json, meta.image_root, meta.panoptic_root):
            if not os.path.exists(path):
                raise PanopticDatasetError(f"{name}: {path} does not exist")
        try:
            records = _load_coco_format(
                meta.panoptic_json,
                orig_loader,
                meta.thing_dataset_id_to_contiguous_id,
                meta.stuff_dataset_id_to_contiguous_id,
            )
        except AssertionError as e:  # d2 0.6 asserts that the first record's files exist
            raise PanopticDatasetError(f"{name}: file {e} does not exist") from e
        for r in records:
            check_record_files(r)
        return records

    return _load


def fix_builtin_panoptic_datasets() -> List[str]:
    """Re-register detectron2 0.6's builtin panoptic datasets with corrected loaders.

    * ``cityscapes_fine_panoptic_{train,val}``: dot-safe ``sem_seg_file_name``, ``isthing`` on
      every segment, clear errors for missing images / PNGs / label files.
    * ``coco_2017_{train,val}_panoptic`` (standard): clear errors for missing files.

    Metadata is left as detectron2 set it. Returns the names that were re-registered.
    """
    fixed = []
    for name in ("cityscapes_fine_panoptic_train", "cityscapes_fine_panoptic_val"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            DatasetCatalog.register(name, _wrap_cityscapes(name))
            fixed.append(name)
    for name in (
        "coco_2017_train_panoptic",
        "coco_2017_val_panoptic",
        "coco_2017_val_100_panoptic",
    ):
        if name in DatasetCatalog.list():
            loader = DatasetCatalog[name]
            DatasetCatalog.remove(name)
            DatasetCatalog.register(name, _wrap_coco(name, loader))
            fixed.append(name)
    return fixed

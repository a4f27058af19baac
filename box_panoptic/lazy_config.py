# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Helpers for LazyConfig files (``configs/**/*.py``): a dataset's class layout, written into a
model config tree, so that a config never repeats class counts the dataset's metadata knows."""

from detectron2.data import MetadataCatalog

from .data.class_layout import ClassLayout

__all__ = ["dataset_class_layout", "set_class_layout"]


def dataset_class_layout(dataset_name: str) -> ClassLayout:
    """The :class:`ClassLayout` of a registered dataset, from its metadata alone (no files are
    read: usable while a config file loads)."""
    return ClassLayout.from_metadata(MetadataCatalog.get(dataset_name), dataset_name)


def set_class_layout(model, dataset_name: str):
    """Write ``dataset_name``'s class layout into a lazy ``BoxPanoptic`` config (its head,
    semantic head, post-processor and criterion); returns ``model``."""
    layout = dataset_class_layout(dataset_name)
    model.head.num_thing_classes = layout.num_thing_classes
    model.sem_seg_head.num_classes = layout.num_classes
    model.postprocessor.thing_semantic_ids = list(layout.thing_ids)
    model.postprocessor.output_category_ids = list(layout.output_ids)
    model.criterion.thing_semantic_ids = list(layout.thing_ids)
    return model

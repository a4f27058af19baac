# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""detectron2's SemSegEvaluator for panoptic datasets whose semantic classes include things."""

from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator

__all__ = ["PanopticSemSegEvaluator"]


class PanopticSemSegEvaluator(SemSegEvaluator):
    """SemSegEvaluator that maps contiguous ids of things *and* stuff back to dataset ids.

    On a standard panoptic dataset (all classes in one contiguous space, as COCO panoptic and
    Cityscapes panoptic in detectron2), the base class maps contiguous ids through
    ``stuff_dataset_id_to_contiguous_id`` only and fails on the first thing pixel.
    """

    def __init__(self, dataset_name, distributed=True, output_dir=None):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        meta = MetadataCatalog.get(dataset_name)
        both = {
            **getattr(meta, "thing_dataset_id_to_contiguous_id", {}),
            **getattr(meta, "stuff_dataset_id_to_contiguous_id", {}),
        }
        if both:
            self._contiguous_id_to_dataset_id = {v: k for k, v in both.items()}

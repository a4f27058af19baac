# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Data loaders of a registered panoptic dataset as a LazyConfig: a training stream that resumes
exactly, the test loader and the panoptic / semantic / instance evaluators. A dataset config
sets the dataset names, sizes and output folder."""

from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader

from box_panoptic.data import BoxPanopticDatasetMapper
from box_panoptic.data.loading import load_panoptic_dicts
from box_panoptic.data.resumable import build_resumable_train_loader
from box_panoptic.evaluation import build_panoptic_evaluator
from box_panoptic.lazy_config import dataset_class_layout

dataloader = OmegaConf.create()

dataloader.train = L(build_resumable_train_loader)(
    dataset=L(load_panoptic_dicts)(names=["coco_2017_train_panoptic"]),
    mapper=L(BoxPanopticDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=[640, 672, 704, 736, 768, 800],
                max_size=1333,
                sample_style="choice",
            ),
            L(T.RandomFlip)(horizontal=True, vertical=False),
        ],
        image_format="BGR",
        class_layout=L(dataset_class_layout)(dataset_name="${...dataset.names[0]}"),
        bad_sample_policy="raise",
    ),
    total_batch_size=16,
    seed=-1,
    num_workers=4,
    skip_log=None,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(load_panoptic_dicts)(names=["coco_2017_val_panoptic"]),
    mapper=L(BoxPanopticDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
        class_layout=L(dataset_class_layout)(dataset_name="${...dataset.names[0]}"),
    ),
    num_workers=4,
)

dataloader.evaluator = L(build_panoptic_evaluator)(
    dataset_name="${..test.dataset.names[0]}", output_dir="output/inference"
)

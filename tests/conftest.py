# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Shared pytest fixtures: a small synthetic dataset written once per test session."""

import os

import pytest

import box_panoptic  # noqa: F401  (shims + registration)
from box_panoptic.data import (
    SyntheticSpec,
    generate_synthetic_panoptic,
    register_synthetic_panoptic,
)

os.environ.setdefault("OMP_NUM_THREADS", "2")

SMALL_SPEC = dict(
    height=128,
    width=192,
    num_thing_classes=3,
    num_stuff_classes=3,
    max_instances=6,
    min_object_size=8,
)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Root holding synthetic_panoptic/{train,val}, registered as synthetic_panoptic_{train,val}."""
    root = str(tmp_path_factory.mktemp("datasets"))
    generate_synthetic_panoptic(root, "train", SyntheticSpec(num_images=12, seed=0, **SMALL_SPEC))
    generate_synthetic_panoptic(root, "val", SyntheticSpec(num_images=6, seed=1, **SMALL_SPEC))
    register_synthetic_panoptic(root)
    return root

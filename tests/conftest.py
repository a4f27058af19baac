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


@pytest.fixture(scope="session")
def user_root(tmp_path_factory):
    """A user's COCO-panoptic dataset (tests/user_data.py): train (12) and val (4) splits with
    user category ids and no semantic PNGs, plus the separated layout's files. Not registered:
    each test registers it with detectron2's own functions."""
    from .user_data import write_separated_files, write_user_split

    root = str(tmp_path_factory.mktemp("user_data"))
    for split, n, seed in (("train", 12, 3), ("val", 4, 4)):
        paths = write_user_split(root, split, n, seed)
        write_separated_files(paths, split)
    return root

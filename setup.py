#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Packaging for box_panoptic. Install everything with `make install` (tools/install.sh)."""
from setuptools import find_packages, setup

setup(
    name="box_panoptic",
    version="0.1.0",
    description="Real-Time Panoptic Segmentation from Dense Detections (Hou et al., CVPR 2020) "
    "as a detectron2 extension",
    python_requires=">=3.11",
    packages=find_packages(include=["box_panoptic", "box_panoptic.*"]),
    install_requires=[
        # detectron2 0.6 comes from tools/install.sh (pure-Python build or an official install).
        "torch>=1.10",
        "torchvision",
        "numpy",
        "pillow",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "cityscapesscripts",
        "tqdm",
    ],
    entry_points={
        "console_scripts": [
            "box-panoptic-synthetic=box_panoptic.data.synthetic:main",
        ]
    },
)

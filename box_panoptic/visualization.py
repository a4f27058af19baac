# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Pictures of panoptic ground truth and predictions, drawn with detectron2's Visualizer."""

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer

from .data.datasets import rgb2id

__all__ = ["draw_ground_truth", "draw_prediction", "save_grid"]


def draw_ground_truth(record: Dict, metadata) -> np.ndarray:
    """(H, W, 3) uint8 RGB picture of ``record``'s panoptic ground truth over its image."""
    image = read_image(record["file_name"], format="RGB")
    pan = torch.from_numpy(
        rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
    )
    segments = [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
        for s in record["segments_info"]
        if not s.get("iscrowd", 0)
    ]
    crowd_ids = [s["id"] for s in record["segments_info"] if s.get("iscrowd", 0)]
    if crowd_ids:  # crowd regions drawn as void
        pan = torch.where(torch.isin(pan, torch.tensor(crowd_ids)), torch.zeros_like(pan), pan)
    vis = Visualizer(image, metadata)
    return vis.draw_panoptic_seg(pan, segments).get_image()


def draw_prediction(image_rgb: np.ndarray, output: Dict, metadata) -> np.ndarray:
    """(H, W, 3) uint8 RGB picture of a model output's ``panoptic_seg`` over ``image_rgb``."""
    pan, segments = output["panoptic_seg"]
    vis = Visualizer(image_rgb, metadata)
    return vis.draw_panoptic_seg(pan.to("cpu"), segments).get_image()


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: str, titles: Optional[List[str]] = None):
    """Save images (rows x columns, each (H, W, 3) uint8, same size per row) as one PNG."""
    row_imgs = [np.concatenate(list(r), axis=1) for r in rows]
    width = max(r.shape[1] for r in row_imgs)
    row_imgs = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in row_imgs]
    Image.fromarray(np.concatenate(row_imgs, axis=0)).save(path)
    return path

#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Training pixel association (supplementary Fig. S1): which pixels are assigned to which box
target, with full supervision (mask-aware) and weak supervision (smallest box), side by side.

    python tools/visualize_targets.py \
        --config-file configs/Synthetic/box_panoptic_R_18_synthetic.yaml \
        --dataset synthetic_panoptic_train --num 3 --output out/targets.png
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import box_panoptic  # noqa: E402,F401

# isort: split
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.utils.colormap import random_color  # noqa: E402

from box_panoptic.data import BoxPanopticDatasetMapper  # noqa: E402
from box_panoptic.engine import setup_for_tool  # noqa: E402
from box_panoptic.modeling.targets import assign_locations  # noqa: E402
from box_panoptic.visualization import save_grid  # noqa: E402


def association_picture(image_rgb: np.ndarray, boxes: torch.Tensor, masks) -> np.ndarray:
    """Pixels tinted by the box they are assigned to (every pixel, no size ranges)."""
    h, w = image_rgb.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    inf = torch.full((len(pts),), float("inf"))
    owner, _, _ = assign_locations(pts, boxes, masks, -inf, inf)
    owner = owner.view(h, w).numpy()
    colors = np.array(
        [random_color(rgb=True, maximum=255) for _ in range(len(boxes))] or [[0, 0, 0]], np.float32
    )
    out = image_rgb.astype(np.float32) * 0.35
    sel = owner >= 0
    out[sel] = out[sel] + 0.65 * colors[owner[sel]]
    for x0, y0, x1, y1 in boxes.round().long().tolist():  # box outlines
        out[y0:y1, [x0, max(x1 - 1, x0)]] = 255
        out[[y0, max(y1 - 1, y0)], x0:x1] = 255
    return out.clip(0, 255).astype(np.uint8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--dataset", default=None)
    p.add_argument("--num", type=int, default=3)
    p.add_argument("--output", default="output/pixel_association.png")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cfg = setup_for_tool(a.config_file, a.opts + ["INPUT.RANDOM_FLIP", "none"])
    mapper = BoxPanopticDatasetMapper(cfg, True)
    records = DatasetCatalog.get(a.dataset or cfg.DATASETS.TRAIN[0])
    rows = []
    for r in records[: a.num]:
        torch.manual_seed(0)
        d = mapper(r)
        img = d["image"].permute(1, 2, 0).numpy()
        img = img[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else img
        inst = d["instances"]
        full = association_picture(img, inst.gt_boxes.tensor, inst.gt_masks.tensor)
        weak = association_picture(img, inst.gt_boxes.tensor, None)
        rows.append([img, full, weak])
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    print("wrote", save_grid(rows, a.output), "(image | full supervision | weak supervision)")


if __name__ == "__main__":
    main()

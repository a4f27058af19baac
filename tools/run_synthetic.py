#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The main job on the embedded synthetic dataset (README command (a)).

1. Generates the synthetic panoptic dataset under $DETECTRON2_DATASETS (default ./datasets) unless
   it is already there with the same specification.
2. Writes a picture of validation samples with their ground-truth panoptic overlay
   (detectron2's Visualizer) to OUTPUT_DIR/synthetic_ground_truth.png.
"""

import argparse
import json
import os
import sys
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

import box_panoptic  # noqa: E402,F401  (shims + registration)
from box_panoptic.data import SyntheticSpec, generate_synthetic_panoptic  # noqa: E402
from box_panoptic.data.datasets import register_synthetic_panoptic  # noqa: E402
from box_panoptic.data.synthetic import dataset_paths  # noqa: E402
from box_panoptic.visualization import draw_ground_truth, save_grid  # noqa: E402


def ensure_dataset(root: str, specs) -> None:
    """Generate each split unless its JSON records the same spec already."""
    for split, spec in specs.items():
        path = dataset_paths(root, split)["panoptic_json"]
        if os.path.isfile(path):
            with open(path) as f:
                if json.load(f).get("info", {}).get("spec") == asdict(spec):
                    print(f"[synthetic] {split}: up to date ({path})")
                    continue
        generate_synthetic_panoptic(root, split, spec)
        print(f"[synthetic] {split}: wrote {spec.num_images} images ({path})")
    register_synthetic_panoptic(root)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    p.add_argument("--output-dir", default="output/synthetic")
    p.add_argument("--num-train", type=int, default=96)
    p.add_argument("--num-val", type=int, default=24)
    a = p.parse_args(argv)
    os.makedirs(a.output_dir, exist_ok=True)
    specs = {
        "train": SyntheticSpec(num_images=a.num_train, seed=0),
        "val": SyntheticSpec(num_images=a.num_val, seed=1),
    }
    ensure_dataset(a.root, specs)
    records = DatasetCatalog.get("synthetic_panoptic_val")
    meta = MetadataCatalog.get("synthetic_panoptic_val")
    pics = [draw_ground_truth(r, meta) for r in records[:4]]
    out = save_grid([pics[:2], pics[2:4]], os.path.join(a.output_dir, "synthetic_ground_truth.png"))
    print(f"[synthetic] ground-truth picture: {out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The main job on the embedded synthetic dataset (README command (a)).

1. Generates the synthetic panoptic dataset under $DETECTRON2_DATASETS (default ./datasets) unless
   it is already there with the same specification.
2. Writes OUTPUT_DIR/synthetic_ground_truth.png (validation images with their ground truth).
3. Trains configs/Synthetic/box_panoptic_R_18_synthetic.yaml with detectron2's trainer (ETA
   printed every 20 iterations; rerunning resumes from the last checkpoint).
4. Evaluates with detectron2's COCOPanopticEvaluator and SemSegEvaluator (PQ, PQ_th, PQ_st, mIoU).
5. Writes OUTPUT_DIR/synthetic_predictions.png: predictions beside ground truth.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import box_panoptic  # noqa: E402,F401  (first: shims + registration)

# isort: split
import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402

from box_panoptic.data.datasets import register_synthetic_panoptic  # noqa: E402
from box_panoptic.data.synthetic import DEFAULT_SPECS, ensure_synthetic_split  # noqa: E402
from box_panoptic.visualization import draw_ground_truth, draw_prediction, save_grid  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "Synthetic", "box_panoptic_R_18_synthetic.yaml")


def ensure_dataset(root: str, specs) -> None:
    """Generate each split unless its JSON records the same spec already."""
    for split, spec in specs.items():
        path = ensure_synthetic_split(root, split, spec)["panoptic_json"]
        print(f"[synthetic] {split}: {spec.num_images} images ({path})")
    register_synthetic_panoptic(root)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    p.add_argument("--output-dir", default="output/synthetic")
    p.add_argument("--config-file", default=CONFIG, help="e.g. the _weak variant")
    p.add_argument("--num-train", type=int, default=DEFAULT_SPECS["train"].num_images)
    p.add_argument("--num-val", type=int, default=DEFAULT_SPECS["val"].num_images)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    a = p.parse_args(argv)
    start = time.time()
    os.makedirs(a.output_dir, exist_ok=True)
    # what a first use generates (box_panoptic.data.synthetic.DEFAULT_SPECS), with the counts
    specs = {
        "train": replace(DEFAULT_SPECS["train"], num_images=a.num_train),
        "val": replace(DEFAULT_SPECS["val"], num_images=a.num_val),
    }
    ensure_dataset(a.root, specs)
    records = DatasetCatalog.get("synthetic_panoptic_val")
    meta = MetadataCatalog.get("synthetic_panoptic_val")
    gt = [draw_ground_truth(r, meta) for r in records[:4]]
    rows = [gt[i : i + 2] for i in range(0, len(gt), 2)]
    out = save_grid(rows, os.path.join(a.output_dir, "synthetic_ground_truth.png"))
    print(f"[synthetic] ground-truth picture: {out}")

    from box_panoptic.engine import Trainer, setup

    args = argparse.Namespace(
        config_file=a.config_file,
        opts=["OUTPUT_DIR", a.output_dir] + a.opts,
        resume=True,
        eval_only=False,
        num_gpus=1,
        machine_rank=0,
    )
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()
    model = trainer.model.eval()
    # the trainer evaluates after its last iteration; evaluate here only when it did not
    results = getattr(trainer, "_last_eval_results", None) or Trainer.test(cfg, model)
    pq = results["panoptic_seg"]
    summary = {
        "PQ": pq["PQ"],
        "PQ_th": pq["PQ_th"],
        "PQ_st": pq["PQ_st"],
        "mIoU": results.get("sem_seg", {}).get("mIoU"),
        "iterations": cfg.SOLVER.MAX_ITER,
        "wall_time_s": round(time.time() - start, 1),
    }

    rows = []
    DetectionCheckpointer(model).load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    from box_panoptic.data import BoxPanopticDatasetMapper

    mapper = BoxPanopticDatasetMapper(cfg, False)
    with torch.no_grad():
        for r, g in zip(records[:4], gt):
            pred = model([mapper(r)])[0]
            rows.append([draw_prediction(read_image(r["file_name"], "RGB"), pred, meta), g])
    pic = save_grid(rows, os.path.join(a.output_dir, "synthetic_predictions.png"))
    with open(os.path.join(a.output_dir, "synthetic_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"[synthetic] predictions (left) beside ground truth (right): {pic}")
    print(
        "[synthetic] PQ {PQ:.1f}  PQ_th {PQ_th:.1f}  PQ_st {PQ_st:.1f}  mIoU {mIoU:.1f}  "
        "({iterations} iterations, {wall_time_s:.0f} s)".format(**summary)
    )


if __name__ == "__main__":
    main()

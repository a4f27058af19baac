#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""How well has the dense detector learned things? Recall by object size, scores, positives per
level, centerness (box_panoptic.diagnostics), on a labelled dataset.

    python tools/diagnose_detector.py \\
        --config-file configs/Synthetic/box_panoptic_R_18_synthetic.yaml \\
        --dataset synthetic_panoptic_val --opts MODEL.WEIGHTS output/synthetic/model_final.pth
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import box_panoptic  # noqa: E402,F401

# isort: split
from box_panoptic.data import BoxPanopticDatasetMapper  # noqa: E402
from box_panoptic.data.loading import load_panoptic_dicts  # noqa: E402
from box_panoptic.data.user_datasets import (  # noqa: E402
    add_coco_panoptic_argument,
    register_from_args,
)
from box_panoptic.diagnostics import diagnose_detector  # noqa: E402
from box_panoptic.engine import build_eval_model, setup_for_tool  # noqa: E402
from box_panoptic.modeling.losses import assignment_from_config  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--dataset", help="default: the config's first test dataset")
    add_coco_panoptic_argument(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    a = p.parse_args(argv)
    register_from_args(a)
    cfg = setup_for_tool(a.config_file, a.opts)
    model = build_eval_model(cfg)
    # the training mapper (labels, masks) at the test size, without random transforms
    mcfg = cfg.clone()
    mcfg.defrost()
    mcfg.INPUT.MIN_SIZE_TRAIN = (cfg.INPUT.MIN_SIZE_TEST,)
    mcfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST
    mcfg.INPUT.RANDOM_FLIP = "none"
    mcfg.INPUT.CROP.ENABLED = False
    mapper = BoxPanopticDatasetMapper(mcfg, True)
    name = a.dataset or cfg.DATASETS.TEST[0]
    mapped = [mapper(r) for r in load_panoptic_dicts([name])]
    bp = cfg.MODEL.BOX_PANOPTIC
    d = diagnose_detector(model, mapped, bp.DET_SCORE_THRESH, assignment_from_config(cfg))
    print(f"{name}, detection score threshold {bp.DET_SCORE_THRESH}:")
    print(d.report())


if __name__ == "__main__":
    main()

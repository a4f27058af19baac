#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Convert the released TRI checkpoint into a checkpoint that ``MODEL.WEIGHTS`` loads.

    python tools/convert_official_checkpoint.py \
        cvpr_realtime_pano_cityscapes_standalone_no_prefix.pth box_panoptic_cityscapes.pth \
        --config-file configs/Cityscapes-PanopticSegmentation/box_panoptic_R_50_FPN.yaml

With --config-file the result is checked against the model the config builds: no missing, no
unexpected keys, identical shapes; a wrong layout is refused with the keys that did not fit.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from box_panoptic.checkpoint_conversion import convert_official_state_dict  # noqa: E402


def build_expected(config_file: str):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from box_panoptic import add_box_panoptic_config

    cfg = get_cfg()
    add_box_panoptic_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ()
    return build_model(cfg).state_dict()


def convert(src: str, dst: str, config_file: str = None) -> dict:
    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    expected = build_expected(config_file) if config_file else None
    model = convert_official_state_dict(state, expected)
    torch.save(
        {
            "model": model,
            "__author__": "TRI-ML/realtime_panoptic (converted)",
            "matching_heuristics": False,
        },
        dst,
    )
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--config-file", default=None)
    a = p.parse_args(argv)
    model = convert(a.src, a.dst, a.config_file)
    print(f"wrote {len(model)} tensors to {a.dst}")


if __name__ == "__main__":
    main()

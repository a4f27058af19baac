#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""GFLOPs and parameters of a BoxPanoptic config (fvcore counting, multiply-add = 1 flop).

python tools/analyze_model.py --config-file CONFIG --sizes 1024x2048 800x1333
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import box_panoptic  # noqa: E402,F401

# isort: split
from detectron2.modeling import build_model  # noqa: E402

from box_panoptic.analysis import network_gflops  # noqa: E402
from box_panoptic.engine import setup_for_tool  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--sizes", nargs="+", default=["1024x2048", "800x1333"])
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    a = p.parse_args(argv)
    cfg = setup_for_tool(a.config_file, ["MODEL.DEVICE", "cpu"] + a.opts)
    model = build_model(cfg).eval()
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    for size in a.sizes:
        h, w = map(int, size.split("x"))
        print(f"{size}: {network_gflops(model, h, w):.1f} GFLOPs (backbone + heads)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Export BoxPanoptic, mask construction and panoptic assembly included (detectron2's deploy tool
shape): TorchScript (tracing) or ONNX (opset >= 17).

    python tools/export_model.py --config-file CONFIG --format onnx --height 1024 --width 2048 \
        --output out/ --opts MODEL.WEIGHTS model.pth

The artifact takes one (3, H, W) uint8 image in INPUT.FORMAT and returns the panoptic id map
(H, W) int32, the segment table (S, 4) [category, isthing, score, area] (segment k has id k + 1)
and the semantic logits (C, H, W), for any H and W (--height/--width or --sample-image only pick
the tracing input). Fixed at export: batch 1, thresholds, assembly candidates, class layout.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import box_panoptic  # noqa: E402,F401

# isort: split
from detectron2.data.detection_utils import read_image  # noqa: E402

from box_panoptic.data.user_datasets import (  # noqa: E402
    add_coco_panoptic_argument,
    register_from_args,
)
from box_panoptic.engine import build_eval_model, setup_for_tool  # noqa: E402
from box_panoptic.export import export_onnx, export_torchscript  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--sample-image", help="image to trace with (else random, --height/--width)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--opset", type=int, default=17)
    add_coco_panoptic_argument(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    a = p.parse_args(argv)
    register_from_args(a)
    cfg = setup_for_tool(a.config_file, a.opts)
    model = build_eval_model(cfg)
    if a.sample_image:
        sample = torch.as_tensor(read_image(a.sample_image, cfg.INPUT.FORMAT).copy()).permute(
            2, 0, 1
        )
    else:
        sample = torch.randint(0, 255, (3, a.height, a.width), dtype=torch.uint8)
    os.makedirs(a.output, exist_ok=True)
    if a.format == "torchscript":
        path = os.path.join(a.output, "model.ts")
        export_torchscript(model, sample).save(path)
    else:
        path = export_onnx(model, sample, os.path.join(a.output, "model.onnx"), a.opset)
    print(f"exported {a.format} for {sample.shape[1]}x{sample.shape[2]} images to {path}")


if __name__ == "__main__":
    main()

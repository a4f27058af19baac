#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""ImageNet ResNet weights in the torchvision layout -> a backbone checkpoint for MODEL.WEIGHTS.

    python tools/convert_torchvision_resnet.py resnet50-0676ba61.pth R-50-torchvision.pth

The file is torchvision's ``resnet50`` state_dict (downloaded by you; nothing is fetched here).
Keys map exactly as the released model's ``backbone.body.*`` (METHOD.md section 9.4), the fc layer
is dropped. Use with ``MODEL.RESNETS.STRIDE_IN_1X1 False`` and torchvision's normalisation
(RGB, mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375]); the head and FPN start from
their own init.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from box_panoptic.checkpoint_conversion import official_to_box_panoptic_key  # noqa: E402


def convert(state):
    out, unknown = {}, []
    for k, v in state.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        new = official_to_box_panoptic_key("backbone.body." + k)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise ValueError(f"not a torchvision ResNet state_dict; unknown keys: {unknown[:10]}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    a = p.parse_args(argv)
    state = torch.load(a.src, map_location="cpu", weights_only=True)
    out = convert(state)
    torch.save({"model": out, "__author__": "torchvision", "matching_heuristics": False}, a.dst)
    print(f"wrote {len(out)} backbone tensors to {a.dst}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Run an exported artifact (``tools/export_model.py``: TorchScript ``.ts`` or ONNX ``.onnx``)
on images, with no detectron2 model code: print each segment and save the panoptic map.

    python tools/run_exported.py output/export/model.onnx \
        datasets/synthetic_panoptic/val2017/*.jpg \
        --output output/exported_run --min-size 128 --max-size 192

The artifact takes the image as the model's test loader gives it: in ``INPUT.FORMAT`` (BGR for
every config here) and already resized to ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``; this tool
does that resize with ``--min-size`` / ``--max-size`` (detectron2's ResizeShortestEdge rule).
Exits with status 1 if any image could not be read.
"""

import argparse
import os
import sys

import cv2
import numpy as np


def resized(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """ResizeShortestEdge: the short side to ``min_size``, the long side at most ``max_size``."""
    h, w = image.shape[:2]
    if min_size <= 0:
        return image
    scale = min_size / min(h, w)
    if max(h, w) * scale > max_size > 0:
        scale = max_size / max(h, w)
    size = (int(w * scale + 0.5), int(h * scale + 0.5))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def load(path: str):
    """A callable uint8 (3, H, W) -> (panoptic, segments, sem_seg) numpy arrays."""
    if path.endswith(".onnx"):
        import onnxruntime as ort

        session = ort.InferenceSession(path)
        return lambda x: session.run(None, {"image": x})
    import torch
    import torchvision  # noqa: F401  (registers the nms the artifact calls)

    module = torch.jit.load(path)
    return lambda x: [t.numpy() for t in module(torch.from_numpy(x))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("images", nargs="+")
    p.add_argument("--output", required=True, help="folder for <image>_panoptic.png")
    p.add_argument("--format", choices=["BGR", "RGB"], default="BGR", help="INPUT.FORMAT")
    p.add_argument("--min-size", type=int, default=0, help="INPUT.MIN_SIZE_TEST (0: no resize)")
    p.add_argument("--max-size", type=int, default=0, help="INPUT.MAX_SIZE_TEST")
    a = p.parse_args(argv)
    run = load(a.artifact)
    os.makedirs(a.output, exist_ok=True)
    failures = 0
    palette = np.random.default_rng(0).integers(40, 255, (1024, 3), dtype=np.uint8)
    palette[0] = 0
    for path in a.images:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"{path}: cannot be read", file=sys.stderr)
            failures += 1
            continue
        image = resized(bgr if a.format == "BGR" else bgr[:, :, ::-1], a.min_size, a.max_size)
        panoptic, segments, _ = run(np.ascontiguousarray(image.transpose(2, 0, 1)))
        print(f"{path}: {len(segments)} segments")
        for k, (category, isthing, score, area) in enumerate(segments.tolist()):
            kind = f"thing, score {score:.2f}" if isthing else "stuff"
            print(f"  id {k + 1}: category {int(category)} ({kind}), {int(area)} px")
        stem = os.path.splitext(os.path.basename(path))[0]
        cv2.imwrite(os.path.join(a.output, stem + "_panoptic.png"), palette[panoptic % 1024])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

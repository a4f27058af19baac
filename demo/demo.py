#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Panoptic demo in the shape of detectron2's demo: images, a folder, or a video.

    python demo/demo.py --config-file configs/Synthetic/box_panoptic_R_18_synthetic.yaml \
        --input datasets/synthetic_panoptic/val2017/*.jpg --output out/ \
        --opts MODEL.WEIGHTS output/synthetic/model_final.pth
    python demo/demo.py ... --video-input clip.mp4 --output clip_panoptic.mp4

Draws ``Visualizer.draw_panoptic_seg``; ``--levelness`` also saves the levelness argmax map
(the FPN level chosen at each pixel, black = background). An unreadable file is reported by name,
the rest of the inputs are still processed, and the demo exits with status 1. ``--scale 4``
enlarges small images' pictures; ``--confidence-threshold`` sets the detection score threshold;
``--coco-panoptic NAME IMAGES PNGS JSON`` registers a user's dataset for its class names.
"""

import argparse
import glob
import logging
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import box_panoptic  # noqa: E402,F401

# isort: split
import cv2  # noqa: E402

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

from box_panoptic import add_box_panoptic_config  # noqa: E402
from box_panoptic.data.user_datasets import (  # noqa: E402
    add_coco_panoptic_argument,
    register_from_args,
)

logger = logging.getLogger("box_panoptic.demo")

# one colour per levelness channel: background, P3..P7
LEVEL_COLORS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]],
    np.uint8,
)


def setup_cfg(args):
    from detectron2.config import get_cfg

    register_from_args(args)
    cfg = get_cfg()
    add_box_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.confidence_threshold is not None:
        cfg.MODEL.BOX_PANOPTIC.DET_SCORE_THRESH = args.confidence_threshold
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


class PanopticDemo:
    """Runs the model on BGR images and draws its panoptic output (and levelness)."""

    def __init__(self, cfg, scale: float = 1.0):
        self.predictor = DefaultPredictor(cfg)
        self.scale = scale
        name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        self.metadata = MetadataCatalog.get(name)

    def run(self, bgr: np.ndarray):
        out = self.predictor(bgr)
        pan, segments = out["panoptic_seg"]
        vis = Visualizer(bgr[:, :, ::-1], self.metadata, scale=self.scale)
        return out, vis.draw_panoptic_seg(pan.to("cpu"), segments).get_image()

    def levelness(self, bgr: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 picture of argmax levelness (incl. background) at input size."""
        model = self.predictor.model
        h, w = bgr.shape[:2]
        image = self.predictor.aug.get_transform(bgr).apply_image(bgr)
        if self.predictor.input_format == "RGB":
            image = image[:, :, ::-1]
        x = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        with torch.no_grad():
            images = model.preprocess_image([{"image": x}])
            lev = model.network(images)["levelness"][0].argmax(0).cpu().numpy()
        pic = LEVEL_COLORS[lev].repeat(4, 0).repeat(4, 1)[: image.shape[0], : image.shape[1]]
        size = (round(w * self.scale), round(h * self.scale))
        return cv2.resize(pic, size, interpolation=cv2.INTER_NEAREST)


def _inputs(patterns):
    for p in patterns:
        if os.path.isdir(p):
            yield from sorted(os.path.join(p, f) for f in os.listdir(p))
        else:
            yield from (sorted(glob.glob(os.path.expanduser(p))) or [p])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", help="images, folders or glob patterns")
    p.add_argument("--video-input")
    p.add_argument("--output", required=True, help="folder (images) or file (video)")
    p.add_argument("--levelness", action="store_true", help="also save the levelness map")
    p.add_argument(
        "--confidence-threshold",
        type=float,
        help="detections below this score are left out of the panoptic output "
        "(MODEL.BOX_PANOPTIC.DET_SCORE_THRESH; default: the config's)",
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="enlarge the pictures (e.g. 4 for 128 px images)"
    )
    add_coco_panoptic_argument(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    demo = PanopticDemo(setup_cfg(args), args.scale)
    failures = 0
    if args.input:
        os.makedirs(args.output, exist_ok=True)
        for path in _inputs(args.input):
            try:
                bgr = read_image(path, format="BGR")
            except Exception as e:  # noqa: BLE001  (report and carry on with the rest)
                logger.error(f"cannot read {path}: {e}")
                failures += 1
                continue
            _, picture = demo.run(bgr)
            stem = os.path.splitext(os.path.basename(path))[0]
            cv2.imwrite(os.path.join(args.output, stem + "_panoptic.png"), picture[:, :, ::-1])
            if args.levelness:
                cv2.imwrite(
                    os.path.join(args.output, stem + "_levelness.png"),
                    demo.levelness(bgr)[:, :, ::-1],
                )
            logger.info(f"{path}: done")
    if args.video_input:
        cap = cv2.VideoCapture(args.video_input)
        if not cap.isOpened():
            sys.exit(f"cannot open video {args.video_input}")
        fps = cap.get(cv2.CAP_PROP_FPS) or 10
        writer = None
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            _, picture = demo.run(frame)
            if writer is None:
                writer = cv2.VideoWriter(
                    args.output,
                    cv2.VideoWriter_fourcc(*"mp4v"),
                    fps,
                    (picture.shape[1], picture.shape[0]),
                )
            writer.write(picture[:, :, ::-1])
        cap.release()
        if writer is not None:
            writer.release()
    if failures:
        logger.warning(f"{failures} input(s) could not be read")
    return failures


if __name__ == "__main__":
    sys.exit(1 if main() else 0)  # non-zero when any input failed

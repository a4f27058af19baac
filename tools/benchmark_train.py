#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Training seconds per iteration and peak memory: BoxPanoptic beside detectron2's Panoptic FPN,
same R-50 FPN backbone (GN, random init), same batch, same data, same threads, in one run.

    python tools/benchmark_train.py --height 512 --width 1024 --batch 2 --iters 5 --threads 2

The data are synthetic panoptic images (generated into a temporary folder) mapped once by
box_panoptic's mapper; both models get the same batches (instances with masks, semantic labels).
Each model is measured in a fresh subprocess: one warm-up iteration, then the median of --iters
SGD iterations (forward, backward, step).
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.benchmark import run_worker  # noqa: E402


def _batch(h, w, n):
    from box_panoptic.data import SyntheticSpec, generate_synthetic_panoptic
    from box_panoptic.data.class_layout import ClassLayout
    from box_panoptic.data.datasets import load_synthetic_panoptic, synthetic_metadata
    from box_panoptic.data.mapper import BoxPanopticDatasetMapper
    from box_panoptic.data.synthetic import dataset_paths

    root = tempfile.mkdtemp()
    generate_synthetic_panoptic(
        root, "train", SyntheticSpec(num_images=n, height=h, width=w, seed=0, max_instances=12)
    )
    paths = dataset_paths(root, "train")
    records = load_synthetic_panoptic(paths, synthetic_metadata(paths["panoptic_json"]))
    mapper = BoxPanopticDatasetMapper(
        True,
        augmentations=[],
        image_format="BGR",
        class_layout=ClassLayout.from_counts(6, 3, [0, 2]),
    )
    return [mapper(r) for r in records]


def _measure(name, h, w, batch, iters, threads):
    import torch

    import box_panoptic  # noqa: F401

    # isort: split
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from box_panoptic import add_box_panoptic_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = get_cfg()
    if name == "box_panoptic":
        add_box_panoptic_config(cfg)
        cfg.merge_from_file(
            os.path.join(
                ROOT, "configs", "Cityscapes-PanopticSegmentation", "box_panoptic_R_50_FPN.yaml"
            )
        )
        cfg.MODEL.BOX_PANOPTIC.NUM_CLASSES = 6
        cfg.MODEL.BOX_PANOPTIC.NUM_THING_CLASSES = 3
        cfg.MODEL.BOX_PANOPTIC.INSTANCE_ID_RANGE = [0, 2]
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ()
    else:
        cfg.merge_from_file(
            model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
        )
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 6
    cfg.MODEL.DEVICE = "cpu"
    # random init: FrozenBN diverges at once (INSTALL_NOTES), GN in both backbones trains
    cfg.MODEL.RESNETS.NORM = "GN"
    model = build_model(cfg).train()
    data = _batch(h, w, batch)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    times = []
    with EventStorage():
        for i in range(iters + 1):
            t = time.perf_counter()
            loss = sum(model(data).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t)
    return {
        "model": name,
        "s_per_iter": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(_measure(a.worker, a.height, a.width, a.batch, a.iters, a.threads)))
        return
    rows = []
    for name in ("box_panoptic", "panoptic_fpn"):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            name,
            "--height",
            str(a.height),
            "--width",
            str(a.width),
            "--batch",
            str(a.batch),
            "--iters",
            str(a.iters),
            "--threads",
            str(a.threads),
        ]
        rows.append(run_worker(cmd, f"worker {name}"))
    print(f"training, batch {a.batch} of {a.height}x{a.width}, {a.threads} threads, R-50 FPN")
    for r in rows:
        print(
            f"{r['model']:<14} {r['s_per_iter']:7.2f} s/iter   peak RSS {r['peak_rss_mb']:6.0f} MB"
        )
    print(
        f"BoxPanoptic / Panoptic FPN: {rows[0]['s_per_iter'] / rows[1]['s_per_iter']:.2f}x time, "
        f"{rows[0]['peak_rss_mb'] / rows[1]['peak_rss_mb']:.2f}x memory"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Eval latency and peak memory of BoxPanoptic beside detectron2's Panoptic FPN R50, same run.

    python tools/benchmark.py --sizes 512x1024 1024x2048 --runs 3 --threads 2

Each (model, size) is measured in a fresh subprocess (so peak RSS is its own): one warm-up, then
``--runs`` timed runs; medians are printed. BoxPanoptic: the Cityscapes R-50 config with random
weights, its box classifier biased so that every level yields candidates (the post-processing
then handles a full 100 detections: the worst case). Network-only = backbone + heads; end-to-end =
``model(inputs)`` incl. decoding, NMS, mask construction and assembly. Panoptic FPN: detectron2's
model-zoo ``panoptic_fpn_R_50_1x`` (random weights), end-to-end.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _measure(model_name: str, h: int, w: int, runs: int, threads: int) -> dict:
    import torch

    import box_panoptic  # noqa: F401

    # isort: split
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from box_panoptic import add_box_panoptic_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = get_cfg()
    if model_name == "box_panoptic":
        add_box_panoptic_config(cfg)
        cfg.merge_from_file(
            os.path.join(
                ROOT, "configs", "Cityscapes-PanopticSegmentation", "box_panoptic_R_50_FPN.yaml"
            )
        )
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ()
    else:
        cfg.merge_from_file(
            model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
        )
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    if model_name == "box_panoptic":
        with torch.no_grad():
            model.head.box_cls_logits.bias.fill_(2.0)
    image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    inputs = [{"image": image, "height": h, "width": w}]
    e2e, net = [], []
    with torch.no_grad():
        for i in range(runs + 1):
            t = time.perf_counter()
            out = model(inputs)
            dt = time.perf_counter() - t
            if i:
                e2e.append(dt)
            if model_name == "box_panoptic":
                t = time.perf_counter()
                model.network(model.preprocess_image(inputs))
                if i:
                    net.append(time.perf_counter() - t)
    res = {
        "model": model_name,
        "size": f"{h}x{w}",
        "threads": threads,
        "e2e_s": statistics.median(e2e),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if net:
        res["network_s"] = statistics.median(net)
        res["detections"] = len(out[0]["instances"])
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=["box_panoptic", "panoptic_fpn"])
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        h, w = map(int, a.worker[1].split("x"))
        print(json.dumps(_measure(a.worker[0], h, w, a.runs, a.threads)))
        return
    rows = []
    for size in a.sizes:
        for model in a.models:
            out = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--worker",
                    model,
                    size,
                    "--runs",
                    str(a.runs),
                    "--threads",
                    str(a.threads),
                ],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                sys.exit(f"benchmark worker {model} {size} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"{'model':<14}{'size':>11}{'network s':>11}{'end-to-end s':>14}{'post/net':>10}"
        f"{'peak RSS MB':>13}"
    )
    for r in rows:
        net = r.get("network_s")
        post = f"{(r['e2e_s'] - net) / net:.1%}" if net else "-"
        print(
            f"{r['model']:<14}{r['size']:>11}{(f'{net:.2f}' if net else '-'):>11}"
            f"{r['e2e_s']:>14.2f}{post:>10}{r['peak_rss_mb']:>13.0f}"
        )
    for size in a.sizes:
        by = {r["model"]: r for r in rows if r["size"] == size}
        if {"box_panoptic", "panoptic_fpn"} <= set(by):
            ratio = by["box_panoptic"]["e2e_s"] / by["panoptic_fpn"]["e2e_s"]
            mem = by["box_panoptic"]["peak_rss_mb"] / by["panoptic_fpn"]["peak_rss_mb"]
            print(
                f"{size}: end-to-end BoxPanoptic / Panoptic FPN = {ratio:.2f}x, "
                f"peak memory ratio {mem:.2f}x"
            )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Grid search of sigma (MODEL.BOX_PANOPTIC.MASK_THRESH) and the detection score threshold.

    python tools/sigma_search.py --config-file CONFIG --cache out/sigma_cache.pth \
        --sigmas 0.2 0.25 0.3 0.35 0.4 0.45 0.5 --score-threshs 0.2 0.3 --opts MODEL.WEIGHTS m.pth

The network runs once per validation image and its decoded outputs are cached (``--cache``;
reused when the model and config are the same, refused otherwise). Each grid point re-runs only
mask construction and assembly. Prints PQ / PQ_th / PQ_st per point, the best point, and how much
faster the cached sweep is than re-running the network at every grid point.

``--oracle boxes [semantics] [dense]`` replaces those parts of the cached outputs by the ground
truth (box_panoptic.evaluation.oracle): the gaps between runs say what each learned part costs.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import box_panoptic  # noqa: E402,F401

# isort: split
from detectron2.data import (  # noqa: E402
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,  # noqa: E402
)

from box_panoptic.data import BoxPanopticDatasetMapper  # noqa: E402
from box_panoptic.engine import build_eval_model, setup_for_tool  # noqa: E402
from box_panoptic.evaluation.oracle import ORACLE_PARTS  # noqa: E402
from box_panoptic.evaluation.sigma_search import (  # noqa: E402
    build_cache,
    cache_config_text,
    model_fingerprint,
    sweep,
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument(
        "--sigmas", type=float, nargs="*", default=[0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
    )
    p.add_argument("--score-threshs", type=float, nargs="*", default=[0.3])
    p.add_argument("--dataset", default=None, help="default: the first of DATASETS.TEST")
    p.add_argument(
        "--oracle",
        nargs="+",
        default=[],
        choices=ORACLE_PARTS,
        help="replace these parts of the network's outputs by the ground truth: 'boxes' (the "
        "detections), 'semantics' (the semantic logits), 'dense' (the dense box map); e.g. "
        "'--oracle boxes' gives the PQ the masks reach with perfect detections",
    )
    p.add_argument(
        "--per-object",
        action="store_true",
        help="also print, per ground-truth thing size (px) and whether it touches a thing of its "
        "class, how many there are, their mean mask IoU and the share above 0.5",
    )
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    a = p.parse_args(argv)
    if not a.sigmas or not a.score_threshs:
        sys.exit("sigma_search: the grid is empty (give at least one sigma and score threshold)")
    cfg = setup_for_tool(a.config_file, a.opts)
    model = build_eval_model(cfg)
    name = a.dataset or cfg.DATASETS.TEST[0]
    fingerprint = model_fingerprint(model, cache_config_text(cfg, name))
    if os.path.isfile(a.cache):
        cache = torch.load(a.cache, map_location="cpu", weights_only=False)
        print(f"[sigma] using cache {a.cache}")
    else:
        loader = build_detection_test_loader(cfg, name, mapper=BoxPanopticDatasetMapper(cfg, False))
        cache = build_cache(model, loader, fingerprint)
        os.makedirs(os.path.dirname(os.path.abspath(a.cache)), exist_ok=True)
        torch.save(cache, a.cache)
    rows = sweep(
        model,
        cache,
        fingerprint,
        DatasetCatalog.get(name),
        MetadataCatalog.get(name),
        a.sigmas,
        a.score_threshs,
        oracle=a.oracle,
        per_object=a.per_object,
    )
    print(f"{'sigma':>7}{'score':>7}{'PQ':>8}{'PQ_th':>8}{'PQ_st':>8}{'s':>7}")
    for r in rows:
        print(
            f"{r['sigma']:>7.2f}{r['score_thresh']:>7.2f}{r['PQ']:>8.2f}{r['PQ_th']:>8.2f}"
            f"{r['PQ_st']:>8.2f}{r['seconds']:>7.2f}"
        )
    for r in rows if a.per_object else []:
        print(f"objects at sigma {r['sigma']:.2f}, score {r['score_thresh']:.2f}:")
        print(f"{'area (px)':>16}{'touching':>10}{'n':>5}{'mean IoU':>10}{'IoU > 0.5':>11}")
        for o in r["objects"]:
            lo, hi = o["area"]
            span = f"{lo:.0f}-{hi:.0f}" if hi != float("inf") else f">= {lo:.0f}"
            print(
                f"{span:>16}{'yes' if o['touching'] else 'no':>10}{o['n']:>5}"
                f"{o['mean_iou']:>10.3f}{100 * o['matched']:>10.1f}%"
            )
    best = max(rows, key=lambda r: r["PQ"])
    print(f"best: sigma {best['sigma']} score threshold {best['score_thresh']} PQ {best['PQ']:.2f}")
    sweep_s = sum(r["seconds"] for r in rows)
    rerun_s = len(rows) * (cache["network_seconds"] + sweep_s / len(rows))
    print(
        f"cached sweep {sweep_s:.1f} s vs re-running the network per point ~{rerun_s:.1f} s: "
        f"{rerun_s / sweep_s:.1f}x faster ({len(rows)} points, network "
        f"{cache['network_seconds']:.1f} s per pass)"
    )


if __name__ == "__main__":
    main()

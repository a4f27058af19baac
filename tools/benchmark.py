#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Eval latency and peak memory of BoxPanoptic (eager, TorchScript, ONNX Runtime) beside
detectron2's Panoptic FPN R50, in one run with the same threads and inputs.

    python tools/benchmark.py --sizes 512x1024 1024x2048 --runs 3 --threads 2

Each (model, size) is measured in a fresh subprocess (so peak RSS is its own): one warm-up, then
``--runs`` timed runs; medians are printed. BoxPanoptic: the Cityscapes R-50 config with random
weights set up as post-processing's worst case (``_worst_case``: 100 detections whose soft masks
are accepted over most of the image, overlapping); ``box_panoptic_30det`` is the same model kept to
30 detections, a typical scene. Eager BoxPanoptic's forward is timed by
stage within each run: network = preprocessing, backbone and heads; post = decoding, NMS, mask
construction and assembly; end-to-end = both. TorchScript and ONNX Runtime run the artifacts of
box_panoptic.export, exported in a separate process (their peak memory holds no tracing).
Panoptic FPN: detectron2's model-zoo ``panoptic_fpn_R_50_1x`` (random weights), end-to-end.
GFLOPs from fvcore (multiply-add = 1); "of peak" is the network's achieved GFLOP/s over a large
3x3 conv's measured GFLOP/s in the same run (the faster of NCHW and channels-last).
``--stages`` adds one profiled eager run per BoxPanoptic row and prints its post-processing by
named stage (decode, construct, candidates, assembly, instance_masks).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = [
    "box_panoptic",
    "box_panoptic_30det",
    "box_panoptic_torchscript",
    "box_panoptic_onnxruntime",
    "panoptic_fpn",
]
EAGER = ("box_panoptic", "box_panoptic_30det")


def _build(model_name: str):
    import torch

    import box_panoptic  # noqa: F401

    # isort: split
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from box_panoptic import add_box_panoptic_config

    torch.manual_seed(0)
    cfg = get_cfg()
    if model_name.startswith("box_panoptic"):
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
    if model_name.startswith("box_panoptic"):
        _worst_case(model)
    if model_name == "box_panoptic_30det":  # a typical scene: 30 detections, not 100
        model.postprocessor.post_nms_top_n = 30
    return model


def _worst_case(model) -> None:
    """Random weights set so that post-processing does its most: 100 detections, all of one
    class ("car") over a semantic map dominated by that class, and smooth 256-pixel dense boxes
    so that every detection's soft mask is accepted over a wide area, overlapping others."""
    import math

    import torch

    car = 2  # Cityscapes thing index; semantic class 13
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(-10.0)
        model.head.box_cls_logits.bias[car] = 2.0
        model.sem_seg_head.cls_logits.bias.fill_(-5.0)
        model.sem_seg_head.cls_logits.bias[model.postprocessor.thing_semantic_ids[car]] = 5.0
        model.head.bbox_pred.weight.mul_(0.01)
        model.head.bbox_pred.bias.fill_(math.log(128.0))


def _export(model_name: str, h: int, w: int, path: str) -> None:
    """Write the TorchScript or ONNX artifact (run in its own process: the measuring process
    then only loads it, as a deployment would, and its peak memory holds no tracing)."""
    import torch

    from box_panoptic.export import export_onnx, export_torchscript

    model = _build(model_name)
    image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    if model_name == "box_panoptic_torchscript":
        torch.jit.save(export_torchscript(model, image), path)
    else:
        export_onnx(model, image, path)


def _runner(model_name: str, image, threads: int):
    if model_name in ("box_panoptic_torchscript", "box_panoptic_onnxruntime"):
        path = os.path.join(tempfile.mkdtemp(), "model")
        h, w = image.shape[1:]
        cmd = [sys.executable, os.path.abspath(__file__), "--export", model_name, f"{h}x{w}", path]
        subprocess.run(cmd, check=True, capture_output=True)
    if model_name == "box_panoptic_torchscript":
        import torch
        import torchvision  # noqa: F401  (registers the nms op the artifact calls)

        ts = torch.jit.load(path)
        return None, lambda: ts(image)
    if model_name == "box_panoptic_onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, opts)
        return None, lambda: sess.run(None, {"image": image.numpy()})
    model = _build(model_name)
    h, w = image.shape[1:]
    return model, lambda: model([{"image": image, "height": h, "width": w}])


STAGES = ("decode", "construct", "candidates", "assembly", "instance_masks")


def _post_stages(model, image) -> dict:
    """Seconds in each named post-processing stage of one more eager run (torch.profiler over
    the model's ``box_panoptic.<stage>`` ranges), the network run just before it."""
    import torch

    h, w = image.shape[1:]
    inputs = [{"image": image, "height": h, "width": w}]
    images = model.preprocess_image(inputs)
    out = model.network(images)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.inference(out, inputs, images)
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()}
    return {stage: totals.get(f"box_panoptic.{stage}", 0.0) for stage in STAGES}


def _measure(model_name: str, h: int, w: int, runs: int, threads: int, stages: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    model, run = _runner(model_name, image, threads)
    e2e, net, post = [], [], []
    with torch.no_grad():
        for i in range(runs + 1):
            if model_name in EAGER:  # forward() split into its two stages, one run
                inputs = [{"image": image, "height": h, "width": w}]
                t = time.perf_counter()
                images = model.preprocess_image(inputs)
                out = model.network(images)
                t_net = time.perf_counter()
                model.inference(out, inputs, images)
                t_end = time.perf_counter()
                if i:
                    e2e.append(t_end - t)
                    net.append(t_net - t)
                    post.append(t_end - t_net)
                continue
            t = time.perf_counter()
            run()
            if i:
                e2e.append(time.perf_counter() - t)
    res = {
        "model": model_name,
        "size": f"{h}x{w}",
        "e2e_s": statistics.median(e2e),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if net:
        from box_panoptic.analysis import network_gflops

        res["network_s"] = statistics.median(net)
        res["post_s"] = statistics.median(post)
        res["gflops"] = network_gflops(model, h, w)
        if stages:
            with torch.no_grad():
                res["stages"] = _post_stages(model, image)
    return res


def run_worker(cmd, label: str) -> dict:
    """Run a measuring subprocess (its own process: its own peak RSS); its last line of output
    is its JSON result. Exits naming ``label`` with the worker's stderr if it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument(
        "--stages",
        action="store_true",
        help="also print eager BoxPanoptic's post-processing time by stage (one more run)",
    )
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument("--export", nargs=3, metavar=("MODEL", "SIZE", "PATH"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.export:
        h, w = map(int, a.export[1].split("x"))
        _export(a.export[0], h, w, a.export[2])
        return
    if a.worker:
        h, w = map(int, a.worker[1].split("x"))
        print(json.dumps(_measure(a.worker[0], h, w, a.runs, a.threads, a.stages)))
        return
    rows = []
    for size in a.sizes:
        for model in a.models:
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                model,
                size,
                "--runs",
                str(a.runs),
                "--threads",
                str(a.threads),
            ] + (["--stages"] if a.stages else [])
            rows.append(run_worker(cmd, f"benchmark worker {model} {size}"))
    import torch

    from box_panoptic.analysis import conv_throughput_gflops

    torch.set_num_threads(a.threads)
    peak = conv_throughput_gflops()
    print(f"machine: {a.threads} threads, 3x3 conv throughput {peak:.1f} GFLOP/s (multiply-adds)")
    print(
        f"{'model':<26}{'size':>11}{'network s':>11}{'end-to-end s':>14}{'post/e2e':>10}"
        f"{'peak RSS MB':>13}{'GFLOPs':>8}{'of peak':>9}"
    )
    for r in rows:
        net, gf = r.get("network_s"), r.get("gflops")
        post = f"{r['post_s'] / r['e2e_s']:.1%}" if net else "-"
        frac = f"{gf / net / peak:.0%}" if gf else "-"
        print(
            f"{r['model']:<26}{r['size']:>11}{(f'{net:.2f}' if net else '-'):>11}"
            f"{r['e2e_s']:>14.2f}{post:>10}{r['peak_rss_mb']:>13.0f}"
            f"{(f'{gf:.0f}' if gf else '-'):>8}{frac:>9}"
        )
    for size in a.sizes:
        by = {r["model"]: r for r in rows if r["size"] == size}
        ref = by.get("panoptic_fpn")
        for name, r in by.items():
            if ref is not None and name != "panoptic_fpn":
                print(
                    f"{size}: {name} / panoptic_fpn: end-to-end "
                    f"{r['e2e_s'] / ref['e2e_s']:.2f}x, peak memory "
                    f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x"
                )
    for r in rows:
        if "stages" in r:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in r["stages"].items())
            print(f"{r['model']} {r['size']} post-processing stages (s): {parts}")
    print("Panoptic-DeepLab: not importable here (detectron2's projects are not packaged)")


if __name__ == "__main__":
    main()

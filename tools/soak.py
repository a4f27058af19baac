#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Soak test (a script, not a CI test): multi-process gloo training with a multi-worker data
loader on the synthetic dataset, with the memory of the whole process tree sampled over time.

    python tools/soak.py --iters 300 --procs 2 --workers 2

Prints the RSS samples (summed over the process tree: shared pages count once per process),
the growth after warm-up (the first quarter of the run), and fails (exit 1) when training
fails, makes no progress for --hang-seconds, or memory grows by more than --max-growth after
warm-up.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "Synthetic", "box_panoptic_R_18_synthetic.yaml")


def tree_rss_mb(pid: int) -> float:
    """Sum of VmRSS over ``pid`` and all its descendants (Linux /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--hang-seconds", type=float, default=300.0)
    p.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth fraction")
    p.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    p.add_argument("--output-dir", default="output/soak")
    a = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from box_panoptic.data import SyntheticSpec
    from tools.run_synthetic import ensure_dataset

    size = dict(height=128, width=192, min_object_size=8)
    ensure_dataset(
        a.root,
        {
            "train": SyntheticSpec(num_images=96, seed=0, **size),
            "val": SyntheticSpec(num_images=24, seed=1, **size),
        },
    )
    os.makedirs(a.output_dir, exist_ok=True)
    log_path = os.path.join(a.output_dir, "soak_log.txt")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--num-gpus",
        str(a.procs),
        "--config-file",
        CONFIG,
        "SOLVER.MAX_ITER",
        str(a.iters),
        "DATALOADER.NUM_WORKERS",
        str(a.workers),
        "SOLVER.CHECKPOINT_PERIOD",
        str(10 * a.iters),
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        a.output_dir,
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=a.root)
    start = time.time()
    samples = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        last_size, last_change = 0, time.time()
        while proc.poll() is None:
            time.sleep(a.interval)
            rss = tree_rss_mb(proc.pid)
            if rss > 0:  # 0 once the process has exited between poll and sample
                samples.append((time.time() - start, rss))
            size_now = os.path.getsize(log_path)
            if size_now != last_size:
                last_size, last_change = size_now, time.time()
            elif time.time() - last_change > a.hang_seconds:
                proc.kill()
                sys.exit(f"soak: no progress for {a.hang_seconds:.0f} s: killed ({log_path})")
    for t, mb in samples:
        print(f"{t:8.1f} s {mb:9.1f} MB")
    if proc.returncode:
        sys.exit(f"soak: training failed with exit code {proc.returncode} ({log_path})")
    warm = [mb for t, mb in samples if t >= samples[-1][0] / 4] or [samples[-1][1]]
    growth = (max(warm) - warm[0]) / warm[0]
    print(
        f"soak: {a.iters} iterations, {a.procs} processes x {a.workers} loader workers in "
        f"{time.time() - start:.0f} s; RSS after warm-up {warm[0]:.0f} MB, max {max(warm):.0f} MB "
        f"({growth:+.1%})"
    )
    if growth > a.max_growth:
        sys.exit(f"soak: memory grew {growth:.1%} after warm-up (limit {a.max_growth:.0%})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Learning curves of BoxPanoptic and detectron2's Panoptic FPN on the same data.

    python tools/learning_curve.py --dataset synthetic_street --box-iters 3000 --peer-iters 600 \\
        --eval-every 300 --output-dir output/learning_curve/street

Both models get the same backbone (the config's: R-18 GN from scratch for the synthetic config,
unless MODEL.WEIGHTS is given), the same data (native image sizes, random flips), batch, base LR
and warm-up with a constant LR after it (so that equal iterations are comparable), seed and
threads (box_panoptic.engine.peer builds the Panoptic FPN). Every --eval-every iterations both
are checkpointed and evaluated with the same evaluators (PQ, PQ_th, PQ_st, box AP); training
wall time counts the training steps only. The curves go to OUTPUT_DIR/curves.json and
curves.png, and a table is printed against iterations and against training time.

Interrupted, it resumes: each model from its last checkpoint, with the recorded points and
training time kept. ``--reevaluate`` trains nothing and evaluates the recorded points again from
their checkpoints, when only the evaluation has changed.

``--seeds 7 8 9`` trains each model once per seed (OUTPUT_DIR/<model>/seed<S>) and compares the
means over the seeds at each evaluation point: early points of a from-scratch run move by a
factor of two between seeds, so one run says little about equal-iteration learning.
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import box_panoptic  # noqa: E402,F401

# isort: split
import torch  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import HookBase, hooks  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from box_panoptic import add_box_panoptic_config  # noqa: E402
from box_panoptic.atomic_file import atomic_write  # noqa: E402
from box_panoptic.checkpoint import SafeCheckpointer  # noqa: E402
from box_panoptic.engine import Trainer  # noqa: E402
from box_panoptic.engine.peer import PanopticFPNTrainer, panoptic_fpn_config  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "Synthetic", "box_panoptic_R_18_synthetic.yaml")
MODELS = ("box_panoptic", "panoptic_fpn")


class TrainTime(HookBase):
    """Seconds spent in training steps (not evaluation or checkpoints); a checkpointable."""

    def __init__(self):
        self.total = 0.0

    def before_step(self):
        self._t = time.perf_counter()

    def after_step(self):
        self.total += time.perf_counter() - self._t

    def state_dict(self):
        return {"total": self.total}

    def load_state_dict(self, state):
        self.total = float(state["total"])


class CurvePoint(HookBase):
    """Evaluate every ``every`` iterations (and after the last) and record a curve point."""

    def __init__(self, name, every, timer, curves_path, seed=None):
        self.name, self.every, self.timer, self.path = name, every, timer, curves_path
        self.seed = seed  # None: the config's, one run per model

    def _record(self, iteration):
        results = self.trainer.test(self.trainer.cfg, self.trainer.model)
        self.trainer.model.train()
        row = curve_row(results, iteration, self.timer.total, self.seed)
        curves = load_curves(self.path)
        point = (iteration, self.seed)
        curves[self.name] = [
            r for r in curves.get(self.name, []) if (r["iter"], r.get("seed")) != point
        ]
        curves[self.name].append(row)
        curves[self.name].sort(key=lambda r: (r.get("seed", -1), r["iter"]))
        atomic_write(self.path, lambda f: json.dump(curves, f, indent=1), text=True)

    def before_train(self):  # resumed at an evaluation point whose evaluation was interrupted
        rows = load_curves(self.path).get(self.name, [])
        done = {r["iter"] for r in rows if r.get("seed") == self.seed}
        start = self.trainer.start_iter
        if start and start % self.every == 0 and start not in done:
            self._record(start)

    def after_step(self):
        n = self.trainer.iter + 1
        if n % self.every == 0 or n == self.trainer.max_iter:
            self._record(n)


def load_curves(path):
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def mean_curve(rows):
    """The mean over seeds at each iteration that every seed of ``rows`` reached: rows of
    iter, train_s, PQ, PQ_th, PQ_st, AP and "seeds" (how many)."""
    by_seed = {}
    for r in rows:
        by_seed.setdefault(r.get("seed"), {})[r["iter"]] = r
    common = sorted(set.intersection(*(set(v) for v in by_seed.values()))) if by_seed else []
    keys = ("train_s", "PQ", "PQ_th", "PQ_st", "AP")
    return [
        {
            "iter": it,
            **{k: sum(v[it][k] for v in by_seed.values()) / len(by_seed) for k in keys},
            "seeds": len(by_seed),
        }
        for it in common
    ]


def box_config(a, name, iters):
    cfg = get_cfg()
    add_box_panoptic_config(cfg)
    cfg.merge_from_file(a.config_file)
    cfg.merge_from_list(a.opts)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (f"{a.dataset}_train",), (f"{a.dataset}_val",)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (0,), 0  # native sizes
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR = a.batch, a.lr
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = iters, ()
    cfg.SOLVER.CHECKPOINT_PERIOD = a.eval_every
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = os.path.join(a.output_dir, name)
    return cfg


def run_config(a, name, iters, seed=None):
    """The frozen config and trainer class of one run (one model, one seed)."""
    cfg = box_config(a, name, iters)
    if seed is not None:
        cfg.SEED = seed
        cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, f"seed{seed}")
    trainer_cls = Trainer
    if name == "panoptic_fpn":
        cfg, trainer_cls = panoptic_fpn_config(cfg), PanopticFPNTrainer
    cfg.freeze()
    return cfg, trainer_cls


def curve_row(results, iteration, train_s, seed=None):
    """One curve point from a trainer's test results."""
    pq = results["panoptic_seg"]
    row = {
        "iter": iteration,
        "train_s": round(train_s, 1),
        **{k: pq[k] for k in ("PQ", "PQ_th", "PQ_st")},
        "AP": results.get("bbox", {}).get("AP", float("nan")),
    }
    if seed is not None:
        row["seed"] = seed
    return row


def reevaluate(a, name, curves_path, seed=None):
    """Evaluate a finished run's recorded points again from their checkpoints
    (``model_<iter - 1>.pth``) with today's evaluation settings, keeping their training times:
    evaluation changes (thresholds, calibration, the peer's assembly) without retraining."""
    cfg, trainer_cls = run_config(a, name, 1, seed)
    curves = load_curves(curves_path)
    rows = [r for r in curves.get(name, []) if r.get("seed") == seed]
    if not rows:
        sys.exit(
            f"learning_curve: {curves_path} has no {name} points"
            + (f" of seed {seed}" if seed is not None else "")
        )
    model = trainer_cls.build_model(cfg)
    for row in rows:
        path = os.path.join(cfg.OUTPUT_DIR, f"model_{row['iter'] - 1:07d}.pth")
        if not os.path.isfile(path):
            sys.exit(f"learning_curve: no checkpoint {path} to re-evaluate iteration {row['iter']}")
        SafeCheckpointer(model).load(path)
        row.update(curve_row(trainer_cls.test(cfg, model), row["iter"], row["train_s"], seed))
        atomic_write(curves_path, lambda f: json.dump(curves, f, indent=1), text=True)


def train(a, name, iters, curves_path, seed=None):
    cfg, trainer_cls = run_config(a, name, iters, seed)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    timer = TrainTime()
    every = a.eval_every

    class CurveTrainer(trainer_cls):
        def build_hooks(self):
            kept = [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]
            self.checkpointer.add_checkpointable("train_time", timer)
            return [timer] + kept + [CurvePoint(name, every, timer, curves_path, seed)]

    trainer = CurveTrainer(cfg)
    trainer.resume_or_load(resume=True)
    if trainer.start_iter >= iters:
        return
    trainer.train()


def table(curves):
    """One line per recorded point; with several seeds, per seed and then the means; then the
    comparisons at equal iterations and at half of Panoptic FPN's time (on the means)."""
    seeded = any("seed" in r for rows in curves.values() for r in rows)

    def col(seed):  # the seed column, only when some run has a seed of its own
        return f"{seed!s:>5}" if seeded else ""

    lines = [
        f"{'model':<14}{col('seed')}{'iter':>7}{'train s':>9}{'PQ':>7}{'PQ_th':>7}{'PQ_st':>7}"
        f"{'box AP':>8}"
    ]

    def line(name, seed, r):
        return (
            f"{name:<14}{col(seed)}{r['iter']:>7}{r['train_s']:>9.0f}{r['PQ']:>7.1f}"
            f"{r['PQ_th']:>7.1f}{r['PQ_st']:>7.1f}{r['AP']:>8.1f}"
        )

    means = {}
    for name in MODELS:
        rows = curves.get(name, [])
        for r in rows:
            lines.append(line(name, r.get("seed", "cfg"), r))
        means[name] = mean_curve(rows)
        if len({r.get("seed") for r in rows}) > 1:
            lines += [line(name, "mean", r) for r in means[name]]
    box, peer = means["box_panoptic"], means["panoptic_fpn"]
    if box and peer:
        last = peer[-1]
        same = [r for r in box if r["iter"] == last["iter"]]
        if same:
            b = same[0]
            lines.append(
                f"equal iterations ({last['iter']}): BoxPanoptic PQ_th {b['PQ_th']:.1f} = "
                f"{b['PQ_th'] / max(last['PQ_th'], 1e-9):.2f}x Panoptic FPN's {last['PQ_th']:.1f}; "
                f"PQ {b['PQ']:.1f} vs {last['PQ']:.1f}; training time {b['train_s']:.0f} s vs "
                f"{last['train_s']:.0f} s"
            )
        half = [r for r in box if r["train_s"] <= last["train_s"] / 2]
        if half:
            b = half[-1]
            lines.append(
                f"half of Panoptic FPN's training time ({last['train_s'] / 2:.0f} s): "
                f"BoxPanoptic at {b['iter']} iterations ({b['train_s']:.0f} s) PQ {b['PQ']:.1f} / "
                f"PQ_th {b['PQ_th']:.1f} vs Panoptic FPN at {last['iter']} PQ {last['PQ']:.1f} / "
                f"PQ_th {last['PQ_th']:.1f}"
            )
    return "\n".join(lines)


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, color in zip(MODELS, ("tab:blue", "tab:orange")):
        rows = mean_curve(curves.get(name, []))
        if not rows:
            continue
        for ax, x in zip(axes, ("iter", "train_s")):
            xs = [r[x] for r in rows]
            of = f" (mean of {rows[0]['seeds']} seeds)" if rows[0]["seeds"] > 1 else ""
            ax.plot(xs, [r["PQ"] for r in rows], "-o", color=color, label=f"{name} PQ{of}")
            ax.plot(xs, [r["PQ_th"] for r in rows], "--s", color=color, label=f"{name} PQ_th{of}")
    axes[0].set_xlabel("iterations")
    axes[1].set_xlabel("training time (s)")
    for ax in axes:
        ax.set_ylabel("PQ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", default=CONFIG, help="BoxPanoptic's config")
    p.add_argument("--dataset", default="synthetic_street", help="<name>_train / <name>_val")
    p.add_argument("--box-iters", type=int, default=3000)
    p.add_argument("--peer-iters", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="train each model once per seed and compare the means (default: one run, the "
        "config's SEED)",
    )
    p.add_argument("--output-dir", default="output/learning_curve")
    p.add_argument(
        "--reevaluate",
        action="store_true",
        help="train nothing: evaluate the recorded points of --models (and --seeds) again from "
        "their checkpoints with the current evaluation settings, keeping their training times",
    )
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="BoxPanoptic overrides")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.makedirs(a.output_dir, exist_ok=True)
    setup_logger(os.path.join(a.output_dir, "log.txt"))
    setup_logger(os.path.join(a.output_dir, "log.txt"), name="box_panoptic")
    curves_path = os.path.join(a.output_dir, "curves.json")
    iters = {"box_panoptic": a.box_iters, "panoptic_fpn": a.peer_iters}
    for name in a.models:
        for seed in a.seeds or [None]:
            if a.reevaluate:
                reevaluate(a, name, curves_path, seed)
            else:
                train(a, name, iters[name], curves_path, seed)
    curves = load_curves(curves_path)
    print(table(curves))
    print(f"plot: {plot(curves, os.path.join(a.output_dir, 'curves.png'))}")


if __name__ == "__main__":
    main()

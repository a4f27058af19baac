# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""train_net.py as a user's own script would run it, for the tests:

    python tests/train_driver.py [--separated NAME SPLIT ROOT]... [--fail hook|evaluator] \
        -- <train_net.py arguments>

``--separated`` registers ``NAME`` with detectron2's ``register_coco_panoptic_separated`` from a
split written by ``tests/user_data.py``; ``--fail`` raises on purpose in a training hook (after
iteration 2) or in the evaluator; ``--kill-after N`` makes rank 1 of a torchrun job's first
attempt SIGKILL itself once every rank has finished iteration N (its hooks, checkpoint
included). Everything happens at import, so that the processes that
``--num-gpus`` spawns do it too.
"""

import argparse
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

import box_panoptic  # noqa: E402,F401

# isort: split
from user_data import separated_metadata  # noqa: E402

from detectron2.data.datasets import register_coco_panoptic_separated  # noqa: E402
from detectron2.engine import HookBase  # noqa: E402
from detectron2.evaluation import DatasetEvaluator  # noqa: E402
from detectron2.utils import comm  # noqa: E402

import train_net  # noqa: E402
from box_panoptic.data.synthetic import dataset_paths  # noqa: E402
from box_panoptic.engine import Trainer  # noqa: E402

split_at = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
p = argparse.ArgumentParser()
p.add_argument("--separated", nargs=3, action="append", default=[])
p.add_argument("--fail", choices=["hook", "evaluator"])
p.add_argument("--kill-after", type=int)
own_args = p.parse_args(sys.argv[1:split_at])
TRAIN_NET_ARGS = sys.argv[split_at + 1 :]

for name, split, root in own_args.separated:
    paths = dataset_paths(root, split)
    base = os.path.dirname(paths["image_root"])
    register_coco_panoptic_separated(
        name,
        separated_metadata(paths["panoptic_json"]),
        paths["image_root"],
        paths["panoptic_root"],
        paths["panoptic_json"],
        os.path.join(base, f"panoptic_stuff_{split}2017"),
        os.path.join(base, "annotations", f"instances_{split}2017.json"),
    )


class FailingHook(HookBase):
    def after_step(self):
        if self.trainer.iter == 2:
            raise RuntimeError("a hook failed on purpose")


class KillRankOne(HookBase):
    """The first attempt's rank 1 dies by SIGKILL after iteration ``at`` (deterministically: a
    barrier first, so that rank 0 has saved that iteration's checkpoint)."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter != self.at or os.environ.get("TORCHELASTIC_RESTART_COUNT") != "0":
            return
        comm.synchronize()
        if comm.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)


class FailingEvaluator(DatasetEvaluator):
    def process(self, inputs, outputs):
        raise RuntimeError("an evaluator failed on purpose")

    def evaluate(self):
        return {}


if own_args.fail == "hook":
    _build_hooks = Trainer.build_hooks
    Trainer.build_hooks = lambda self: _build_hooks(self) + [FailingHook()]
elif own_args.kill_after is not None:
    _build_hooks = Trainer.build_hooks
    Trainer.build_hooks = lambda self: _build_hooks(self) + [KillRankOne(own_args.kill_after)]
if own_args.fail == "evaluator":
    Trainer.build_evaluator = classmethod(lambda cls, cfg, name, folder=None: FailingEvaluator())

if __name__ == "__main__":
    args = train_net.argument_parser().parse_args(TRAIN_NET_ARGS)
    train_net.launch(
        train_net.main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

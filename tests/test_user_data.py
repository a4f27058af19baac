# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""A user's own data, registered with detectron2's own functions, through train_net.py with
loader workers: training, the end-of-training evaluation (PQ, semantic, box/mask AP),
``--eval-only``, the demo and export. The class layout comes from the metadata."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from box_panoptic.data.synthetic import dataset_paths

from .helpers import ROOT, SYNTHETIC_CONFIG
from .test_builtin_datasets import _write_cityscapes

TINY = [
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "3",
    "DATALOADER.NUM_WORKERS",
    "2",
]


def user_args(root, split="train"):
    paths = dataset_paths(root, split)
    return [
        "--coco-panoptic",
        f"user_{split}",
        paths["image_root"],
        paths["panoptic_root"],
        paths["panoptic_json"],
    ]


def run(cmd, env=None, timeout=600):
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ)
    )
    return out.returncode, out.stdout + out.stderr


def copypaste(log: str, task: str) -> dict:
    """detectron2's 'copypaste' results of ``task`` printed in ``log``."""
    m = re.search(rf"copypaste: Task: {task}\n.*copypaste: (.*)\n.*copypaste: (.*)\n", log)
    assert m, f"no {task} results in the log:\n{log[-3000:]}"
    return dict(zip(m.group(1).split(","), map(float, m.group(2).split(","))))


@pytest.fixture(scope="module")
def trained_user_model(user_root, tmp_path_factory):
    """train_net.py on the user's dataset registered with --coco-panoptic (detectron2's
    register_coco_panoptic), class keys at their defaults, 2 loader workers."""
    out = str(tmp_path_factory.mktemp("user_run"))
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", SYNTHETIC_CONFIG]
    cmd += user_args(user_root, "train") + user_args(user_root, "val")
    cmd += TINY + ["DATASETS.TRAIN", '("user_train",)', "DATASETS.TEST", '("user_val",)']
    cmd += ["OUTPUT_DIR", out]
    rc, log = run(cmd)
    assert rc == 0, log[-4000:]
    return out, cmd, log


def test_user_dataset_trains_and_evaluates(trained_user_model, user_root):
    out, _, log = trained_user_model
    pq = copypaste(log, "panoptic_seg")
    sem = copypaste(log, "sem_seg")
    for task in ("bbox", "segm"):
        assert "AP" in copypaste(log, task)
    assert 0 <= pq["PQ"] <= 100 and 0 <= sem["mIoU"] <= 100
    # the class layout came from the metadata: 6 classes, things at contiguous 1, 3, 5
    state = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu")["model"]
    assert state["sem_seg_head.cls_logits.weight"].shape[0] == 6
    assert state["head.box_cls_logits.weight"].shape[0] == 3
    with open(os.path.join(out, "inference", "panoptic_per_class.json")) as f:
        rows = json.load(f)["per_class"]
    with open(os.path.join(out, "inference", "panoptic_predictions", "predictions.json")) as f:
        predicted = {
            s["category_id"] for a in json.load(f)["annotations"] for s in a["segments_info"]
        }
    # predictions carry the user's dataset ids, things and stuff
    assert predicted <= {7, 3, 12, 20, 21, 40} and predicted & {20, 21, 40}
    assert {r["category_id"] for r in rows} <= {7, 3, 12, 20, 21, 40}
    # the derived instances JSON: one annotation per non-empty thing segment of the val set
    with open(os.path.join(out, "inference", "instances_from_panoptic.json")) as f:
        inst = json.load(f)
    with open(dataset_paths(user_root, "val")["panoptic_json"]) as f:
        pan = json.load(f)
    things = sum(
        s["category_id"] in (7, 3, 12) for a in pan["annotations"] for s in a["segments_info"]
    )
    assert len(inst["annotations"]) == things
    assert {c["id"] for c in inst["categories"]} == {7, 3, 12}


def test_eval_only_reproduces_the_final_evaluation(trained_user_model, user_root):
    out, cmd, log = trained_user_model
    weights = os.path.join(out, "model_final.pth")
    eval_cmd = cmd[:2] + ["--eval-only"] + cmd[2:]
    rc, log2 = run(eval_cmd + ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", out + "_eval"])
    assert rc == 0, log2[-4000:]
    assert copypaste(log2, "panoptic_seg") == copypaste(log, "panoptic_seg")
    assert copypaste(log2, "sem_seg") == copypaste(log, "sem_seg")


def test_demo_and_export_on_the_user_model(trained_user_model, user_root, tmp_path):
    out, _, _ = trained_user_model
    weights = os.path.join(out, "model_final.pth")
    val = dataset_paths(user_root, "val")
    opts = ["MODEL.WEIGHTS", weights, "DATASETS.TRAIN", "()", "DATASETS.TEST", '("user_val",)']
    opts += ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
    demo = [
        sys.executable,
        os.path.join(ROOT, "demo", "demo.py"),
        "--config-file",
        SYNTHETIC_CONFIG,
    ]
    demo += user_args(user_root, "val") + ["--input", val["image_root"], "--scale", "2"]
    rc, log = run(demo + ["--output", str(tmp_path / "demo"), "--opts"] + opts)
    assert rc == 0, log[-3000:]
    pictures = sorted(os.listdir(tmp_path / "demo"))
    assert len(pictures) == 4
    from PIL import Image

    assert Image.open(tmp_path / "demo" / pictures[0]).size == (256, 192)  # --scale 2
    export = [sys.executable, os.path.join(ROOT, "tools", "export_model.py")]
    export += ["--config-file", SYNTHETIC_CONFIG] + user_args(user_root, "val")
    export += ["--format", "torchscript", "--output", str(tmp_path / "ts"), "--height", "96"]
    rc, log = run(export + ["--width", "128", "--opts"] + opts)
    assert rc == 0, log[-3000:]
    runner = [sys.executable, os.path.join(ROOT, "tools", "run_exported.py")]
    runner += [str(tmp_path / "ts" / "model.ts")] + sorted(
        os.path.join(val["image_root"], f) for f in os.listdir(val["image_root"])
    )
    rc, log = run(runner + ["--output", str(tmp_path / "run"), "--min-size", "96"])
    assert rc == 0 and log.count(" segments") == 4, log[-3000:]
    assert len(os.listdir(tmp_path / "run")) == 4
    import torchvision  # noqa: F401  (the artifact's nms)

    artifact = torch.jit.load(str(tmp_path / "ts" / "model.ts"))
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    _, segments, sem_seg = artifact(image)
    assert sem_seg.shape == (6, 96, 128)
    # the segment table reports the dataset's contiguous ids (things at 1, 3, 5)
    things = segments[segments[:, 1] == 1, 0]
    assert set(things.long().tolist()) <= {1, 3, 5}


def test_separated_dataset_trains_and_evaluates(user_root, tmp_path):
    """detectron2's register_coco_panoptic_separated (instances JSON + stuff-only PNGs)."""
    cmd = [sys.executable, os.path.join(ROOT, "tests", "train_driver.py")]
    cmd += ["--separated", "sep_train", "train", user_root]
    cmd += ["--separated", "sep_val", "val", user_root, "--"]
    cmd += ["--config-file", SYNTHETIC_CONFIG] + TINY
    cmd += ["DATASETS.TRAIN", '("sep_train_separated",)']
    cmd += ["DATASETS.TEST", '("sep_val_separated",)', "OUTPUT_DIR", str(tmp_path)]
    rc, log = run(cmd)
    assert rc == 0, log[-4000:]
    assert "PQ" in copypaste(log, "panoptic_seg")
    assert "mIoU" in copypaste(log, "sem_seg")
    assert "AP" in copypaste(log, "segm")
    state = torch.load(tmp_path / "model_final.pth", map_location="cpu")["model"]
    assert state["sem_seg_head.cls_logits.weight"].shape[0] == 6  # 3 things + 3 stuff


def test_cityscapes_layout_trains_and_evaluates(tmp_path):
    """The builtin cityscapes_fine_panoptic_* (things last, 11-18) from a tiny fixture in the
    real layout: PQ, Cityscapes semantic and instance evaluation."""
    root = str(tmp_path / "data")
    _write_cityscapes(root)
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", SYNTHETIC_CONFIG]
    cmd += TINY + ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]
    cmd += ["DATASETS.TRAIN", '("cityscapes_fine_panoptic_val",)']
    cmd += ["DATASETS.TEST", '("cityscapes_fine_panoptic_val",)', "OUTPUT_DIR", str(tmp_path / "o")]
    work = tmp_path / "cwd"
    work.mkdir()
    env = dict(os.environ, DETECTRON2_DATASETS=root)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=work)
    rc, log = out.returncode, out.stdout + out.stderr
    assert rc == 0, log[-4000:]
    assert os.listdir(work) == []  # cityscapesscripts' matches.json kept out of the directory
    assert "PQ" in copypaste(log, "panoptic_seg")
    assert "IoU" in copypaste(log, "sem_seg")  # cityscapesscripts' names
    assert "AP50" in copypaste(log, "segm")
    state = torch.load(tmp_path / "o" / "model_final.pth", map_location="cpu")["model"]
    assert state["sem_seg_head.cls_logits.weight"].shape[0] == 19
    assert state["head.box_cls_logits.weight"].shape[0] == 8

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""demo/demo.py and tools/visualize_targets.py on the synthetic dataset."""

import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from box_panoptic.data.class_layout import class_layout_from_config

from .helpers import SYNTHETIC_CONFIG, get_cfg_from, get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_stuff_class_checkpoint(path) -> int:
    """Writes weights whose semantic head says "the first stuff class" at every pixel.

    Returns that class's dataset contiguous id. A randomly initialised model may predict nothing
    (all void), which draws nothing; these weights make the drawn output deterministic.
    """
    model = get_model(SYNTHETIC_CONFIG)
    layout = class_layout_from_config(get_cfg_from(SYNTHETIC_CONFIG))
    stuff = layout.stuff_ids[0]
    logits = model.sem_seg_head.cls_logits
    with torch.no_grad():
        logits.weight.zero_()
        logits.bias.fill_(-10.0)
        logits.bias[stuff] = 10.0
    torch.save({"model": model.state_dict()}, path)
    return layout.output_ids[stuff]


def test_demo_draws_folder_and_reports_unreadable_file(synthetic_root, tmp_path):
    weights = tmp_path / "one_stuff_class.pth"
    _one_stuff_class_checkpoint(weights)
    src = tmp_path / "in"
    src.mkdir()
    val = os.path.join(synthetic_root, "synthetic_panoptic", "val2017")
    for name in sorted(os.listdir(val))[:2]:
        Image.open(os.path.join(val, name)).save(src / name)
    (src / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root)
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "demo", "demo.py"),
            "--config-file",
            SYNTHETIC_CONFIG,
            "--input",
            str(src),
            "--output",
            str(out),
            "--levelness",
            "--opts",
            "MODEL.WEIGHTS",
            str(weights),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr[-3000:]  # an input failed: the rest done, exit 1
    assert "cannot read" in r.stderr and "broken.jpg" in r.stderr
    made = sorted(os.listdir(out))
    assert made == [
        "val_000000_levelness.png",
        "val_000000_panoptic.png",
        "val_000001_levelness.png",
        "val_000001_panoptic.png",
    ]
    pan = np.asarray(Image.open(out / "val_000000_panoptic.png"))
    orig = np.asarray(Image.open(src / "val_000000.jpg"))
    assert pan.shape == orig.shape and np.abs(pan.astype(int) - orig).mean() > 1  # drawn over
    lev = np.asarray(Image.open(out / "val_000000_levelness.png"))
    assert lev.shape == orig.shape


def test_pixel_association_picture(synthetic_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root)
    path = tmp_path / "assoc.png"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "visualize_targets.py"),
            "--config-file",
            SYNTHETIC_CONFIG,
            "--num",
            "2",
            "--output",
            str(path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 128, 3 * 192, 3)  # 2 rows of image | full | weak at 128x192


def test_main_job_runs_end_to_end_at_tiny_scale(tmp_path):
    """README command (a)'s script: dataset, training, detectron2 evaluation, pictures."""
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "run_synthetic.py"),
            "--root",
            str(tmp_path / "data"),
            "--output-dir",
            str(out),
            "--num-train",
            "4",
            "--num-val",
            "2",
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.IMS_PER_BATCH",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    summary = json.load(open(out / "synthetic_summary.json"))
    assert 0 <= summary["PQ"] <= 100 and summary["iterations"] == 2
    assert (out / "inference" / "panoptic_per_class.csv").is_file()
    gt = np.asarray(Image.open(out / "synthetic_ground_truth.png"))
    pred = np.asarray(Image.open(out / "synthetic_predictions.png"))
    assert gt.shape == (128, 2 * 192, 3)  # the two val images side by side
    assert pred.shape == (2 * 128, 2 * 192, 3)  # a row each: prediction | ground truth

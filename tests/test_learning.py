# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""What makes things learn: the per-instance level assignment, regression in stride units, the
street synthetic style, the detector diagnostics."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from box_panoptic.data.class_layout import ClassLayout
from box_panoptic.data.datasets import load_synthetic_panoptic, synthetic_metadata
from box_panoptic.data.synthetic import dataset_paths, ensure_synthetic_split
from box_panoptic.data.synthetic_street import StreetSpec
from box_panoptic.modeling.inference import level_locations
from box_panoptic.modeling.targets import (
    INF,
    LocationAssignment,
    fcos_targets,
    instance_half_size,
    levelness_targets,
    size_ranges,
)

from .helpers import CITYSCAPES_CONFIG, SYNTHETIC_CONFIG, get_model


def _points(h, w, strides):
    pts = [level_locations(h // s, w // s, s) for s in strides]
    level = torch.cat([torch.full((len(p),), i) for i, p in enumerate(pts)])
    return torch.cat(pts), level


def test_instance_assignment_puts_an_object_on_one_level_with_more_positives():
    points, level = _points(64, 64, (8, 16))
    ranges = size_ranges([16], 2)  # P3 (0, 16], P4 (16, inf)
    box = torch.tensor([[2.0, 2.0, 30.0, 30.0]])  # 28 x 28: half size 14 -> P3
    cls = torch.tensor([0])
    _, _, by_loc = fcos_targets(points, level, ranges, box, cls, None, 1)
    _, ltrb, by_inst = fcos_targets(points, level, ranges, box, cls, None, 1, by_instance=True)
    loc_levels = level[by_loc >= 0].tolist()
    inst_levels = level[by_inst >= 0].tolist()
    # FCOS: every P3 point inside has m = max(ltrb) >= 18 > 16, so the object gets only the
    # 2 x 2 points of P4
    assert loc_levels == [1] * 4
    # per instance: all 4 x 4 P3 points inside the box, none on P4
    assert inst_levels == [0] * 16
    assert (ltrb[by_inst >= 0] > 0).all()
    # the levelness target follows: every owned stride-4 point says "P3" (1)
    pts4 = level_locations(16, 16, 4)
    lev = levelness_targets(pts4, ranges, box, None, by_instance=True)
    inside = (pts4[:, 0] > 2) & (pts4[:, 0] < 30) & (pts4[:, 1] > 2) & (pts4[:, 1] < 30)
    assert set(lev[inside].tolist()) == {1} and set(lev[~inside].tolist()) == {0}
    lev_loc = levelness_targets(pts4, ranges, box, None)
    assert set(lev_loc[inside].tolist()) == {1, 2}  # centre P3, edges P4


def test_instance_area_assignment_puts_a_thin_object_on_the_level_of_its_area():
    points, level = _points(64, 64, (4, 8))
    # levels P2 (0, 8] and P3 (8, inf); a person-like box 4 px wide and 24 px tall:
    # max side / 2 = 12 -> P3, sqrt(area) / 2 = sqrt(96) / 2 = 4.9 -> P2
    box = torch.tensor([[16.5, 8.0, 20.5, 32.0]])
    cls = torch.tensor([0])
    by_side = LocationAssignment.from_settings([8], 2, "instance")
    by_area = LocationAssignment.from_settings([8], 2, "instance_area")
    assert (by_side.by_instance, by_side.instance_scale) == (True, "max_side")
    assert (by_area.by_instance, by_area.instance_scale) == (True, "sqrt_area")
    _, _, side_owner = by_side.fcos(points, level, box, cls, None, 1)
    _, ltrb, area_owner = by_area.fcos(points, level, box, cls, None, 1)
    # P3 points sit at x = 4, 12, 20, ...: x = 20 lies inside the box, at y = 12, 20, 28
    assert level[side_owner >= 0].tolist() == [1] * 3
    # P2 points at x = 2, 6, 10, 14, 18, ...: x = 18, at y = 10, 14, ..., 30 (6 rows)
    assert level[area_owner >= 0].tolist() == [0] * 6
    assert points[area_owner >= 0][:, 0].tolist() == [18.0] * 6
    assert torch.allclose(ltrb[area_owner >= 0][:, [0, 2]], torch.tensor([[1.5, 2.5]]).expand(6, 2))
    # square boxes: the two scales agree
    square = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.0, 5.0, 9.0, 7.0]])
    assert torch.allclose(instance_half_size(square, "max_side")[:1], torch.tensor([5.0]))
    assert torch.allclose(instance_half_size(square, "sqrt_area"), torch.tensor([5.0, 12**0.5 / 2]))
    with pytest.raises(ValueError, match="'perimeter'"):
        instance_half_size(square, "perimeter")
    # levelness follows the same level
    pts4 = level_locations(16, 16, 4)
    lev = by_area.levelness(pts4, box, None)[0]
    assert set(lev[lev > 0].tolist()) == {1}


def test_level_range_overlap_makes_an_object_a_positive_on_two_levels():
    points, level = _points(64, 64, (4, 8, 16))
    # levels P2 (0, 8], P3 (8, 16], P4 (16, inf); widened by 2: P2 (0, 16], P3 (4, 32], P4 (8, inf)
    disjoint = LocationAssignment.from_settings([8, 16], 3, "instance_area")
    overlap = LocationAssignment.from_settings([8, 16], 3, "instance_area", range_overlap=2.0)
    assert overlap.positive_ranges() == ((0.0, 16.0), (4.0, 32.0), (8.0, INF))
    assert overlap.ranges == disjoint.ranges  # the levelness ranges stay disjoint
    # a 20 x 20 box: sqrt area / 2 = 10 -> P3 only without overlap; P2, P3 and P4 with it
    box = torch.tensor([[2.0, 2.0, 22.0, 22.0]])
    cls = torch.tensor([0])
    _, _, one = disjoint.fcos(points, level, box, cls, None, 1)
    labels, ltrb, many = overlap.fcos(points, level, box, cls, None, 1)
    counts = lambda owner: [int(((owner == 0) & (level == i)).sum()) for i in range(3)]  # noqa
    # inside (2, 22): P2 points (2 + 4k) at x, y in {6, 10, 14, 18}, P3 points (4 + 8k) at
    # {4, 12, 20}, P4 points (8 + 16k) at {8}
    assert counts(one) == [0, 9, 0]
    assert counts(many) == [16, 9, 1]
    assert (labels[many == 0] == 0).all() and (ltrb[many == 0] > 0).all()
    # the same positives on the level the object had
    assert torch.equal((one == 0), (many == 0) & (level == 1))
    # levelness: one level per location, the undilated one (P3 = 2)
    pts4 = level_locations(16, 16, 4)
    lev = overlap.levelness(pts4, box, None)[0]
    assert set(lev[lev > 0].tolist()) == {2}
    for bad in (0.5, float("nan")):
        with pytest.raises(ValueError, match="LEVEL_RANGE_OVERLAP must be >= 1"):
            LocationAssignment.from_settings([8], 2, range_overlap=bad)


def test_centre_positive_gives_a_thin_occluding_object_one_location():
    points, level = _points(64, 64, (8, 16))
    assign = LocationAssignment.from_settings([16], 2, "instance")
    centre = LocationAssignment.from_settings([16], 2, "instance", centre_positive=True)
    # a thin diagonal stripe x - y in {3, 4, 5} in front of a large square: the grid points
    # (x, y = 4 mod 8, so x - y = 0 mod 8) are never on the stripe, and all lie on the square
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    stripe = ((xx - yy - 4).abs() <= 1) & (yy >= 2) & (yy < 28)
    masks = torch.stack([stripe, ~stripe])
    boxes = torch.tensor([[5.0, 2.0, 33.0, 28.0], [0.0, 0.0, 64.0, 64.0]])  # P3 and P4 objects
    cls = torch.tensor([0, 0])
    _, _, owner = assign.fcos(points, level, boxes, cls, masks, 1)
    assert (owner == 0).sum() == 0  # the mask rule leaves the stripe without a positive
    _, ltrb, owner_c = centre.fcos(points, level, boxes, cls, masks, 1)
    stripe_pts = (owner_c == 0).nonzero()[:, 0]
    assert len(stripe_pts) == 1
    x, y = points[stripe_pts[0]].tolist()
    assert (x, y) == (20.0, 12.0)  # nearest the box centre (19, 15) in L1, on P3
    assert (ltrb[stripe_pts[0]] > 0).all()
    # the square's centre is on its mask: its positives are unchanged
    assert torch.equal(owner_c == 1, owner == 1)
    with pytest.raises(ValueError, match="'nearest'"):
        LocationAssignment.from_settings([16], 2, "nearest")


def test_positives_on_mask_leave_the_background_inside_a_box_negative():
    points, level = _points(64, 64, (4, 8))
    box_rule = LocationAssignment.from_settings([8], 2, "instance_area")
    on_mask = LocationAssignment.from_settings([8], 2, "instance_area", positives_on_mask=True)
    assert on_mask.positives_on_mask and not box_rule.positives_on_mask
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    # a ring 16 x 16 px (sqrt area / 2 = 8 -> P2) whose 2 px rim is its mask, and a 4 x 4 px
    # object whose mask (1 px) holds no P2 location (x, y = 2 mod 4)
    box_in = lambda x0, y0, x1, y1: (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)  # noqa: E731
    ring = box_in(8, 8, 24, 24) & ~box_in(10, 10, 22, 22)
    dot = box_in(40, 40, 41, 41)
    masks = torch.stack([ring, dot])
    boxes = torch.tensor([[8.0, 8.0, 24.0, 24.0], [39.0, 39.0, 43.0, 43.0]])
    cls = torch.tensor([0, 1])
    _, _, owner_box = box_rule.fcos(points, level, boxes, cls, masks, 2)
    labels, ltrb, owner = on_mask.fcos(points, level, boxes, cls, masks, 2)
    # the box rule: every P2 location inside the ring's box (x, y in {10, 14, 18, 22}); on the
    # mask, only those on its rim: x = 22 or y = 22 (the hole is [10, 22))
    assert (owner_box == 0).sum() == 16
    rim = points[owner == 0]
    assert len(rim) == 7 and ((rim[:, 0] == 22) | (rim[:, 1] == 22)).all()
    assert (labels[(owner_box == 0) & (owner != 0)] == 2).all()  # the hole: background
    # the dot's mask holds no location: it keeps its in-box ones (x, y = 42 on P2)
    assert torch.equal(owner == 1, owner_box == 1) and (owner == 1).sum() == 1
    assert (ltrb[owner == 1] > 0).all()


def test_ignore_off_mask_drops_only_off_mask_positives_from_the_classification_loss():
    from box_panoptic.modeling.losses import BoxPanopticCriterion
    from box_panoptic.modeling.targets import off_mask_positives

    points, level = _points(64, 64, (4, 8))
    rule = LocationAssignment.from_settings([8], 2, "instance_area", ignore_off_mask=True)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    box_in = lambda x0, y0, x1, y1: (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)  # noqa: E731
    ring = box_in(8, 8, 24, 24) & ~box_in(10, 10, 22, 22)  # as above: 16 in-box, 7 on the rim
    dot = box_in(40, 40, 41, 41)  # no P2 location on its mask
    masks = torch.stack([ring, dot])
    boxes = torch.tensor([[8.0, 8.0, 24.0, 24.0], [39.0, 39.0, 43.0, 43.0]])
    labels, _, owner = rule.fcos(points, level, boxes, torch.tensor([0, 1]), masks, 2)
    assert (owner == 0).sum() == 16 and (owner == 1).sum() == 1  # positives as the box rule
    ignored = off_mask_positives(points, owner, masks)
    assert ignored.sum() == 9 and (owner[ignored] == 0).all()  # the ring's hole only
    assert not ((points[ignored, 0] == 22) | (points[ignored, 1] == 22)).any()
    assert not off_mask_positives(points, owner, None).any()  # weak supervision: none
    with pytest.raises(ValueError, match="IGNORE_OFF_MASK"):
        LocationAssignment.from_settings(
            [8], 2, "instance", positives_on_mask=True, ignore_off_mask=True
        )
    # the loss: a classifier wrong only at the ignored locations has the loss of a right one
    k = 2
    crit = BoxPanopticCriterion(
        strides=[4, 8], thing_semantic_ids=[3, 4], assignment=rule, loss_weights={}
    )

    t = SimpleNamespace(  # the BatchTargets fields _detection_losses reads
        labels=labels[None],
        ltrb=torch.zeros(1, len(points), 4) + 2.0,
        points=points,
        crowd=torch.zeros(1, len(points), dtype=torch.bool),
    )
    right = torch.full((1, len(points), k), -8.0)
    right[0, labels < k, labels[labels < k]] = 8.0
    wrong = right.clone()
    wrong[0, ignored] = -right[0, ignored]
    sizes = [(16, 16), (8, 8)]

    def maps(logits, c):
        out, start = [], 0
        for h, w in sizes:
            out.append(logits[:, start : start + h * w].reshape(1, h, w, c).permute(0, 3, 1, 2))
            start += h * w
        return out

    def cls_loss(logits, ignore):
        t.cls_ignored = ignored[None] if ignore else None
        out = {
            "box_cls": maps(logits, k),
            "box_reg": maps(torch.ones(1, len(points), 4), 4),
            "centerness": maps(torch.zeros(1, len(points), 1), 1),
        }
        return crit._detection_losses(out, t)["loss_cls"]

    torch.testing.assert_close(cls_loss(wrong, True), cls_loss(right, True))
    assert cls_loss(wrong, False) > 10 * cls_loss(right, False)


def test_regression_in_stride_units_scales_each_level_by_its_stride():
    pixels = get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS", False).eval()
    strided = get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS", True).eval()
    x = [{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}]
    with torch.no_grad():
        a = pixels.network(pixels.preprocess_image(x))["box_reg"]
        b = strided.network(strided.preprocess_image(x))["box_reg"]
    for s, ra, rb in zip(pixels.strides, a, b):
        torch.testing.assert_close(rb, ra * s)


def test_reg_stride_units_key_builds_the_head():
    model = get_model(SYNTHETIC_CONFIG)  # the synthetic config's recipe (P2-P6)
    assert model.head.log_units == [float(np.log(s)) for s in (4, 8, 16, 32, 64)]
    released = get_model(
        CITYSCAPES_CONFIG, "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64
    )
    assert released.head.log_units == [0.0] * 5  # the released parametrisation by default


def test_street_style_is_deterministic_valid_and_differs_from_shapes(tmp_path):
    spec = StreetSpec(num_images=6, seed=3)
    a = ensure_synthetic_split(str(tmp_path / "a"), "val", spec)
    b = ensure_synthetic_split(str(tmp_path / "b"), "val", spec)
    for name in sorted(os.listdir(a["panoptic_root"])):
        with (
            open(os.path.join(a["panoptic_root"], name), "rb") as f,
            open(os.path.join(b["panoptic_root"], name), "rb") as g,
        ):
            assert f.read() == g.read()
    records = load_synthetic_panoptic(a, synthetic_metadata(a["panoptic_json"]))  # PNG ids checked
    assert len(records) == 6
    with open(a["panoptic_json"]) as f:
        js = json.load(f)
    assert len({(im["height"], im["width"]) for im in js["images"]}) > 1  # several sizes
    meta = synthetic_metadata(a["panoptic_json"])
    layout = ClassLayout.from_metadata(type("M", (), meta)())
    assert layout.thing_ids == (5, 6, 7, 8)  # things last, as in Cityscapes
    areas = [
        s["area"]
        for ann in js["annotations"]
        for s in ann["segments_info"]
        if s["category_id"] in (24, 26, 27, 33)
    ]
    assert np.mean(np.array(areas) < 400) > 0.4  # mostly small objects
    assert a == dataset_paths(str(tmp_path / "a"), "val", "synthetic_street")


def test_learning_curve_tool_resumes_with_its_points(synthetic_root, tmp_path):
    """Two short runs: the second continues from the first's checkpoint, keeps its points and
    its training time, and adds its own."""
    import subprocess
    import sys

    from .helpers import ROOT

    out = tmp_path / "lc"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "learning_curve.py"), "--dataset"]
    cmd += ["synthetic_panoptic", "--models", "box_panoptic", "--eval-every", "2", "--threads", "1"]
    cmd += ["--output-dir", str(out), "--opts", "INPUT.MIN_SIZE_TEST", "0"]
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root)

    def run(iters):
        r = subprocess.run(
            cmd[:2] + ["--box-iters", str(iters)] + cmd[2:],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        with open(out / "curves.json") as f:
            return json.load(f)["box_panoptic"], r.stdout

    first, _ = run(4)
    second, printed = run(6)
    assert [p["iter"] for p in first] == [2, 4]
    assert second[:2] == first and second[2]["iter"] == 6
    assert second[2]["train_s"] > first[1]["train_s"]
    assert "Starting training from iteration 4" in open(out / "log.txt").read()
    assert "box_panoptic        6" in printed and (out / "curves.png").is_file()


def test_learning_curve_tool_reevaluates_its_points_from_their_checkpoints(
    synthetic_root, tmp_path
):
    """--reevaluate trains nothing: each recorded point is evaluated again from its checkpoint
    (the same weights give the same figures), its training time kept; a missing checkpoint is
    named."""
    import subprocess
    import sys

    from .helpers import ROOT

    out = tmp_path / "lc"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "learning_curve.py"), "--dataset"]
    cmd += ["synthetic_panoptic", "--models", "box_panoptic", "--eval-every", "2", "--threads", "1"]
    cmd += ["--box-iters", "4", "--output-dir", str(out), "--opts", "INPUT.MIN_SIZE_TEST", "0"]
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root)

    def run(*extra):
        return subprocess.run(
            cmd[:2] + list(extra) + cmd[2:], env=env, capture_output=True, text=True, timeout=600
        )

    assert run().returncode == 0
    curves = out / "curves.json"
    trained = json.load(open(curves))["box_panoptic"]
    stale = [dict(r, PQ=-1.0, PQ_th=-1.0, PQ_st=-1.0, AP=-1.0) for r in trained]
    json.dump({"box_panoptic": stale}, open(curves, "w"))
    r = run("--reevaluate")
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.load(open(curves))["box_panoptic"]
    assert [p["iter"] for p in again] == [2, 4]
    for a, b in zip(again, trained):
        assert a["train_s"] == b["train_s"]
        for key in ("PQ", "PQ_th", "PQ_st"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), key
    assert "Starting training" not in r.stderr + r.stdout
    os.remove(out / "box_panoptic" / "model_0000001.pth")
    r = run("--reevaluate")
    assert r.returncode != 0 and "model_0000001.pth" in r.stderr


def test_learning_curve_tool_averages_over_seeds(synthetic_root, tmp_path):
    """--seeds: one run per seed in its own folder, each point recorded with its seed, and the
    table's mean rows are the means over the seeds."""
    import subprocess
    import sys

    from .helpers import ROOT

    out = tmp_path / "lc"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "learning_curve.py"), "--dataset"]
    cmd += ["synthetic_panoptic", "--models", "box_panoptic", "--eval-every", "2", "--threads", "1"]
    cmd += ["--box-iters", "2", "--seeds", "7", "8", "--output-dir", str(out)]
    cmd += ["--opts", "INPUT.MIN_SIZE_TEST", "0"]
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "curves.json") as f:
        rows = json.load(f)["box_panoptic"]
    assert [(p["seed"], p["iter"]) for p in rows] == [(7, 2), (8, 2)]
    assert (out / "box_panoptic" / "seed7" / "model_final.pth").is_file()
    assert (out / "box_panoptic" / "seed8" / "model_final.pth").is_file()
    mean = [ln for ln in r.stdout.splitlines() if ln.startswith("box_panoptic   mean")]
    assert len(mean) == 1
    pq = float(mean[0].split()[4])
    assert abs(pq - (rows[0]["PQ"] + rows[1]["PQ"]) / 2) < 0.051


def test_panoptic_fpn_peer_speaks_the_dataset_layout():
    """Panoptic FPN's semantic target (0 = things, stuff 1..S) in, the dataset's ids out."""
    from detectron2.structures import Instances

    from box_panoptic.engine.peer import PanopticFPNOnLayout

    layout = ClassLayout(
        names=("road", "car", "sky", "person"), thing_ids=(1, 3), output_ids=(0, 1, 2, 3)
    )

    class Inner(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, inputs):
            if self.training:
                return {"sem_seg": inputs[0]["sem_seg"]}
            inst = Instances((2, 2), pred_classes=torch.tensor([1, 0]))
            segments = [
                {"id": 1, "category_id": 1, "isthing": True},
                {"id": 2, "category_id": 2, "isthing": False},
            ]
            return [{"panoptic_seg": (None, segments), "instances": inst, "sem_seg": None}]

    peer = PanopticFPNOnLayout(Inner(), layout)
    peer.train()
    sem = torch.tensor([[0, 1], [2, 255]])
    assert peer([{"sem_seg": sem}])["sem_seg"].tolist() == [[1, 0], [2, 255]]
    peer.eval()
    out = peer([{}])[0]
    assert [s["category_id"] for s in out["panoptic_seg"][1]] == [3, 2]  # person, sky
    assert out["instances"].pred_classes.tolist() == [3, 1] and "sem_seg" not in out


def test_checkpoint_refuses_weights_of_the_other_regression_units(tmp_path):
    """A checkpoint records the regression units; loading it into a model built with the other
    ones is refused (the weights would load and mean something else). Older checkpoints, with
    no record, still load."""
    import pytest

    from box_panoptic.checkpoint import SafeCheckpointer, SettingsMismatchError

    strided = get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS", True)
    SafeCheckpointer(strided, save_dir=str(tmp_path)).save("m")
    path = str(tmp_path / "m.pth")
    assert torch.load(path, weights_only=False)["model_settings"] == {
        "MODEL.BOX_PANOPTIC.FPN_STRIDES": [4, 8, 16, 32, 64],
        "MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS": True,
        "MODEL.BOX_PANOPTIC.DENSE_BOX_SOURCE": "finest",
    }
    SafeCheckpointer(get_model(SYNTHETIC_CONFIG)).load(path)  # same units: fine
    pixels = get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS", False)
    with pytest.raises(SettingsMismatchError, match="REG_STRIDE_UNITS = True but the model"):
        SafeCheckpointer(pixels).load(path)
    # weights trained to be read at the finest level everywhere are refused by the levelness map
    with pytest.raises(SettingsMismatchError, match="DENSE_BOX_SOURCE = 'finest' but"):
        SafeCheckpointer(get_model(SYNTHETIC_CONFIG, *LEVELNESS_MAP)).load(path)
    torch.save({"model": strided.state_dict()}, tmp_path / "old.pth")
    SafeCheckpointer(pixels).load(str(tmp_path / "old.pth"))  # no record: loads
    # weights of a head on P3-P7 are refused by a model on P2-P6, naming the levels
    SafeCheckpointer(get_model(SYNTHETIC_CONFIG, *P3_P7), save_dir=str(tmp_path)).save("p3")
    with pytest.raises(SettingsMismatchError, match=r"FPN_STRIDES = \[8, 16, 32, 64, 128\]"):
        SafeCheckpointer(get_model(SYNTHETIC_CONFIG)).load(str(tmp_path / "p3.pth"))
    # a box_panoptic checkpoint from before the strides were recorded was a P3-P7 head: an
    # earlier `make synthetic` output resumed by today's P2-P6 config is refused, not half-loaded
    legacy = torch.load(str(tmp_path / "p3.pth"), weights_only=False)
    del legacy["model_settings"]["MODEL.BOX_PANOPTIC.FPN_STRIDES"]
    del legacy["model_settings"]["MODEL.BOX_PANOPTIC.DENSE_BOX_SOURCE"]
    torch.save(legacy, tmp_path / "legacy.pth")
    with pytest.raises(SettingsMismatchError, match="FPN_STRIDES"):
        SafeCheckpointer(get_model(SYNTHETIC_CONFIG, *LEVELNESS_MAP)).load(
            str(tmp_path / "legacy.pth")
        )
    # ... and it read its dense box map by levelness: refused by today's "finest" config too
    with pytest.raises(SettingsMismatchError, match="DENSE_BOX_SOURCE = 'levelness' but"):
        SafeCheckpointer(get_model(SYNTHETIC_CONFIG, *P3_P7)).load(str(tmp_path / "legacy.pth"))
    SafeCheckpointer(get_model(SYNTHETIC_CONFIG, *P3_P7, *LEVELNESS_MAP)).load(
        str(tmp_path / "legacy.pth")
    )
    # with no record at all (weights only, or saved before any setting was recorded), the FPN
    # levels are read off the parameter names: a P3-P7 head's weights still do not half-load
    torch.save({"model": legacy["model"]}, tmp_path / "bare.pth")
    with pytest.raises(SettingsMismatchError, match="only in the model: backbone.fpn_lateral2"):
        SafeCheckpointer(get_model(SYNTHETIC_CONFIG)).load(str(tmp_path / "bare.pth"))
    SafeCheckpointer(get_model(SYNTHETIC_CONFIG, *P3_P7)).load(str(tmp_path / "bare.pth"))


def test_detector_diagnosis_counts_the_objects_and_their_positives(synthetic_root):
    from detectron2.data import DatasetCatalog

    from box_panoptic.data import BoxPanopticDatasetMapper
    from box_panoptic.diagnostics import diagnose_detector
    from box_panoptic.modeling.losses import assignment_from_config

    from .helpers import IDENTITY_TRAIN_TRANSFORM, get_cfg_from

    cfg = get_cfg_from(SYNTHETIC_CONFIG, *IDENTITY_TRAIN_TRANSFORM)
    mapper = BoxPanopticDatasetMapper(cfg, True)
    mapped = [mapper(r) for r in DatasetCatalog.get("synthetic_panoptic_val")[:3]]
    model = get_model(SYNTHETIC_CONFIG).eval()
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(2.0)  # detections everywhere
    d = diagnose_detector(model, mapped, 0.1, assignment_from_config(cfg))
    assert d.images == 3
    assert d.objects == sum(len(x["instances"]) for x in mapped) > 0
    assert sum(d.positives_per_level) > d.objects - d.objects_without_positive >= 0
    assert sum(v[2] for v in d.found.values()) == d.objects  # every object in one size bucket
    assert "objects without any positive location" in d.report()
    assert "by level: P2 " in d.report() and ", P6 " in d.report()  # the config's P2-P6


def _head_levels(finest: int):
    """Config overrides putting the dense head on P<finest> .. P<finest + 4> (5 levels), the
    backbone giving res<finest> .. res5 and the size-of-interest boundaries at 2^(finest + 1)
    .. 2^(finest + 4) (the synthetic config's scale: [16, 32, 64, 128] on P3-P7)."""
    res = [f"res{i}" for i in range(finest, 6)]
    return (
        "MODEL.RESNETS.OUT_FEATURES",
        res,
        "MODEL.FPN.IN_FEATURES",
        res,
        "MODEL.BOX_PANOPTIC.IN_FEATURES",
        [f"p{i}" for i in range(finest, finest + 5)],
        "MODEL.BOX_PANOPTIC.FPN_STRIDES",
        [2**i for i in range(finest, finest + 5)],
        "MODEL.BOX_PANOPTIC.SIZES_OF_INTEREST",
        [2 ** (i + 1) for i in range(finest, finest + 4)],
    )


P3_P7, P2_P6 = _head_levels(3), _head_levels(2)
# the released dense box map (Eq. 15: levelness picks each cell's level) instead of the synthetic
# config's finest-level map
LEVELNESS_MAP = ("MODEL.BOX_PANOPTIC.DENSE_BOX_SOURCE", "levelness")


def test_head_on_p2_to_p6_keeps_the_stride4_grid_and_trains(synthetic_root):
    from .helpers import synthetic_batch

    model = get_model(SYNTHETIC_CONFIG, *P2_P6)
    assert model.strides == [4, 8, 16, 32, 64]
    assert model.levelness_head.upsample == 1
    # no P7 conv left without gradients (DDP would refuse it): P6 is a max pool
    assert not any("top_block" in k for k, _ in model.backbone.named_parameters())
    x = [{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}]
    model.eval()
    with torch.no_grad():
        out = model.network(model.preprocess_image(x))
    assert tuple(out["box_cls"][0].shape[-2:]) == (16, 24)  # P2: stride 4
    assert tuple(out["sem_seg"].shape[-2:]) == (16, 24)  # the finest level's grid
    assert tuple(out["levelness"].shape[-2:]) == (16, 24)  # always stride 4
    assert out["levelness"].shape[1] == 6
    with torch.no_grad():
        result = model(x)[0]
    assert tuple(result["panoptic_seg"][0].shape) == (64, 96)
    model.train()
    losses = model(synthetic_batch(synthetic_root, 2))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)  # every parameter takes part (DDP-safe)
    # the released layout is untouched: P3-P7, levelness upsampled 2x, P7 conv present
    released = get_model(SYNTHETIC_CONFIG, *P3_P7)
    assert released.strides == [8, 16, 32, 64, 128]
    assert released.levelness_head.upsample == 2
    assert any("top_block.p7" in k for k, _ in released.backbone.named_parameters())


def test_levelness_grid_needs_a_finest_stride_multiple_of_4():
    from box_panoptic.modeling.head import levelness_upsample

    assert [levelness_upsample(s) for s in (4, 8, 16)] == [1, 2, 4]
    with pytest.raises(ValueError, match="stride 4 or a multiple of 4 .*, got 2"):
        levelness_upsample(2)


def test_uniform_box_loss_weighting_counts_edge_locations_alike(synthetic_root):
    from .helpers import synthetic_batch

    batch = synthetic_batch(synthetic_root, 2)
    losses = {}
    for mode in ("centerness", "uniform"):
        model = get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.BOX_LOSS_WEIGHTING", mode).train()
        criterion = model.criterion
        images = model.preprocess_image(batch)
        out = model.network(images)
        losses[mode] = criterion(out, batch, images)
        if mode == "uniform":
            # by hand: the mean GIoU loss over the positives
            from fvcore.nn import giou_loss

            from box_panoptic.modeling.targets import batch_targets

            t = batch_targets(
                batch,
                tuple(images.tensor.shape[-2:]),
                [tuple(c.shape[-2:]) for c in out["box_cls"]],
                criterion.strides,
                tuple(out["levelness"].shape[-2:]),
                criterion.assignment,
                criterion.num_thing_classes,
                images.tensor.device,
                False,
            )
            n = t.labels.shape[0]
            reg = torch.cat([r.permute(0, 2, 3, 1).reshape(n, -1, 4) for r in out["box_reg"]], 1)
            pos = t.labels < criterion.num_thing_classes
            p = t.points[None].expand(n, -1, -1)[pos]

            def box(d):
                return torch.stack(
                    [p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], 1
                )

            want = giou_loss(box(reg[pos]), box(t.ltrb[pos]), reduction="sum") / pos.sum()
            torch.testing.assert_close(losses[mode]["loss_box"], want)
    # same weights, same batch: the other losses agree, the box loss does not
    torch.testing.assert_close(losses["uniform"]["loss_cls"], losses["centerness"]["loss_cls"])
    assert not torch.isclose(losses["uniform"]["loss_box"], losses["centerness"]["loss_box"])
    with pytest.raises(ValueError, match="box_loss_weighting must be one of"):
        get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.BOX_LOSS_WEIGHTING", "edges")


def test_oracles_put_the_ground_truth_on_the_input_grid():
    from box_panoptic.evaluation.oracle import GroundTruthImage, apply_oracles
    from box_panoptic.modeling.postprocess import DecodedImage

    d = DecodedImage(
        boxes=torch.zeros(3, 4),
        scores=torch.full((3,), 0.2),
        classes=torch.zeros(3, dtype=torch.long),
        dense=torch.zeros(4, 16, 16),
        sem_seg_stride8=torch.zeros(4, 8, 8),
        padded_size=(64, 64),
        image_size=(32, 32),  # the input: the original 64 x 64 at half size, then padded
        output_size=(64, 64),
    )
    pan = np.full((64, 64), 1)  # stuff "road" (id 1) everywhere
    pan[20:40, 10:40] = 2  # a car, box (10, 20, 40, 40)
    pan[0:8, 0:8] = 3  # a crowd
    pan[60:, :] = 0  # void
    record = {
        "file_name": "a.jpg",
        "segments_info": [
            {"id": 1, "category_id": 5, "isthing": False, "bbox": [0, 0, 64, 60]},
            {"id": 2, "category_id": 7, "isthing": True, "bbox": [10, 20, 30, 20]},
            {"id": 3, "category_id": 7, "isthing": True, "bbox": [0, 0, 8, 8], "iscrowd": 1},
        ],
    }
    semantic_of = {5: 0, 7: 2}
    gt = GroundTruthImage(pan, record, semantic_of, d.image_size, d.padded_size)
    o = apply_oracles(d, gt, ["boxes"])
    torch.testing.assert_close(o.boxes, torch.tensor([[5.0, 10, 20, 20]]))  # input pixels
    assert o.classes.tolist() == [2] and o.scores.tolist() == [1.0]
    assert o.dense is d.dense and o.sem_seg_stride8 is d.sem_seg_stride8
    o = apply_oracles(d, gt, ["semantics", "dense"])
    assert o.boxes is d.boxes
    sem = o.sem_seg_stride8.argmax(dim=0)  # 8 x 8 cells of 8 input pixels
    assert sem[1, 1].item() == 2  # input (8..16, 8..16) lies on the car (10..20 x 5..20)
    assert sem[0, 3].item() == 0 and sem[6, 6].item() == 0  # road; padding: no label, uniform
    assert torch.allclose(o.sem_seg_stride8[:, 6, 6], o.sem_seg_stride8[0, 6, 6])
    # stride-4 cell (row 3, col 2) has its centre at input (10, 14), on the car
    torch.testing.assert_close(o.dense[:, 3, 2], torch.tensor([5.0, 10, 20, 20]))
    torch.testing.assert_close(o.dense[:, 0, 5], torch.tensor([22.0, 2, 22, 2]))  # a point
    with pytest.raises(ValueError, match="unknown parts"):
        apply_oracles(d, gt, ["masks"])
    # an image without things: no detections, every cell a point, the stuff still labelled
    stuff_only = dict(record, segments_info=record["segments_info"][:1])
    empty = GroundTruthImage(np.where(pan == 1, 1, 0), stuff_only, semantic_of, (32, 32), (64, 64))
    o = apply_oracles(d, empty, ["boxes", "semantics", "dense"])
    assert o.boxes.shape == (0, 4) and o.classes.numel() == 0
    torch.testing.assert_close(o.dense[:, 3, 2], torch.tensor([10.0, 14, 10, 14]))
    assert o.sem_seg_stride8[:, 1, 1].argmax().item() == 0
    del record["segments_info"][1]["bbox"]
    with pytest.raises(ValueError, match="a.jpg has segments without 'bbox'"):
        GroundTruthImage(pan, record, semantic_of, d.image_size, d.padded_size)


def test_dice_mask_loss_weighs_small_and_large_instances_alike():
    from box_panoptic.modeling.losses import dice_loss

    target = torch.zeros(2, 100)
    target[0, :2] = 1  # a 2-cell object
    target[1, :50] = 1  # a 50-cell object
    half = target.clone()
    half[0, 1] = 0  # each prediction finds half of its object
    half[1, 25:50] = 0
    per_instance = [dice_loss(half[i : i + 1], target[i : i + 1]).item() for i in range(2)]
    # Dice: 1 - 2 * (n/2) / (n/2 + n) = 1/3 for both sizes
    assert per_instance == pytest.approx([1 / 3, 1 / 3])
    # mean BCE over all cells: the small object's miss is a sliver of the large one's
    bce = [
        torch.nn.functional.binary_cross_entropy(half[i].clamp(1e-4, 1 - 1e-4), target[i])
        for i in range(2)
    ]
    assert bce[0] < bce[1] / 20
    assert dice_loss(target, target).item() == pytest.approx(0.0)
    # an object that covers no cell of the grid is left out, not counted as a total miss
    both = torch.cat([half[:1], torch.zeros(1, 100)]), torch.cat([target[:1], torch.zeros(1, 100)])
    assert dice_loss(*both).item() == pytest.approx(1 / 3)
    assert dice_loss(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


@pytest.mark.parametrize("semantic_grad", [True, False])
def test_dice_mask_loss_reaches_the_semantic_head_only_if_asked(synthetic_root, semantic_grad):
    from .helpers import synthetic_batch

    model = get_model(
        SYNTHETIC_CONFIG,
        "MODEL.BOX_PANOPTIC.MASK_LOSS",
        True,
        "MODEL.BOX_PANOPTIC.MASK_LOSS_TYPE",
        "dice",
        "MODEL.BOX_PANOPTIC.MASK_LOSS_SEMANTIC_GRAD",
        semantic_grad,
    ).train()
    loss = model(synthetic_batch(synthetic_root, 2))["loss_mask"]
    assert 0 < loss.item() < 1
    loss.backward()
    sem_grad = model.sem_seg_head.cls_logits.weight.grad
    reg_grad = model.head.bbox_pred.weight.grad
    assert reg_grad is not None and reg_grad.abs().sum() > 0  # the dense boxes always learn
    if semantic_grad:
        assert sem_grad is not None and sem_grad.abs().sum() > 0
    else:
        assert sem_grad is None or sem_grad.abs().sum() == 0


def test_panoptic_fpn_peer_anchors_do_not_depend_on_the_head_levels():
    from box_panoptic.engine.peer import object_scale

    from .helpers import get_cfg_from

    p2 = get_cfg_from(SYNTHETIC_CONFIG).MODEL.BOX_PANOPTIC  # P2-P6, [8, 16, 32, 64]
    assert list(p2.FPN_STRIDES) == [4, 8, 16, 32, 64]
    p3 = get_cfg_from(SYNTHETIC_CONFIG, *P3_P7).MODEL.BOX_PANOPTIC
    # both give Panoptic FPN anchors of 8 ... 128 px at these image sizes
    assert object_scale(p2) == object_scale(p3) == 0.25
    released = get_cfg_from(CITYSCAPES_CONFIG).MODEL.BOX_PANOPTIC
    assert object_scale(released) == 1.0  # FCOS's own boundaries: anchors 32 ... 512
    p3.FPN_STRIDES = [16, 32, 64, 128, 256]
    with pytest.raises(ValueError, match="needs a stride-8 level"):
        object_scale(p3)


def _two_object_dense_box_targets():
    """A 32 x 32 input, its stride-4 grid (8 x 8) and BatchTargets for two objects: a small one on
    level 1 (stride 4) and a larger one on level 2 (stride 8), with each cell's owner box."""
    from box_panoptic.modeling.targets import BatchTargets, GroundTruth, level_locations

    h4 = w4 = 8
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 0:12, 0:12] = True  # a small object on level 1
    masks[1, 12:32, 12:32] = True  # a larger one on level 2
    boxes = torch.tensor([[0.0, 0, 12, 12], [12.0, 12, 32, 32]])
    pts4 = level_locations(h4, w4, 4, torch.device("cpu"))
    level = torch.zeros(h4, w4, dtype=torch.long)
    level[0:3, 0:3] = 1
    level[3:, 3:] = 2
    level[7, 7] = 255  # ignored (void)
    # each cell's owner box by hand: cells 0-2 lie on object 0's mask, cells 3-7 on object 1's
    row, col = torch.meshgrid(torch.arange(h4), torch.arange(w4), indexing="ij")
    on0, on1 = ((row < 3) & (col < 3)).flatten(), ((row >= 3) & (col >= 3)).flatten()
    owner_boxes = torch.cat([pts4, pts4], dim=1)  # zero-size boxes off the things
    owner_boxes[on0], owner_boxes[on1] = boxes[0], boxes[1]
    t = BatchTargets(
        points=pts4,
        labels=torch.zeros(1, 0, dtype=torch.long),
        ltrb=torch.zeros(1, 0, 4),
        crowd=torch.zeros(1, 0, dtype=torch.bool),
        sem_seg=torch.zeros(1, 32, 32, dtype=torch.long),
        levelness=level[None],
        owner_boxes4=owner_boxes[None],
        points4=pts4,
        instances=[GroundTruth(boxes, torch.tensor([0, 0]), masks)],
    )
    return t, boxes, level, pts4


def _dense_box_criterion(**kwargs):
    from box_panoptic.modeling.losses import BoxPanopticCriterion
    from box_panoptic.modeling.targets import LocationAssignment

    return BoxPanopticCriterion(
        strides=[4, 8],
        thing_semantic_ids=[1],
        assignment=LocationAssignment.from_settings([16.0], 2, "instance"),
        dense_box_loss=True,
        **kwargs,
    )


def test_dense_box_loss_reads_the_dense_box_map_at_the_true_level():
    """loss_dense_box: GIoU of B(p) at each thing cell's levelness-target level against its
    owner's box, mean over those cells; background and ignored cells do not count."""
    from fvcore.nn import giou_loss

    crit = _dense_box_criterion()
    t, boxes, level, pts4 = _two_object_dense_box_targets()
    h4, w4 = level.shape
    x, y = pts4[:, 0].view(h4, w4), pts4[:, 1].view(h4, w4)
    exact0 = torch.stack([x - 0, y - 0, 12 - x, 12 - y])[None]  # (1, 4, 8, 8) to box 0
    coarse = torch.full((1, 4, 4, 4), 3.0, requires_grad=True)  # level 2: wrong everywhere
    loss = crit._dense_box_loss({"box_reg": [exact0, coarse]}, t)
    # level-1 cells are exact (0); level-2 cells read the resized constant 3 px
    owned2 = (level == 2).flatten()
    p = pts4[owned2]
    pred = torch.cat([p - 3, p + 3], dim=1)
    want = giou_loss(pred, boxes[1].expand_as(pred), reduction="sum") / (9 + owned2.sum())
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert coarse.grad.abs().sum() > 0  # the gradient reaches the coarse level through the resize
    # the model's regressions equal to every cell's owner box at both levels: zero loss
    exact1 = torch.stack([x - 12, y - 12, 32 - x, 32 - y])[None]
    exact1 = torch.nn.functional.avg_pool2d(exact1, 2)  # stride-8 cells' own ltrb (linear field)
    inner = level.clone()
    inner[7, :] = inner[:, 7] = 255  # beyond the last stride-8 centre the resize clamps
    t.levelness = inner[None]
    loss = crit._dense_box_loss({"box_reg": [exact0, exact1]}, t)
    assert loss.item() < 1e-5


def test_dense_box_source_finest_reads_and_trains_the_finest_level_everywhere():
    """DENSE_BOX_SOURCE "finest": B(p) is the finest level's regression at every cell, at
    inference (dense_boxes) and in loss_dense_box, which then trains the finest level on every
    thing cell and leaves coarser levels alone; it is refused without DENSE_BOX_LOSS."""
    from fvcore.nn import giou_loss

    from box_panoptic.modeling.losses import BoxPanopticCriterion
    from box_panoptic.modeling.mask_construction import boxes_from_ltrb, dense_boxes
    from box_panoptic.modeling.postprocess import BoxPanopticPostProcessor
    from box_panoptic.modeling.targets import LocationAssignment

    crit = _dense_box_criterion(dense_box_source="finest")
    t, boxes, level, pts4 = _two_object_dense_box_targets()
    h4, w4 = level.shape
    x, y = pts4[:, 0].view(h4, w4), pts4[:, 1].view(h4, w4)
    owner = t.owner_boxes4[0].t().reshape(4, h4, w4)
    # the finest level exact to every cell's owner box, level 2 garbage: zero loss, no gradient
    # reaches level 2
    exact = torch.stack([x - owner[0], y - owner[1], owner[2] - x, owner[3] - y])[None]
    coarse = torch.full((1, 4, 4, 4), 3.0, requires_grad=True)
    loss = crit._dense_box_loss({"box_reg": [exact.requires_grad_(True), coarse]}, t)
    assert loss.item() < 1e-6
    loss.backward()
    assert exact.grad is not None and coarse.grad is None
    # the finest level exact to object 0 everywhere: the level-2 cells are read there too
    exact0 = torch.stack([x - 0, y - 0, 12 - x, 12 - y])[None].requires_grad_(True)
    loss = crit._dense_box_loss({"box_reg": [exact0, coarse]}, t)
    owned2 = (level == 2).flatten()
    pred = torch.tensor([0.0, 0, 12, 12]).expand(int(owned2.sum()), 4)
    want = giou_loss(pred, boxes[1].expand_as(pred), reduction="sum") / (9 + owned2.sum())
    torch.testing.assert_close(loss, want)
    # inference reads the same map, whatever levelness says
    levelness = torch.randn(1, 3, h4, w4)
    got = dense_boxes([exact0.detach(), coarse.detach()], levelness, "finest")
    torch.testing.assert_close(got, boxes_from_ltrb(exact0.detach(), 4))
    assert not torch.equal(got, dense_boxes([exact0.detach(), coarse.detach()], levelness))
    post = BoxPanopticPostProcessor(
        strides=[4, 8], thing_semantic_ids=[1], dense_box_source="finest"
    )
    out = {"box_reg": [exact0.detach(), coarse.detach()], "levelness": levelness}
    torch.testing.assert_close(post.dense_boxes(out), got)
    with pytest.raises(ValueError, match="needs DENSE_BOX_LOSS True"):
        BoxPanopticCriterion(
            strides=[4, 8],
            thing_semantic_ids=[1],
            assignment=LocationAssignment.from_settings([16.0], 2, "instance"),
            dense_box_source="finest",
        )
    with pytest.raises(ValueError, match="unknown DENSE_BOX_SOURCE 'nearest'"):
        BoxPanopticPostProcessor(strides=[4, 8], thing_semantic_ids=[1], dense_box_source="nearest")


def test_dense_box_loss_instance_norm_weighs_every_instance_alike():
    """DENSE_BOX_LOSS_NORM "instance": loss_dense_box is the mean over instances of each
    instance's mean over its cells (a 9-cell object counts as much as a 24-cell one); "cells"
    is the mean over all thing cells. Instances in different images are told apart even with
    the same box; unknown norms are refused."""
    from fvcore.nn import giou_loss

    from box_panoptic.modeling.losses import _per_instance_weights

    t, boxes, level, pts4 = _two_object_dense_box_targets()
    h4, w4 = level.shape
    x, y = pts4[:, 0].view(h4, w4), pts4[:, 1].view(h4, w4)
    exact0 = torch.stack([x - 0, y - 0, 12 - x, 12 - y])[None]  # right for object 0 only
    out = {"box_reg": [exact0, torch.zeros(1, 4, 4, 4)]}
    owned1 = (level == 2).flatten()
    pred = torch.tensor([0.0, 0, 12, 12]).expand(int(owned1.sum()), 4)
    per_cell1 = giou_loss(pred, boxes[1].expand_as(pred), reduction="none")  # object 1's cells
    assert per_cell1.min() > 0.1
    cells = _dense_box_criterion(dense_box_source="finest")._dense_box_loss(out, t)
    torch.testing.assert_close(cells, per_cell1.sum() / (9 + owned1.sum()))
    crit = _dense_box_criterion(dense_box_source="finest", dense_box_loss_norm="instance")
    inst = crit._dense_box_loss(out, t)
    torch.testing.assert_close(inst, (0.0 + per_cell1.mean()) / 2)
    # the weights: 1/9 on object 0's cells, 1/24 on object 1's, 0 elsewhere; two images with the
    # same boxes are four instances
    owned = ((level >= 1) & (level <= 2)).flatten()[None]
    w = _per_instance_weights(owned.expand(2, -1), t.owner_boxes4.expand(2, -1, -1))
    on0 = (level == 1).flatten()
    torch.testing.assert_close(w[:, on0], torch.full((2, 9), 1 / 9))
    torch.testing.assert_close(w[:, owned1], torch.full((2, int(owned1.sum())), 1 / 24))
    assert w[:, ~owned[0]].abs().sum() == 0
    torch.testing.assert_close(w.sum(), torch.tensor(4.0))
    with pytest.raises(ValueError, match="dense_box_loss_norm"):
        _dense_box_criterion(dense_box_loss_norm="pixels")


def test_instance_semantic_loss_is_the_mean_over_instances_of_the_box_mean_ce():
    """loss_sem_instance: each thing's box contributes the mean CE of its labelled pixels (pixel
    j covers [j, j + 1)), the instances alike whatever their size; ignored pixels and pixels in
    no box give no gradient; an image without instances adds nothing."""
    import torch.nn.functional as F

    from box_panoptic.modeling.losses import BoxPanopticCriterion, instance_semantic_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 10, 12, requires_grad=True)
    target = torch.randint(0, 3, (2, 10, 12))
    target[0, 0, :] = 255
    boxes = [torch.tensor([[0.0, 0, 4, 3], [2.5, 1, 12, 10]]), torch.zeros(0, 4)]
    got = instance_semantic_loss(logits, target, boxes)
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    # the reference, pixel by pixel: box 0 holds columns 0-3 of rows 1-2 (row 0 is ignored),
    # box 1 (from x 2.5: centre 2.5 is in) columns 2-11 of rows 1-9
    in0 = torch.zeros(10, 12, dtype=torch.bool)
    in0[1:3, 0:4] = True
    in1 = torch.zeros(10, 12, dtype=torch.bool)
    in1[1:10, 2:12] = True
    want = (ce[0][in0].mean() + ce[0][in1].mean()) / 2
    torch.testing.assert_close(got, want)
    got.backward()
    grad = logits.grad.abs().sum(dim=1)
    assert grad[0][in0 | in1].min() > 0
    assert grad[0][~(in0 | in1)].abs().sum() == 0 and grad[1].abs().sum() == 0
    assert "loss_sem_instance" in BoxPanopticCriterion.LOSS_NAMES
    none = instance_semantic_loss(logits, target, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert none.item() == 0 and none.requires_grad

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Training: target assignment on hand-built scenes, losses, mapper, a short run, resume."""

import json
import math
import subprocess

import torch

from detectron2.data import DatasetCatalog
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage

from box_panoptic.data import BoxPanopticDatasetMapper
from box_panoptic.modeling.targets import (
    assign_locations,
    centerness_targets,
    levelness_and_owner_boxes,
    levelness_targets,
    size_ranges,
)

from .helpers import (
    SYNTHETIC_CONFIG,
    get_cfg_from,
    get_model,
    sgd_with_warmup,
    synthetic_batch,
    train_net_command,
)


def test_assignment_mask_aware_smallest_box_and_ranges():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 30.0, 30.0]])
    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[0, :, :20] = True  # big instance: left half of its box
    masks[1, 10:30, 20:30] = True  # small instance: right part of its box
    pts = torch.tensor([[15.0, 15.0], [25.0, 15.0], [35.0, 35.0], [50.0, 5.0], [12.0, 25.0]])
    inf = torch.full((5,), math.inf)
    owner, ltrb, m = assign_locations(pts, boxes, masks, -inf, inf)
    # (15,15) on mask 0 although inside the smaller box 1; (25,15) on mask 1; (35,35) inside box 0
    # only and on no mask -> smallest box containing it (0); (50,5) outside; (12,25) on mask 0
    assert owner.tolist() == [0, 1, 0, -1, 0]
    assert ltrb[1].tolist() == [15.0, 5.0, 5.0, 15.0] and m[1] == 15.0
    weak, _, _ = assign_locations(pts, boxes, None, -inf, inf)
    assert weak.tolist() == [1, 1, 0, -1, 1]  # weak: smallest box wins wherever boxes overlap
    # size ranges: m = max(ltrb) must lie in (lo, hi]
    lo, hi = torch.zeros(5), torch.full((5,), 20.0)
    owner_r, _, _ = assign_locations(pts, boxes, masks, lo, hi)
    assert owner_r.tolist() == [-1, 1, -1, -1, -1]  # m(15,15 -> box 0) = 25 > 20


def test_levelness_targets_and_centerness():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [20.0, 0.0, 100.0, 80.0]])
    masks = torch.zeros(2, 80, 100, dtype=torch.bool)
    masks[0, :16, :16] = True
    masks[1, :80, 20:100] = True
    ranges = size_ranges([8, 16, 32, 64], 5)
    pts = torch.tensor([[2.0, 2.0], [10.0, 10.0], [60.0, 40.0], [22.0, 2.0], [18.0, 70.0]])
    ignore = torch.tensor([False, False, False, False, True])
    t = levelness_targets(pts, ranges, boxes, masks, ignore)
    # m: 14 -> P4 (8,16]; 10 -> P4; 40 -> P6 (32,64]; 78 -> P7 (>64); ignored -> 255
    assert t.tolist() == [2, 2, 4, 5, 255]
    # the owners' boxes; (18, 70) lies in no box and on no mask: a zero-size box at the point
    t2, owner_boxes = levelness_and_owner_boxes(pts, ranges, boxes, masks, ignore)
    assert t2.tolist() == t.tolist()
    want = torch.cat([boxes[[0, 0, 1, 1]], torch.tensor([[18.0, 70.0, 18.0, 70.0]])])
    torch.testing.assert_close(owner_boxes, want)
    ctr = centerness_targets(torch.tensor([[2.0, 2.0, 14.0, 14.0], [5.0, 5.0, 5.0, 5.0]]))
    torch.testing.assert_close(ctr, torch.tensor([2 / 14, 1.0]))


def _synthetic_inputs(n=2):
    cfg = get_cfg_from(SYNTHETIC_CONFIG)
    mapper = BoxPanopticDatasetMapper(cfg, True)
    return [mapper(r) for r in DatasetCatalog.get("synthetic_panoptic_train")[:n]]


def test_mapper_outputs_agree_with_png(synthetic_root):
    (d,) = _synthetic_inputs(1)
    inst = d["instances"]
    assert d["image"].dtype == torch.uint8 and d["image"].shape[0] == 3
    h, w = d["image"].shape[1:]
    assert tuple(d["sem_seg"].shape) == (h, w)
    m = inst.gt_masks.tensor
    assert len(inst) == m.shape[0] and set(inst.gt_classes.tolist()) <= {0, 1, 2}
    for k in range(len(inst)):
        assert (d["sem_seg"][m[k]] == inst.gt_classes[k]).all()  # things first: label == class
        ys, xs = torch.nonzero(m[k], as_tuple=True)
        assert inst.gt_boxes.tensor[k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_losses_are_finite_without_instances_and_hand_checked_normalisation():
    model = get_model().train()
    ins = Instances((64, 96))
    ins.gt_masks = BitMasks(torch.zeros(0, 64, 96, dtype=torch.bool))
    ins.gt_boxes = ins.gt_masks.get_bounding_boxes()
    ins.gt_classes = torch.zeros(0, dtype=torch.long)
    sem = torch.full((64, 96), 4)
    x = [
        {
            "image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8),
            "instances": ins,
            "sem_seg": sem,
        }
    ]
    with EventStorage():
        losses = model(x)
        total = sum(losses.values())
        total.backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"] == 0 and losses["loss_ctr"] == 0
    # no positives: focal loss is a plain sum over all negatives (normaliser clamps to 1)
    with torch.no_grad():
        model.eval()
        out = model.network(model.preprocess_image(x))
    logits = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, 3) for c in out["box_cls"]])
    p = logits.sigmoid()
    focal = (0.75 * p**2 * -torch.log(1 - p)).sum()
    torch.testing.assert_close(losses["loss_cls"].detach(), focal, rtol=1e-4, atol=1e-4)
    # all levelness targets are background (0)
    lev = torch.nn.functional.cross_entropy(
        out["levelness"], torch.zeros_like(out["levelness"][:, 0], dtype=torch.long)
    )
    torch.testing.assert_close(losses["loss_levelness"].detach(), lev, rtol=1e-4, atol=1e-4)


def test_every_worker_joins_the_same_reductions_with_or_without_positives(synthetic_root):
    """A collective skipped on one worker aborts DDP (gloo: "collective mismatch"): the criterion
    calls reduce_mean the same number of times for an image without instances."""
    from unittest import mock

    from box_panoptic.modeling import losses as losses_module

    model = get_model().train()
    empty = Instances((64, 96))
    empty.gt_masks = BitMasks(torch.zeros(0, 64, 96, dtype=torch.bool))
    empty.gt_boxes = empty.gt_masks.get_bounding_boxes()
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
    calls = []

    def counting(x):
        calls.append(float(x))
        return x

    with mock.patch.object(losses_module, "reduce_mean", counting), EventStorage():
        model([{"image": image, "instances": empty, "sem_seg": torch.full((64, 96), 4)}])
        without = len(calls)
        calls.clear()
        model(_synthetic_inputs(1))
        with_positives = len(calls)
    # the detection losses' two, loss_dense_box's and loss_sem_instance's (the synthetic config
    # has both on)
    assert model.criterion.dense_box_loss and model.criterion.sem_instance_loss
    assert without == with_positives == 4


def test_training_reduces_loss(synthetic_root):
    torch.manual_seed(0)
    model = get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.MASK_LOSS", True).train()
    data = synthetic_batch(synthetic_root, 4)  # no random flip: the same batch every run
    opt, warmup = sgd_with_warmup(model)  # LR 0.005: see there
    totals = []
    with EventStorage():
        for _ in range(25):
            losses = model(data)
            assert set(losses) >= {
                "loss_cls",
                "loss_box",
                "loss_ctr",
                "loss_sem_seg",
                "loss_levelness",
                "loss_mask",
            }
            total = sum(losses.values())
            opt.zero_grad()
            total.backward()
            opt.step()
            warmup.step()
            totals.append(total.item())
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-5:]) / 5 < 0.8 * sum(totals[:5]) / 5, totals


def _train(args, root, out_dir):
    """train_net.py on the synthetic fixture at a tiny size (96 px, batch 2, no test set)."""
    cmd, env = train_net_command(args, root, out_dir)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_resume_continues_at_the_right_iteration(synthetic_root, tmp_path):
    common = [
        "SOLVER.CHECKPOINT_PERIOD",
        "4",
        "SOLVER.WARMUP_ITERS",
        "2",
        "TEST.EVAL_PERIOD",
        "0",
        "SOLVER.STEPS",
        "(5,)",
        "SOLVER.BASE_LR",
        "0.01",
    ]
    first = _train(["SOLVER.MAX_ITER", "4"] + common, synthetic_root, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert open(tmp_path / "last_checkpoint").read().strip() == "model_final.pth"
    second = _train(["--resume", "SOLVER.MAX_ITER", "8"] + common, synthetic_root, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "Starting training from iteration 4" in log
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 7
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 8  # not restarted at 0
    # after STEPS (5,) the logged LR is BASE_LR * GAMMA
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    last = [m for m in metrics if m.get("iteration") == 7][-1]
    assert math.isclose(last["lr"], 0.01 * 0.1, rel_tol=1e-6), last["lr"]


def test_two_process_gloo_training_on_cpu(synthetic_root, tmp_path):
    args = ["--num-gpus", "2", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100"]
    out = _train(args, synthetic_root, tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "World size: 2" in log
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # DDP wrapper stripped


def test_nan_loss_stops_with_iteration_and_loss_name_keeping_last_checkpoint(
    synthetic_root, tmp_path
):
    first = _train(["SOLVER.MAX_ITER", "2"], synthetic_root, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    good = open(tmp_path / "model_final.pth", "rb").read()
    args = ["--resume", "SOLVER.MAX_ITER", "5", "MODEL.BOX_PANOPTIC.LOSS_WEIGHT_CLS", "1e999"]
    bad = _train(args, synthetic_root, tmp_path)
    log = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert "Loss became infinite or NaN at iteration=2" in log and "loss_cls" in log
    assert open(tmp_path / "last_checkpoint").read() == "model_final.pth"
    assert open(tmp_path / "model_final.pth", "rb").read() == good


def test_thing_aware_crop_keeps_things():
    import numpy as np

    from box_panoptic.data.augmentation import PanopticAugInput, ThingAwareCrop

    np.random.seed(0)
    image = np.zeros((200, 300, 3), np.uint8)
    things = np.zeros((200, 300), bool)
    things[180:200, 280:300] = True  # a small thing in a corner
    crop = ThingAwareCrop("absolute", (40, 40))
    for _ in range(20):
        aug = PanopticAugInput(image, sem_seg=things.astype(np.float64), thing_mask=things)
        crop(aug)
        assert aug.image.shape[:2] == (40, 40) and aug.thing_mask.any()

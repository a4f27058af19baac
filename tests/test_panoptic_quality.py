# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Per-class PQ equals panopticapi's pq_compute, on the edge cases of ECOSYSTEM.md section 3."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from box_panoptic.data.synthetic import id2rgb
from box_panoptic.evaluation import format_class_table, pq_from_files

CATS = [
    {"id": 1, "name": "car", "isthing": 1},
    {"id": 2, "name": "person", "isthing": 1},
    {"id": 3, "name": "road", "isthing": 0},
    {"id": 4, "name": "sky", "isthing": 0},
    {"id": 5, "name": "absent", "isthing": 0},
]


def _segs(ids, cats, crowd=()):
    out = []
    for sid, cat in cats.items():
        ys, xs = np.nonzero(ids == sid)
        out.append(
            {
                "id": sid,
                "category_id": cat,
                "iscrowd": int(sid in crowd),
                "area": int(len(ys)),
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
            }
        )
    return out


def _scenes():
    """(gt ids, gt cats, crowd ids, pred ids, pred cats) per image."""
    h, w = 20, 40
    # image 1: IoU exactly 0.5 (no match), a crowd region, a prediction mostly on void
    g1 = np.full((h, w), 30)  # road
    g1[:5] = 40  # sky
    g1[5:15, 0:10] = 11  # car, 100 px
    g1[5:15, 20:30] = 12  # crowd car region
    g1[15:20, 30:40] = 0  # void
    p1 = np.full((h, w), 300)
    p1[:5] = 400
    p1[5:15, 0:5] = 101  # car: inter 50, union 100 -> IoU 0.5 exactly: not matched
    p1[5:15, 20:28] = 102  # car over the crowd region of its class -> no FP
    p1[15:20, 30:40] = 103  # person mostly on void -> no FP
    p1[14:15, 30:40] = 103
    # image 2: a good match, a plain FP, a missed person (FN)
    g2 = np.full((h, w), 30)
    g2[2:12, 2:12] = 21  # person
    g2[2:8, 30:36] = 22  # person, missed
    p2 = np.full((h, w), 300)
    p2[2:12, 3:12] = 201  # IoU 0.9
    p2[14:18, 14:20] = 202  # car where there is road: FP
    return [
        (g1, {30: 3, 40: 4, 11: 1, 12: 1}, {12}, p1, {300: 3, 400: 4, 101: 1, 102: 1, 103: 2}),
        (g2, {30: 3, 21: 2, 22: 2}, set(), p2, {300: 3, 201: 2, 202: 1}),
    ]


def _write(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt_anns, pred_anns, images = [], [], []
    for i, (g, gc, crowd, p, pc) in enumerate(_scenes()):
        name = f"{i}.png"
        Image.fromarray(id2rgb(g)).save(gt_dir / name)
        Image.fromarray(id2rgb(p)).save(pred_dir / name)
        images.append({"id": i, "file_name": f"{i}.jpg", "height": g.shape[0], "width": g.shape[1]})
        gt_anns.append({"image_id": i, "file_name": name, "segments_info": _segs(g, gc, crowd)})
        pred_anns.append(
            {
                "image_id": i,
                "file_name": name,
                "segments_info": [{"id": s, "category_id": c} for s, c in pc.items()],
            }
        )
    gt_json, pred_json = tmp_path / "gt.json", tmp_path / "pred.json"
    json.dump({"images": images, "annotations": gt_anns, "categories": CATS}, open(gt_json, "w"))
    json.dump(
        {"images": images, "annotations": pred_anns, "categories": CATS}, open(pred_json, "w")
    )
    return str(gt_json), str(pred_json), str(gt_dir), str(pred_dir)


def test_equals_panopticapi_on_edge_cases(tmp_path):
    from panopticapi.evaluation import pq_compute

    files = _write(tmp_path)
    ours = pq_from_files(*files)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = pq_compute(*files)
    for name in ("All", "Things", "Stuff"):
        for k in ("pq", "sq", "rq"):
            assert abs(ours[name][k] - ref[name][k]) <= 1e-9, (name, k)
        assert ours[name]["n"] == ref[name]["n"]
    for cid, v in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cid][k] - v[k]) <= 1e-9, (cid, k)
    pc = ours["per_class"]
    # car: the 0.5-IoU prediction is no match (FN + FP), the crowd-covering one is ignored
    assert (pc[1]["tp"], pc[1]["fp"], pc[1]["fn"]) == (0, 1 + 1, 1)
    # person: one TP (IoU 0.9), one FN; the void-covering prediction is no FP
    assert (pc[2]["tp"], pc[2]["fp"], pc[2]["fn"]) == (1, 0, 1)
    assert pc[2]["sq"] == pytest.approx(0.9)
    assert not pc[5]["counted"] and ours["Stuff"]["n"] == 2  # absent class excluded from means


def test_png_id_missing_from_json_raises(tmp_path):
    gt_json, pred_json, gt_dir, pred_dir = _write(tmp_path)
    data = json.load(open(pred_json))
    data["annotations"][1]["segments_info"] = data["annotations"][1]["segments_info"][:-1]
    json.dump(data, open(pred_json, "w"))
    with pytest.raises(KeyError, match="segment with ID 202 is presented in PNG"):
        pq_from_files(gt_json, pred_json, gt_dir, pred_dir)


def test_table_layout():
    result = {
        "All": {"pq": 0.5881, "sq": 0.7981, "rq": 0.7232},
        "per_class": {
            1: {"pq": 0.6055, "sq": 0.833, "rq": 0.7269},
            3: {"pq": 0.9758, "sq": 0.9788, "rq": 0.9969},
        },
    }
    table = format_class_table(result, {1: {"name": "car"}, 3: {"name": "road"}})
    lines = table.splitlines()
    assert lines[0].split() == ["Class", "PQ", "SQ", "RQ", "Class", "PQ", "SQ", "RQ"]
    assert lines[1].split() == ["Mean", "58.81", "79.81", "72.32", "car", "60.55", "83.30", "72.69"]
    assert lines[2].split() == ["road", "97.58", "97.88", "99.69"]


def test_object_masks_reports_each_things_best_iou_and_same_class_contact():
    """object_masks: per non-crowd ground-truth thing its area, whether a thing of its class lies
    within 2 px, and the best IoU of a predicted thing segment; stuff predictions never count."""
    import numpy as np

    from box_panoptic.evaluation.object_masks import object_masks, summarize_object_masks

    gt = np.zeros((20, 40), np.uint32)
    gt[0:10, 0:10] = 1  # class 1, touching 2
    gt[0:10, 11:21] = 2  # class 1
    gt[12:20, 30:40] = 3  # class 2, near 4 (another class): not "touching"
    gt[12:20, 25:29] = 4
    gt[0:4, 36:40] = 5  # a crowd region: no object
    segs = [
        {"id": 1, "category_id": 1, "isthing": 1},
        {"id": 2, "category_id": 1, "isthing": 1},
        {"id": 3, "category_id": 2, "isthing": 1},
        {"id": 4, "category_id": 3, "isthing": 1},
        {"id": 5, "category_id": 1, "isthing": 1, "iscrowd": 1},
    ]
    pred = np.zeros_like(gt)
    pred[0:10, 0:21] = 7  # one segment over objects 1 and 2
    pred[12:20, 30:35] = 8  # half of object 3
    pred[12:20, 35:40] = 9  # the other half, as stuff
    pred_segs = [
        {"id": 7, "category_id": 0, "isthing": True},
        {"id": 8, "category_id": 1, "isthing": True},
        {"id": 9, "category_id": 4, "isthing": False},
    ]
    got = object_masks(gt, segs, pred, pred_segs)
    assert [(o.area, o.touches_same_class) for o in got] == [
        (100, True),
        (100, True),
        (80, False),
        (32, False),
    ]
    assert got[0].iou == pytest.approx(100 / 210) and got[1].iou == pytest.approx(100 / 210)
    assert got[2].iou == pytest.approx(40 / 80) and got[3].iou == 0.0
    rows = summarize_object_masks(got)
    assert [(r["touching"], r["n"]) for r in rows] == [(False, 2), (True, 2)]
    assert rows[0]["mean_iou"] == pytest.approx(0.25) and rows[0]["matched"] == 0.0
    with pytest.raises(ValueError, match="object_masks"):
        object_masks(gt, segs, pred[:10], pred_segs)

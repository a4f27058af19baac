# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Panoptic quality per class, numerically equal to panopticapi's ``pq_compute`` (ECOSYSTEM.md
section 3): VOID = 0, IoU > 0.5 (strict) with void removed from the union, crowd GT never FN,
a prediction lying > 50 % on void or on a crowd region of its class is no FP, GT areas from the
JSON, prediction areas recounted from the PNG, classes with TP + FP + FN = 0 left out of means."""

import json
import os
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

__all__ = ["PQStat", "pq_from_files", "pq_image", "summarize", "format_class_table"]

OFFSET = 256 * 256 * 256


def _rgb2id(path: str) -> np.ndarray:
    c = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint32)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


class PQStat:
    """Per-category sums: tp, fp, fn and the IoU sum of matches."""

    def __init__(self):
        self.stats = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})

    def add(self, other: "PQStat") -> "PQStat":
        for k, v in other.stats.items():
            for f in ("tp", "fp", "fn", "iou"):
                self.stats[k][f] += v[f]
        return self


def pq_image(
    gt_ids: np.ndarray,
    gt_segments: List[Dict],
    pred_ids: np.ndarray,
    pred_segments: List[Dict],
    categories: Dict[int, Dict],
    image_id,
) -> PQStat:
    """PQ statistics of one image. ids are (H, W) int arrays (rgb2id), segments as in the JSON."""
    stat = PQStat()
    gt = {s["id"]: s for s in gt_segments}
    pred = {s["id"]: dict(s) for s in pred_segments}
    labels, counts = np.unique(pred_ids, return_counts=True)
    unseen = set(pred)
    for label, cnt in zip(labels.tolist(), counts.tolist()):
        if label not in pred:
            if label == 0:
                continue
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {label} is presented "
                "in PNG and not presented in JSON."
            )
        pred[label]["area"] = cnt
        unseen.discard(label)
        if pred[label]["category_id"] not in categories:
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {label} has unknown "
                f"category_id {pred[label]['category_id']}."
            )
    if unseen:
        raise KeyError(
            f"In the image with ID {image_id} the following segment IDs {sorted(unseen)} "
            "are presented in JSON and not presented in PNG."
        )
    joint = gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64)
    labels, counts = np.unique(joint, return_counts=True)
    inter = {(int(lab // OFFSET), int(lab % OFFSET)): int(c) for lab, c in zip(labels, counts)}
    gt_matched, pred_matched = set(), set()
    for (g, p), i in inter.items():
        if g not in gt or p not in pred or gt[g]["iscrowd"] == 1:
            continue
        if gt[g]["category_id"] != pred[p]["category_id"]:
            continue
        union = pred[p]["area"] + gt[g]["area"] - i - inter.get((0, p), 0)
        iou = i / union
        if iou > 0.5:
            s = stat.stats[gt[g]["category_id"]]
            s["tp"] += 1
            s["iou"] += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, info in gt.items():
        if g in gt_matched:
            continue
        if info["iscrowd"] == 1:
            crowd[info["category_id"]] = g
            continue
        stat.stats[info["category_id"]]["fn"] += 1
    for p, info in pred.items():
        if p in pred_matched:
            continue
        ignored = inter.get((0, p), 0)
        if info["category_id"] in crowd:
            ignored += inter.get((crowd[info["category_id"]], p), 0)
        if ignored / info["area"] > 0.5:
            continue
        stat.stats[info["category_id"]]["fp"] += 1
    return stat


def summarize(stat: PQStat, categories: Dict[int, Dict]) -> Dict:
    """{"All"/"Things"/"Stuff": {pq, sq, rq, n}, "per_class": {cat_id: {pq, sq, rq, tp, ...}}}."""
    per_class = {}
    for cid in categories:
        s = stat.stats.get(cid, {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
        tp, fp, fn, iou = s["tp"], s["fp"], s["fn"], s["iou"]
        denom = tp + 0.5 * fp + 0.5 * fn
        counted = tp + fp + fn > 0
        per_class[cid] = {
            "pq": iou / denom if counted else 0.0,
            "sq": iou / tp if tp else 0.0,
            "rq": tp / denom if counted else 0.0,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "counted": counted,
        }
    out = {"per_class": per_class}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        rows = [
            v
            for c, v in per_class.items()
            if v["counted"] and (isthing is None or bool(categories[c]["isthing"]) == isthing)
        ]
        n = len(rows)
        out[name] = {k: (sum(r[k] for r in rows) / n if n else 0.0) for k in ("pq", "sq", "rq")}
        out[name]["n"] = n
    return out


def pq_from_files(
    gt_json: str, pred_json: str, gt_folder: Optional[str] = None, pred_folder: Optional[str] = None
) -> Dict:
    """Same inputs and matching as panopticapi's pq_compute; returns :func:`summarize`'s dict."""
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pr = json.load(f)
    gt_folder = gt_folder or gt_json.replace(".json", "")
    pred_folder = pred_folder or pred_json.replace(".json", "")
    categories = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pr["annotations"]}
    total = PQStat()
    for g in gt["annotations"]:
        if g["image_id"] not in preds:
            raise KeyError(f"no prediction for the image with id: {g['image_id']}")
        p = preds[g["image_id"]]
        total.add(
            pq_image(
                _rgb2id(os.path.join(gt_folder, g["file_name"])),
                g["segments_info"],
                _rgb2id(os.path.join(pred_folder, p["file_name"])),
                p["segments_info"],
                categories,
                g["image_id"],
            )
        )
    return summarize(total, categories)


def format_class_table(result: Dict, categories: Dict[int, Dict]) -> str:
    """Tables S1/S2 layout: Class PQ SQ RQ, two classes per row, a Mean row first (percent)."""

    def cell(name, v):
        return f"{name:<16}{100 * v['pq']:>7.2f}{100 * v['sq']:>7.2f}{100 * v['rq']:>7.2f}"

    cells = [cell("Mean", result["All"])]
    cells += [cell(categories[c]["name"], v) for c, v in result["per_class"].items()]
    header = f"{'Class':<16}{'PQ':>7}{'SQ':>7}{'RQ':>7}"
    lines = [header + "   " + header]
    for i in range(0, len(cells), 2):
        lines.append("   ".join(cells[i : i + 2]))
    return "\n".join(lines)

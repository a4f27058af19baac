# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The panoptic evaluator: ground truth scores PQ 100, and an interrupted evaluation never leaves
result files that look complete (not even the previous evaluation's)."""

import os
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog

from box_panoptic.data.datasets import rgb2id
from box_panoptic.evaluation import PanopticEvaluatorWithTables


def _feed_ground_truth(evaluator):
    evaluator.reset()
    for r in DatasetCatalog.get("synthetic_panoptic_val"):
        ids = rgb2id(np.asarray(Image.open(r["pan_seg_file_name"]).convert("RGB")))
        segs = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in r["segments_info"]
        ]
        evaluator.process(
            [{"file_name": r["file_name"], "image_id": r["image_id"]}],
            [{"panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), segs)}],
        )


def test_interrupted_evaluation_never_looks_complete(synthetic_root, tmp_path):
    ev = PanopticEvaluatorWithTables("synthetic_panoptic_val", str(tmp_path))
    _feed_ground_truth(ev)
    result = ev.evaluate()["panoptic_seg"]
    assert result["PQ"] == pytest.approx(100.0)
    done = ev._result_files()
    assert all(os.path.exists(p) for p in done)
    # a second evaluation dies while writing predictions.json
    _feed_ground_truth(ev)
    assert not any(os.path.exists(p) for p in done)  # the previous results are gone
    with mock.patch(
        "box_panoptic.evaluation.panoptic_evaluator.json.dump", side_effect=KeyboardInterrupt
    ):
        with pytest.raises(KeyboardInterrupt):
            ev.evaluate()
    assert not any(os.path.exists(p) for p in done)

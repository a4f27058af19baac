# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""COCOPanopticEvaluator that keeps its predictions and reports per-class PQ tables."""

import csv
import itertools
import json
import logging
import os
from collections import OrderedDict

from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.utils import comm

from ..atomic_file import atomic_write
from .panoptic_quality import format_class_table, pq_from_files

__all__ = ["PanopticEvaluatorWithTables"]

logger = logging.getLogger("detectron2." + __name__)  # shown by detectron2's logger setup


class PanopticEvaluatorWithTables(COCOPanopticEvaluator):
    """detectron2's COCOPanopticEvaluator (same ``process``, same PQ/SQ/RQ results) that also

    * writes the predictions (PNG + ``predictions.json``) to ``output_dir/panoptic_predictions``
      instead of a deleted temporary folder, ready for submission or for panopticapi;
    * prints the per-class table in the layout of the supplementary's Tables S1/S2 and saves it
      as ``panoptic_per_class.csv`` and ``.json`` next to detectron2's metrics.

    PQ is computed by :func:`pq_from_files`, equal to panopticapi's ``pq_compute`` (tested).
    """

    def __init__(self, dataset_name: str, output_dir: str):
        super().__init__(dataset_name, output_dir)
        if not output_dir:
            raise ValueError("PanopticEvaluatorWithTables needs an output_dir")

    def _result_files(self):
        """The files whose presence says an evaluation completed (written last, atomically)."""
        return [
            os.path.join(self._output_dir, "panoptic_predictions", "predictions.json"),
            os.path.join(self._output_dir, "panoptic_per_class.json"),
            os.path.join(self._output_dir, "panoptic_per_class.csv"),
        ]

    def reset(self):
        """A new evaluation: the previous one's results go first, so that an evaluation
        interrupted from here on never leaves files that look complete."""
        super().reset()
        if comm.is_main_process():
            for path in self._result_files():
                if os.path.exists(path):
                    os.remove(path)

    def evaluate(self):
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None
        pred_dir = os.path.join(self._output_dir, "panoptic_predictions")
        os.makedirs(pred_dir, exist_ok=True)
        annotations = []
        for p in predictions:
            with open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                f.write(p["png_string"])
            annotations.append({k: v for k, v in p.items() if k != "png_string"})
        with open(self._metadata.panoptic_json) as f:
            gt = json.load(f)
        gt["annotations"] = annotations
        pred_json = os.path.join(pred_dir, "predictions.json")
        # a complete file or none (interrupted runs never look done)
        atomic_write(pred_json, lambda f: json.dump(gt, f), text=True)

        result = pq_from_files(
            self._metadata.panoptic_json, pred_json, self._metadata.panoptic_root, pred_dir
        )
        categories = {c["id"]: c for c in gt["categories"]}
        self._save_tables(result, categories)
        res = {}
        for key, name in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
            for m in ("pq", "sq", "rq"):
                res[m.upper() + key] = 100 * result[name][m]
        logger.info("Per-class panoptic quality:\n" + format_class_table(result, categories))
        return OrderedDict({"panoptic_seg": res})

    def _save_tables(self, result, categories):
        rows = [
            {
                "class": categories[c]["name"],
                "category_id": c,
                "isthing": int(categories[c]["isthing"]),
                "PQ": 100 * v["pq"],
                "SQ": 100 * v["sq"],
                "RQ": 100 * v["rq"],
                "TP": v["tp"],
                "FP": v["fp"],
                "FN": v["fn"],
            }
            for c, v in result["per_class"].items()
        ]
        summary = {
            "per_class": rows,
            "All": result["All"],
            "Things": result["Things"],
            "Stuff": result["Stuff"],
        }
        atomic_write(
            os.path.join(self._output_dir, "panoptic_per_class.json"),
            lambda f: json.dump(summary, f, indent=1),
            text=True,
        )

        def write_csv(f):
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(os.path.join(self._output_dir, "panoptic_per_class.csv"), write_csv, text=True)

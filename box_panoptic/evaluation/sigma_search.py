# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Grid search of the foreground acceptance sigma (and the detection score threshold) on a cache
of network outputs: the network runs once per image, each grid point only re-runs mask
construction and assembly (supplementary section 1: sigma = 0.3 "determined through
hyper-parameter grid search")."""

import hashlib
import itertools
import json
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..modeling.meta_arch import output_sizes
from .object_masks import object_masks, summarize_object_masks
from .oracle import GroundTruthImage, apply_oracles
from .panoptic_quality import PQStat, pq_image, summarize

__all__ = [
    "CacheMismatchError",
    "POST_DECODE_KEYS",
    "cache_config_text",
    "model_fingerprint",
    "build_cache",
    "ground_truth",
    "panoptic_quality",
    "sweep",
]

# MODEL.BOX_PANOPTIC keys read only after decoding (steps 4-7): the cache holds decoded images,
# so a sweep may change these on one cache. Everything decode() reads (the NMS settings, the
# dense box source, levelness) stays in the key.
POST_DECODE_KEYS = (
    "MASK_THRESH",
    "DET_SCORE_THRESH",
    "THING_SEMANTICS",
    "THING_PIXELS",
    "LOCATION_TERM",
    "ASSEMBLY",
    "OVERLAP_THRESH",
    "INSTANCE_AREA_MIN",
    "STUFF_AREA_MIN",
    "ASSEMBLY_CANDIDATES",
    "ASSEMBLY_EXACT",
    "CALIBRATION",  # chooses MASK_THRESH and DET_SCORE_THRESH before an evaluation
)


class CacheMismatchError(ValueError):
    """The cache was made by another model or configuration."""


def cache_config_text(cfg, dataset: str) -> str:
    """What a cache is keyed on besides the weights: the config without OUTPUT_DIR and
    :data:`POST_DECODE_KEYS`, and the dataset the cache holds."""
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = ""
    for key in POST_DECODE_KEYS:
        c.MODEL.BOX_PANOPTIC[key] = None
    return f"dataset: {dataset}\n{c.dump()}"


def model_fingerprint(model: torch.nn.Module, cfg_dump: str) -> str:
    """sha256 over the config text and every tensor of the model's state_dict."""
    h = hashlib.sha256(cfg_dump.encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_cache(model, data_loader, fingerprint: str) -> Dict:
    """Run the network once per image; keep each image's
    :class:`~box_panoptic.modeling.postprocess.DecodedImage` (on the CPU) under "decoded"."""
    items, start = [], time.perf_counter()
    with torch.no_grad():
        for batch in data_loader:
            images = model.preprocess_image(batch)
            out = model.network(images)
            decoded = model.postprocessor.decode(out, images, output_sizes(batch, images))
            for x, d in zip(batch, decoded):
                items.append(
                    {"decoded": d.to("cpu"), "image_id": x["image_id"], "file_name": x["file_name"]}
                )
    return {
        "fingerprint": fingerprint,
        "items": items,
        "network_seconds": time.perf_counter() - start,
    }


def ground_truth(records: Sequence[Dict], meta) -> Tuple[Dict, Dict]:
    """The categories of ``meta.panoptic_json`` ({dataset id: category}) and each record's
    ground truth: {image_id: ((H, W) segment ids, segments_info in dataset ids)}."""
    with open(meta.panoptic_json) as f:
        categories = {c["id"]: c for c in json.load(f)["categories"]}
    to_dataset = {
        **{v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()},
        **{v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()},
    }
    gt = {}
    for r in records:
        c = np.asarray(Image.open(r["pan_seg_file_name"]).convert("RGB"), dtype=np.uint32)
        segs = [dict(s, category_id=to_dataset[s["category_id"]]) for s in r["segments_info"]]
        gt[r["image_id"]] = (c[..., 0] + 256 * c[..., 1] + 65536 * c[..., 2], segs)
    return categories, gt


def _image_stat(truth: Tuple[Dict, Dict], meta, image_id, pan: np.ndarray, segments) -> PQStat:
    """PQ statistics of one image's (H, W) uint32 ``pan`` and its segments_info (contiguous
    ids) against ``truth`` (:func:`ground_truth`)."""
    categories, gt = truth
    gt_ids, gt_segs = gt[image_id]
    segs = _to_dataset_segments(segments, meta)
    return pq_image(gt_ids, gt_segs, pan, segs, categories, image_id)


def _percent(stat: PQStat, categories: Dict) -> Dict:
    """{"PQ", "PQ_th", "PQ_st"} in percent."""
    res = summarize(stat, categories)
    return {
        "PQ": 100 * res["All"]["pq"],
        "PQ_th": 100 * res["Things"]["pq"],
        "PQ_st": 100 * res["Stuff"]["pq"],
    }


def panoptic_quality(predictions: Dict, meta, truth: Tuple[Dict, Dict]) -> Dict:
    """PQ / PQ_th / PQ_st (percent) of ``predictions`` {image_id: detectron2's "panoptic_seg"
    output (ids (H, W), segments_info in contiguous ids)} against ``truth``, the
    :func:`ground_truth` of their records (read once, reused for every call)."""
    stat = PQStat()
    for image_id, (pan, segments) in predictions.items():
        pan = np.asarray(pan.cpu() if torch.is_tensor(pan) else pan).astype(np.uint32)
        stat.add(_image_stat(truth, meta, image_id, pan, segments))
    return _percent(stat, truth[0])


def _to_dataset_segments(segments, meta) -> List[Dict]:
    thing = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
    stuff = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}
    return [
        {"id": s["id"], "category_id": (thing if s["isthing"] else stuff)[s["category_id"]]}
        for s in segments
    ]


def sweep(
    model,
    cache: Dict,
    fingerprint: str,
    records: Sequence[Dict],
    meta,
    sigmas: Sequence[float],
    score_threshs: Sequence[float],
    oracle: Sequence[str] = (),
    per_object: bool = False,
) -> List[Dict]:
    """PQ / PQ_th / PQ_st for every (sigma, score threshold) of the grid.

    Args:
        records: the dataset's detectron2 dicts (pan_seg_file_name, segments_info with
            contiguous ids), for the ground truth.
        per_object: add "objects" to each row, the ground-truth things' mask IoUs by size and
            touching (:func:`~.object_masks.summarize_object_masks`).
    Raises:
        ValueError for an empty grid; CacheMismatchError for a cache of another model/config.
    """
    if not sigmas or not score_threshs:
        raise ValueError(
            "sigma search: the grid is empty (give at least one sigma and one score threshold)"
        )
    if cache.get("fingerprint") != fingerprint:
        raise CacheMismatchError(
            "sigma search: the cache was made by another model or config "
            f"(cache {str(cache.get('fingerprint'))[:12]}, model {fingerprint[:12]}); rebuild it"
        )
    if any("decoded" not in item for item in cache.get("items", [])):
        raise CacheMismatchError("sigma search: the cache is of an older format; rebuild it")
    truth = ground_truth(records, meta)
    categories, gt = truth
    by_id = {r["image_id"]: r for r in records}
    contiguous = {
        *meta.thing_dataset_id_to_contiguous_id.values(),
        *meta.stuff_dataset_id_to_contiguous_id.values(),
    }
    output_ids = model.postprocessor.output_category_ids or range(len(contiguous))
    semantic_of = {int(c): i for i, c in enumerate(output_ids)}
    decoded = []  # (image id, outputs), the oracle parts replaced once for the whole grid
    for item in cache["items"]:
        image_id, d = item["image_id"], item["decoded"]
        if oracle:
            ids = gt[image_id][0]
            image_truth = GroundTruthImage(
                ids, by_id[image_id], semantic_of, d.image_size, d.padded_size
            )
            d = apply_oracles(d, image_truth, oracle)
        decoded.append((image_id, d))
    rows = []
    for sigma, tau in itertools.product(sigmas, score_threshs):
        start = time.perf_counter()
        stat, objects = PQStat(), []
        for image_id, d in decoded:
            d = d.to(model.device)
            pan, segments = model.postprocessor.postprocess(d, sigma, tau)["panoptic_seg"]
            pan = pan.cpu().numpy().astype(np.uint32)
            stat.add(_image_stat(truth, meta, image_id, pan, segments))
            if per_object:
                gt_ids = gt[image_id][0]
                objects += object_masks(gt_ids, by_id[image_id]["segments_info"], pan, segments)
        res = _percent(stat, categories)
        extra = {"objects": summarize_object_masks(objects)} if per_object else {}
        rows.append(
            {
                **extra,
                "sigma": sigma,
                "score_thresh": tau,
                **res,
                "seconds": time.perf_counter() - start,
            }
        )
    return rows

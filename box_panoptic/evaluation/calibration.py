# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Inference thresholds chosen on training images before each evaluation (opt-in).

The foreground acceptance sigma (``MASK_THRESH``) and the detection score threshold
(``DET_SCORE_THRESH``) are numbers the paper found by grid search on Cityscapes (supplementary
section 1). The best pair moves with the data and with training: on the synthetic street style
sigma 0.1-0.15 is best early and 0.2 late, on the shapes style 0.25-0.35 (README, "Learning
things"). With calibration on, every evaluation first runs the sigma search
(:mod:`.sigma_search`) on a few images of a training dataset (never the evaluated one), sets
the pair that gives the highest PQ there on the model's post-processor, and logs it. The network
runs once per image; each grid point re-runs mask construction and assembly only.

Every process calibrates on the same images in the same order (no sharding, no collective), so
all of them choose the same pair.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import os
from typing import Callable, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from ..atomic_file import atomic_write
from ..data.loading import load_panoptic_dicts
from ..data.mapper import BoxPanopticDatasetMapper
from .sigma_search import build_cache, sweep

__all__ = [
    "DEFAULT_SCORE_THRESHS",
    "DEFAULT_SIGMAS",
    "ThresholdCalibration",
    "ThresholdCalibrator",
    "calibration_records",
    "calibrated_thresholds",
    "calibrator_from_config",
    "record_calibration",
]

DEFAULT_SIGMAS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
DEFAULT_SCORE_THRESHS = (0.05, 0.1, 0.2, 0.3)

logger = logging.getLogger("detectron2." + __name__)  # shown by detectron2's logger setup


@dataclasses.dataclass(frozen=True)
class ThresholdCalibration:
    """The outcome of one calibration.

    Attributes:
        dataset, num_images: where it was measured.
        sigma, score_thresh: the chosen pair (now set on the post-processor).
        pq, pq_th, pq_st: PQ there with the chosen pair.
        before_sigma, before_score_thresh, before_pq: the post-processor's pair before, and
            its PQ on the same images.
        grid: every grid point's {"sigma", "score_thresh", "PQ", "PQ_th", "PQ_st"}.
    """

    dataset: str
    num_images: int
    sigma: float
    score_thresh: float
    pq: float
    pq_th: float
    pq_st: float
    before_sigma: float
    before_score_thresh: float
    before_pq: float
    grid: List[dict]

    def describe(self) -> str:
        return (
            f"thresholds calibrated on {self.num_images} images of {self.dataset}: sigma "
            f"{self.sigma:g}, score threshold {self.score_thresh:g} (PQ {self.pq:.2f} there; "
            f"sigma {self.before_sigma:g} and score threshold {self.before_score_thresh:g} "
            f"gave {self.before_pq:.2f})"
        )


def _mapped_batch(mapper: Callable, batch: List[dict]) -> List[dict]:
    """A DataLoader collate function: the mapped records of ``batch``, without those the mapper
    skips (None: :class:`BoxPanopticDatasetMapper` under ``bad_sample_policy="skip"``)."""
    return [x for x in map(mapper, batch) if x is not None]


def calibration_records(dataset: str, max_images: int) -> List[dict]:
    """Up to ``max_images`` records of ``dataset`` spread evenly over it, in order: the record
    i / n of the way through for i < n = min(max_images, len), from the first to near the last.

    Raises:
        ValueError if ``max_images`` < 1 or the dataset has no panoptic ground truth
        (:class:`~box_panoptic.data.PanopticDatasetError`, a ValueError, for records without it).
    """
    if int(max_images) < 1:
        raise ValueError(f"threshold calibration: MAX_IMAGES must be >= 1, got {max_images}")
    records = load_panoptic_dicts([dataset])  # names the dataset if it is not panoptic
    if not records or not getattr(MetadataCatalog.get(dataset), "panoptic_json", None):
        problem = "no images" if not records else "no panoptic_json in its metadata"
        raise ValueError(
            f"threshold calibration: dataset {dataset!r} has {problem}; calibrate on a panoptic "
            "dataset (MODEL.BOX_PANOPTIC.CALIBRATION.DATASET) or turn calibration off"
        )
    n = min(int(max_images), len(records))
    return [records[i * len(records) // n] for i in range(n)]  # i / n of the way through


@dataclasses.dataclass
class ThresholdCalibrator:
    """Chooses (sigma, score threshold) on ``dataset`` and sets them on a BoxPanoptic model.

    Args:
        dataset: a registered panoptic dataset, normally a training one.
        mapper: the test mapper (the images are read as at evaluation). A record it maps to
            None is left out: :func:`calibrator_from_config` gives it training's
            ``INPUT.BAD_SAMPLE_POLICY``, so under ``skip`` an image training cannot read is left
            out (and logged by the mapper), and under ``raise`` its error names it.
        max_images: images used (:func:`calibration_records`).
        sigmas, score_threshs: the grid; the model's own pair is always tried as well.
        num_workers: loader workers.
    """

    dataset: str
    mapper: Callable
    max_images: int = 50
    sigmas: Sequence[float] = DEFAULT_SIGMAS
    score_threshs: Sequence[float] = DEFAULT_SCORE_THRESHS
    num_workers: int = 0

    def __post_init__(self):
        if not self.sigmas or not self.score_threshs:
            raise ValueError("threshold calibration: the sigma and score threshold grids are empty")
        bad = [s for s in self.sigmas if not s > 0]
        if bad:
            raise ValueError(f"threshold calibration: every sigma must be > 0, got {bad}")

    def __call__(self, model: torch.nn.Module) -> ThresholdCalibration:
        """Calibrate ``model`` (a BoxPanoptic meta-architecture, or DDP around one) in place
        (:func:`calibrated_thresholds` gives its own pair back afterwards)."""
        net = getattr(model, "module", model)
        post = net.postprocessor
        before = (float(post.mask_thresh), float(post.det_score_thresh))
        records = calibration_records(self.dataset, self.max_images)
        loader = DataLoader(  # in order, each image once; a skipped one leaves an empty batch
            records,
            batch_size=1,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=functools.partial(_mapped_batch, self.mapper),
        )
        was_training = net.training
        net.eval()
        try:
            cache = build_cache(net, (batch for batch in loader if batch), "calibration")
            sigmas = sorted({float(s) for s in self.sigmas} | {before[0]})
            taus = sorted({float(t) for t in self.score_threshs} | {before[1]})
            rows = sweep(
                net, cache, "calibration", records, MetadataCatalog.get(self.dataset), sigmas, taus
            )
        finally:
            net.train(was_training)
        at = {(r["sigma"], r["score_thresh"]): r for r in rows}
        best = at[before]  # the model's own pair wins ties
        for r in rows:
            if r["PQ"] > best["PQ"]:
                best = r
        post.mask_thresh, post.det_score_thresh = best["sigma"], best["score_thresh"]
        keys = ("sigma", "score_thresh", "PQ", "PQ_th", "PQ_st")
        return ThresholdCalibration(
            dataset=self.dataset,
            num_images=len(cache["items"]),
            sigma=best["sigma"],
            score_thresh=best["score_thresh"],
            pq=best["PQ"],
            pq_th=best["PQ_th"],
            pq_st=best["PQ_st"],
            before_sigma=before[0],
            before_score_thresh=before[1],
            before_pq=at[before]["PQ"],
            grid=[{k: r[k] for k in keys} for r in rows],
        )


def calibrator_from_config(cfg) -> Optional[ThresholdCalibrator]:
    """The calibrator ``MODEL.BOX_PANOPTIC.CALIBRATION`` describes, reading images with the
    config's test mapper (None when it is off, or the config is not a BoxPanoptic one).
    ``DATASET`` "" means the first of ``DATASETS.TRAIN``."""
    node = cfg.MODEL.get("BOX_PANOPTIC", {}).get("CALIBRATION")
    if node is None or not node.ENABLED:
        return None
    dataset = node.DATASET or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if not dataset:
        raise ValueError(
            "threshold calibration: MODEL.BOX_PANOPTIC.CALIBRATION.DATASET is empty and there is "
            "no DATASETS.TRAIN to calibrate on"
        )
    return ThresholdCalibrator(
        dataset=dataset,
        # the training images, read as at evaluation, with training's policy for bad ones
        mapper=BoxPanopticDatasetMapper(cfg, False, bad_sample_policy=cfg.INPUT.BAD_SAMPLE_POLICY),
        max_images=node.MAX_IMAGES,
        sigmas=tuple(node.SIGMAS),
        score_threshs=tuple(node.SCORE_THRESHS),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


@contextlib.contextmanager
def calibrated_thresholds(model: torch.nn.Module, calibrator, output_dir: Optional[str]):
    """Within the block the model's post-processor uses the pair ``calibrator`` chooses (logged
    and written by :func:`record_calibration`); after it, its own pair again, so every
    evaluation calibrates from the same starting point whatever was evaluated before (a resumed
    run chooses as an uninterrupted one). ``calibrator`` None: nothing changes."""
    if calibrator is None:
        yield None
        return
    post = getattr(model, "module", model).postprocessor
    own = (post.mask_thresh, post.det_score_thresh)
    try:
        result = calibrator(model)
        record_calibration(result, output_dir)
        yield result
    finally:
        post.mask_thresh, post.det_score_thresh = own


def record_calibration(result: ThresholdCalibration, output_dir: Optional[str]) -> None:
    """Log ``result`` and, on the main process, write it to ``output_dir``/
    threshold_calibration.json."""
    logger.info(result.describe())
    if output_dir and comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        atomic_write(
            os.path.join(output_dir, "threshold_calibration.json"),
            lambda f: json.dump(dataclasses.asdict(result), f, indent=1),
            text=True,
        )

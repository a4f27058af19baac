# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Threshold calibration on training images (MODEL.BOX_PANOPTIC.CALIBRATION)."""

import json

import pytest
import torch

from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog

from box_panoptic.data import BoxPanopticDatasetMapper, PanopticDatasetError
from box_panoptic.data import mapper as mapper_module
from box_panoptic.engine.lazy import lazy_test
from box_panoptic.engine.peer import (
    PanopticFPNTrainer,
    calibrate_instance_confidence,
    panoptic_fpn_config,
)
from box_panoptic.engine.trainer import Trainer
from box_panoptic.evaluation.calibration import (
    ThresholdCalibrator,
    calibration_records,
    calibrator_from_config,
)
from box_panoptic.evaluation.sigma_search import ground_truth, panoptic_quality

from .helpers import CONFIGS, SYNTHETIC_CONFIG, get_cfg_from, get_model

TRAIN = "synthetic_panoptic_train"


def _detecting_model():
    """A random model whose classifier fires everywhere: its thing masks cover stuff, so PQ
    moves with sigma and the score threshold."""
    model = get_model().eval()
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(1.0)
    return model


def _cfg(tmp_path, *opts):
    return get_cfg_from(
        SYNTHETIC_CONFIG,
        "DATASETS.TRAIN",
        f"('{TRAIN}',)",
        "DATASETS.TEST",
        f"('{TRAIN}',)",
        "OUTPUT_DIR",
        str(tmp_path),
        "MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED",
        False,  # the synthetic config's True, where a test says so
        *opts,
    )


def test_calibration_records_spread_over_the_dataset_and_need_panoptic_ground_truth(
    synthetic_root,
):
    records = DatasetCatalog.get(TRAIN)  # 12 images
    ids = [r["image_id"] for r in records]
    picked = calibration_records(TRAIN, 5)  # i * 12 // 5
    assert [r["image_id"] for r in picked] == [ids[i] for i in (0, 2, 4, 7, 9)]
    # fewer images asked than the dataset holds but more than half: still spread to the end,
    # not the first 7
    picked = calibration_records(TRAIN, 7)  # i * 12 // 7
    assert [r["image_id"] for r in picked] == [ids[i] for i in (0, 1, 3, 5, 6, 8, 10)]
    assert len(calibration_records(TRAIN, 50)) == len(records)
    with pytest.raises(ValueError, match="MAX_IMAGES must be >= 1"):
        calibration_records(TRAIN, 0)
    meta = {k: v for k, v in MetadataCatalog.get(TRAIN).as_dict().items() if k != "name"}
    bare = [{k: v for k, v in r.items() if k != "pan_seg_file_name"} for r in records]
    for name, dicts, drop in (
        ("calibration_test_no_pan_seg", bare, ("panoptic_json", "panoptic_root")),
        ("calibration_test_no_panoptic_json", records, ("panoptic_json",)),
    ):
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda dicts=dicts: dicts)
            MetadataCatalog.get(name).set(**{k: v for k, v in meta.items() if k not in drop})
    with pytest.raises(ValueError, match="calibration_test_no_pan_seg.*no pan_seg_file_name"):
        calibration_records("calibration_test_no_pan_seg", 5)
    with pytest.raises(ValueError, match="no_panoptic_json' has no panoptic_json"):
        calibration_records("calibration_test_no_panoptic_json", 5)


def test_calibration_chooses_the_best_pair_that_the_evaluator_measures(synthetic_root, tmp_path):
    """Each grid point's PQ equals what detectron2's evaluation path measures with that pair set
    on the model (on the same images: the whole training set), and the pair chosen is the best."""
    model = _detecting_model()
    sigmas, taus = (0.2, 0.6), (0.05, 0.5)
    cfg = _cfg(tmp_path)
    mapper = BoxPanopticDatasetMapper(cfg, False)
    model.postprocessor.mask_thresh = 0.4
    model.train()
    result = ThresholdCalibrator(TRAIN, mapper, 50, sigmas, taus)(model)
    assert model.training  # its mode is given back
    model.eval()
    assert result.num_images == 12 and result.dataset == TRAIN
    # the grid plus the model's own pair (sigma 0.4, score threshold 0.1, the config's)
    pairs = {(g["sigma"], g["score_thresh"]) for g in result.grid}
    assert pairs == {(s, t) for s in (0.2, 0.4, 0.6) for t in (0.05, 0.1, 0.5)}
    assert (result.before_sigma, result.before_score_thresh) == (0.4, 0.1)
    measured = {}
    for s, t in sorted(pairs):
        model.postprocessor.mask_thresh, model.postprocessor.det_score_thresh = s, t
        measured[(s, t)] = Trainer.test(cfg, model)["panoptic_seg"]["PQ"]
    for g in result.grid:
        assert g["PQ"] == pytest.approx(measured[(g["sigma"], g["score_thresh"])], abs=1e-6)
    best = max(measured.values())
    assert len({round(v, 6) for v in measured.values()}) > 1  # the grid is not flat
    assert result.pq == pytest.approx(best, abs=1e-6)
    assert measured[(result.sigma, result.score_thresh)] == pytest.approx(best, abs=1e-6)
    assert result.before_pq == pytest.approx(measured[(0.4, 0.1)], abs=1e-6)


def test_the_models_own_pair_wins_ties(synthetic_root, tmp_path):
    model = get_model().eval()
    with torch.no_grad():  # no detection reaches any score threshold: every pair is the same
        model.head.box_cls_logits.bias.fill_(-30.0)
    model.postprocessor.mask_thresh = 0.42  # not on the grid
    result = ThresholdCalibrator(TRAIN, BoxPanopticDatasetMapper(_cfg(tmp_path), False), 4)(model)
    assert len({g["PQ"] for g in result.grid}) == 1
    assert (result.sigma, result.score_thresh) == (0.42, 0.1)
    assert (model.postprocessor.mask_thresh, model.postprocessor.det_score_thresh) == (0.42, 0.1)


def test_trainer_test_calibrates_on_the_training_set_first(synthetic_root, tmp_path):
    """Trainer.test with CALIBRATION.ENABLED sets the chosen pair before evaluating the test set
    (results equal to evaluating with that pair set by hand) and writes the choice."""
    test_cfg = _cfg(
        tmp_path,
        "DATASETS.TEST",
        "('synthetic_panoptic_val',)",
        "MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED",
        True,
        "MODEL.BOX_PANOPTIC.CALIBRATION.MAX_IMAGES",
        6,
        "MODEL.BOX_PANOPTIC.CALIBRATION.SIGMAS",
        [0.2, 0.6],
        "MODEL.BOX_PANOPTIC.CALIBRATION.SCORE_THRESHS",
        [0.05, 0.5],
    )
    model = _detecting_model()
    calibrated = Trainer.test(test_cfg, model)["panoptic_seg"]
    with open(tmp_path / "inference" / "threshold_calibration.json") as f:
        choice = json.load(f)
    assert choice["dataset"] == TRAIN and choice["num_images"] == 6
    # the model has its own pair back: the next evaluation starts where this one did
    assert (model.postprocessor.mask_thresh, model.postprocessor.det_score_thresh) == (0.3, 0.1)
    pair = (choice["sigma"], choice["score_thresh"])
    assert choice["pq"] == max(g["PQ"] for g in choice["grid"])
    plain_cfg = test_cfg.clone()
    plain_cfg.MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED = False
    fresh = _detecting_model()
    fresh.postprocessor.mask_thresh, fresh.postprocessor.det_score_thresh = pair
    assert Trainer.test(plain_cfg, fresh)["panoptic_seg"] == calibrated


def test_calibration_settings_are_checked(synthetic_root):
    cfg = get_cfg_from(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED", True)
    with pytest.raises(ValueError, match="no DATASETS.TRAIN"):
        calibrator_from_config(cfg)
    assert calibrator_from_config(get_cfg_from(SYNTHETIC_CONFIG, datasets=True)) is not None
    off = get_cfg_from(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED", False)
    assert calibrator_from_config(off) is None
    # the Panoptic FPN peer's config has no BoxPanoptic keys: never calibrated
    assert calibrator_from_config(panoptic_fpn_config(get_cfg_from(SYNTHETIC_CONFIG))) is None
    named = get_cfg_from(
        SYNTHETIC_CONFIG,
        "MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED",
        True,
        "MODEL.BOX_PANOPTIC.CALIBRATION.DATASET",
        "synthetic_panoptic_val",
    )
    assert calibrator_from_config(named).dataset == "synthetic_panoptic_val"
    mapper = BoxPanopticDatasetMapper(get_cfg_from(SYNTHETIC_CONFIG), False)
    with pytest.raises(ValueError, match="grids are empty"):
        ThresholdCalibrator(TRAIN, mapper, sigmas=())
    with pytest.raises(ValueError, match="every sigma must be > 0"):
        ThresholdCalibrator(TRAIN, mapper, sigmas=(0.0, 0.3))


def test_lazy_config_calibrates_before_its_evaluation(synthetic_root, tmp_path):
    cfg = LazyConfig.load(f"{CONFIGS}/Synthetic/box_panoptic_R_18_synthetic.py")
    assert cfg.dataloader.calibration.dataset == TRAIN
    cfg.dataloader.calibration.max_images = 4
    cfg.dataloader.calibration.sigmas = [0.2, 0.6]
    cfg.dataloader.calibration.score_threshs = [0.05, 0.5]
    cfg.dataloader.evaluator.output_dir = str(tmp_path)
    model = _detecting_model()
    results = lazy_test(cfg, model)
    with open(tmp_path / "threshold_calibration.json") as f:
        choice = json.load(f)
    assert choice["num_images"] == 4 and choice["before_sigma"] == 0.3
    assert (model.postprocessor.mask_thresh, model.postprocessor.det_score_thresh) == (0.3, 0.1)
    fresh = _detecting_model()
    fresh.postprocessor.mask_thresh = choice["sigma"]
    fresh.postprocessor.det_score_thresh = choice["score_thresh"]
    del cfg.dataloader.calibration
    assert lazy_test(cfg, fresh)["panoptic_seg"] == results["panoptic_seg"]


def test_peer_calibrates_its_instance_confidence_on_the_same_images(synthetic_root, tmp_path):
    """Panoptic FPN, the learning curves' peer, gets the same treatment: its instance confidence
    threshold chosen on BoxPanoptic's calibration images (PQ per threshold equal to running the
    model with it), and BoxPanoptic's stuff area limit."""
    box_cfg = _cfg(
        tmp_path,
        "MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED",
        True,
        "MODEL.BOX_PANOPTIC.CALIBRATION.MAX_IMAGES",
        3,
    )
    peer_cfg = panoptic_fpn_config(box_cfg)
    assert peer_cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT == 64  # the synthetic config's
    torch.manual_seed(0)
    model = PanopticFPNTrainer.build_model(peer_cfg).eval()
    calibrator = calibrator_from_config(box_cfg)
    result = calibrate_instance_confidence(model, calibrator, (0.0, 0.99))
    assert result.before == 0.5 and set(result.pq) == {0.0, 0.5, 0.99}
    records = calibration_records(TRAIN, 3)
    meta = MetadataCatalog.get(TRAIN)
    for c in (0.0, 0.5, 0.99):
        model.model.combine_instances_score_thresh = c
        with torch.no_grad():
            direct = {
                r["image_id"]: model([calibrator.mapper(r)])[0]["panoptic_seg"] for r in records
            }
        truth = ground_truth(records, meta)
        assert result.pq[c] == pytest.approx(panoptic_quality(direct, meta, truth)["PQ"])
    assert len(set(result.pq.values())) > 1
    best = max(result.pq.values())
    assert result.pq[result.confidence] == best
    assert result.confidence == 0.5 or result.pq[0.5] < best  # the model's own wins ties


def test_calibration_skips_unreadable_images_only_when_training_does(
    synthetic_root, tmp_path, monkeypatch
):
    """Under INPUT.BAD_SAMPLE_POLICY skip training leaves out images it cannot read; the
    calibration on the training images then does the same (its mapper's own skip), and otherwise
    names the image."""
    bad = calibration_records(TRAIN, 4)[1]["file_name"]
    read_image = mapper_module.utils.read_image

    def unreadable_bad(path, *args, **kwargs):
        if path == bad:
            raise OSError("cannot identify image file")
        return read_image(path, *args, **kwargs)

    monkeypatch.setattr(mapper_module.utils, "read_image", unreadable_bad)
    model = _detecting_model()
    opts = ("MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED", True, "INPUT.BAD_SAMPLE_POLICY")
    opts += ("MODEL.BOX_PANOPTIC.CALIBRATION.MAX_IMAGES", 4, "DATALOADER.NUM_WORKERS", 0)
    with pytest.raises(PanopticDatasetError, match=bad):
        calibrator_from_config(_cfg(tmp_path, *opts[:3], "raise", *opts[3:]))(model)
    skipping = calibrator_from_config(_cfg(tmp_path, *opts[:3], "skip", *opts[3:]))
    assert skipping(model).num_images == 3
    assert skipping.mapper.skipped == 1

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""detectron2's DefaultTrainer with box_panoptic's data path, evaluators and reliability hooks,
and the config setup that ``train_net.py`` and the tools share."""

import logging
import os

from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, TrainerBase, default_setup
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..checkpoint import SafeCheckpointer
from ..compat import cpu_ddp
from ..config import add_box_panoptic_config
from ..data import BoxPanopticDatasetMapper
from ..data.loading import load_panoptic_dicts
from ..data.resumable import (
    ResumableTrainLoader,
    build_resumable_train_loader,
    count_skipped,
)
from ..evaluation import build_panoptic_evaluator
from ..evaluation.calibration import calibrated_thresholds, calibrator_from_config
from .preemption import PreemptionCheckpoint

__all__ = [
    "Trainer",
    "build_eval_model",
    "report_skipped_samples",
    "setup",
    "setup_for_tool",
    "skip_log_path",
]

SKIP_LOG = "skipped_samples.jsonl"

logger = logging.getLogger("detectron2." + __name__)


class Trainer(DefaultTrainer):
    """DefaultTrainer with box_panoptic's mapper, a data stream that resumes exactly, atomic
    checkpoints, a checkpoint on SIGTERM/SIGINT, loader workers that never outlive training and
    the panoptic, semantic and instance evaluators. Datasets are read through
    :func:`~box_panoptic.data.loading.load_panoptic_dicts` (errors name the dataset and file)."""

    def __init__(self, cfg):
        with cpu_ddp():  # several processes on CPUs: DDP without device_ids
            super().__init__(cfg)

    def build_hooks(self):
        # atomic checkpoint files and a finiteness check on load (box_panoptic.checkpoint), in
        # one layout on every detectron2 version (see state_dict); the data stream's seed is
        # saved with every checkpoint. Hooks built below save through this checkpointer.
        old = self.checkpointer
        extra = {"optimizer": self.optimizer}
        scaler = getattr(self._trainer, "grad_scaler", None)
        if scaler is not None:
            extra["grad_scaler"] = scaler
        if isinstance(self._trainer.data_loader, ResumableTrainLoader):
            extra["data_stream"] = self._trainer.data_loader
        self.checkpointer = SafeCheckpointer(
            old.model, old.save_dir, **old.checkpointables, **extra
        )
        return super().build_hooks() + [PreemptionCheckpoint(self.checkpointer)]

    def state_dict(self):
        """{"iteration", "hooks"} only: the optimizer (and AMP's grad scaler) are checkpointables
        of their own. detectron2 0.6's trainer state holds no optimizer, main's holds it under
        "_trainer"; this one layout saves it once and resumes under either version."""
        return TrainerBase.state_dict(self)

    def load_state_dict(self, state):
        TrainerBase.load_state_dict(self, state)
        inner = state.get("_trainer") or {}  # a checkpoint of detectron2 main's own trainer
        if "optimizer" in inner:  # the "optimizer" checkpointable, when saved, loads after
            self.optimizer.load_state_dict(inner["optimizer"])
        scaler = getattr(self._trainer, "grad_scaler", None)
        if scaler is not None and "grad_scaler" in inner:
            scaler.load_state_dict(inner["grad_scaler"])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if isinstance(self._trainer.data_loader, ResumableTrainLoader):
            self._trainer.data_loader.start_iter = self.start_iter

    def train(self):
        try:
            return super().train()
        finally:
            if isinstance(self._trainer.data_loader, ResumableTrainLoader):
                self._trainer.data_loader.close()  # no worker may delay the exit
            report_skipped_samples(self.cfg)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's test, with the inference thresholds chosen on training images when
        ``MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED`` (:mod:`box_panoptic.evaluation.calibration`;
        the model's own pair is given back afterwards)."""
        folder = os.path.join(cfg.OUTPUT_DIR, "inference") if cfg.OUTPUT_DIR else None
        with calibrated_thresholds(model, calibrator_from_config(cfg), folder):
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_panoptic_evaluator(dataset_name, output_folder)

    @classmethod
    def build_train_mapper(cls, cfg):
        """The training mapper (a subclass training another model on the same data changes it)."""
        return BoxPanopticDatasetMapper(cfg, True)

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = cls.build_train_mapper(cfg)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                f"DATALOADER.SAMPLER_TRAIN = {cfg.DATALOADER.SAMPLER_TRAIN}: detectron2's "
                "loader is used, and --resume does not replay the exact sample stream"
            )
            return build_detection_train_loader(
                cfg, dataset=load_panoptic_dicts(cfg.DATASETS.TRAIN), mapper=mapper
            )
        return build_resumable_train_loader(
            dataset=load_panoptic_dicts(cfg.DATASETS.TRAIN),
            mapper=mapper,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            seed=cfg.SEED,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            skip_log=skip_log_path(cfg),
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            load_panoptic_dicts([dataset_name]),
            mapper=BoxPanopticDatasetMapper(cfg, False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )


def build_eval_model(cfg):
    """The config's model in eval mode, with MODEL.WEIGHTS loaded when set."""
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        SafeCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def skip_log_path(cfg):
    """Where every process and loader worker records the bad samples it skips (None: nowhere)."""
    return os.path.join(cfg.OUTPUT_DIR, SKIP_LOG) if cfg.OUTPUT_DIR else None


def report_skipped_samples(cfg) -> int:
    """Log the bad samples skipped by every worker and process (INPUT.BAD_SAMPLE_POLICY skip)."""
    if cfg.INPUT.BAD_SAMPLE_POLICY != "skip" or not comm.is_main_process():
        return 0
    return log_skipped_samples(skip_log_path(cfg))


def log_skipped_samples(path) -> int:
    """Log the total of the skip log ``path`` (every worker's and process's lines)."""
    total = count_skipped(path)
    logging.getLogger("box_panoptic").warning(
        f"bad samples skipped in this training: {total} in total"
        + (f" (see {path})" if total else "")
    )
    return total


def _config(config_file: str, opts):
    cfg = get_cfg()
    add_box_panoptic_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def setup(args):
    """get_cfg, add_box_panoptic_config, the file, the command-line opts, freeze, default_setup."""
    cfg = _config(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def setup_for_tool(config_file: str, opts=()):
    """The config for the tools (one process, no training), with console logging and the
    config's seed. Unlike :func:`setup` it writes nothing into OUTPUT_DIR: a tool run with a
    training run's config (sigma search, diagnosis, export) must not overwrite that run's
    config.yaml nor add to its log.txt."""
    cfg = _config(config_file, opts)
    setup_logger(name="fvcore")
    setup_logger()
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    return cfg

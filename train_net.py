#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Train and evaluate BoxPanoptic with detectron2's trainer, data loaders and evaluators.

python train_net.py --config-file configs/Synthetic/box_panoptic_R_18_synthetic.yaml
python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
python train_net.py --config-file ... --resume
"""

import argparse
import logging
import os

import box_panoptic  # noqa: F401  (first: compatibility shims + registration)

# isort: split
from detectron2.config import get_cfg
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    DatasetEvaluators,
)
from detectron2.modeling import build_model
from detectron2.utils import comm

from box_panoptic import add_box_panoptic_config
from box_panoptic.checkpoint import SafeCheckpointer
from box_panoptic.data import BoxPanopticDatasetMapper
from box_panoptic.data.resumable import ResumableTrainLoader, ResumableTrainStream, count_skipped
from box_panoptic.engine import PreemptionCheckpoint, launch
from box_panoptic.evaluation import PanopticEvaluatorWithTables, PanopticSemSegEvaluator

SKIP_LOG = "skipped_samples.jsonl"


class Trainer(DefaultTrainer):
    """DefaultTrainer with box_panoptic's mapper, a data stream that resumes exactly, atomic
    checkpoints, a checkpoint on SIGTERM and the panoptic evaluators."""

    def build_hooks(self):
        # atomic checkpoint files and a finiteness check on load (box_panoptic.checkpoint);
        # the data stream's seed is saved with every checkpoint
        old = self.checkpointer
        extra = {}
        if isinstance(self._trainer.data_loader, ResumableTrainLoader):
            extra["data_stream"] = self._trainer.data_loader
        if "optimizer" not in self.state_dict():
            # detectron2 0.6's trainer state holds no optimizer: without this, --resume restarts
            # SGD momentum at zero and ends with other weights than an uninterrupted run
            extra["optimizer"] = self.optimizer
            scaler = getattr(self._trainer, "grad_scaler", None)
            if scaler is not None:
                extra["grad_scaler"] = scaler
        self.checkpointer = SafeCheckpointer(
            old.model, old.save_dir, **old.checkpointables, **extra
        )
        return super().build_hooks() + [PreemptionCheckpoint(self.checkpointer)]

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if isinstance(self._trainer.data_loader, ResumableTrainLoader):
            self._trainer.data_loader.start_iter = self.start_iter

    def train(self):
        try:
            return super().train()
        finally:
            report_skipped_samples(self.cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        kind = MetadataCatalog.get(dataset_name).evaluator_type
        if kind == "coco_panoptic_seg":
            evaluators = [
                PanopticEvaluatorWithTables(dataset_name, output_folder),
                PanopticSemSegEvaluator(dataset_name, output_dir=output_folder),
            ]
        elif kind == "cityscapes_panoptic_seg":
            evaluators = [
                PanopticEvaluatorWithTables(dataset_name, output_folder),
                CityscapesSemSegEvaluator(dataset_name),
                CityscapesInstanceEvaluator(dataset_name),
            ]
        else:
            raise NotImplementedError(f"no evaluator for dataset {dataset_name} of type {kind!r}")
        return DatasetEvaluators(evaluators)

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = BoxPanopticDatasetMapper(cfg, True)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logging.getLogger("box_panoptic").warning(
                f"DATALOADER.SAMPLER_TRAIN = {cfg.DATALOADER.SAMPLER_TRAIN}: detectron2's "
                "loader is used, and --resume does not replay the exact sample stream"
            )
            return build_detection_train_loader(cfg, mapper=mapper)
        records = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        skip_log = skip_log_path(cfg)

        def make_stream(seed, start_iter):
            return ResumableTrainStream(
                records,
                mapper,
                cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
                seed,
                start_iter,
                cfg.DATALOADER.ASPECT_RATIO_GROUPING,
                skip_log,
            )

        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return ResumableTrainLoader(make_stream, seed, cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=BoxPanopticDatasetMapper(cfg, False)
        )


def skip_log_path(cfg):
    """Where every process and loader worker records the bad samples it skips (None: nowhere)."""
    return os.path.join(cfg.OUTPUT_DIR, SKIP_LOG) if cfg.OUTPUT_DIR else None


def report_skipped_samples(cfg) -> int:
    """Log the bad samples skipped by every worker and process (INPUT.BAD_SAMPLE_POLICY skip)."""
    if cfg.INPUT.BAD_SAMPLE_POLICY != "skip" or not comm.is_main_process():
        return 0
    path = skip_log_path(cfg)
    total = count_skipped(path)
    logging.getLogger("box_panoptic").warning(
        f"bad samples skipped in this training: {total} in total"
        + (f" (see {path})" if total else "")
    )
    return total


def setup(args):
    cfg = get_cfg()
    add_box_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def setup_for_tool(config_file: str, opts=()):
    """:func:`setup` for the tools: one process, no training."""
    return setup(
        argparse.Namespace(
            config_file=config_file,
            opts=list(opts),
            resume=False,
            eval_only=True,
            num_gpus=1,
            machine_rank=0,
        )
    )


def build_eval_model(cfg):
    """The config's model in eval mode, with MODEL.WEIGHTS loaded when set."""
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        SafeCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

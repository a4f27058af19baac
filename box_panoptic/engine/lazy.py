# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Training and evaluation from a LazyConfig (``configs/**/*.py``), with the reliability of the
yacs Trainer: atomic checkpoints refusing NaN weights, exact resume of the data stream, a
checkpoint on SIGTERM/SIGINT, the bad-sample policy's log, loader workers that stop with training.

The config follows detectron2's LazyConfig layout: ``model``, ``dataloader.train`` /
``dataloader.test`` / ``dataloader.evaluator``, ``optimizer`` (its ``params.model`` filled in
here), ``lr_multiplier`` and ``train`` (output_dir, init_checkpoint, max_iter, amp.enabled, ddp,
checkpointer, eval_period, log_period, device, seed).
"""

import os

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..checkpoint import SafeCheckpointer
from ..compat import cpu_ddp
from ..data.resumable import ResumableTrainLoader
from ..evaluation.calibration import calibrated_thresholds
from .preemption import PreemptionCheckpoint
from .trainer import log_skipped_samples

__all__ = ["is_lazy_config", "lazy_main", "lazy_setup", "lazy_test", "lazy_train"]


def is_lazy_config(path: str) -> bool:
    return path.endswith(".py")


def lazy_setup(args):
    """Load the config file, apply ``key=value`` overrides, log and save it, seed the RNGs."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    out = cfg.train.output_dir
    rank = comm.get_rank()
    if comm.is_main_process() and out:
        os.makedirs(out, exist_ok=True)
    setup_logger(out, distributed_rank=rank, name="fvcore")
    setup_logger(out, distributed_rank=rank, name="box_panoptic")
    setup_logger(out, distributed_rank=rank)
    if comm.is_main_process() and out:
        LazyConfig.save(cfg, os.path.join(out, "config.yaml"))
    seed = cfg.train.get("seed", -1)
    seed_all_rng(None if seed < 0 else seed + rank)
    return cfg


def lazy_test(cfg, model):
    """Evaluate on ``dataloader.test`` with ``dataloader.evaluator``; {} without them (or with
    either set to None). With ``dataloader.calibration`` (a
    :class:`~box_panoptic.evaluation.calibration.ThresholdCalibrator`) the inference thresholds
    are chosen on its images first, for this evaluation."""
    if cfg.dataloader.get("evaluator") is None or cfg.dataloader.get("test") is None:
        return {}
    spec = cfg.dataloader.get("calibration")
    calibrator = None if spec is None else instantiate(spec)
    with calibrated_thresholds(model, calibrator, cfg.dataloader.evaluator.get("output_dir")):
        results = inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def _trainer(cfg, model, loader, optimizer):
    if cfg.train.get("amp", {}).get("enabled", False):
        return AMPTrainer(model, loader, optimizer)
    return SimpleTrainer(model, loader, optimizer)


def lazy_train(cfg, resume: bool = False):
    """Train ``cfg.model`` for ``cfg.train.max_iter`` iterations, resuming from the output
    folder's last checkpoint when ``resume``; returns the final evaluation's results."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loader = instantiate(cfg.dataloader.train)
    # several processes on CPUs: DDP without device_ids (the builder is looked up in its
    # module, where cpu_ddp replaces it)
    with cpu_ddp():
        ddp_model = d2_defaults.create_ddp_model(model, **cfg.train.get("ddp", {}))
    trainer = _trainer(cfg, ddp_model, loader, optimizer)
    # the trainer's state holds the optimizer (and AMP's scaler) on detectron2 0.6 and main
    extra = {"data_stream": loader} if isinstance(loader, ResumableTrainLoader) else {}
    checkpointer = SafeCheckpointer(model, cfg.train.output_dir, trainer=trainer, **extra)
    main = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            PreemptionCheckpoint(checkpointer),
            hooks.EvalHook(cfg.train.eval_period, lambda: lazy_test(cfg, model)),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if main
                else None
            ),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if isinstance(loader, ResumableTrainLoader):
        loader.start_iter = start_iter
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    finally:
        if isinstance(loader, ResumableTrainLoader):
            loader.close()  # no worker may delay the exit
        skip_log = cfg.dataloader.train.get("skip_log")
        if skip_log and main:
            log_skipped_samples(skip_log)
    return lazy_test(cfg, model) if cfg.train.eval_period <= 0 else {}


def lazy_main(args):
    """train_net.py's LazyConfig path: --eval-only evaluates ``train.init_checkpoint`` (or the
    output folder's last checkpoint with --resume); otherwise trains."""
    cfg = lazy_setup(args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        SafeCheckpointer(model, cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return lazy_test(cfg, model.eval())
    return lazy_train(cfg, resume=args.resume)

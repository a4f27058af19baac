# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""SGD with a warm-up and a step schedule, and the ``train`` settings, as a LazyConfig (the
released recipe: LR 0.01 at batch 16, 1000 warm-up iterations from 0.001x). A dataset config
calls :func:`step_schedule` with its lengths."""

import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler, get_default_optimizer_params

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
)


def step_schedule(max_iter, steps, warmup_iters=1000, warmup_factor=0.001):
    """LR multiplier: x0.1 at each of ``steps``, after a linear warm-up."""
    values = [0.1**k for k in range(len(steps) + 1)]
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=values, milestones=list(steps), num_updates=max_iter
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_factor=warmup_factor,
    )


def train_settings(output_dir, max_iter, checkpoint_period=5000, eval_period=5000, seed=-1):
    return dict(
        output_dir=output_dir,
        init_checkpoint="",
        max_iter=max_iter,
        amp=dict(enabled=False),
        ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
        checkpointer=dict(period=checkpoint_period, max_to_keep=100),
        eval_period=eval_period,
        log_period=20,
        device="cuda",
        seed=seed,
    )

#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Train and evaluate BoxPanoptic with detectron2's trainer, data loaders and evaluators.

python train_net.py --config-file configs/Synthetic/box_panoptic_R_18_synthetic.yaml
python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
python train_net.py --config-file ... --resume
python train_net.py --config-file ... --coco-panoptic my_train IMAGES PANOPTIC_PNGS PANOPTIC_JSON \\
    --coco-panoptic my_val ... DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)'
python train_net.py --config-file configs/Synthetic/box_panoptic_R_18_synthetic.py  # LazyConfig
torchrun --nproc-per-node 8 --max-restarts 3 train_net.py --config-file ... --resume
"""

import box_panoptic  # noqa: F401  (first: compatibility shims + registration)

# isort: split
from detectron2.engine import default_argument_parser

from box_panoptic.data.user_datasets import add_coco_panoptic_argument, register_from_args
from box_panoptic.engine import SafeCheckpointer, Trainer, launch, setup
from box_panoptic.engine.launch import elastic_restart_count
from box_panoptic.engine.lazy import is_lazy_config, lazy_main


def main(args):
    register_from_args(args)
    args.resume = args.resume or elastic_restart_count() > 0  # torchrun restarted the workers
    if is_lazy_config(args.config_file):  # a LazyConfig (.py): key=value overrides
        return lazy_main(args)
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


def argument_parser():
    parser = default_argument_parser()
    add_coco_panoptic_argument(parser)
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

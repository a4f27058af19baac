# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Config keys of box_panoptic, added to a detectron2 config by :func:`add_box_panoptic_config`.

Section numbers refer to ``shared/spec/METHOD.md``. Never changes detectron2's global defaults:
only the ``cfg`` passed in is extended.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_box_panoptic_config"]


def add_box_panoptic_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.BOX_PANOPTIC`` (and the input/solver keys box_panoptic reads) to ``cfg``.

    Args:
        cfg: a detectron2 config, typically from ``detectron2.config.get_cfg()``.

    Returns:
        The same ``cfg``, extended in place (returned for chaining).
    """
    _C = cfg
    _C.MODEL.BOX_PANOPTIC = CN()
    bp = _C.MODEL.BOX_PANOPTIC

    # ---- classes (METHOD §5, §6) ---------------------------------------------------------------
    # Left at -1 / [], all three come from the metadata of the datasets in DATASETS.TRAIN / TEST
    # (box_panoptic.data.class_layout: standard or separated panoptic metadata; things may be
    # anywhere). Set explicitly, they are checked against that metadata.
    # Semantic classes (stuff + things) predicted by the semantic head. 19 Cityscapes, 133 COCO.
    bp.NUM_CLASSES = -1
    # Thing classes predicted by the box classifier. 8 Cityscapes, 80 COCO.
    bp.NUM_THING_CLASSES = -1
    # [first, last] semantic index of the thing classes when they form one contiguous block;
    # detection label k (0-based) is semantic class first + k. Released code: (11, 18).
    bp.INSTANCE_ID_RANGE = []

    # ---- dense head (METHOD §2.2) --------------------------------------------------------------
    # Registered names: dense head (BOX_PANOPTIC_HEADS_REGISTRY), levelness predictor
    # (LEVELNESS_HEAD_REGISTRY). The semantic head is MODEL.SEM_SEG_HEAD.NAME (SEM_SEG_HEADS).
    bp.HEAD_NAME = "BoxPanopticHead"
    bp.LEVELNESS_HEAD_NAME = "LevelnessHead"
    # FPN levels fed to the head, finest first, and their strides.
    bp.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    bp.FPN_STRIDES = [8, 16, 32, 64, 128]
    # Number of conv3x3 + norm + ReLU blocks in each tower.
    bp.NUM_CONVS = 4
    # Width of the classification tower (box classes + semantic fusion input).
    bp.CLS_TOWER_CHANNELS = 128
    # Width of the localization tower (box regression, centerness, levelness fusion input).
    bp.BBOX_TOWER_CHANNELS = 256
    # Norm in the towers: "GN" (released), "BN", "SyncBN" or "" (none).
    bp.NORM = "GN"
    # GroupNorm groups in the classification / localization towers (released: ch / 8 and 32).
    bp.CLS_TOWER_GN_GROUPS = 16
    bp.BBOX_TOWER_GN_GROUPS = 32
    # Focal-loss prior probability for the box classifier bias (METHOD §2.2 init note).
    bp.PRIOR_PROB = 0.01
    # Std of the normal init of every head conv.
    bp.INIT_STD = 0.01
    # Upper clamp of the regression exponent: exp(min(s * x, ln(BBOX_EXP_CLAMP))) (METHOD §2.2).
    bp.BBOX_EXP_CLAMP = 10000.0
    # Regress ltrb as stride * exp(s * x), in units of each level's stride (FCOS-imprv), instead
    # of exp(s * x) pixels (released model, kept as default for checkpoint parity). From scratch,
    # pixel units start every box at 1 px and P7 boxes 128x too small.
    bp.REG_STRIDE_UNITS = False

    # ---- inference (METHOD §4, §5) ---------------------------------------------------------------
    # Candidates per level need sigmoid(class logit) > this (raw probability, before centerness).
    # Released default 0.05; the Cityscapes release uses 0.06.
    bp.PRE_NMS_THRESH = 0.05
    # At most this many candidates per level and image, by score = prob * centerness.
    bp.PRE_NMS_TOP_N = 1000
    # Per-class NMS IoU threshold.
    bp.NMS_THRESH = 0.6
    # Class-agnostic NMS IoU threshold applied after per-class NMS (hard-coded 0.97 in release).
    bp.AGNOSTIC_NMS_THRESH = 0.97
    # Detections kept per image after NMS (k-th value threshold: ties may keep a few more).
    bp.POST_NMS_TOP_N = 100
    # Foreground acceptance sigma on S_j = P_loc * P_sem (the supplementary's Eq. 8). The released
    # code uses 0.4 (the default here, for checkpoint parity); the paper's grid search found 0.3.
    bp.MASK_THRESH = 0.4
    # Location term P_loc: "giou_plus1" (released: (I+1)/(U+1) - (C-U)/C) or "iou" (paper text).
    bp.LOCATION_TERM = "giou_plus1"
    # Build the global dense box map with levelness (Eq. 15). False: keep every level's box and take
    # the max over levels of the location term (supplementary Eqs. S1-S3, the ablation).
    bp.USE_LEVELNESS = True
    # Where the dense box map B(p) comes from: "levelness" (Eq. 15, the release: at each stride-4
    # cell the regression of the level levelness picks, bilinearly resized) or "finest" (the finest
    # level's regression at every cell, which DENSE_BOX_LOSS then trains at every thing cell
    # against its owner's box: one box per stride-4 cell, no blend of coarse cells across the
    # edge between touching objects; levelness and USE_LEVELNESS are then not read). Not in the
    # paper; "finest" requires DENSE_BOX_LOSS.
    bp.DENSE_BOX_SOURCE = "levelness"
    # P_sem(p, c_j) for a query of thing class c_j: "class" (the release: the semantic
    # probability of c_j) or "relative" (the summed probability of the thing classes, times
    # p(c_j) / the likeliest thing class's probability; mask_construction.
    # thing_semantic_probabilities). Inference and the mask loss. Not in the paper.
    bp.THING_SEMANTICS = "class"
    # A detection's thing class: "box" (the release: the box classifier's, per location) or
    # "box_and_semantic" (argmax of the box classifier's class probabilities times each thing
    # class's mean semantic probability inside the box; modeling/class_vote.py). The score stays
    # the box classifier's. Inference only. Not in the paper.
    bp.DETECTION_CLASS = "box"
    # Where a thing query may take pixels (step 6): "soft_mask" (the release: wherever S_j >=
    # sigma) or "semantic_things" (only where the output-resolution semantic argmax is a thing
    # class: the stride-4 soft masks, bilinearly upsampled, spill past thin and small things;
    # the semantic logits, trained at full resolution, place the boundary). Not in the paper;
    # tried at 600 iterations and not kept: street PQ_th down by 3 (docs/learning.md).
    bp.THING_PIXELS = "soft_mask"

    # ---- panoptic assembly (METHOD §4 step 7; not in the released code) --------------------------
    # Registered name in PANOPTIC_ASSEMBLY_REGISTRY: "assemble_argmax" (each pixel to the detection
    # with the highest S_j >= sigma), "assemble_paste" (Panoptic-FPN-like, by descending score) or
    # "assemble_argmax_keep_by_score" (the instances paste keeps, their pixels shared by S_j).
    bp.ASSEMBLY = "assemble_argmax"
    # Detections below this score take no part in the panoptic output (they stay in "instances").
    bp.DET_SCORE_THRESH = 0.3
    # An instance whose visible area is below this fraction of its accepted mask area is dropped.
    bp.OVERLAP_THRESH = 0.5
    # Instances with fewer visible pixels than this (at output resolution) are dropped.
    bp.INSTANCE_AREA_MIN = 0
    # Stuff segments smaller than this (pixels, output resolution) become void.
    bp.STUFF_AREA_MIN = 2048
    # Candidate detections evaluated per output pixel: the K with the highest soft mask in the
    # pixel's 2x2 window of stride-4 cells (exact while at most K detections reach sigma there).
    # Post-processing time and memory at full resolution grow with K, not with the detections.
    bp.ASSEMBLY_CANDIDATES = 4
    # Exact post-processing: where more than ASSEMBLY_CANDIDATES detections reach sigma in a
    # window (crowds), that window's pixels also list the further detections, so the masks
    # equal full-resolution upsampling; only crowded windows pay. False: at most
    # ASSEMBLY_CANDIDATES per window (the K strongest kept). Traced exports always use the fixed K.
    bp.ASSEMBLY_EXACT = True
    # Run the network on channels-last (NHWC) tensors: oneDNN's faster convolution path on CPUs.
    bp.CHANNELS_LAST = True
    # Before every evaluation, choose MASK_THRESH and DET_SCORE_THRESH by the sigma search on a
    # few images of a training dataset (never the evaluated one) and set the pair with the
    # highest PQ there (box_panoptic.evaluation.calibration). Off: the configured pair, as the
    # release. The choice is logged and written to OUTPUT_DIR/inference/threshold_calibration.json.
    bp.CALIBRATION = CN()
    bp.CALIBRATION.ENABLED = False
    # The dataset to calibrate on; "" = the first of DATASETS.TRAIN.
    bp.CALIBRATION.DATASET = ""
    # Images used, spread evenly over the dataset.
    bp.CALIBRATION.MAX_IMAGES = 50
    # The grid (the configured pair is always tried as well, and wins ties).
    bp.CALIBRATION.SIGMAS = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
    bp.CALIBRATION.SCORE_THRESHS = [0.05, 0.1, 0.2, 0.3]

    # ---- training (METHOD §3) --------------------------------------------------------------------
    # Size-of-interest boundaries between levels on m = max(l*, t*, r*, b*), in input pixels:
    # P3 (0, 64], P4 (64, 128], P5 (128, 256], P6 (256, 512], P7 (512, inf).
    bp.SIZES_OF_INTEREST = [64, 128, 256, 512]
    # Which level a positive location belongs to: "location" (FCOS: m = max(l*, t*, r*, b*) of
    # each location) or "instance" (m = max(w, h) / 2 of the instance's box, the same for all its
    # locations: one level per object, several times more positives for small objects) or
    # "instance_area" (the same with m = sqrt(w h) / 2, the box's scale, as FoveaBox assigns
    # levels: a tall thin object goes to the finer level of its area, where its width still holds
    # locations, instead of the level of its height).
    # Training targets only (classification, boxes, centerness, levelness).
    bp.LEVEL_ASSIGNMENT = "location"
    # Factor f >= 1 that widens each level's size range (lo, hi] to (lo / f, hi * f] for the
    # positives (classification, boxes, centerness), so an object whose size lies near a
    # boundary is a positive on both levels: f = sqrt(2) puts every object on two adjacent
    # levels, as FoveaBox's eta = 2. Levelness targets keep one level per location. 1: FCOS /
    # the release.
    bp.LEVEL_RANGE_OVERLAP = 1.0
    # Every object also owns the location of its level nearest its box centre, on its mask or
    # not (thin and small objects whose mask holds no location of their level get a positive).
    # Training targets only. False: FCOS / the release.
    bp.CENTRE_POSITIVE = False
    # With instance masks, a location is a positive only on its object's mask: a location inside
    # the box but on the background (beside a thin person, inside a ring) is a negative. An
    # object none of whose locations of its level lie on its mask keeps its in-box locations.
    # Training targets only (classification, boxes, centerness). False: FCOS / the release.
    # Measured (README "Learning things"): higher PQ_th on the street style, lower on the shapes
    # style at both seeds tried, so no config sets it.
    bp.POSITIVES_ON_MASK = False
    # With instance masks, the classification loss ignores (neither positive nor negative) the
    # positives that lie on no pixel of their object's mask (see POSITIVES_ON_MASK); box and
    # centerness losses keep them. An object none of whose positives lie on its mask keeps them
    # all. Training targets only. Excludes POSITIVES_ON_MASK. False: FCOS / the release.
    # Measured (docs/learning.md): street PQ_th up less than with POSITIVES_ON_MASK, shapes PQ_th
    # down as with it, so no config sets it.
    bp.IGNORE_OFF_MASK = False
    # Weight of each positive location in the box (GIoU) loss: "centerness" (FCOS, the release:
    # the centerness target, so locations near the box edges hardly count) or "uniform" (every
    # positive alike; mask construction reads every pixel's box, edges included).
    bp.BOX_LOSS_WEIGHTING = "centerness"
    # Sigmoid focal loss parameters for the box classifier.
    bp.FOCAL_ALPHA = 0.25
    bp.FOCAL_GAMMA = 2.0
    # Loss weights (the trainer sums every loss_* value).
    bp.LOSS_WEIGHT_CLS = 1.0
    bp.LOSS_WEIGHT_BOX = 1.0
    bp.LOSS_WEIGHT_CTR = 1.0
    bp.LOSS_WEIGHT_SEM = 1.0
    bp.LOSS_WEIGHT_LEVELNESS = 1.0
    bp.LOSS_WEIGHT_MASK = 1.0
    bp.LOSS_WEIGHT_DENSE_BOX = 1.0
    bp.LOSS_WEIGHT_SEM_INSTANCE = 1.0
    # Weight of loss_cls_ce: a softmax cross-entropy over the K_th box-class logits at each
    # positive location, divided like loss_cls. It trains only which thing class a positive is
    # (shift-invariant: the logits' common level, the score, is left to the focal loss). 0 (the
    # release): the loss is not computed.
    bp.LOSS_WEIGHT_CLS_CE = 0.0
    # Optional loss on the constructed soft masks (METHOD §3.4). Off in weak supervision.
    bp.MASK_LOSS = False
    # Form of the mask loss per instance: "bce" (mean BCE over every stride-4 cell of the image:
    # a small object's cells are a sliver of that mean) or "dice" (1 - 2 sum(S T) / (sum(S^2) +
    # sum(T^2)), the same weight for every instance whatever its size; METHOD 3.4's alternative).
    bp.MASK_LOSS_TYPE = "bce"
    # The mask loss's gradient also reaches the semantic logits (METHOD 3.4). False: it trains
    # only the dense box map, and the semantic head learns from its cross-entropy alone (a mask
    # loss pushing P_sem of a class down on a touching instance of that class fights it).
    bp.MASK_LOSS_SEMANTIC_GRAD = True
    # GIoU loss on the dense box map mask construction reads (Eq. 15 at the true level): at every
    # stride-4 cell of a thing, the box regressed by its levelness-target level (the finest level
    # with DENSE_BOX_SOURCE "finest"), bilinearly resized to stride 4 as at inference, against its
    # owner's box. Unlike the FCOS box loss it weighs every cell of an object alike, edge cells and
    # the blend between touching objects included. Off by default (not in the paper).
    bp.DENSE_BOX_LOSS = False
    # How loss_dense_box averages its cells: "cells" (every thing cell alike, so large objects
    # dominate) or "instance" (each instance's cells averaged first, then the instances: a
    # 100-px object counts as much as a 5000-px one, as in PQ).
    bp.DENSE_BOX_LOSS_NORM = "cells"
    # What loss_cls and loss_ctr are divided by: "batch" (FCOS and the release: the batch's
    # positives, averaged over workers, at least 1) or "ema" (an exponential moving average of
    # that count, momentum 0.9, as detectron2's own dense detectors do). With "batch" a batch
    # without things divides the focal loss over every location by 1: on the shapes style one
    # such step had a gradient norm 117x the median and set training back by ~40 iterations.
    # The average is a buffer of the criterion, so checkpoints carry it and resume exactly.
    bp.POSITIVES_NORMALIZER = "batch"
    # Add loss_sem_instance: the semantic cross-entropy averaged over each thing's box, then over
    # the instances, so every object counts alike whatever its size and class frequency (as
    # Panoptic FPN's mask loss averages per RoI). loss_sem_seg's per-pixel mean is left as is: there
    # the stuff pixels and the large objects dominate, and P_sem of small and rare things, which
    # mask construction multiplies by, learns late. Off by default (not in the paper).
    bp.SEM_INSTANCE_LOSS = False
    # Weak supervision (supplementary §3): boxes + semantic labels only, never instance masks;
    # pixel ownership by the smallest box containing it.
    bp.WEAK_SUPERVISION = False
    # Training samples that cannot be used (unreadable file, size or id mismatch): "raise" stops at
    # the first with an error naming the file; "skip" logs each (with a running count) and goes on.
    _C.INPUT.BAD_SAMPLE_POLICY = "raise"
    # Report network-only time in inference (skip post-processing), like Panoptic-DeepLab.
    bp.BENCHMARK_NETWORK_SPEED = False
    return cfg

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""MODEL.BOX_PANOPTIC.POSITIVES_NORMALIZER: what loss_cls and loss_ctr are divided by."""

import copy

import pytest
import torch

from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from .helpers import CITYSCAPES_CONFIG, SYNTHETIC_CONFIG, get_model, synthetic_batch

KEY = "MODEL.BOX_PANOPTIC.POSITIVES_NORMALIZER"


def test_moving_average_starts_at_the_first_batch_with_positives():
    ema = get_model(SYNTHETIC_CONFIG, KEY, "ema").criterion
    batch = get_model(SYNTHETIC_CONFIG, KEY, "batch").criterion
    counts = [0.0, 0.0, 50.0, 60.0, 0.0, 55.0]
    got = [float(ema._positives_normalizer(torch.tensor(c))) for c in counts]
    # by hand: 1 until a batch has positives; then 50; 0.9 * 50 + 0.1 * 60 = 51;
    # 0.9 * 51 + 0.1 * 1 = 46; 0.9 * 46 + 0.1 * 55 = 46.9
    assert got == pytest.approx([1.0, 1.0, 50.0, 51.0, 46.0, 46.9])
    assert float(ema.positives_average) == pytest.approx(46.9)
    plain = [float(batch._positives_normalizer(torch.tensor(c))) for c in counts]
    assert plain == [1.0, 1.0, 50.0, 60.0, 1.0, 55.0]


def test_the_average_is_checkpointed_only_where_it_is_used():
    ema = get_model(SYNTHETIC_CONFIG, KEY, "ema")
    assert "criterion.positives_average" in ema.state_dict()
    # the released layout (Cityscapes config, "batch") gains no key
    released = get_model(CITYSCAPES_CONFIG)
    assert released.criterion.positives_normalizer == "batch"
    assert not [k for k in released.state_dict() if k.startswith("criterion.")]
    with pytest.raises(ValueError, match="positives_normalizer.*'median'"):
        get_model(SYNTHETIC_CONFIG, KEY, "median")


def _without_things(record):
    record = copy.copy(record)
    h, w = record["image"].shape[-2:]
    empty = Instances((h, w))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    empty.gt_masks = torch.zeros(0, h, w, dtype=torch.bool)
    record["instances"] = empty
    return record


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_a_batch_without_things_is_divided_by_the_usual_count(synthetic_root, mode):
    """After a batch with things, a batch without any: "batch" divides its focal sum by 1, "ema"
    by about the previous batch's positives."""
    model = get_model(SYNTHETIC_CONFIG, KEY, mode).train()
    with_things = synthetic_batch(synthetic_root, 2)
    assert all(len(r["instances"]) for r in with_things)
    empty = [_without_things(r) for r in with_things]
    with EventStorage(), torch.no_grad():
        model(with_things)
        first = float(model.criterion.positives_average) if mode == "ema" else None
        losses = model(empty)
        reference = get_model(SYNTHETIC_CONFIG, KEY, "batch").train()(empty)  # divided by 1
    assert losses["loss_box"] == 0 and losses["loss_ctr"] == 0
    ratio = float(reference["loss_cls"] / losses["loss_cls"])
    if mode == "batch":
        assert ratio == pytest.approx(1.0, rel=1e-5)
    else:
        assert first > 10  # the fixture's two images hold dozens of positives
        assert ratio == pytest.approx(0.9 * first + 0.1, rel=1e-4)

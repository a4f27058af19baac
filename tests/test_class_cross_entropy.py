# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""MODEL.BOX_PANOPTIC.LOSS_WEIGHT_CLS_CE: a softmax cross-entropy over the thing-class logits at
the positive locations (losses.positive_class_cross_entropy)."""

import math

import pytest
import torch

from detectron2.utils.events import EventStorage

from box_panoptic.modeling.losses import positive_class_cross_entropy

from .helpers import CITYSCAPES_CONFIG, SYNTHETIC_CONFIG, get_model, synthetic_batch

KEY = "MODEL.BOX_PANOPTIC.LOSS_WEIGHT_CLS_CE"


def test_value_by_hand_and_shift_invariance():
    # one image, 3 locations, K_th = 2; labels: class 0, background (2), class 1
    logits = torch.tensor([[[2.0, 0.0], [5.0, 5.0], [0.0, 1.0]]], requires_grad=True)
    labels = torch.tensor([[0, 2, 1]])
    positive = labels < 2
    got = positive_class_cross_entropy(logits, labels, positive, torch.tensor(4.0))
    # by hand: -log(e^2 / (e^2 + 1)) - log(e / (1 + e)), divided by 4; the background location
    # (logits 5, 5) takes no part
    want = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 4
    assert float(got) == pytest.approx(want, rel=1e-6)
    # a constant added to every logit of a location (its score level) changes nothing
    shifted = logits.detach() + torch.tensor([[[3.0], [-7.0], [-4.0]]])
    again = positive_class_cross_entropy(shifted, labels, positive, torch.tensor(4.0))
    assert float(again) == pytest.approx(want, rel=1e-5)
    # and its gradient at each positive sums to zero over the classes (softmax - one-hot)
    got.backward()
    assert logits.grad[0, 1].abs().max() == 0
    assert logits.grad[0, [0, 2]].sum(dim=1).abs().max() < 1e-7
    assert logits.grad[0, 0, 0] < 0 < logits.grad[0, 0, 1]


def test_no_positive_gives_zero_with_a_graph():
    logits = torch.randn(2, 5, 3, requires_grad=True)
    labels = torch.full((2, 5), 3)
    loss = positive_class_cross_entropy(logits, labels, labels < 3, torch.tensor(1.0))
    assert float(loss) == 0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().max() == 0


def test_criterion_adds_it_only_with_a_positive_weight(synthetic_root):
    released = get_model(CITYSCAPES_CONFIG)
    assert released.criterion.weights["loss_cls_ce"] == 0
    batch = synthetic_batch(synthetic_root, 2)
    torch.manual_seed(0)
    off = get_model(SYNTHETIC_CONFIG, KEY, 0.0).train()
    torch.manual_seed(0)
    on = get_model(SYNTHETIC_CONFIG, KEY, 0.5).train()
    for model in (off, on):  # every class logit equal to the prior bias: CE is log(K_th) exactly
        torch.nn.init.zeros_(model.head.box_cls_logits.weight)
    with EventStorage(), torch.no_grad():
        without = off(batch)
        with_ce = on(batch)
    assert "loss_cls_ce" not in without
    # the same weights and batch: every other loss is unchanged, and the new one is half of
    # log(K_th) per positive, divided by the positives (the first batch's count, with "ema")
    for k, v in without.items():
        assert float(with_ce[k]) == pytest.approx(float(v), rel=1e-5), k
    k_th = on.criterion.num_thing_classes
    assert k_th >= 2
    assert float(with_ce["loss_cls_ce"]) == pytest.approx(0.5 * math.log(k_th), rel=1e-5)

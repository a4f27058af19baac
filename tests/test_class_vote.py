# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""DETECTION_CLASS "box_and_semantic": a detection's class from the box classifier and the
semantic head together (box_panoptic.modeling.class_vote)."""

import pytest
import torch

from box_panoptic.modeling.class_vote import (
    box_mean_probabilities,
    box_mean_probabilities_reference,
    location_class_probabilities,
    vote_thing_classes,
)

from .helpers import SYNTHETIC_CONFIG, get_model


@pytest.mark.parametrize("stride", [4, 8])
def test_box_means_equal_the_slice_reference(stride):
    g = torch.Generator().manual_seed(0)
    prob = torch.rand(3, 9, 13, generator=g)
    h, w = 9 * stride, 13 * stride
    xy0 = torch.rand(40, 2, generator=g) * torch.tensor([w, h])
    wh = torch.rand(40, 2, generator=g) * torch.tensor([w, h]) / 2
    boxes = torch.cat([xy0, xy0 + wh], dim=1)
    boxes[0] = torch.tensor([-5.0, -5.0, w + 5.0, h + 5.0])  # past every edge: the whole grid
    boxes[1] = torch.tensor([3.0, 3.0, 3.0, 3.0])  # a point: one cell
    got = box_mean_probabilities(prob, boxes, stride)
    ref = box_mean_probabilities_reference(prob, boxes, stride)
    assert got.shape == (40, 3)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(got[0], prob.mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(got[1], prob[:, 0, 0])


def test_location_probabilities_read_each_detection_own_level_and_cell():
    g = torch.Generator().manual_seed(1)
    box_cls = [torch.randn(4, 6, 8, generator=g), torch.randn(4, 3, 4, generator=g)]
    levels = torch.tensor([0, 1, 1, 0])
    loc = torch.tensor([0, 11, 5, 47])
    got = location_class_probabilities(box_cls, levels, loc)
    for d in range(4):
        expect = box_cls[int(levels[d])].reshape(4, -1)[:, int(loc[d])].sigmoid()
        assert torch.allclose(got[d], expect)


def test_vote_takes_the_class_both_heads_find_likeliest():
    box = torch.tensor([[0.30, 0.25, 0.05], [0.30, 0.25, 0.05]])
    sem = torch.tensor([[0.10, 0.80, 0.10], [0.40, 0.30, 0.30]])
    assert vote_thing_classes(box, sem).tolist() == [1, 0]


def test_model_relabels_only_with_the_key_and_keeps_boxes_and_scores():
    """On a model whose semantic head says thing class 1 everywhere, "box_and_semantic" gives
    every detection that class; "box" (the default) keeps the box classifier's."""
    out = {}
    for mode in ("box", "box_and_semantic"):
        model = get_model(
            SYNTHETIC_CONFIG,
            "MODEL.BOX_PANOPTIC.DETECTION_CLASS", mode,
            "MODEL.BOX_PANOPTIC.PRE_NMS_THRESH", 0.0,
        ).eval()  # fmt: skip
        pp = model.postprocessor
        torch.manual_seed(0)
        images = model.preprocess_image([{"image": torch.randint(0, 255, (3, 64, 96)).float()}])
        with torch.no_grad():
            net = model.network(images)
            thing1 = int(pp.thing_semantic_ids[1])
            net["sem_seg"] = torch.full_like(net["sem_seg"], -10.0)
            net["sem_seg"][:, thing1] = 10.0
            out[mode] = pp.decode(net, images, [(64, 96)])[0]
    box, voted = out["box"], out["box_and_semantic"]
    assert len(box.scores) > 1 and (box.classes != pp.thing_semantic_ids[1]).any()
    assert (voted.classes == pp.thing_semantic_ids[1]).all()
    assert torch.equal(voted.boxes, box.boxes) and torch.equal(voted.scores, box.scores)


def test_unknown_detection_class_is_refused():
    with pytest.raises(ValueError, match="DETECTION_CLASS"):
        get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.DETECTION_CLASS", "semantic")

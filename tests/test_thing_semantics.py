# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""MODEL.BOX_PANOPTIC.THING_SEMANTICS: the P_sem that soft masks read for thing queries."""

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import LazyConfig, instantiate

from box_panoptic.modeling.mask_construction import thing_semantic_probabilities
from box_panoptic.modeling.postprocess import DecodedImage

from .helpers import CONFIGS, SYNTHETIC_CONFIG, get_model


def _relative_reference(prob, thing_ids):
    """Pixel by pixel: P_thing * p(c) / max thing p, for (C, h, w) probabilities."""
    out = prob.clone()
    c, h, w = prob.shape
    for y in range(h):
        for x in range(w):
            things = [float(prob[k, y, x]) for k in thing_ids]
            for k, p in zip(thing_ids, things):
                out[k, y, x] = sum(things) * p / max(things)
    return out


def test_relative_thing_semantics_match_a_pixel_by_pixel_reference():
    # by hand: stuff 0.4, car 0.45, person 0.15 -> car 0.6 (it is the likeliest thing: P_thing),
    # person 0.6 * 0.15 / 0.45 = 0.2; the stuff row is unchanged
    hand = torch.tensor([0.4, 0.45, 0.15]).view(3, 1, 1)
    got = thing_semantic_probabilities(hand, torch.tensor([1, 2]), "relative")
    assert got.flatten().tolist() == pytest.approx([0.4, 0.6, 0.2])
    torch.manual_seed(0)
    prob = torch.randn(2, 6, 3, 5).softmax(dim=1)
    thing_ids = torch.tensor([5, 2, 3])
    got = thing_semantic_probabilities(prob, thing_ids, "relative")
    for i in range(2):
        ref = _relative_reference(prob[i], thing_ids.tolist())
        assert torch.allclose(got[i], ref, atol=1e-6)
    # stuff rows untouched; each pixel's likeliest thing class gets the whole thing probability
    assert torch.equal(got[:, [0, 1, 4]], prob[:, [0, 1, 4]])
    best = prob[:, thing_ids].argmax(dim=1, keepdim=True)
    assert torch.allclose(
        got[:, thing_ids].gather(1, best), prob[:, thing_ids].sum(1, keepdim=True), atol=1e-6
    )
    # "class" is the release: the probabilities themselves
    assert thing_semantic_probabilities(prob, thing_ids, "class") is prob
    with pytest.raises(ValueError, match="unknown mode 'any'"):
        thing_semantic_probabilities(prob, thing_ids, "any")


def _decoded(num_classes: int):
    torch.manual_seed(1)
    return DecodedImage(
        boxes=torch.tensor([[4.0, 4.0, 20.0, 20.0]]),
        scores=torch.tensor([0.9]),
        classes=torch.tensor([num_classes - 1]),
        dense=torch.zeros(4, 8, 8),
        sem_seg_stride8=torch.randn(num_classes, 8, 8),
        padded_size=(32, 32),
        image_size=(32, 32),
        output_size=(32, 32),
    )


@pytest.mark.parametrize("mode", ["class", "relative"])
def test_thing_semantics_key_reaches_mask_construction_and_the_mask_loss(synthetic_root, mode):
    model = get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.THING_SEMANTICS", mode)
    post = model.postprocessor
    assert post.thing_semantics == model.criterion.thing_semantics == mode
    num_classes = model.sem_seg_head.cls_logits.out_channels
    d = _decoded(num_classes)
    _, sem_prob4, _ = post.construct(d)
    softmax = F.interpolate(d.sem_seg_stride8[None], size=(8, 8), mode="bilinear")[0].softmax(0)
    expected = thing_semantic_probabilities(softmax, post.thing_semantic_ids, mode)
    assert torch.allclose(sem_prob4, expected, atol=1e-6)
    assert torch.allclose(sem_prob4, softmax, atol=1e-6) == (mode == "class")


def test_thing_semantics_key_is_refused_when_unknown_or_set_apart(synthetic_root):
    with pytest.raises(ValueError, match="unknown THING_SEMANTICS 'agnostic'"):
        get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.THING_SEMANTICS", "agnostic")
    cfg = LazyConfig.load(f"{CONFIGS}/Synthetic/box_panoptic_R_18_synthetic.py")
    cfg.model.criterion.thing_semantics = "relative"
    cfg.model.postprocessor.thing_semantics = "class"
    with pytest.raises(ValueError, match="thing_semantics 'relative' but the postprocessor"):
        instantiate(cfg.model)

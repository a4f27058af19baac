# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""MODEL.BOX_PANOPTIC.THING_PIXELS: where thing queries may take output pixels."""

import pytest
import torch

from box_panoptic.modeling.assembly import assemble_argmax
from box_panoptic.modeling.postprocess import DecodedImage, instance_masks
from box_panoptic.modeling.upsampling import dense_candidates, sample_candidates

from .helpers import SYNTHETIC_CONFIG, get_model
from .test_upsampling import IS_THING, KW, _reference_masks, crowded_pile_scene


@pytest.mark.parametrize("seed", [0, 1])
def test_restricted_candidates_equal_the_dense_reference_restricted(seed):
    """A crowded pile (exact mode lists further detections at some pixels): restricting the
    candidates to a pixel set equals zeroing the full-resolution masks outside it, for the
    instance masks and the assembly, the crowded pixels' further detections included."""
    p, sigma, k = 8, 0.35, 4
    scene = crowded_pile_scene(seed, p)
    classes, scores, active, sem = scene.classes, scene.scores, scene.active, scene.sem
    allowed = torch.rand(scene.image, generator=scene.g) < 0.6
    cand = sample_candidates(scene.masks4, scene.grid, k, sigma, active, exact=True)
    assert cand.has_extra
    dense = _reference_masks(scene.masks4, scene.padded, scene.image)
    restricted = cand.restricted_to(allowed)
    assert torch.equal(instance_masks(restricted, sigma, p), (dense >= sigma) & allowed)
    # the extra candidates were restricted too: some crowded pixel lost a detection
    assert not torch.equal(instance_masks(restricted, sigma, p), dense >= sigma)
    ref = assemble_argmax(
        dense_candidates(dense * allowed), classes, scores, active, sem, IS_THING,
        mask_thresh=sigma, **KW,
    )  # fmt: skip
    got = assemble_argmax(
        restricted, classes, scores, active, sem, IS_THING, mask_thresh=sigma, **KW
    )
    for key in ref._fields:
        assert torch.equal(getattr(got, key), getattr(ref, key)), key


def _decoded(num_classes: int, thing: int, stuff: int):
    """One detection whose soft mask covers its box, on semantics that call the left half of
    the box ``thing`` and everything else ``stuff``."""
    sem = torch.full((num_classes, 8, 8), -5.0)
    sem[stuff] = 5.0
    sem[thing, :, :4] = 10.0  # stride 4: output columns 0-15 thing, the rest stuff
    box = torch.tensor([[2.0, 2.0, 30.0, 30.0]])
    return DecodedImage(
        boxes=box,
        scores=torch.tensor([0.9]),
        classes=torch.tensor([thing]),
        dense=box.view(4, 1, 1).expand(4, 8, 8).contiguous(),  # P_loc = 1 at every cell
        sem_seg_stride8=sem,
        padded_size=(32, 32),
        image_size=(32, 32),
        output_size=(32, 32),
    )


@pytest.mark.parametrize("mode", ["soft_mask", "semantic_things"])
def test_thing_pixels_key_keeps_thing_masks_off_stuff_pixels(synthetic_root, mode):
    model = get_model(
        SYNTHETIC_CONFIG,
        "MODEL.BOX_PANOPTIC.THING_PIXELS", mode,
        "MODEL.BOX_PANOPTIC.THING_SEMANTICS", "class",
    )  # fmt: skip
    post = model.postprocessor
    assert post.thing_pixels == mode
    num_classes = model.sem_seg_head.cls_logits.out_channels
    thing = int(post.thing_semantic_ids[0])
    stuff = next(c for c in range(num_classes) if c not in post.thing_semantic_ids.tolist())
    d = _decoded(num_classes, thing, stuff)
    with torch.no_grad():
        out = post.postprocess(d, sigma=1e-6, tau=0.0)  # P_sem of a stuff pixel: ~1e-4
    panoptic, info = out["panoptic_seg"]
    labels = out["sem_seg"].argmax(dim=0)
    on_thing = panoptic == [s["id"] for s in info if s["isthing"]][0]
    assert on_thing[labels == thing].all()  # the thing pixels are the instance's either way
    stuff_pixels = labels == stuff
    if mode == "semantic_things":
        # the instance stops where the semantics do; the rest is the stuff segment
        assert not on_thing[stuff_pixels].any()
        assert not out["instances"].pred_masks[0][stuff_pixels].any()
        stuff_id = [s["id"] for s in info if not s["isthing"]][0]
        assert (panoptic[stuff_pixels] == stuff_id).all()
    else:  # the release: the soft mask reaches sigma on the stuff pixels inside the box too
        assert on_thing[stuff_pixels].sum() > 100


def test_thing_pixels_key_is_refused_when_unknown(synthetic_root):
    with pytest.raises(ValueError, match="unknown THING_PIXELS 'boxes'"):
        get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.THING_PIXELS", "boxes")

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""MODEL.BOX_PANOPTIC.SEM_TOWER_CONVS: the semantic head's own tower on the FPN maps instead of
the classification tower it shares with the box classifier (the release)."""

import pytest
import torch

from .helpers import CITYSCAPES_CONFIG, SYNTHETIC_CONFIG, get_model

KEY = "MODEL.BOX_PANOPTIC.SEM_TOWER_CONVS"


def _fpn_and_outputs(model, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(1, 3, 64, 96)
    features = model.backbone(x)
    fpn = [features[f] for f in model.in_features]
    out = model.head(fpn)
    return fpn, out


def test_release_reads_the_classification_tower():
    released = get_model(CITYSCAPES_CONFIG)
    assert released.sem_seg_head.tower is None
    assert not [k for k in released.state_dict() if k.startswith("sem_seg_head.tower")]
    model = get_model(SYNTHETIC_CONFIG).eval()
    with torch.no_grad():
        fpn, out = _fpn_and_outputs(model)
        logits = model.sem_seg_head(out["cls_feats"], fpn)
        # perturbing the classification tower's last conv changes the semantic logits
        conv = model.head.cls_tower[-3]
        conv.weight.add_(0.1 * torch.randn_like(conv.weight))
        _, out2 = _fpn_and_outputs(model)
        assert (model.sem_seg_head(out2["cls_feats"], fpn) - logits).abs().max() > 1e-4


def test_own_tower_is_independent_of_the_classification_tower():
    model = get_model(SYNTHETIC_CONFIG, KEY, 4).eval()
    tower = model.sem_seg_head.tower
    assert sum(isinstance(m, torch.nn.Conv2d) for m in tower) == 4
    fpn, out = _fpn_and_outputs(model)
    logits = model.sem_seg_head(out["cls_feats"], fpn)
    assert logits.shape[1] == model.sem_seg_head.cls_logits.out_channels
    assert tuple(logits.shape[-2:]) == tuple(fpn[0].shape[-2:])
    # no gradient of the semantic logits reaches the classification tower; its own tower gets one
    logits.square().mean().backward()
    assert all(p.grad is None for p in model.head.cls_tower.parameters())
    assert tower[0].weight.grad is not None and tower[0].weight.grad.abs().max() > 0
    with torch.no_grad():  # nor does the classification tower's output move them
        again = model.sem_seg_head([torch.randn_like(f) for f in out["cls_feats"]], fpn)
    assert torch.equal(again, logits.detach())
    with pytest.raises(ValueError, match="needs the FPN maps"):
        model.sem_seg_head(out["cls_feats"])

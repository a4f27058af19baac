# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""semantic_labels (the stuff labels read off the stride-8 logits) against the plain maximum
over the full-resolution logits: the same labels, including near-ties and exact ties."""

import pytest
import torch
import torch.nn.functional as F

from box_panoptic.modeling import semantic_labels as module
from box_panoptic.modeling.semantic_labels import semantic_labels
from box_panoptic.modeling.upsampling import output_grid


def _full(sem8, padded, image):
    up = F.interpolate(sem8[None], size=padded, mode="bilinear", align_corners=False)[0]
    return up[:, : image[0], : image[1]].contiguous()


def _regions(c, h, w, seed, noise=0.0):
    """(c, h, w) logits with smooth class regions (borders between them) plus noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(c, max(h // 6, 1), max(w // 6, 1), generator=g) * 4
    sem8 = F.interpolate(low[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return sem8 + noise * torch.randn(c, h, w, generator=g)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("image", [(96, 160), (90, 155)])  # padded to 96x160 or not
def test_labels_equal_the_full_resolution_maximum(seed, image, monkeypatch):
    padded = (96, 160)
    sem8 = _regions(7, 12, 20, seed)
    grid = output_grid((12, 20), padded, image, image)
    full = _full(sem8, padded, image)
    monkeypatch.setattr(module, "_SHORTCUT_MIN_SURE", 0.0)  # always the shortcut
    got = semantic_labels(full, sem8, grid)
    assert torch.equal(got, full.max(dim=0).indices)
    assert len(got.unique()) >= 3  # several regions, so borders to fall back on


def test_leads_that_rounding_can_close_fall_back_to_the_maximum(monkeypatch):
    """Class 1 leads class 0 by one ulp at every cell; the blend rounds many pixels to a tie,
    which the maximum gives to the first class. Those windows are not taken from the cells
    (with no margin, they would be: the check that the margin is needed)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(10, 10, generator=g) * 3 + 1
    sem8 = torch.stack([a, torch.nextafter(a, torch.full_like(a, 10.0)), a - 1])
    grid = output_grid((10, 10), (80, 80), (80, 80), (80, 80))
    full = _full(sem8, (80, 80), (80, 80))
    expect = full.max(dim=0).indices
    assert (expect == 0).sum() > 100 and (expect == 1).sum() > 100  # rounding made ties
    monkeypatch.setattr(module, "_SHORTCUT_MIN_SURE", 0.0)
    assert torch.equal(semantic_labels(full, sem8, grid), expect)
    monkeypatch.setattr(module, "_SURE_LEAD", 0.0)
    assert not torch.equal(semantic_labels(full, sem8, grid), expect)


def test_clear_leads_are_taken_from_the_cells(monkeypatch):
    sem8 = torch.randn(4, 10, 10, generator=torch.Generator().manual_seed(5))
    sem8[3] += 10.0  # class 3 clearly ahead everywhere
    grid = output_grid((10, 10), (80, 80), (80, 80), (80, 80))
    full = _full(sem8, (80, 80), (80, 80))
    gathered = []

    def spy(values, index):
        gathered.append(len(index))
        return values.index_select(-1, index)

    monkeypatch.setattr(module, "select_last", spy)
    assert (semantic_labels(full, sem8, grid) == 3).all()
    assert gathered[-1] == 0  # no pixel's logits read


def test_busy_maps_take_the_plain_maximum():
    sem8 = _regions(7, 12, 20, 3, noise=3.0)  # noise: borders everywhere
    grid = output_grid((12, 20), (96, 160), (96, 160), (96, 160))
    full = _full(sem8, (96, 160), (96, 160))
    assert torch.equal(semantic_labels(full, sem8, grid), full.max(dim=0).indices)
    assert torch.equal(semantic_labels(full[:1], sem8[:1], grid), torch.zeros(96, 160).long())

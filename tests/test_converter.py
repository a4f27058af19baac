# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Converting the released checkpoint layout (official_checkpoint_keys.tsv, written out here)."""

import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from box_panoptic.checkpoint_conversion import ConversionError, convert_official_state_dict

from .helpers import CITYSCAPES_CONFIG, get_cfg_from


def official_layout():
    """The released state_dict's keys and shapes (shared/spec/official_checkpoint_keys.tsv)."""
    keys = {"backbone.body.conv1.weight": (64, 3, 7, 7)}
    bn = ("weight", "bias", "running_mean", "running_var")
    keys.update({f"backbone.body.bn1.{k}": (64,) for k in bn})
    in_ch = 64
    for layer, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=1):
        for b in range(blocks):
            p = f"backbone.body.layer{layer}.{b}"
            cin = in_ch if b == 0 else width * 4
            for k, shape in (
                (1, (width, cin, 1, 1)),
                (2, (width, width, 3, 3)),
                (3, (width * 4, width, 1, 1)),
            ):
                keys[f"{p}.conv{k}.weight"] = shape
                keys.update({f"{p}.bn{k}.{n}": (shape[0],) for n in bn})
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (width * 4, cin, 1, 1)
                keys.update({f"{p}.downsample.1.{n}": (width * 4,) for n in bn})
        in_ch = width * 4
    for i, c in enumerate((512, 1024, 2048)):
        keys[f"backbone.fpn.inner_blocks.{i}.weight"] = (256, c, 1, 1)
        keys[f"backbone.fpn.inner_blocks.{i}.bias"] = (256,)
        keys[f"backbone.fpn.layer_blocks.{i}.weight"] = (256, 256, 3, 3)
        keys[f"backbone.fpn.layer_blocks.{i}.bias"] = (256,)
    for p in ("p6", "p7"):
        keys[f"backbone.fpn.extra_blocks.{p}.weight"] = (256, 256, 3, 3)
        keys[f"backbone.fpn.extra_blocks.{p}.bias"] = (256,)
    for tower, cin, ch in (("cls_tower", 256, 128), ("bbox_tower", 256, 256)):
        for j, idx in enumerate((0, 3, 6, 9)):
            keys[f"panoptic_head.{tower}.{idx}.weight"] = (ch, cin if j == 0 else ch, 3, 3)
            keys[f"panoptic_head.{tower}.{idx}.bias"] = (ch,)
            keys[f"panoptic_head.{tower}.{idx + 1}.weight"] = (ch,)
            keys[f"panoptic_head.{tower}.{idx + 1}.bias"] = (ch,)
    for name, shape in (
        ("cls_logits", (19, 640, 3, 3)),
        ("box_cls_logits", (8, 128, 3, 3)),
        ("bbox_pred", (4, 256, 3, 3)),
        ("centerness", (1, 256, 3, 3)),
        ("levelness", (6, 1280, 3, 3)),
    ):
        keys[f"panoptic_head.{name}.weight"] = shape
        keys[f"panoptic_head.{name}.bias"] = (shape[0],)
    keys.update({f"panoptic_head.scales.{i}.scale": (1,) for i in range(5)})
    return keys


def test_layout_matches_spec_file():
    spec = os.path.join(
        os.path.dirname(__file__), "..", "..", "shared", "spec", "official_checkpoint_keys.tsv"
    )
    if not os.path.isfile(spec):
        pytest.skip("shared/spec not beside this checkout")
    rows = [ln.split("\t") for ln in open(spec) if ln.strip() and not ln.startswith("#")]
    listed = {k: tuple(int(x) for x in s.strip("[]").split(",")) for k, s, _ in rows}
    assert listed == official_layout()


def _fake_checkpoint(new_fpn_names=False):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in official_layout().items():
        t = torch.randn(shape, generator=g) * 0.05
        if k.endswith("running_var"):
            t = t.abs() + 0.5
        if new_fpn_names and ("inner_blocks" in k or "layer_blocks" in k):
            k = k.replace(".weight", ".0.weight").replace(".bias", ".0.bias")
        sd[k] = t
    return sd


@pytest.mark.parametrize("new_fpn_names", [False, True])
def test_round_trip_loads_without_missing_or_unexpected(tmp_path, new_fpn_names):
    from tools.convert_official_checkpoint import convert

    src = str(tmp_path / "official.pth")
    torch.save(_fake_checkpoint(new_fpn_names), src)
    dst = str(tmp_path / "converted.pth")
    converted = convert(src, dst, CITYSCAPES_CONFIG)
    cfg = get_cfg_from(CITYSCAPES_CONFIG)
    model = build_model(cfg).eval()
    incompatible = model.load_state_dict(converted, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    # the same weights through MODEL.WEIGHTS / DetectionCheckpointer give identical outputs
    other = build_model(cfg).eval()
    DetectionCheckpointer(other).load(dst)
    fake = _fake_checkpoint(new_fpn_names)
    torch.testing.assert_close(
        other.levelness_head.levelness.weight, fake["panoptic_head.levelness.weight"]
    )
    x = [{"image": torch.randint(0, 255, (3, 64, 128), dtype=torch.uint8)}]
    with torch.no_grad():
        a, b = model(x)[0], other(x)[0]
    assert torch.equal(a["sem_seg"], b["sem_seg"])
    assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])


def test_wrong_layout_is_refused_with_keys():
    sd = _fake_checkpoint()
    sd["panoptic_head.mystery.weight"] = torch.zeros(1)
    del sd["panoptic_head.levelness.bias"]
    sd["panoptic_head.cls_logits.weight"] = torch.zeros(20, 640, 3, 3)
    expected = build_model(get_cfg_from(CITYSCAPES_CONFIG)).state_dict()
    with pytest.raises(ConversionError) as e:
        convert_official_state_dict(sd, expected)
    msg = str(e.value)
    assert "panoptic_head.mystery.weight" in msg and "levelness_head.levelness.bias" in msg
    assert "sem_seg_head.cls_logits.weight (20, 640, 3, 3) vs (19, 640, 3, 3)" in msg


def test_torchvision_resnet_weights_fill_the_backbone():
    import torchvision

    from tools.convert_torchvision_resnet import convert

    tv = torchvision.models.resnet50(weights=None).state_dict()
    out = convert(tv)
    model = build_model(get_cfg_from(CITYSCAPES_CONFIG))
    result = model.load_state_dict(out, strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if k.startswith("backbone.bottom_up")]
    torch.testing.assert_close(
        model.backbone.bottom_up.res4[5].conv2.weight, tv["layer3.5.conv2.weight"]
    )

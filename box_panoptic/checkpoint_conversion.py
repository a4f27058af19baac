# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Mapping of the released TRI checkpoint's keys onto BoxPanoptic's (METHOD.md section 9.4)."""

import re
from typing import Dict, List, Tuple

import torch

__all__ = ["official_to_box_panoptic_key", "convert_official_state_dict", "ConversionError"]


class ConversionError(ValueError):
    """The checkpoint does not have the released layout; lists the keys that did not fit."""


_RULES: List[Tuple[str, str]] = [
    (r"^backbone\.body\.conv1\.weight$", "backbone.bottom_up.stem.conv1.weight"),
    (r"^backbone\.body\.bn1\.(\w+)$", r"backbone.bottom_up.stem.conv1.norm.\1"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight$", None),  # stage index shifted below
    (r"^backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)$", None),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight$", None),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)$", None),
    (r"^backbone\.fpn\.inner_blocks\.(\d)(?:\.0)?\.(weight|bias)$", None),
    (r"^backbone\.fpn\.layer_blocks\.(\d)(?:\.0)?\.(weight|bias)$", None),
    (r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$", r"backbone.top_block.\1.\2"),
    (r"^panoptic_head\.cls_logits\.(weight|bias)$", r"sem_seg_head.cls_logits.\1"),
    (r"^panoptic_head\.levelness\.(weight|bias)$", r"levelness_head.levelness.\1"),
    (r"^panoptic_head\.((?:cls_tower|bbox_tower)\.\d+\.(?:weight|bias))$", r"head.\1"),
    (r"^panoptic_head\.((?:box_cls_logits|bbox_pred|centerness)\.(?:weight|bias))$", r"head.\1"),
    (r"^panoptic_head\.scales\.(\d)\.scale$", r"head.scales.\1.scale"),
]


def official_to_box_panoptic_key(key: str):
    """Released key -> BoxPanoptic key, or None when the key is not part of the layout."""
    for pattern, repl in _RULES:
        m = re.match(pattern, key)
        if not m:
            continue
        if repl is not None:
            return m.expand(repl)
        g = m.groups()
        if "downsample.0" in key:
            return f"backbone.bottom_up.res{int(g[0]) + 1}.{g[1]}.shortcut.weight"
        if "downsample.1" in key:
            return f"backbone.bottom_up.res{int(g[0]) + 1}.{g[1]}.shortcut.norm.{g[2]}"
        if ".conv" in key and "body" in key:
            return f"backbone.bottom_up.res{int(g[0]) + 1}.{g[1]}.conv{g[2]}.weight"
        if ".bn" in key:
            return f"backbone.bottom_up.res{int(g[0]) + 1}.{g[1]}.conv{g[2]}.norm.{g[3]}"
        if "inner_blocks" in key:
            return f"backbone.fpn_lateral{int(g[0]) + 3}.{g[1]}"
        if "layer_blocks" in key:
            return f"backbone.fpn_output{int(g[0]) + 3}.{g[1]}"
    return None


def convert_official_state_dict(
    official: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor] = None
) -> Dict[str, torch.Tensor]:
    """Rename every key of the released state_dict (old or new torchvision FPN names).

    Args:
        official: the released state_dict (a leading ``module.`` is stripped).
        expected: optionally the target model's state_dict; then the result must match it exactly
            (same keys, same shapes).
    Raises:
        ConversionError listing unknown keys, or (with ``expected``) missing, unexpected and
        wrongly shaped keys.
    """
    out, unknown = {}, []
    for key, value in official.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if key.endswith("num_batches_tracked"):
            continue
        new = official_to_box_panoptic_key(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    problems = []
    if unknown:
        problems.append(f"keys not in the released layout: {sorted(unknown)[:20]}")
    if expected is not None:
        missing = sorted(set(expected) - set(out))
        extra = sorted(set(out) - set(expected))
        shape = sorted(
            k for k in set(out) & set(expected) if tuple(out[k].shape) != tuple(expected[k].shape)
        )
        if missing:
            problems.append(f"model keys with no checkpoint value: {missing[:20]}")
        if extra:
            problems.append(f"converted keys the model does not have: {extra[:20]}")
        if shape:
            problems.append(
                "shape mismatches: "
                + ", ".join(
                    f"{k} {tuple(out[k].shape)} vs {tuple(expected[k].shape)}" for k in shape[:20]
                )
            )
    if problems:
        raise ConversionError("checkpoint does not fit: " + "; ".join(problems))
    return out

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""A DetectionCheckpointer whose files are complete or absent, and whose weights are finite.

* ``save`` writes ``name.pth.tmp``, flushes it to disk and renames it over ``name.pth``; only then
  is ``last_checkpoint`` replaced (also by rename). A run killed at any moment leaves the previous
  checkpoint and tag intact, never a file that loads but is truncated.
* loading refuses a checkpoint holding NaN or inf, naming the first such tensor;
* a model with ``checkpoint_settings()`` (BoxPanoptic: the box regression's units, the head's
  level strides and where the dense box map is read) has them saved beside its weights, and
  loading them into a model built with other settings is refused (the weights would load, some
  skipped, and silently mean something else). A box_panoptic checkpoint saved before a setting
  was recorded counts as having that setting's value of the time (:data:`SETTINGS_BEFORE_RECORDED`);
* whatever the record says, weights of a box_panoptic head whose FPN levels differ from the
  model's (``backbone.fpn_*``, ``backbone.top_block.*``, ``head.scales.*``: a P3-P7 head loaded
  into a P2-P6 model, or the reverse) are refused, naming the parameters that differ. Without
  this, a checkpoint with no record loads with some parameters skipped and predicts nothing.
"""

import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

from .atomic_file import atomic_write

__all__ = ["SafeCheckpointer", "NonFiniteWeightsError"]


class NonFiniteWeightsError(ValueError):
    """A checkpoint holds NaN or inf values."""


class SettingsMismatchError(ValueError):
    """A checkpoint was trained with model settings other than the model's."""


# What every box_panoptic checkpoint had before the setting was saved with it: the head on
# P3-P7 (the only layout until the P2 option), the dense box map by levelness (Eq. 15).
SETTINGS_BEFORE_RECORDED = {
    "MODEL.BOX_PANOPTIC.FPN_STRIDES": [8, 16, 32, 64, 128],
    "MODEL.BOX_PANOPTIC.DENSE_BOX_SOURCE": "levelness",
}


# the parameters whose names say which FPN levels a model has
_LEVEL_PARAMS = ("backbone.fpn_", "backbone.top_block.", "head.scales.")
_HEAD_PARAM = "head.bbox_pred.weight"  # present in every box_panoptic head


def _level_params(names) -> set:
    return {n for n in names if n.startswith(_LEVEL_PARAMS)}


def _check_levels(weights: dict, model) -> None:
    """Refuse box_panoptic head weights (``weights``, a state dict) built on other FPN levels
    than ``model``'s."""
    mine = getattr(model, "module", model).state_dict()
    weights = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in weights.items()}
    if _HEAD_PARAM not in weights or _HEAD_PARAM not in mine:
        return  # not a box_panoptic model on both sides: backbone-only or other-model weights
    theirs, ours = _level_params(weights), _level_params(mine)
    if theirs != ours:
        only_theirs = ", ".join(sorted(theirs - ours)) or "-"
        only_ours = ", ".join(sorted(ours - theirs)) or "-"
        raise SettingsMismatchError(
            "the checkpoint's FPN levels differ from the model's: only in the checkpoint: "
            f"{only_theirs}; only in the model: {only_ours}. Build the model with the levels "
            "it was trained with (MODEL.FPN.IN_FEATURES, MODEL.BOX_PANOPTIC.IN_FEATURES, "
            "FPN_STRIDES)"
        )


def _settings(model) -> dict:
    model = getattr(model, "module", model)  # DistributedDataParallel
    get = getattr(model, "checkpoint_settings", None)
    return get() if callable(get) else {}


class SafeCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves and a finiteness check on load."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not os.path.isdir(self.save_dir):  # remote storage: no atomic rename available
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        settings = _settings(self.model)
        if settings:
            data["model_settings"] = settings
        data.update({k: obj.state_dict() for k, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not os.path.isdir(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )

    def _load_model(self, checkpoint):
        saved, mine = checkpoint.get("model_settings") or {}, _settings(self.model)
        if saved:  # a box_panoptic checkpoint: settings it predates had their values of the time
            saved = {**SETTINGS_BEFORE_RECORDED, **saved}
        for key in sorted(set(saved) & set(mine)):
            if saved[key] != mine[key]:
                raise SettingsMismatchError(
                    f"the checkpoint was trained with {key} = {saved[key]!r} but the model is "
                    f"built with {mine[key]!r}: set it in the config to load these weights"
                )
        _check_levels(checkpoint.get("model", {}), self.model)
        for key, value in checkpoint.get("model", {}).items():
            if torch.is_tensor(value) and value.is_floating_point():
                if not torch.isfinite(value).all():
                    raise NonFiniteWeightsError(
                        f"checkpoint tensor {key!r} holds NaN or inf values; refusing to load it"
                    )
        return super()._load_model(checkpoint)

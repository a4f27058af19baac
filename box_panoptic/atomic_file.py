# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Files that are complete or absent: written under a temporary name, synced, then renamed over
the final name, so that a run killed at any moment never leaves a truncated file that looks
done (checkpoints, ``last_checkpoint``, evaluation results)."""

import os
from typing import IO, Callable

__all__ = ["atomic_write"]


def atomic_write(path: str, write: Callable[[IO], None], text: bool = False) -> None:
    """Call ``write(f)`` on ``path + ".tmp"`` (binary, or text with ``text``), sync it to disk
    and rename it to ``path``."""
    tmp = path + ".tmp"
    with open(tmp, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

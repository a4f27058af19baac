# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Runtime compatibility shims for detectron2 0.6 under current libraries.

The only place where box_panoptic adapts its dependencies (INSTALL_NOTES.md). Every shim checks its
own condition and does nothing when the real thing is present, so an official detectron2 build
(with its compiled ``detectron2._C``) on a machine with current libraries is left untouched.
Installed packages are never edited: the shims only add missing names at run time.

Shims (all applied by :func:`apply_all`, which ``import box_panoptic`` calls first):

* ``detectron2._C``: the pure-Python build from PyPI's ``pb1-detectron2`` sdist has no compiled
  extension, and a few detectron2 modules import it at top level (deformable conv, rotated boxes,
  ROIAlignRotated, the fast COCOeval). A stand-in module makes those imports succeed; asking it
  for any operator raises :class:`MissingCompiledOpError` (an AttributeError) naming it.
  box_panoptic uses none of them, and evaluates COCO AP with pycocotools where the stand-in is
  installed (:func:`has_compiled_ops`).
* ``PIL.Image.LINEAR``: removed in Pillow 10, used as a default argument by
  ``detectron2.data.transforms``. Aliased to ``Image.BILINEAR`` (the same filter).
* ``numpy.int`` / ``numpy.float`` / ``numpy.bool``: removed in numpy 1.24, used by detectron2 0.6's
  ``SemSegEvaluator`` and mask utilities. Aliased to the builtins, which is what they always were.
* ``numpy.in1d`` (removed in numpy 2.4), called by cityscapesscripts 2.3's evaluation scripts:
  :func:`numpy_in1d` provides it only for the duration of a ``with`` block (box_panoptic's
  Cityscapes evaluators run detectron2's inside one); it is never left in the process.
* cityscapesscripts 2.3's instance evaluation writes ``matches.json`` into the current directory:
  :func:`cityscapes_matches_in` sends that file to a given folder for the duration of a ``with``
  block (box_panoptic's Cityscapes instance evaluator uses a temporary folder).
* ``detectron2.engine.defaults.create_ddp_model``: always passes ``device_ids=[local_rank]``,
  which DistributedDataParallel refuses for a CPU model. Wrapped so that a model whose parameters
  live on the CPU gets ``device_ids=None``; GPU models are passed through unchanged.
"""

import contextlib
import importlib
import importlib.util
import os
import sys
import types
from typing import Dict, Iterator

__all__ = [
    "MissingCompiledOpError",
    "apply_all",
    "cityscapes_matches_in",
    "has_compiled_ops",
    "numpy_in1d",
    "install_detectron2_C_stub",
    "install_numpy_aliases",
    "install_pillow_linear",
    "install_cpu_ddp",
    "APPLIED",
]

# Which shims were actually installed in this process (name -> True), for diagnostics and tests.
APPLIED: Dict[str, bool] = {}


class MissingCompiledOpError(AttributeError):
    """Raised when code asks the ``detectron2._C`` stand-in for an operator it does not have.

    An AttributeError, so that ``hasattr(_C, name)`` is False: the stand-in never advertises an
    operator it lacks (detectron2 main's ``COCOEvaluator`` then falls back to pycocotools)."""


class _CompiledOpsStub(types.ModuleType):
    """Stand-in for ``detectron2._C``: importable, every attribute is a function that raises."""

    __file__ = "<box_panoptic.compat stand-in for detectron2._C>"
    BOX_PANOPTIC_STUB = True

    # What detectron2's collect_env_info (run by default_setup) asks of the extension.
    @staticmethod
    def get_compiler_version() -> str:
        return "none (pure-Python detectron2 build, no compiled _C)"

    @staticmethod
    def get_cuda_version() -> str:
        return "none"

    @staticmethod
    def has_cuda() -> bool:
        return False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingCompiledOpError(
            f"detectron2._C.{name} is not available: this detectron2 was built without its "
            "C++/CUDA extension (pure-Python install). Install an official detectron2 build "
            "to use deformable convolutions, rotated boxes or the fast COCO evaluator."
        )


def _module_importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def install_detectron2_C_stub() -> bool:
    """Register the ``detectron2._C`` stand-in if detectron2 is present but its extension is not.

    Returns:
        True when the stand-in was installed by this call.
    """
    if "detectron2._C" in sys.modules:
        return False
    if importlib.util.find_spec("detectron2") is None:
        return False  # no detectron2 at all: nothing to adapt
    if _module_importable("detectron2._C"):
        return False  # the real compiled extension is there
    stub = _CompiledOpsStub("detectron2._C")
    sys.modules["detectron2._C"] = stub
    import detectron2

    detectron2._C = stub
    return True


def has_compiled_ops() -> bool:
    """Whether detectron2's compiled extension is really there (not the stand-in): the fast
    COCO evaluator, deformable convolutions and rotated boxes need it."""
    try:
        module = importlib.import_module("detectron2._C")
    except ImportError:
        return False
    return not getattr(module, "BOX_PANOPTIC_STUB", False)


def install_pillow_linear() -> bool:
    """Alias ``PIL.Image.LINEAR`` to ``Image.BILINEAR`` where Pillow removed it (Pillow >= 10)."""
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR
    return True


def install_numpy_aliases() -> bool:
    """Restore ``np.int``, ``np.float`` and ``np.bool`` where numpy removed them (>= 1.24)."""
    import numpy as np

    installed = False
    for name, builtin in (("int", int), ("float", float), ("bool", bool)):
        try:
            getattr(np, name)
        except AttributeError:
            setattr(np, name, builtin)
            installed = True
    return installed


@contextlib.contextmanager
def numpy_in1d() -> Iterator[bool]:
    """``numpy.in1d`` within the block where numpy lacks it (>= 2.4); yields whether it was
    added. cityscapesscripts 2.3 calls it; ``isin(...).ravel()`` is what it always computed."""
    import numpy as np

    try:
        np.in1d  # noqa: B018  (numpy >= 2.4 raises AttributeError)
        present = True
    except AttributeError:
        present = False
    if present:
        yield False
        return

    def in1d(ar1, ar2, assume_unique=False, invert=False):
        return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()

    np.in1d = in1d
    try:
        yield True
    finally:
        del np.in1d


@contextlib.contextmanager
def cityscapes_matches_in(folder: str) -> Iterator[None]:
    """Within the block, cityscapesscripts' instance evaluation writes its ``matches.json`` into
    ``folder`` instead of the current directory."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as instance_eval

    original = instance_eval.writeDict2JSON

    def write(data, path):
        if path == "matches.json":
            path = os.path.join(folder, path)
        return original(data, path)

    instance_eval.writeDict2JSON = write
    try:
        yield
    finally:
        instance_eval.writeDict2JSON = original


def install_cpu_ddp() -> bool:
    """Make detectron2's ``create_ddp_model`` accept CPU models (multi-process gloo training)."""
    if importlib.util.find_spec("detectron2") is None:
        return False
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    if getattr(original, "_box_panoptic_cpu_ddp", False):
        return False

    def create_ddp_model(model, **kwargs):
        params = list(model.parameters())
        if params and params[0].device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    create_ddp_model._box_panoptic_cpu_ddp = True
    create_ddp_model.__doc__ = original.__doc__
    defaults.create_ddp_model = create_ddp_model
    return True


def apply_all() -> Dict[str, bool]:
    """Apply every shim whose condition holds. Idempotent. Returns which ones were installed."""
    for name, shim in (
        ("detectron2._C", install_detectron2_C_stub),
        ("PIL.Image.LINEAR", install_pillow_linear),
        ("numpy aliases", install_numpy_aliases),
        ("create_ddp_model on CPU", install_cpu_ddp),
    ):
        if shim():
            APPLIED[name] = True
    return dict(APPLIED)

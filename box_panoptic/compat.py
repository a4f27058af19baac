# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Runtime compatibility shims for detectron2 (0.6 and main) under current libraries.

The only place where box_panoptic adapts its dependencies (INSTALL_NOTES.md). Every shim probes
the installed code for the feature it adapts (never a version number: detectron2 main also says
"0.6") and does nothing when it is not needed, so an official detectron2 build (with its compiled
``detectron2._C``) or detectron2 main is left untouched. Installed packages are never edited:
the shims only add missing names at run time, and the last three only inside a ``with`` block.

Process-wide, applied by :func:`apply_all` (which ``import box_panoptic`` calls first), each only
where its probe says the installed detectron2 needs it:

* ``detectron2._C``: the pure-Python build from PyPI's ``pb1-detectron2`` sdist has no compiled
  extension, and a few detectron2 modules import it at top level (deformable conv, rotated boxes,
  ROIAlignRotated, the fast COCOeval). A stand-in module makes those imports succeed; asking it
  for any operator raises :class:`MissingCompiledOpError` (an AttributeError) naming it.
  box_panoptic uses none of them, and evaluates COCO AP with pycocotools where the stand-in is
  installed (:func:`has_compiled_ops`).
* ``PIL.Image.LINEAR``: removed in Pillow 10, used as a default argument by detectron2 0.6's
  ``detectron2.data.transforms`` (main uses BILINEAR). Aliased to ``Image.BILINEAR`` (the same
  filter) only if Pillow lacks it and the installed transforms' source names it.
* ``numpy.int`` / ``numpy.float``: removed in numpy 1.24, used by detectron2 0.6's
  ``SemSegEvaluator``, mask utilities, visualizer and dataset histogram. Aliased to the builtins
  (what they always were) only if numpy lacks them and the installed detectron2's source uses
  them; never on detectron2 main, whose source does not.

Scoped (a ``with`` block; nothing is left in the process):
* ``numpy.in1d`` (removed in numpy 2.4), called by cityscapesscripts 2.3's evaluation scripts:
  :func:`numpy_in1d` provides it only for the duration of a ``with`` block (box_panoptic's
  Cityscapes evaluators run detectron2's inside one); it is never left in the process.
* cityscapesscripts 2.3's instance evaluation writes ``matches.json`` into the current directory,
  with a JSON writer that fails on numpy scalars, which numpy 2's ``count_nonzero`` returns (so
  the evaluation crashed once a prediction overlapped anything): :func:`cityscapes_matches_in`
  sends that file to a given folder and writes numpy scalars as numbers, for the duration of a
  ``with`` block (box_panoptic's Cityscapes instance evaluator uses a temporary folder).
* detectron2 main's Cityscapes evaluators import cityscapesscripts under a path that exists
  only inside Facebook (``deeplearning.projects.cityscapesApi.cityscapesscripts``):
  :func:`cityscapes_scripts_alias` maps that path to the installed ``cityscapesscripts`` while
  box_panoptic's Cityscapes evaluators run, where the installed detectron2's source uses it.
* ``detectron2.engine.defaults.create_ddp_model`` (0.6 and main) passes
  ``device_ids=[local_rank]``, which DistributedDataParallel refuses for a CPU model:
  :func:`cpu_ddp` makes it pass ``device_ids=None`` for a model on the CPU while box_panoptic's
  trainers are constructed. GPU models are passed through unchanged.
"""

import contextlib
import importlib
import importlib.util
import json
import os
import re
import sys
import types
from typing import Dict, Iterator, Sequence

__all__ = [
    "MissingCompiledOpError",
    "apply_all",
    "cityscapes_matches_in",
    "cityscapes_scripts_alias",
    "cpu_ddp",
    "detectron2_source_uses",
    "has_compiled_ops",
    "numpy_in1d",
    "install_detectron2_C_stub",
    "install_numpy_aliases",
    "install_pillow_linear",
    "APPLIED",
]

# The detectron2 files that use what newer libraries removed (detectron2 0.6; not main).
NUMPY_ALIAS_USERS = (
    "structures/masks.py",
    "utils/visualizer.py",
    "data/build.py",
    "evaluation/sem_seg_evaluation.py",
)
PILLOW_LINEAR_USERS = ("data/transforms/transform.py",)

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


def detectron2_source_uses(pattern: str, files: Sequence[str]) -> bool:
    """Whether any of ``files`` (paths inside the installed detectron2 package) matches the
    regular expression ``pattern``. Reads the files without importing them (they may fail to
    import until a shim is applied); False without detectron2."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = list(spec.submodule_search_locations)[0]
    regex = re.compile(pattern)
    for rel in files:
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                if regex.search(f.read()):
                    return True
        except OSError:
            continue
    return False


def install_pillow_linear(files: Sequence[str] = PILLOW_LINEAR_USERS) -> bool:
    """Alias ``PIL.Image.LINEAR`` to ``Image.BILINEAR`` where Pillow removed it (Pillow >= 10)
    and the installed detectron2 (``files``) uses it."""
    from PIL import Image

    if hasattr(Image, "LINEAR") or not detectron2_source_uses(r"Image\.LINEAR\b", files):
        return False
    Image.LINEAR = Image.BILINEAR
    return True


def install_numpy_aliases(files: Sequence[str] = NUMPY_ALIAS_USERS) -> bool:
    """Restore ``np.int`` and ``np.float`` where numpy removed them (>= 1.24) and the installed
    detectron2 (``files``) uses them. (numpy 2 has ``np.bool`` again.)"""
    import numpy as np

    installed = False
    for name, builtin in (("int", int), ("float", float), ("bool", bool)):
        if hasattr(np, name) or not detectron2_source_uses(rf"\bnp\.{name}\b(?!_|\d)", files):
            continue
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


def _json_value(o):
    """``json.dumps`` default for cityscapesscripts' result dicts: a numpy scalar as the Python
    number it holds, any other object by its attributes (what cityscapesscripts' writer does)."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    return o.__dict__


@contextlib.contextmanager
def cityscapes_matches_in(folder: str) -> Iterator[None]:
    """Within the block, cityscapesscripts' instance evaluation writes its ``matches.json`` into
    ``folder`` instead of the current directory, and its JSON files (the same layout: sorted
    keys, indent 4) hold numpy scalars as numbers instead of failing on them."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as instance_eval

    original = instance_eval.writeDict2JSON

    def write(data, path):
        if path == "matches.json":
            path = os.path.join(folder, path)
        with open(path, "w") as f:
            f.write(json.dumps(data, default=_json_value, sort_keys=True, indent=4))

    instance_eval.writeDict2JSON = write
    try:
        yield
    finally:
        instance_eval.writeDict2JSON = original


INTERNAL_CITYSCAPES = "deeplearning.projects.cityscapesApi.cityscapesscripts"
CITYSCAPES_USERS = ("evaluation/cityscapes_evaluation.py",)


@contextlib.contextmanager
def cityscapes_scripts_alias(files: Sequence[str] = CITYSCAPES_USERS) -> Iterator[bool]:
    """Within the block, ``deeplearning.projects.cityscapesApi.cityscapesscripts[.…]`` is the
    installed ``cityscapesscripts`` where the installed detectron2 (``files``) imports it under
    that name and nothing provides it; yields whether the alias was added."""
    if not detectron2_source_uses(re.escape(INTERNAL_CITYSCAPES), files) or _module_importable(
        INTERNAL_CITYSCAPES
    ):
        yield False
        return
    import cityscapesscripts
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling  # noqa: F401
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling  # noqa: F401
    import cityscapesscripts.helpers.labels  # noqa: F401

    added = {}
    parts = INTERNAL_CITYSCAPES.split(".")
    for i in range(1, len(parts)):  # the packages above it: empty stand-ins
        name = ".".join(parts[:i])
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = []
            added[name] = module
    for name, module in list(sys.modules.items()):
        if name == "cityscapesscripts" or name.startswith("cityscapesscripts."):
            alias = INTERNAL_CITYSCAPES + name[len("cityscapesscripts") :]
            if alias not in sys.modules:
                added[alias] = module
    sys.modules.update(added)
    try:
        yield True
    finally:
        for name in added:
            sys.modules.pop(name, None)


@contextlib.contextmanager
def cpu_ddp() -> Iterator[None]:
    """Within the block, detectron2's ``create_ddp_model`` gives a model whose parameters live
    on the CPU ``device_ids=None`` (multi-process gloo training); other models pass unchanged."""
    from detectron2.engine import defaults

    original = defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        params = list(model.parameters())
        if params and params[0].device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        defaults.create_ddp_model = original


def apply_all() -> Dict[str, bool]:
    """Apply every shim whose condition holds. Idempotent. Returns which ones were installed."""
    for name, shim in (
        ("detectron2._C", install_detectron2_C_stub),
        ("PIL.Image.LINEAR", install_pillow_linear),
        ("numpy aliases", install_numpy_aliases),
    ):
        if shim():
            APPLIED[name] = True
    return dict(APPLIED)

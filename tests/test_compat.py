# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The compatibility shims act when their condition holds and do nothing otherwise."""

import os
import sys
import tempfile
import types
import unittest
from unittest import mock

import numpy as np
from PIL import Image

from box_panoptic import compat


class TestCompat(unittest.TestCase):
    def test_detectron2_modules_import(self):
        import detectron2.engine  # noqa: F401
        import detectron2.evaluation  # noqa: F401
        import detectron2.modeling  # noqa: F401
        from detectron2.layers import DeformConv  # noqa: F401  (imports detectron2._C)

    def test_C_stub_raises_clear_error_when_used(self):
        import detectron2._C as C

        if not getattr(C, "BOX_PANOPTIC_STUB", False):
            self.skipTest("official detectron2 with its compiled extension is installed")
        with self.assertRaisesRegex(compat.MissingCompiledOpError, "nms_rotated"):
            C.nms_rotated(None, None, 0.5)
        # it advertises nothing it lacks: detectron2 main's COCOEvaluator probes the fast
        # evaluator's classes, and box_panoptic chooses pycocotools without it
        self.assertFalse(hasattr(C, "InstanceAnnotation"))
        self.assertFalse(compat.has_compiled_ops())

    def test_C_stub_not_installed_when_real_module_present(self):
        real = types.ModuleType("detectron2._C")
        with mock.patch.dict(sys.modules, {"detectron2._C": real}):
            self.assertFalse(compat.install_detectron2_C_stub())
            self.assertIs(sys.modules["detectron2._C"], real)

    def test_pillow_linear_alias_only_where_detectron2_uses_it(self):
        # aliased exactly where the installed detectron2 uses it (0.6, not main)
        uses = compat.detectron2_source_uses(r"Image\.LINEAR\b", compat.PILLOW_LINEAR_USERS)
        self.assertEqual(getattr(Image, "LINEAR", None) == Image.BILINEAR, uses)
        # present already -> the shim leaves it alone
        with mock.patch.object(Image, "LINEAR", 12345, create=True):
            self.assertFalse(compat.install_pillow_linear())
            self.assertEqual(Image.LINEAR, 12345)
        saved = getattr(Image, "LINEAR", None)
        if saved is not None:
            del Image.LINEAR
        try:
            # absent, and detectron2's code does not use it (main) -> nothing added
            self.assertFalse(compat.install_pillow_linear(files=("structures/boxes.py",)))
            self.assertFalse(hasattr(Image, "LINEAR"))
            # absent, and a file of the installed detectron2 uses it -> added
            with tempfile.TemporaryDirectory() as d:
                fake = self._fake_detectron2(d, {"t.py": "def f(interp=Image.LINEAR): ..."})
                with mock.patch("importlib.util.find_spec", return_value=fake):
                    self.assertTrue(compat.install_pillow_linear(files=("t.py",)))
            self.assertEqual(Image.LINEAR, Image.BILINEAR)
        finally:
            if saved is None:
                del Image.LINEAR
            else:
                Image.LINEAR = saved

    @staticmethod
    def _fake_detectron2(folder, files):
        for name, text in files.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
        return types.SimpleNamespace(submodule_search_locations=[folder])

    def test_numpy_aliases_only_where_detectron2_uses_them(self):
        self.assertFalse(compat.install_numpy_aliases())  # present, or not used: nothing to do
        with tempfile.TemporaryDirectory() as d:
            fake = self._fake_detectron2(
                d, {"old.py": "x = np.zeros(3).astype(np.int)\n", "new.py": "y = np.int64(3)\n"}
            )
            had = hasattr(np, "int")
            saved = getattr(np, "int", None)
            if had:
                del np.int
            try:
                with mock.patch("importlib.util.find_spec", return_value=fake):
                    # np.int64 is not np.int: detectron2 main's kind of source adds nothing
                    self.assertFalse(compat.install_numpy_aliases(files=("new.py",)))
                    self.assertFalse(hasattr(np, "int"))
                    self.assertTrue(compat.install_numpy_aliases(files=("old.py",)))
                    self.assertIs(np.int, int)
            finally:
                if had:
                    np.int = saved
                elif hasattr(np, "int"):
                    del np.int

    def test_alias_decision_matches_the_installed_detectron2(self):
        uses = compat.detectron2_source_uses(r"\bnp\.int\b", compat.NUMPY_ALIAS_USERS)
        self.assertEqual(hasattr(np, "int"), uses)  # aliased exactly where needed

    def test_cpu_ddp_is_scoped(self):
        from detectron2.engine import defaults

        original = defaults.create_ddp_model
        with compat.cpu_ddp():
            self.assertIsNot(defaults.create_ddp_model, original)
        self.assertIs(defaults.create_ddp_model, original)

    def test_detectron2_transforms_default_filter(self):
        from detectron2.data import transforms as T

        extent = T.ExtentTransform((0, 0, 4, 4), (2, 2))  # default interp=Image.LINEAR
        self.assertEqual(extent.interp, Image.BILINEAR)
        out = extent.apply_image(np.full((4, 4, 3), 7, np.uint8))
        self.assertTrue((out == 7).all())

    def test_cityscapes_matches_go_to_the_folder_with_numpy_scalars_as_numbers(self):
        """numpy 2's count_nonzero returns numpy scalars; cityscapesscripts' own JSON writer
        fails on them, so the instance evaluation crashed once a prediction overlapped
        anything. Inside the block the file goes to the folder, and holds plain numbers."""
        import json

        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as instance_eval

        class Box:  # an object, written by its attributes as cityscapesscripts writes it
            def __init__(self):
                self.labelID = 26

        matches = {"img": {"prediction": [{"pixelCount": np.int64(5), "conf": np.float32(0.5)}]}}
        matches["img"]["box"] = Box()
        original = instance_eval.writeDict2JSON
        with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as other:
            with self.assertRaises(AttributeError):  # the installed writer, unpatched
                original(matches, os.path.join(other, "unpatched.json"))
            with compat.cityscapes_matches_in(d):
                instance_eval.writeDict2JSON(matches, "matches.json")
            self.assertIs(instance_eval.writeDict2JSON, original)  # nothing left
            with open(os.path.join(d, "matches.json")) as f:
                text = f.read()
        got = json.loads(text)
        self.assertEqual(got["img"]["prediction"][0], {"conf": 0.5, "pixelCount": 5})
        self.assertEqual(got["img"]["box"], {"labelID": 26})
        self.assertEqual(text, json.dumps(got, sort_keys=True, indent=4))

    def test_cityscapes_scripts_alias_is_scoped_and_probed(self):
        import cityscapesscripts.helpers.labels as labels

        name = compat.INTERNAL_CITYSCAPES + ".helpers.labels"
        with tempfile.TemporaryDirectory() as d:
            fake = self._fake_detectron2(d, {"e.py": f"from {name} import trainId2label\n"})
            with mock.patch("importlib.util.find_spec", return_value=fake):
                with compat.cityscapes_scripts_alias(files=("e.py",)) as added:
                    self.assertTrue(added)
                    module = __import__(name, fromlist=["trainId2label"])
                    self.assertIs(module, labels)
            self.assertNotIn(name, sys.modules)  # nothing left in the process
            self.assertNotIn("deeplearning", sys.modules)
            # detectron2 code that does not use the internal name: no alias
            fake = self._fake_detectron2(d, {"f.py": "import cityscapesscripts\n"})
            with mock.patch("importlib.util.find_spec", return_value=fake):
                with compat.cityscapes_scripts_alias(files=("f.py",)) as added:
                    self.assertFalse(added)
                    self.assertNotIn("deeplearning", sys.modules)

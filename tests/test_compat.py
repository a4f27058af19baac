# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The compatibility shims act when their condition holds and do nothing otherwise."""

import sys
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

    def test_pillow_linear_alias(self):
        self.assertEqual(Image.LINEAR, Image.BILINEAR)
        # present already -> the shim leaves it alone
        with mock.patch.object(Image, "LINEAR", 12345, create=True):
            self.assertFalse(compat.install_pillow_linear())
            self.assertEqual(Image.LINEAR, 12345)
        # absent -> the shim adds it
        saved = Image.LINEAR
        del Image.LINEAR
        try:
            self.assertTrue(compat.install_pillow_linear())
            self.assertEqual(Image.LINEAR, Image.BILINEAR)
        finally:
            Image.LINEAR = saved

    def test_numpy_aliases(self):
        self.assertIs(np.int, int)
        self.assertIs(np.float, float)
        self.assertEqual(np.dtype(np.bool), np.dtype(bool))  # numpy 2 has np.bool again
        self.assertFalse(compat.install_numpy_aliases())  # already present: nothing to do
        saved = np.int
        del np.int
        try:
            self.assertTrue(compat.install_numpy_aliases())
            self.assertIs(np.int, int)
        finally:
            np.int = saved

    def test_detectron2_transforms_default_filter(self):
        from detectron2.data import transforms as T

        extent = T.ExtentTransform((0, 0, 4, 4), (2, 2))  # default interp=Image.LINEAR
        self.assertEqual(extent.interp, Image.BILINEAR)
        out = extent.apply_image(np.full((4, 4, 3), 7, np.uint8))
        self.assertTrue((out == 7).all())

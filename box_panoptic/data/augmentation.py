# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""A random crop that keeps things (the released transform family, METHOD.md section 7)."""

import numpy as np

from detectron2.data import transforms as T

__all__ = ["PanopticAugInput", "ThingAwareCrop"]


class PanopticAugInput(T.AugInput):
    """AugInput that also carries ``thing_mask`` (H, W) bool and transforms it like sem_seg."""

    def __init__(self, image, *, sem_seg=None, thing_mask=None):
        super().__init__(image, sem_seg=sem_seg)
        self.thing_mask = thing_mask

    def transform(self, tfm):
        super().transform(tfm)
        if self.thing_mask is not None:
            self.thing_mask = tfm.apply_segmentation(self.thing_mask.astype(np.uint8)) > 0


class ThingAwareCrop(T.Augmentation):
    """A crop of ``T.RandomCrop``'s size that always contains a thing pixel when there is one:
    a thing pixel is drawn uniformly, then the crop origin uniformly among those covering it.
    Images without things get a plain random crop."""

    def __init__(self, crop_type: str, crop_size):
        super().__init__()
        self.crop = T.RandomCrop(crop_type, crop_size)

    def get_transform(self, image, thing_mask):
        if thing_mask is None or not thing_mask.any():
            return self.crop.get_transform(image)
        h, w = image.shape[:2]
        ch, cw = self.crop.get_crop_size((h, w))
        ys, xs = np.nonzero(thing_mask)
        k = np.random.randint(len(ys))
        y, x = int(ys[k]), int(xs[k])
        y0 = np.random.randint(max(0, y - ch + 1), min(y, h - ch) + 1)
        x0 = np.random.randint(max(0, x - cw + 1), min(x, w - cw) + 1)
        return T.CropTransform(x0, y0, cw, ch)

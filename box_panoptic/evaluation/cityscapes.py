# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""detectron2's Cityscapes semantic and instance evaluators, run where cityscapesscripts 2.3's
evaluation scripts work: they call ``numpy.in1d``, gone from numpy 2.4, which
:func:`box_panoptic.compat.numpy_in1d` provides for the duration of ``evaluate`` only."""

from detectron2.evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator

from ..compat import numpy_in1d

__all__ = ["CityscapesInstanceEvaluation", "CityscapesSemSegEvaluation"]


class CityscapesSemSegEvaluation(CityscapesSemSegEvaluator):
    """CityscapesSemSegEvaluator, evaluated with ``numpy.in1d`` available."""

    def evaluate(self):
        with numpy_in1d():
            return super().evaluate()


class CityscapesInstanceEvaluation(CityscapesInstanceEvaluator):
    """CityscapesInstanceEvaluator, evaluated with ``numpy.in1d`` available."""

    def evaluate(self):
        with numpy_in1d():
            return super().evaluate()

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""detectron2's Cityscapes semantic and instance evaluators, run where cityscapesscripts 2.3's
evaluation scripts work: they call ``numpy.in1d``, gone from numpy 2.4, which
:func:`box_panoptic.compat.numpy_in1d` provides for the duration of ``evaluate`` only; the
instance evaluation's ``matches.json`` goes to a temporary folder, not the current directory;
and on detectron2 main, whose evaluators import cityscapesscripts under a Facebook-internal name,
:func:`box_panoptic.compat.cityscapes_scripts_alias` provides that name while they run."""

import tempfile

from detectron2.evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator

from ..compat import cityscapes_matches_in, cityscapes_scripts_alias, numpy_in1d

__all__ = ["CityscapesInstanceEvaluation", "CityscapesSemSegEvaluation"]


class CityscapesSemSegEvaluation(CityscapesSemSegEvaluator):
    """CityscapesSemSegEvaluator, evaluated with ``numpy.in1d`` available."""

    def process(self, inputs, outputs):
        with cityscapes_scripts_alias():
            return super().process(inputs, outputs)

    def evaluate(self):
        with numpy_in1d(), cityscapes_scripts_alias():
            return super().evaluate()


class CityscapesInstanceEvaluation(CityscapesInstanceEvaluator):
    """CityscapesInstanceEvaluator, evaluated with ``numpy.in1d`` available and its
    ``matches.json`` kept out of the current directory."""

    def process(self, inputs, outputs):
        with cityscapes_scripts_alias():
            return super().process(inputs, outputs)

    def evaluate(self):
        with tempfile.TemporaryDirectory() as folder:
            with numpy_in1d(), cityscapes_scripts_alias(), cityscapes_matches_in(folder):
                return super().evaluate()

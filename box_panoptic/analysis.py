# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""FLOP counting (fvcore) and the machine's measured convolution throughput."""

import time

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

__all__ = ["network_gflops", "conv_throughput_gflops"]


class _Network(nn.Module):
    """A BoxPanoptic's backbone + heads as a tensor -> tuple-of-tensors module (for fvcore)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        images = self.model.preprocess_image([{"image": image}])
        out = self.model.network(images)
        return tuple(out["box_cls"] + out["box_reg"] + out["centerness"]) + (
            out["sem_seg"],
            out["levelness"],
        )


def network_gflops(model: nn.Module, height: int, width: int) -> float:
    """GFLOPs (fvcore counts one multiply-add as one flop) of backbone + heads for one image."""
    image = torch.zeros(3, height, width, device=model.device)
    with torch.no_grad():
        flops = FlopCountAnalysis(_Network(model).eval(), (image,))
        flops.unsupported_ops_warnings(False)
        flops.uncalled_modules_warnings(False)
        return flops.total() / 1e9


def conv_throughput_gflops(runs: int = 5, size=(128, 256), channels: int = 256) -> float:
    """Median GFLOP/s (multiply-adds) of a large 3x3 conv at the current thread count, the
    faster of the NCHW and channels-last (NHWC) layouts: the machine's limit for convolutions."""
    conv = nn.Conv2d(channels, channels, 3, padding=1).eval()
    macs = channels * channels * 9 * size[0] * size[1]
    best = 0.0
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(1, channels, *size).contiguous(memory_format=layout)
        times = []
        with torch.no_grad():
            conv(x)
            for _ in range(runs):
                t = time.perf_counter()
                conv(x)
                times.append(time.perf_counter() - t)
        best = max(best, macs / sorted(times)[len(times) // 2] / 1e9)
    return best

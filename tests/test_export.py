# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Export of the full panoptic output: parity of TorchScript and ONNX Runtime with eager."""

import numpy as np
import pytest
import torch

from box_panoptic.export import ExportError, PanopticExportModule, export_onnx, export_torchscript

from .helpers import SYNTHETIC_CONFIG, get_model, load_tool

H, W = 96, 128


def _model():
    """Random weights biased so that many detections survive into the panoptic output (box
    biases in pixels: the released regression parametrisation)."""
    model = get_model(
        SYNTHETIC_CONFIG,
        "MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS",
        False,
        "MODEL.BOX_PANOPTIC.MASK_THRESH",
        0.2,
        "MODEL.BOX_PANOPTIC.OVERLAP_THRESH",
        0.0,
        # the release's P_sem: the biases below give the thing classes equal logits, so with
        # "relative" their soft masks tie to the last bit and ONNX Runtime's rounding would
        # pick among them (the relative map's export:
        # test_relative_thing_semantics_export_to_onnx)
        "MODEL.BOX_PANOPTIC.THING_SEMANTICS",
        "class",
        # a traced export keeps the fixed K candidates per window (a trace cannot hold a
        # data-dependent count); eager is compared on the same rule. With detections everywhere
        # on P2 some windows hold more than K.
        "MODEL.BOX_PANOPTIC.ASSEMBLY_EXACT",
        False,
    ).eval()
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(3.0)
        model.head.centerness.bias.fill_(2.0)
        model.head.bbox_pred.bias.fill_(3.0)  # ~20 px boxes
        model.sem_seg_head.cls_logits.bias[:3] = 3.0
    return model


def _inputs():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 255, (3, H, W), dtype=torch.uint8, generator=g)
    b = torch.zeros(3, H, W, dtype=torch.uint8)
    b[:, 20:60, 30:90] = 200
    return a, b


def test_torchscript_and_onnx_match_eager():
    import onnxruntime as ort

    model = _model()
    wrapper = PanopticExportModule(model)
    a, b = _inputs()
    ts = export_torchscript(model, a)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(model, a, f"{d}/m.onnx")
        sess = ort.InferenceSession(path)
        import onnx

        dims = {
            o.name: [x.dim_param or x.dim_value for x in o.type.tensor_type.shape.dim]
            for o in onnx.load(path).graph.output
        }
        assert dims == {
            "panoptic": ["height", "width"],
            "segments": ["num_segments", 4],
            "sem_seg": [6, "height", "width"],  # the class dimension is fixed, not 'width'
        }
        counts = []
        for x in (a, b):  # b differs from the tracing input: nothing data-dependent was baked in
            with torch.no_grad():
                pan, table, sem = wrapper(x)
                tpan, ttable, tsem = ts(x)
            opan, otable, osem = sess.run(None, {"image": x.numpy()})
            counts.append(len(table))
            assert torch.equal(tpan, pan) and torch.equal(torch.from_numpy(opan), pan)
            torch.testing.assert_close(ttable, table)
            torch.testing.assert_close(torch.from_numpy(otable), table, atol=1e-4, rtol=1e-4)
            assert (tsem - sem).abs().max() <= 1e-4 and abs(osem - sem.numpy()).max() <= 1e-4
            # the exported table is the eager output contract
            eager = model([{"image": x}])[0]["panoptic_seg"]
            assert torch.equal(eager[0], pan)
            assert [s["category_id"] for s in eager[1]] == table[:, 0].long().tolist()
        assert counts[0] != counts[1] and min(counts) > 3  # dynamic number of segments


def test_exported_artifact_refuses_wrong_inputs():
    model = _model()
    a, _ = _inputs()
    ts = export_torchscript(model, a)
    with pytest.raises(Exception, match=r"expected a \(3, H, W\) image"):
        ts(torch.zeros(1, 3, H, W, dtype=torch.uint8))
    with pytest.raises(Exception, match=r"expected a \(3, H, W\) image"):
        ts(torch.zeros(4, H, W, dtype=torch.uint8))
    # an ONNX Runtime session refuses another rank or channel count with a named input
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        sess = ort.InferenceSession(export_onnx(model, a, f"{d}/m.onnx"))
        with pytest.raises(Exception, match="image"):
            sess.run(None, {"image": np.zeros((4, H, W), np.uint8)})
        with pytest.raises(Exception, match="image"):
            sess.run(None, {"image": np.zeros((1, 3, H, W), np.uint8)})


def test_exported_artifacts_take_any_image_size():
    """Traced on 96x128; other sizes (not multiples of 32, and one whose P3 level holds more
    than PRE_NMS_TOP_N candidates) give eager PyTorch's outputs."""
    import tempfile

    import onnxruntime as ort

    model = _model()
    model.postprocessor.pre_nms_top_n = (
        300  # 96x128: 576 P3 candidates; the sizes below have fewer and more
    )
    wrapper = PanopticExportModule(model)
    a, _ = _inputs()
    ts = export_torchscript(model, a)
    g = torch.Generator().manual_seed(1)
    with tempfile.TemporaryDirectory() as d:
        sess = ort.InferenceSession(export_onnx(model, a, f"{d}/m.onnx"))
        for h, w in ((33, 47), (64, 64), (160, 224), (40, 300)):
            x = torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g)
            with torch.no_grad():
                pan, table, sem = wrapper(x)
                tpan, ttable, tsem = ts(x)
            opan, otable, osem = sess.run(None, {"image": x.numpy()})
            assert pan.shape == (h, w) and len(table) > 0
            assert torch.equal(tpan, pan) and torch.equal(torch.from_numpy(opan), pan), (h, w)
            torch.testing.assert_close(ttable, table)
            torch.testing.assert_close(torch.from_numpy(otable), table, atol=1e-4, rtol=1e-4)
            assert (tsem - sem).abs().max() <= 1e-4 and abs(osem - sem.numpy()).max() <= 1e-4


def test_traced_decoding_keeps_the_candidate_limit_at_every_size():
    """decode_level traced where a level has fewer candidates than PRE_NMS_TOP_N, run where it
    has more: the limit holds (a Python min() would have frozen the smaller count)."""
    from box_panoptic.modeling.inference import decode_level

    def run(cls, reg, ctr):
        return decode_level(cls, reg, ctr, 8, (400, 400), 0.05, 50)

    g = torch.Generator().manual_seed(0)

    def inputs(h, w):
        return (
            torch.randn(3, h, w, generator=g) + 2,
            torch.rand(4, h, w, generator=g) * 20,
            torch.randn(1, h, w, generator=g),
        )

    traced = torch.jit.trace(run, inputs(3, 4), check_trace=False)  # 36 candidates < 50
    big = inputs(20, 30)  # 1800 candidates > 50
    for got, expect in zip(traced(*big), run(*big)):
        assert torch.equal(got, expect)
    assert len(run(*big)[1]) == 50


def test_unexportable_models_are_refused():
    model = _model()
    with pytest.raises(ExportError, match="eval-mode"):
        PanopticExportModule(model.train())
    model.eval()
    model.benchmark_network_speed = True
    with pytest.raises(ExportError, match="BENCHMARK_NETWORK_SPEED"):
        PanopticExportModule(model)


def test_export_tool_writes_a_loadable_frozen_torchscript_artifact(tmp_path):
    """tools/export_model.py with saved weights: the artifact, loaded back, equals eager."""
    import torchvision  # noqa: F401  (the artifact calls torchvision's nms)

    model = _model()
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    tool = load_tool("export_model")
    tool.main(
        [
            "--config-file",
            SYNTHETIC_CONFIG,
            "--height",
            str(H),
            "--width",
            str(W),
            "--output",
            str(tmp_path / "out"),
            "--opts",
            "MODEL.WEIGHTS",
            str(tmp_path / "m.pth"),
            "MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS",
            "False",
            "MODEL.BOX_PANOPTIC.MASK_THRESH",
            "0.2",
            "MODEL.BOX_PANOPTIC.OVERLAP_THRESH",
            "0.0",
            "MODEL.BOX_PANOPTIC.THING_SEMANTICS",
            "class",  # as _model()
        ]
    )
    loaded = torch.jit.load(str(tmp_path / "out" / "model.ts"))
    for x in _inputs():
        pan, table, _ = loaded(x)
        with torch.no_grad():
            expect, _, _ = PanopticExportModule(model)(x)
        assert torch.equal(pan, expect) and len(table) > 0
    with pytest.raises(Exception, match=r"expected a \(3, H, W\) image"):
        loaded(torch.zeros(4, H, W, dtype=torch.uint8))


def test_relative_thing_semantics_export_to_onnx():
    """The relative P_sem (index_select, amax, index_copy) through ONNX Runtime, at a size other
    than the traced one, equals eager to float rounding."""
    import tempfile

    import onnxruntime as ort

    from box_panoptic.modeling.mask_construction import thing_semantic_probabilities

    class Relative(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("thing_ids", torch.tensor([4, 1, 2]))

        def forward(self, logits):
            return thing_semantic_probabilities(logits.softmax(0), self.thing_ids, "relative")

    g = torch.Generator().manual_seed(0)
    traced, other = torch.randn(6, 8, 12, generator=g), torch.randn(6, 5, 7, generator=g) * 3
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/relative.onnx"
        torch.onnx.export(
            Relative(),
            (traced,),
            path,
            input_names=["logits"],
            dynamic_axes={"logits": {1: "h", 2: "w"}},
            opset_version=17,
            dynamo=False,
        )
        sess = ort.InferenceSession(path)
        for x in (traced, other):
            (out,) = sess.run(None, {"logits": x.numpy()})
            expected = Relative()(x)
            torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-6, rtol=1e-5)
            assert not torch.allclose(expected, x.softmax(0))  # the thing rows did change

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""tools/benchmark.py's post-processing breakdown reads the model's named stages."""

import torch

from .helpers import CITYSCAPES_CONFIG, SYNTHETIC_CONFIG, get_model, load_tool


def test_post_stages_cover_every_stage_once_and_fit_in_the_inference():
    tool = load_tool("benchmark")
    model = get_model(SYNTHETIC_CONFIG).eval()
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(3.0)  # detections, so every stage has work
    image = torch.randint(0, 255, (3, 96, 130), dtype=torch.uint8)
    with torch.no_grad():
        stages = tool._post_stages(model, image)
        inputs = [{"image": image}]
        images = model.preprocess_image(inputs)
        out = model.network(images)
        with torch.profiler.profile() as prof:
            with torch.profiler.record_function("whole"):
                model.inference(out, inputs, images)
    assert tuple(stages) == tool.STAGES and all(v > 0 for v in stages.values())
    # the named ranges are nested in inference and disjoint: their sum is below its total
    events = {e.key: e for e in prof.key_averages()}
    named = [events[f"box_panoptic.{s}"] for s in tool.STAGES]
    assert all(e.count == 1 for e in named)
    whole = sum(e.cpu_time_total for e in named)
    assert 0 < whole <= events["whole"].cpu_time_total


def test_worst_case_weights_make_one_thing_class_everywhere():
    tool = load_tool("benchmark")
    model = get_model(CITYSCAPES_CONFIG)
    tool._worst_case(model)
    car = model.postprocessor.thing_semantic_ids[2]
    assert int(model.sem_seg_head.cls_logits.bias.argmax()) == int(car)
    assert int(model.head.box_cls_logits.bias.argmax()) == 2

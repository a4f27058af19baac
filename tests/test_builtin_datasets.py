# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""detectron2's builtin cityscapes_fine_panoptic_* and coco_2017_*_panoptic load through our code
path, on tiny fixtures written in exactly the real folder layouts and file formats.

detectron2 reads $DETECTRON2_DATASETS when it is imported, so each check runs in a subprocess.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

from box_panoptic.data.synthetic import id2rgb

CITY = "frankfurt"
STEM = "frankfurt_000000_000294"


def _write_cityscapes(root):
    """leftImg8bit + gtFine (instanceIds, labelIds, labelTrainIds), then cityscapesscripts' own
    panoptic converter."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    cs = os.path.join(root, "cityscapes")
    img_dir = os.path.join(cs, "leftImg8bit", "val", CITY)
    gt_dir = os.path.join(cs, "gtFine", "val", CITY)
    os.makedirs(img_dir)
    os.makedirs(gt_dir)
    h, w = 64, 128
    inst = np.full((h, w), 7, np.int32)  # road (label id 7, trainId 0)
    inst[:20] = 23  # sky (id 23, trainId 10)
    inst[30:50, 10:40] = 26001  # car instance 1 (id 26, trainId 13)
    inst[30:50, 40:60] = 26002  # car instance 2, touching
    inst[20:40, 80:100] = 24  # person group without instance id -> iscrowd (id 24, trainId 11)
    inst[55:64, 100:128] = 0  # unlabeled -> void
    Image.fromarray(inst.astype(np.uint16)).save(
        os.path.join(gt_dir, f"{STEM}_gtFine_instanceIds.png")
    )
    label_ids = np.where(inst < 1000, inst, inst // 1000).astype(np.uint8)
    Image.fromarray(label_ids).save(os.path.join(gt_dir, f"{STEM}_gtFine_labelIds.png"))
    train_ids = {7: 0, 23: 10, 26: 13, 24: 11, 0: 255}
    sem = np.vectorize(lambda v: train_ids[v if v < 1000 else v // 1000])(inst).astype(np.uint8)
    Image.fromarray(sem).save(os.path.join(gt_dir, f"{STEM}_gtFine_labelTrainIds.png"))
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(
        os.path.join(img_dir, f"{STEM}_leftImg8bit.png")
    )
    convert2panoptic(os.path.join(cs, "gtFine"), os.path.join(cs, "gtFine"), False, ["val"])


def _write_coco(root):
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    coco = os.path.join(root, "coco")
    for d in ("val2017", "panoptic_val2017", "annotations"):
        os.makedirs(os.path.join(coco, d))
    h, w = 48, 64
    ids = np.zeros((h, w), np.int64)
    ids[:24] = 5000  # sky-other-merged (id 187)
    ids[24:] = 6000  # floor-other-merged (id 190)
    ids[10:30, 10:30] = 1001  # person
    ids[5:15, 40:60] = 1002  # person crowd
    segs = []
    for sid, cat, crowd in ((5000, 187, 0), (6000, 190, 0), (1001, 1, 0), (1002, 1, 1)):
        ys, xs = np.nonzero(ids == sid)
        segs.append(
            {
                "id": sid,
                "category_id": cat,
                "iscrowd": crowd,
                "area": int(len(ys)),
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
            }
        )
    name = "000000000139"
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(
        os.path.join(coco, "val2017", name + ".jpg")
    )
    Image.fromarray(id2rgb(ids)).save(os.path.join(coco, "panoptic_val2017", name + ".png"))
    js = {
        "images": [{"id": 139, "file_name": name + ".jpg", "height": h, "width": w}],
        "annotations": [{"image_id": 139, "file_name": name + ".png", "segments_info": segs}],
        "categories": [
            {k: c[k] for k in ("id", "name", "isthing", "color")} for c in COCO_CATEGORIES
        ],
    }
    with open(os.path.join(coco, "annotations", "panoptic_val2017.json"), "w") as f:
        json.dump(js, f)


def _run(root, code):
    env = dict(os.environ, DETECTRON2_DATASETS=root)
    prog = (
        "import json, box_panoptic\nfrom detectron2.data import DatasetCatalog, MetadataCatalog\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", prog + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cityscapes_fine_panoptic_val_loads(tmp_path):
    root = str(tmp_path / "data.v1")  # a dot in the root broke detectron2 0.6's sem_seg path
    _write_cityscapes(root)
    recs = _run(
        root,
        """
        print(json.dumps(DatasetCatalog.get("cityscapes_fine_panoptic_val")))
    """,
    )
    assert len(recs) == 1
    r = recs[0]
    assert r["image_id"] == STEM
    assert r["file_name"].endswith(f"leftImg8bit/val/{CITY}/{STEM}_leftImg8bit.png")
    assert r["sem_seg_file_name"] == os.path.join(
        root, "cityscapes", "gtFine", "val", CITY, f"{STEM}_gtFine_labelTrainIds.png"
    )
    assert os.path.isfile(r["pan_seg_file_name"])
    segs = {s["id"]: s for s in r["segments_info"]}
    assert set(segs) == {7, 23, 26001, 26002, 24}
    assert (segs[26001]["category_id"], segs[26001]["isthing"], segs[26001]["iscrowd"]) == (
        13,
        True,
        0,
    )
    assert (segs[24]["category_id"], segs[24]["isthing"], segs[24]["iscrowd"]) == (11, True, 1)
    assert (segs[7]["category_id"], segs[7]["isthing"]) == (0, False)
    assert (segs[23]["category_id"], segs[23]["isthing"]) == (10, False)
    assert segs[26002]["area"] == 20 * 20


def test_cityscapes_missing_label_file_is_named(tmp_path):
    root = str(tmp_path)
    _write_cityscapes(root)
    os.remove(
        os.path.join(root, "cityscapes", "gtFine", "val", CITY, f"{STEM}_gtFine_labelTrainIds.png")
    )
    out = _run(
        root,
        """
        try:
            DatasetCatalog.get("cityscapes_fine_panoptic_val")
            print(json.dumps("no error"))
        except Exception as e:
            print(json.dumps(type(e).__name__ + ": " + str(e)))
    """,
    )
    assert out.startswith("PanopticDatasetError") and f"{STEM}_gtFine_labelTrainIds.png" in out


def test_coco_2017_val_panoptic_loads(tmp_path):
    root = str(tmp_path)
    _write_coco(root)
    recs, meta = _run(
        root,
        """
        m = MetadataCatalog.get("coco_2017_val_panoptic")
        print(json.dumps([DatasetCatalog.get("coco_2017_val_panoptic"),
                          [len(m.stuff_classes), m.evaluator_type, m.label_divisor]]))
    """,
    )
    assert meta == [133, "coco_panoptic_seg", 1000]
    (r,) = recs
    assert r["image_id"] == 139 and r["file_name"].endswith("coco/val2017/000000000139.jpg")
    segs = {s["id"]: s for s in r["segments_info"]}
    assert (segs[1001]["category_id"], segs[1001]["isthing"]) == (0, True)
    assert segs[1002]["iscrowd"] == 1
    # stuff after the 80 things, in category order
    assert not segs[5000]["isthing"] and 80 <= segs[5000]["category_id"] < 133
    assert segs[5000]["category_id"] < segs[6000]["category_id"]


def test_coco_missing_image_is_named(tmp_path):
    root = str(tmp_path)
    _write_coco(root)
    os.remove(os.path.join(root, "coco", "val2017", "000000000139.jpg"))
    out = _run(
        root,
        """
        try:
            DatasetCatalog.get("coco_2017_val_panoptic")
            print(json.dumps("no error"))
        except Exception as e:
            print(json.dumps(type(e).__name__ + ": " + str(e)))
    """,
    )
    assert out.startswith("PanopticDatasetError") and "000000000139.jpg" in out

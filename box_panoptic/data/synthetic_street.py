# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""A second synthetic style, "street": differs from the shapes style the way real data does.

Written in the same COCO panoptic layout under ``<root>/synthetic_street``. Against the shapes
style (``synthetic.py``) it has

* perspective: objects shrink towards a horizon, so most are small (many under 400 px);
* class imbalance: car : person : bicycle : truck drawn 6 : 3 : 1 : 1;
* thin objects: persons a third as wide as tall, bicycles made of rings and bars;
* touching and overlapping instances of one class: parked cars in rows, groups of persons,
  with no outline between them (colours vary per instance, not per class);
* occlusion by stuff: tree trunks and bushes (vegetation) in front of objects, splitting them;
* several image sizes (``StreetSpec.sizes``) and a void ego-vehicle strip at the bottom;
* Cityscapes-like category ids with the things last in the contiguous order.

Deterministic for a seed.
"""

from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np

from .synthetic import (
    LABEL_DIVISOR,
    _bbox_xywh,
    _shape_mask,
    _smooth_noise,
    _texture,
    dataset_paths,
    write_panoptic_split,
)

__all__ = ["StreetSpec", "STREET_DEFAULT_SPECS", "street_categories", "generate_street_panoptic"]

# (id, name, isthing, colour, draw weight for things) in contiguous order: stuff first
STREET_CATEGORIES = [
    (7, "road", 0, (128, 64, 128), 0),
    (8, "sidewalk", 0, (244, 35, 232), 0),
    (11, "building", 0, (70, 70, 70), 0),
    (21, "vegetation", 0, (107, 142, 35), 0),
    (23, "sky", 0, (70, 130, 180), 0),
    (26, "car", 1, (0, 0, 142), 6),
    (24, "person", 1, (220, 20, 60), 3),
    (33, "bicycle", 1, (119, 11, 32), 1),
    (27, "truck", 1, (0, 0, 70), 1),
]
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY = range(5)
CAR, PERSON, BICYCLE, TRUCK = range(5, 9)
STUFF_TEXTURE = {ROAD: "noise", SIDEWALK: "checker", BUILDING: "bricks", VEGETATION: "noise"}
PAINT = [(200, 30, 30), (30, 60, 170), (230, 230, 230), (25, 25, 25), (160, 160, 170),
         (40, 120, 60), (220, 180, 40), (110, 70, 40)]  # fmt: skip
MIN_VISIBLE = 12  # instances occluded below this many pixels are removed from the labels


@dataclass(frozen=True)
class StreetSpec:
    """What to generate: image count, seed, the image sizes (h, w) drawn from, objects per image."""

    num_images: int = 200
    seed: int = 0
    sizes: Tuple[Tuple[int, int], ...] = ((128, 256), (112, 224), (144, 256))
    max_objects: int = 14

    dataset = "synthetic_street"  # folder under the dataset root (not a field)

    def generate(self, root: str, split: str) -> Dict[str, str]:
        return generate_street_panoptic(root, split, self)

    def categories(self) -> List[Dict]:
        return street_categories()


STREET_DEFAULT_SPECS: Dict[str, StreetSpec] = {
    "train": StreetSpec(num_images=200, seed=10),
    "val": StreetSpec(num_images=40, seed=11),
}


def street_categories() -> List[Dict]:
    return [
        {"id": i, "name": n, "isthing": t, "color": list(c), "supercategory": "street"}
        for i, n, t, c, _ in STREET_CATEGORIES
    ]


def _stuff(rng, h: int, w: int):
    """(h, w) stuff map and the horizon / kerb rows."""
    horizon = int(h * rng.uniform(0.3, 0.45))
    kerb = horizon + int(h * rng.uniform(0.06, 0.14))
    yy, xx = np.mgrid[0:h, 0:w]
    wobble = 3 * _smooth_noise(rng, h, w, 16)
    stuff = np.where(yy + wobble < kerb, SIDEWALK, ROAD)
    sky = np.full((h, w), True)
    x = 0
    while x < w:  # a skyline of buildings
        bw = int(rng.integers(w // 10, w // 3))
        top = int(rng.uniform(0.0, 0.8) * horizon)
        sky[top:horizon, x : x + bw] = False
        x += bw
    stuff = np.where(yy < horizon, np.where(sky, SKY, BUILDING), stuff)
    for _ in range(int(rng.integers(0, 3))):  # trees behind the objects
        cx, r = rng.uniform(0, w), rng.uniform(0.08, 0.2) * h
        tree = (xx - cx) ** 2 + ((yy - horizon + r * 0.3) * 1.3) ** 2 < r**2
        stuff = np.where(tree, VEGETATION, stuff)
    return stuff, horizon, kerb


def _object_mask(cls: int, h: int, w: int, box) -> np.ndarray:
    """Silhouette of a car / person / bicycle / truck in box (x0, y0, bw, bh)."""
    x0, y0, bw, bh = box
    if cls == CAR:
        body = _shape_mask("rectangle", h, w, (x0, y0 + 0.4 * bh, bw, 0.6 * bh))
        cabin = _shape_mask("ellipse", h, w, (x0 + 0.2 * bw, y0, 0.6 * bw, 0.8 * bh))
        return body | cabin
    if cls == TRUCK:
        cargo = _shape_mask("rectangle", h, w, (x0, y0, 0.7 * bw, bh))
        cab = _shape_mask("rectangle", h, w, (x0 + 0.68 * bw, y0 + 0.3 * bh, 0.32 * bw, 0.7 * bh))
        return cargo | cab
    if cls == PERSON:
        head = _shape_mask("ellipse", h, w, (x0 + 0.2 * bw, y0, 0.6 * bw, 0.2 * bh))
        torso = _shape_mask("rectangle", h, w, (x0, y0 + 0.18 * bh, bw, 0.45 * bh))
        legs = _shape_mask("rectangle", h, w, (x0 + 0.1 * bw, y0 + 0.6 * bh, 0.8 * bw, 0.4 * bh))
        return head | torso | legs
    r = 0.5 * bh  # bicycle: two wheels (rings) and a frame bar
    wheels = _shape_mask("ring", h, w, (x0, y0 + bh - 2 * r, 2 * r, 2 * r)) | _shape_mask(
        "ring", h, w, (x0 + bw - 2 * r, y0 + bh - 2 * r, 2 * r, 2 * r)
    )
    frame = _shape_mask("rectangle", h, w, (x0 + r, y0 + 0.3 * bh, bw - 2 * r, max(1.5, 0.12 * bh)))
    return wheels | frame


def _place(rng, spec: StreetSpec, h: int, w: int, horizon: int, kerb: int):
    """Objects (class, box), far ones first (painter's order)."""
    weights = np.array([c[4] for c in STREET_CATEGORIES[5:]], np.float64)
    out = []
    for _ in range(int(rng.integers(2, spec.max_objects + 1))):
        prev = out[-1] if out and rng.uniform() < 0.45 else None
        if prev is not None and prev[0] in (CAR, PERSON):  # a row of cars, a group of persons
            cls, (px, py, pw, ph) = prev
            bottom = py + ph + rng.uniform(-0.05, 0.05) * ph
            step = pw * rng.uniform(0.6, 1.0)
            cx = px + pw / 2 + step * rng.choice([-1, 1])
        else:
            cls = CAR + int(rng.choice(4, p=weights / weights.sum()))
            on_road = cls in (CAR, TRUCK)
            bottom = (
                rng.uniform(kerb + 2, h)
                if on_road
                else rng.uniform(horizon + 3, kerb + 0.4 * (h - kerb))
            )
            cx = rng.uniform(0, w)
        f = max(bottom - horizon, 1.0) / (h - horizon)  # perspective: 0 at the horizon
        height = {CAR: 0.42, TRUCK: 0.7, PERSON: 0.6, BICYCLE: 0.33}[cls] * h * f
        aspect = {CAR: (1.6, 2.2), TRUCK: (1.6, 2.4), PERSON: (0.28, 0.4), BICYCLE: (1.4, 1.8)}
        width = height * rng.uniform(*aspect[cls])
        height, width = max(height, 5.0), max(width, 3.0)
        out.append((cls, (cx - width / 2, bottom - height, width, height)))
    out.sort(key=lambda o: o[1][1] + o[1][3])
    return out


def _generate_one(rng, spec: StreetSpec, cats: List[Dict]):
    h, w = spec.sizes[int(rng.integers(len(spec.sizes)))]
    stuff, horizon, kerb = _stuff(rng, h, w)
    objects = _place(rng, spec, h, w, horizon, kerb)
    inst = np.zeros((h, w), np.int32)
    for k, (cls, box) in enumerate(objects, start=1):
        inst[_object_mask(cls, h, w, box)] = k
    # occlusion by stuff: trunks and bushes in front of the objects
    occluder = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(0, 3))):
        if rng.uniform() < 0.5:
            tw = max(2, int(w * rng.uniform(0.01, 0.025)))
            occluder |= _shape_mask(
                "rectangle", h, w, (rng.uniform(0, w), horizon - 0.2 * h, tw, h)
            )
        else:
            bw, bh = w * rng.uniform(0.08, 0.2), h * rng.uniform(0.08, 0.18)
            occluder |= _shape_mask(
                "ellipse", h, w, (rng.uniform(0, w), rng.uniform(kerb - bh, h - bh), bw, bh)
            )
    inst[occluder] = 0
    stuff = np.where(occluder, VEGETATION, stuff)
    void = np.zeros((h, w), bool)
    if rng.uniform() < 0.3:  # ego-vehicle hood
        void = _shape_mask("ellipse", h, w, (-0.1 * w, h - 0.12 * h, 1.2 * w, 0.3 * h))
        inst[void] = 0
    for k in range(1, len(objects) + 1):
        if 0 < (inst == k).sum() < MIN_VISIBLE:
            inst[inst == k] = 0

    pan = np.zeros((h, w), np.int32)
    sem = np.full((h, w), 255, np.uint8)
    segments: List[Dict] = []
    counts: Dict[int, int] = {}

    def add(mask, c):
        cat = cats[c]
        counts[c] = counts.get(c, 0) + 1
        seg_id = cat["id"] * LABEL_DIVISOR + counts[c]
        pan[mask], sem[mask] = seg_id, c
        segments.append(
            {"id": int(seg_id), "category_id": cat["id"], "iscrowd": 0,
             "area": int(mask.sum()), "bbox": _bbox_xywh(mask)}
        )  # fmt: skip

    free = (inst == 0) & ~void
    for c in range(5):
        if (free & (stuff == c)).any():
            add(free & (stuff == c), c)
    for k, (cls, _) in enumerate(objects, start=1):
        if (inst == k).any():
            add(inst == k, cls)

    img = np.zeros((h, w, 3), np.float32)
    for c in range(5):
        sel = stuff == c
        if sel.any():
            tex = STUFF_TEXTURE.get(c, "gradient")
            img[sel] = _texture(tex, np.array(STREET_CATEGORIES[c][3]) * 0.9, h, w, rng)[sel]
    for k, (cls, (x0, y0, bw, bh)) in enumerate(objects, start=1):
        sel = inst == k
        if not sel.any():
            continue
        paint = np.array(PAINT[int(rng.integers(len(PAINT)))], np.float32)
        img[sel] = paint * rng.uniform(0.8, 1.1)
        if cls in (CAR, TRUCK):  # dark windows and wheels: parts, not outlines
            glass = _shape_mask(
                "rectangle", h, w, (x0 + 0.3 * bw, y0 + 0.1 * bh, 0.4 * bw, 0.25 * bh)
            )
            wheels = _shape_mask("rectangle", h, w, (x0, y0 + 0.85 * bh, bw, 0.15 * bh))
            img[sel & (glass | wheels)] = 35
        elif cls == PERSON:
            img[sel & _shape_mask("ellipse", h, w, (x0, y0, bw, 0.2 * bh))] = (225, 180, 150)
    if void.any():
        img[void] = (20, 20, 25)
    img *= rng.uniform(0.75, 1.15)  # illumination
    img += rng.normal(0, 5.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), pan, sem, segments


def generate_street_panoptic(root: str, split: str, spec: StreetSpec) -> Dict[str, str]:
    """Write one split of the street style under ``root/synthetic_street``; return its paths."""
    if spec.num_images <= 0 or not spec.sizes:
        raise ValueError(f"street dataset: needs images and sizes, got {spec}")
    if any(h < 32 or w < 32 for h, w in spec.sizes):
        raise ValueError(f"street dataset: image sizes must be at least 32x32, got {spec.sizes}")
    cats = street_categories()
    rng = np.random.default_rng(spec.seed)
    samples = (_generate_one(rng, spec, cats) for _ in range(spec.num_images))
    info = {"description": "box_panoptic synthetic street dataset", "spec": asdict(spec)}
    return write_panoptic_split(
        dataset_paths(root, split, spec.dataset), split, cats, samples, info
    )

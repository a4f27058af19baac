# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The embedded synthetic panoptic dataset, written in the real COCO panoptic on-disk format.

Layout under ``<root>/synthetic_panoptic`` (``root`` = ``$DETECTRON2_DATASETS``, default
``./datasets``), mirroring COCO's::

    {split}2017/<name>.jpg                      RGB images
    panoptic_{split}2017/<name>.png             panoptic PNGs, id = R + 256 G + 256^2 B (rgb2id)
    panoptic_semseg_{split}2017/<name>.png      semantic PNGs (contiguous ids, 255 = void)
    annotations/panoptic_{split}2017.json       images, annotations (segments_info), categories

Content: stuff regions with irregular borders and per-class textures; thing instances of
distinct shapes and textures whose sizes span ~10 px to half the image, touching and occluding
instances of the same class, crowd regions (``iscrowd = 1``), void blobs, and images without
things. Deterministic for a seed: the same arguments give byte-identical files.
"""

import argparse
import fcntl
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from ..atomic_file import atomic_write

__all__ = [
    "SyntheticSpec",
    "THING_CATALOG",
    "STUFF_CATALOG",
    "synthetic_categories",
    "generate_synthetic_panoptic",
    "dataset_paths",
    "DEFAULT_SPECS",
    "ensure_synthetic_split",
    "id2rgb",
    "main",
]

# (name, shape, RGB color, texture). Colors are far apart so that a small model learns them fast.
THING_CATALOG: List[Tuple[str, str, Tuple[int, int, int], str]] = [
    ("disc", "ellipse", (220, 40, 40), "plain"),
    ("block", "rectangle", (40, 70, 220), "stripes"),
    ("wedge", "triangle", (240, 200, 30), "dots"),
    ("gem", "diamond", (200, 60, 200), "plain"),
    ("cross", "cross", (30, 200, 200), "stripes"),
    ("ring", "ring", (250, 130, 20), "plain"),
]
# (name, RGB color, texture)
STUFF_CATALOG: List[Tuple[str, Tuple[int, int, int], str]] = [
    ("sky", (150, 190, 235), "gradient"),
    ("grass", (60, 140, 50), "noise"),
    ("road", (110, 110, 110), "checker"),
    ("water", (30, 60, 120), "waves"),
    ("sand", (200, 180, 130), "noise"),
    ("wall", (150, 90, 70), "bricks"),
]

CROWD_PROB = 0.15  # probability that an image holds one crowd region
VOID_PROB = 0.15  # probability that an image holds one void blob
EMPTY_PROB = 0.1  # probability that an image holds no things at all
TOUCH_PROB = 0.35  # probability that an instance is placed against one of its own class
MIN_VISIBLE = 24  # instances occluded below this many pixels are removed from the labels
logger = logging.getLogger("detectron2." + __name__)  # shown by detectron2's logger setup

LABEL_DIVISOR = 1000  # segment id = category_id * LABEL_DIVISOR + instance index


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Every field is validated by :meth:`validate`."""

    num_images: int = 16
    height: int = 256
    width: int = 384
    num_thing_classes: int = 3
    num_stuff_classes: int = 3
    max_instances: int = 8
    min_object_size: int = 10
    max_object_size: int = 0  # 0: half the smaller image side
    seed: int = 0

    dataset = "synthetic_panoptic"  # folder under the dataset root (not a field)

    def generate(self, root: str, split: str) -> Dict[str, str]:
        return generate_synthetic_panoptic(root, split, self)

    def categories(self) -> List[Dict]:
        return synthetic_categories(self)

    @property
    def object_size_range(self) -> Tuple[int, int]:
        hi = self.max_object_size or min(self.height, self.width) // 2
        return self.min_object_size, hi

    def validate(self) -> None:
        for name in ("num_images", "height", "width", "min_object_size"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"synthetic dataset: {name} must be > 0, got {getattr(self, name)}"
                )
        if self.max_instances < 0:
            raise ValueError(
                f"synthetic dataset: max_instances must be >= 0, got {self.max_instances}"
            )
        if not 1 <= self.num_thing_classes <= len(THING_CATALOG):
            raise ValueError(
                f"synthetic dataset: num_thing_classes must be in [1, {len(THING_CATALOG)}], "
                f"got {self.num_thing_classes}"
            )
        if not 1 <= self.num_stuff_classes <= len(STUFF_CATALOG):
            raise ValueError(
                f"synthetic dataset: num_stuff_classes must be in [1, {len(STUFF_CATALOG)}], "
                f"got {self.num_stuff_classes}"
            )
        lo, hi = self.object_size_range
        if self.max_object_size < 0 or hi < lo:
            raise ValueError(
                f"synthetic dataset: max_object_size ({hi}) must be >= min_object_size ({lo})"
            )
        if hi > min(self.height, self.width):
            raise ValueError(
                f"synthetic dataset: max_object_size ({hi}) exceeds the image "
                f"({self.height}x{self.width})"
            )
        # Instances of the smallest size must be able to cover at most half of the image.
        if self.max_instances * lo * lo > 0.5 * self.height * self.width:
            raise ValueError(
                f"synthetic dataset: max_instances={self.max_instances} objects of at least "
                f"{lo}x{lo} px do not fit in a {self.height}x{self.width} image"
            )


# The embedded dataset of the main job (README command (a)) and of a first `train_net.py` run on
# the synthetic config: 128x192 images (the config's input size), seeds 0 / 1.
DEFAULT_SPECS: Dict[str, SyntheticSpec] = {
    "train": SyntheticSpec(num_images=96, height=128, width=192, min_object_size=8, seed=0),
    "val": SyntheticSpec(num_images=24, height=128, width=192, min_object_size=8, seed=1),
}


def synthetic_categories(spec: SyntheticSpec) -> List[Dict]:
    """COCO panoptic categories: things first (ids 1..K_th), then stuff, as in COCO."""
    cats = []
    for i, (name, _, color, _) in enumerate(THING_CATALOG[: spec.num_thing_classes]):
        cats.append(
            {
                "id": i + 1,
                "name": name,
                "isthing": 1,
                "color": list(color),
                "supercategory": "thing",
            }
        )
    for name, color, _ in STUFF_CATALOG[: spec.num_stuff_classes]:
        cats.append(
            {
                "id": len(cats) + 1,
                "name": name,
                "isthing": 0,
                "color": list(color),
                "supercategory": "stuff",
            }
        )
    return cats


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """Inverse of panopticapi's rgb2id: (H, W) int -> (H, W, 3) uint8, id = R + 256 G + 256^2 B."""
    id_map = id_map.astype(np.int64)
    return np.stack([id_map % 256, id_map // 256 % 256, id_map // 256**2 % 256], -1).astype(
        np.uint8
    )


def dataset_paths(root: str, split: str, dataset: str = "synthetic_panoptic") -> Dict[str, str]:
    """Paths of one split of a synthetic dataset (``synthetic_panoptic`` or ``synthetic_street``)
    under ``root`` (``$DETECTRON2_DATASETS``)."""
    base = os.path.join(root, dataset)
    return {
        "image_root": os.path.join(base, f"{split}2017"),
        "panoptic_root": os.path.join(base, f"panoptic_{split}2017"),
        "sem_seg_root": os.path.join(base, f"panoptic_semseg_{split}2017"),
        "panoptic_json": os.path.join(base, "annotations", f"panoptic_{split}2017.json"),
    }


# ------------------------------------------------------------------------------------------------
# rendering helpers (numpy, vectorized over pixels)
# ------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth value noise in [-1, 1], (h, w), correlation length ~cell px."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((gw * cell, gh * cell), Image.BICUBIC)
    return np.clip(np.asarray(img)[:h, :w], -1, 1)


def _texture(kind: str, color, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float texture around ``color``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "plain":
        mod = np.zeros((h, w), np.float32)
    elif kind == "stripes":
        mod = 0.18 * np.sign(np.sin((xx + yy) * 0.5))
    elif kind == "dots":
        mod = -0.25 * ((np.sin(xx * 0.7) > 0.6) & (np.sin(yy * 0.7) > 0.6))
    elif kind == "gradient":
        mod = 0.25 * (yy / max(h, 1) - 0.5)
    elif kind == "noise":
        mod = 0.2 * _smooth_noise(rng, h, w, 4)
    elif kind == "checker":
        mod = 0.12 * (((xx // 12) + (yy // 12)) % 2 * 2 - 1)
    elif kind == "waves":
        mod = 0.2 * np.sin(xx * 0.15 + 2 * np.sin(yy * 0.1))
    elif kind == "bricks":
        mod = -0.3 * (((yy % 10) < 1.5) | (((xx + 10 * ((yy // 10) % 2)) % 20) < 1.5))
    else:
        raise ValueError(f"unknown texture {kind!r}")
    base = np.asarray(color, np.float32)[None, None, :]
    return base * (1.0 + mod[..., None])


def _shape_mask(shape: str, h: int, w: int, box: Tuple[int, int, int, int]) -> np.ndarray:
    """Boolean (h, w) mask of ``shape`` inscribed in box = (x0, y0, bw, bh)."""
    x0, y0, bw, bh = box
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx + 0.5 - x0) / bw * 2 - 1  # [-1, 1] inside the box
    v = (yy + 0.5 - y0) / bh * 2 - 1
    inside = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "rectangle":
        m = inside
    elif shape == "ellipse":
        m = u**2 + v**2 <= 1
    elif shape == "triangle":
        m = inside & (np.abs(u) <= (v + 1) / 2)
    elif shape == "diamond":
        m = np.abs(u) + np.abs(v) <= 1
    elif shape == "cross":
        m = inside & ((np.abs(u) <= 0.35) | (np.abs(v) <= 0.35))
    elif shape == "ring":
        r2 = u**2 + v**2
        m = (r2 <= 1) & (r2 >= 0.3)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m


def _stuff_layout(rng, spec: SyntheticSpec, h: int, w: int) -> np.ndarray:
    """(h, w) stuff category index (0-based into the stuff list): noisy Voronoi cells."""
    n_cells = int(rng.integers(2, 6))
    classes = rng.integers(0, spec.num_stuff_classes, size=n_cells)
    seeds = rng.uniform([0, 0], [w, h], size=(n_cells, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    amp = 0.12 * max(h, w)
    wx = xx + amp * _smooth_noise(rng, h, w, 24)
    wy = yy + amp * _smooth_noise(rng, h, w, 24)
    d = (wx[None] - seeds[:, 0, None, None]) ** 2 + (wy[None] - seeds[:, 1, None, None]) ** 2
    return classes[np.argmin(d, axis=0)]


def _render_image(rng, spec, cats, stuff_map, inst_map, instances, void_mask) -> np.ndarray:
    h, w = stuff_map.shape
    img = np.zeros((h, w, 3), np.float32)
    for s, (_, color, tex) in enumerate(STUFF_CATALOG[: spec.num_stuff_classes]):
        sel = stuff_map == s
        if sel.any():
            img[sel] = _texture(tex, color, h, w, rng)[sel]
    for k, inst in enumerate(instances, start=1):
        sel = inst_map == k
        if not sel.any():
            continue
        _, _, color, tex = THING_CATALOG[inst["thing"]]
        shade = rng.uniform(0.8, 1.15)
        img[sel] = _texture(tex, np.asarray(color) * shade, h, w, rng)[sel]
        # a darker outline inside the instance separates touching instances of one class
        inner = sel.copy()
        inner[1:-1, 1:-1] &= (
            (inst_map[:-2, 1:-1] == k)
            & (inst_map[2:, 1:-1] == k)
            & (inst_map[1:-1, :-2] == k)
            & (inst_map[1:-1, 2:] == k)
        )
        img[sel & ~inner] *= 0.55
    if void_mask.any():
        img[void_mask] = rng.uniform(0, 255, size=(int(void_mask.sum()), 3))
    img += rng.normal(0, 4.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _place_instances(rng, spec: SyntheticSpec, h: int, w: int):
    """Random instances (list of dicts with thing index and box), painter's order."""
    if rng.uniform() < EMPTY_PROB or spec.max_instances == 0:
        return []
    lo, hi = spec.object_size_range
    n = int(rng.integers(1, spec.max_instances + 1))
    out = []
    for _ in range(n):
        same = [o for o in out if rng.uniform() < TOUCH_PROB]
        size = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        aspect = float(rng.uniform(0.65, 1.5))
        bw = int(np.clip(round(size * math.sqrt(aspect)), lo, min(w, hi)))
        bh = int(np.clip(round(size / math.sqrt(aspect)), lo, min(h, hi)))
        if same:  # against (touching or overlapping) an earlier instance of the same class
            ref = same[0]
            thing = ref["thing"]
            rx, ry, rw, rh = ref["box"]
            dx = rng.choice([-1, 1]) * rng.uniform(0.5, 0.9) * (rw + bw) / 2
            dy = rng.uniform(-0.3, 0.3) * (rh + bh) / 2
            cx, cy = rx + rw / 2 + dx, ry + rh / 2 + dy
        else:
            thing = int(rng.integers(0, spec.num_thing_classes))
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        x0 = int(np.clip(round(cx - bw / 2), 0, w - bw))
        y0 = int(np.clip(round(cy - bh / 2), 0, h - bh))
        out.append({"thing": thing, "box": (x0, y0, bw, bh)})
    return out


def _crowd_region(rng, spec, h, w):
    """A crowd: many small objects of one class, labeled as a single iscrowd segment."""
    thing = int(rng.integers(0, spec.num_thing_classes))
    lo = spec.min_object_size
    cw, ch = int(min(w, 6 * lo)), int(min(h, 4 * lo))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    mask = np.zeros((h, w), bool)
    shape = THING_CATALOG[thing][1]
    for _ in range(int(rng.integers(6, 12))):
        s = int(rng.integers(max(3, lo // 2), max(4, lo)))
        bx = int(rng.integers(x0, x0 + max(1, cw - s)))
        by = int(rng.integers(y0, y0 + max(1, ch - s)))
        mask |= _shape_mask(shape, h, w, (bx, by, s, s))
    return thing, mask


def _bbox_xywh(mask: np.ndarray) -> List[int]:
    """COCO panoptic bbox [x, y, w, h] with inclusive pixel extents."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def _generate_one(rng, spec: SyntheticSpec, cats: List[Dict]):
    """One image: (rgb uint8, panoptic id map int32, semantic uint8, segments_info)."""
    h, w = spec.height, spec.width
    k_th = spec.num_thing_classes
    stuff_map = _stuff_layout(rng, spec, h, w)

    # paint instances in order: later ones occlude earlier ones
    instances = _place_instances(rng, spec, h, w)
    inst_map = np.zeros((h, w), np.int32)  # 0 = none, k = instance k (1-based)
    for k, inst in enumerate(instances, start=1):
        inst_map[_shape_mask(THING_CATALOG[inst["thing"]][1], h, w, inst["box"])] = k
    for k in range(1, len(instances) + 1):  # drop nearly hidden instances
        sel = inst_map == k
        if 0 < sel.sum() < MIN_VISIBLE:
            inst_map[sel] = 0

    crowd = _crowd_region(rng, spec, h, w) if (instances and rng.uniform() < CROWD_PROB) else None
    void_mask = np.zeros((h, w), bool)
    if rng.uniform() < VOID_PROB:
        vw, vh = int(rng.integers(w // 10, w // 4)), int(rng.integers(h // 10, h // 4))
        vx, vy = int(rng.integers(0, w - vw)), int(rng.integers(0, h - vh))
        void_mask = _shape_mask("ellipse", h, w, (vx, vy, vw, vh))
    if crowd is not None:
        inst_map[crowd[1]] = 0  # the crowd lies on top of individual instances
    inst_map[void_mask] = 0
    crowd_mask = crowd[1] & ~void_mask if crowd is not None else np.zeros((h, w), bool)

    # ids and segments_info
    pan = np.zeros((h, w), np.int32)
    sem = np.full((h, w), 255, np.uint8)
    segments = []
    n_inst_per_cat: Dict[int, int] = {}

    def add_segment(mask, cat_index, iscrowd):
        cat = cats[cat_index]
        idx = n_inst_per_cat.get(cat["id"], 0) + 1
        n_inst_per_cat[cat["id"]] = idx
        seg_id = cat["id"] * LABEL_DIVISOR + idx
        pan[mask] = seg_id
        sem[mask] = cat_index  # contiguous id = index in categories
        segments.append(
            {
                "id": int(seg_id),
                "category_id": cat["id"],
                "iscrowd": int(iscrowd),
                "area": int(mask.sum()),
                "bbox": _bbox_xywh(mask),
            }
        )

    free = (inst_map == 0) & ~crowd_mask & ~void_mask
    for s in range(spec.num_stuff_classes):
        m = free & (stuff_map == s)
        if m.any():
            add_segment(m, k_th + s, 0)
    for k, inst in enumerate(instances, start=1):
        m = inst_map == k
        if m.any():
            add_segment(m, inst["thing"], 0)
    if crowd_mask.any():
        add_segment(crowd_mask, crowd[0], 1)

    # render from the final labels so that image and annotation agree exactly
    render_inst = inst_map.copy()
    render_list = list(instances)
    if crowd_mask.any():
        render_list = render_list + [{"thing": crowd[0]}]
        render_inst[crowd_mask] = len(render_list)
    img = _render_image(rng, spec, cats, stuff_map, render_inst, render_list, void_mask)
    return img, pan, sem, segments


def generate_synthetic_panoptic(root: str, split: str, spec: SyntheticSpec) -> Dict[str, str]:
    """Write one split of the synthetic dataset under ``root``; return its paths.

    Args:
        root: dataset root (``$DETECTRON2_DATASETS``).
        split: split name, e.g. "train" or "val".
        spec: what to generate; refused with a ValueError naming the bad argument.
    """
    spec.validate()
    if not split or os.sep in split:
        raise ValueError(f"synthetic dataset: bad split name {split!r}")
    paths = dataset_paths(root, split)
    cats = synthetic_categories(spec)
    rng = np.random.default_rng(spec.seed)
    samples = (_generate_one(rng, spec, cats) for _ in range(spec.num_images))
    info = {"description": "box_panoptic synthetic panoptic dataset", "spec": asdict(spec)}
    return write_panoptic_split(paths, split, cats, samples, info)


def write_panoptic_split(paths: Dict[str, str], split: str, cats, samples, info) -> Dict[str, str]:
    """Write ``samples`` (rgb, panoptic ids, semantic, segments_info) in the COCO panoptic layout
    of ``paths``; the JSON last and atomically (its presence says the split is complete)."""
    for key in ("image_root", "panoptic_root", "sem_seg_root"):
        os.makedirs(paths[key], exist_ok=True)
    os.makedirs(os.path.dirname(paths["panoptic_json"]), exist_ok=True)
    images, annotations = [], []
    for i, (img, pan, sem, segments) in enumerate(samples):
        name = f"{split}_{i:06d}"
        Image.fromarray(img).save(os.path.join(paths["image_root"], name + ".jpg"), quality=95)
        Image.fromarray(id2rgb(pan)).save(os.path.join(paths["panoptic_root"], name + ".png"))
        Image.fromarray(sem).save(os.path.join(paths["sem_seg_root"], name + ".png"))
        h, w = sem.shape
        images.append({"id": i, "file_name": name + ".jpg", "height": h, "width": w})
        annotations.append({"image_id": i, "file_name": name + ".png", "segments_info": segments})
    content = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": cats,
    }
    atomic_write(paths["panoptic_json"], lambda f: json.dump(content, f), text=True)
    return paths


def ensure_synthetic_split(root: str, split: str, spec) -> Dict[str, str]:
    """Generate ``split`` of ``spec.dataset`` under ``root`` unless its JSON records ``spec``
    already (one process at a time: others wait on a lock file, then find it done). Returns its
    paths. ``spec``: a :class:`SyntheticSpec` or a ``StreetSpec``."""
    paths = dataset_paths(root, split, spec.dataset)
    os.makedirs(os.path.dirname(paths["panoptic_json"]), exist_ok=True)
    lock_path = os.path.join(os.path.dirname(paths["panoptic_json"]), f".{split}.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # as JSON stores it (tuples become lists)
            if _recorded_spec(paths["panoptic_json"]) != json.loads(json.dumps(asdict(spec))):
                logger.info(
                    f"generating the {spec.dataset} {split} split ({spec.num_images} images) "
                    f"under {os.path.dirname(os.path.dirname(paths['panoptic_json']))}"
                )
                spec.generate(root, split)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return paths


def _recorded_spec(panoptic_json: str):
    """The spec recorded in a synthetic split's JSON, or None (absent or unreadable)."""
    try:
        with open(panoptic_json) as f:
            return json.load(f).get("info", {}).get("spec")
    except (OSError, ValueError):
        return None


# SyntheticSpec fields settable from the command line (besides counts and seed)
CLI_FIELDS = (
    "height",
    "width",
    "num_thing_classes",
    "num_stuff_classes",
    "max_instances",
    "min_object_size",
    "max_object_size",
)


def main(argv=None) -> None:
    """CLI: ``python -m box_panoptic.data.synthetic --root datasets --num-train 64``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    p.add_argument("--num-train", type=int, default=SyntheticSpec.num_images)
    p.add_argument("--num-val", type=int, default=SyntheticSpec.num_images)
    for field in CLI_FIELDS + ("seed",):
        p.add_argument(
            "--" + field.replace("_", "-"), type=int, default=getattr(SyntheticSpec, field)
        )
    a = p.parse_args(argv)
    common = {k: getattr(a, k) for k in CLI_FIELDS}
    for split, n, seed in (("train", a.num_train, a.seed), ("val", a.num_val, a.seed + 1)):
        paths = generate_synthetic_panoptic(a.root, split, SyntheticSpec(n, seed=seed, **common))
        print(f"wrote {n} {split} images: {paths['panoptic_json']}")


if __name__ == "__main__":
    main()

# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The model's class layout, read from a dataset's detectron2 metadata.

The semantic head predicts every class (stuff and things) in one space of ``C`` classes; the
box classifier predicts the ``K`` thing classes, thing label ``k`` being semantic class
``thing_ids[k]`` (METHOD §5). detectron2's panoptic metadata already says all of it:

* **standard** datasets (``register_coco_panoptic``, builtin COCO/Cityscapes panoptic): things and
  stuff share one contiguous space, ``thing_dataset_id_to_contiguous_id`` and
  ``stuff_dataset_id_to_contiguous_id`` take disjoint values covering ``0 .. C-1``; the model's
  classes are those contiguous ids, and things may sit anywhere (COCO first, Cityscapes last);
* **separated** datasets (``register_coco_panoptic_separated``, Panoptic FPN's layout): things
  ``0 .. K-1`` and stuff ``0 .. S`` in two spaces, stuff 0 being the merged "things" class of
  dataset id 0 (VOID in the panoptic format). The model's classes are the things, then the
  stuff other than that placeholder.

Outputs carry the dataset's own contiguous ids (with ``isthing``), so detectron2's evaluators and
Visualizer read them unchanged: :attr:`ClassLayout.output_ids` maps a model class to that id.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "ClassLayout",
    "ClassLayoutError",
    "FROM_METADATA",
    "class_layout_from_config",
    "has_panoptic_metadata",
]


class ClassLayoutError(ValueError):
    """A dataset's metadata or a config cannot describe a class layout."""


def has_panoptic_metadata(meta) -> bool:
    """Whether detectron2 metadata ``meta`` holds both category-id maps of a panoptic set."""
    return hasattr(meta, "thing_dataset_id_to_contiguous_id") and hasattr(
        meta, "stuff_dataset_id_to_contiguous_id"
    )


def _name(names: Optional[Sequence[str]], index: int, count: int, default: str) -> str:
    return str(names[index]) if names is not None and len(names) == count else default


@dataclass(frozen=True)
class ClassLayout:
    """Model classes and their relation to a dataset's contiguous category ids.

    Attributes:
        names: (C,) name of each model (semantic) class.
        thing_ids: (K,) model class of each thing label, ascending.
        output_ids: (C,) the dataset's contiguous id of each model class (a thing contiguous id
            for things, a stuff contiguous id for stuff): what outputs report.
    """

    names: Tuple[str, ...]
    thing_ids: Tuple[int, ...]
    output_ids: Tuple[int, ...]

    def __post_init__(self):
        c = len(self.names)
        if len(self.output_ids) != c:
            raise ClassLayoutError(f"{len(self.output_ids)} output ids for {c} classes")
        if not self.thing_ids:
            raise ClassLayoutError("a panoptic class layout needs at least one thing class")
        if list(self.thing_ids) != sorted(set(self.thing_ids)) or not (
            0 <= self.thing_ids[0] and self.thing_ids[-1] < c
        ):
            raise ClassLayoutError(f"thing classes {list(self.thing_ids)} not in 0..{c - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def num_thing_classes(self) -> int:
        return len(self.thing_ids)

    @property
    def is_identity(self) -> bool:
        """Model classes are the dataset's contiguous ids (a standard dataset)."""
        return self.output_ids == tuple(range(self.num_classes))

    @property
    def stuff_ids(self) -> List[int]:
        """Model classes that are not things, ascending."""
        return [c for c in range(self.num_classes) if c not in self.thing_ids]

    @property
    def thing_names(self) -> List[str]:
        return [self.names[c] for c in self.thing_ids]

    def model_classes(self) -> Dict[Tuple[int, bool], int]:
        """{(dataset contiguous id, isthing): model class}."""
        things = set(self.thing_ids)
        return {(o, c in things): c for c, o in enumerate(self.output_ids)}

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_metadata(cls, meta, dataset_name: str = "") -> "ClassLayout":
        """The layout of a dataset from its detectron2 metadata (standard or separated)."""
        if not has_panoptic_metadata(meta):
            raise ClassLayoutError(
                f"dataset {dataset_name!r}: metadata lacks thing_dataset_id_to_contiguous_id / "
                "stuff_dataset_id_to_contiguous_id"
            )
        things = sorted(set(meta.thing_dataset_id_to_contiguous_id.values()))
        stuff = sorted(set(meta.stuff_dataset_id_to_contiguous_id.values()))
        thing_names = getattr(meta, "thing_classes", None)
        stuff_names = getattr(meta, "stuff_classes", None)
        if not set(things) & set(stuff):  # standard: one contiguous space
            c = len(things) + len(stuff)
            if sorted(things + stuff) != list(range(c)):
                raise ClassLayoutError(
                    f"dataset {dataset_name!r}: contiguous ids of things {things} and stuff "
                    f"{stuff} do not cover 0..{c - 1} exactly"
                )
            # detectron2 convention: stuff_classes (or thing_classes) name every class
            full = stuff_names if stuff_names is not None and len(stuff_names) == c else None
            full = full or (
                thing_names if thing_names is not None and len(thing_names) == c else None
            )
            names = [_name(full, i, c, f"class_{i}") for i in range(c)]
            if full is None:  # one list per kind, in contiguous order
                for rank, i in enumerate(things):
                    names[i] = _name(thing_names, rank, len(things), names[i])
                for rank, i in enumerate(stuff):
                    names[i] = _name(stuff_names, rank, len(stuff), names[i])
            return cls(tuple(names), tuple(things), tuple(range(c)))
        # separated: things 0..K-1, then stuff without the "things" placeholder (dataset id 0)
        stuff = sorted({c for d, c in meta.stuff_dataset_id_to_contiguous_id.items() if d != 0})
        if things != list(range(len(things))):
            raise ClassLayoutError(
                f"dataset {dataset_name!r}: thing contiguous ids {things} are not 0..K-1"
            )
        names = [_name(thing_names, k, len(things), f"thing_{k}") for k in things]
        s_count = len(getattr(meta, "stuff_classes", []) or [])
        names += [_name(stuff_names, s, s_count, f"stuff_{s}") for s in stuff]
        return cls(tuple(names), tuple(things), tuple(things + stuff))

    @classmethod
    def from_counts(
        cls, num_classes: int, num_thing_classes: int, instance_id_range: Sequence[int]
    ) -> "ClassLayout":
        """A standard layout from explicit config values (things a contiguous block)."""
        first, last = (int(v) for v in instance_id_range)
        if last - first + 1 != num_thing_classes:
            raise ClassLayoutError(
                f"MODEL.BOX_PANOPTIC.INSTANCE_ID_RANGE {[first, last]} holds {last - first + 1} "
                f"classes but NUM_THING_CLASSES = {num_thing_classes}"
            )
        names = tuple(f"class_{i}" for i in range(num_classes))
        return cls(names, tuple(range(first, last + 1)), tuple(range(num_classes)))


# the value of MODEL.BOX_PANOPTIC.NUM_CLASSES / NUM_THING_CLASSES that means "from the metadata"
FROM_METADATA = -1


def _check_explicit(bp, layout: ClassLayout, name: str) -> None:
    """Explicit config values must agree with dataset ``name``'s layout (both numbers named)."""
    if bp.NUM_CLASSES != FROM_METADATA and bp.NUM_CLASSES != layout.num_classes:
        raise ClassLayoutError(
            f"MODEL.BOX_PANOPTIC.NUM_CLASSES = {bp.NUM_CLASSES} but dataset {name!r} has "
            f"{layout.num_classes} classes"
        )
    if bp.NUM_THING_CLASSES != FROM_METADATA and bp.NUM_THING_CLASSES != len(layout.thing_ids):
        raise ClassLayoutError(
            f"MODEL.BOX_PANOPTIC.NUM_THING_CLASSES = {bp.NUM_THING_CLASSES} but dataset "
            f"{name!r} has {len(layout.thing_ids)} thing classes"
        )
    if len(bp.INSTANCE_ID_RANGE):
        first, last = bp.INSTANCE_ID_RANGE
        if list(layout.thing_ids) != list(range(first, last + 1)):
            raise ClassLayoutError(
                f"MODEL.BOX_PANOPTIC.INSTANCE_ID_RANGE = {[first, last]} but the thing classes "
                f"of dataset {name!r} have contiguous ids {list(layout.thing_ids)}"
            )


def class_layout_from_config(cfg) -> ClassLayout:
    """The class layout of a config: from the metadata of its datasets (``DATASETS.TRAIN``, then
    ``TEST``), checked against any explicit ``NUM_CLASSES`` / ``NUM_THING_CLASSES`` /
    ``INSTANCE_ID_RANGE``; from those keys alone when no dataset has panoptic metadata."""
    from detectron2.data import MetadataCatalog

    bp = cfg.MODEL.BOX_PANOPTIC
    found = []
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        meta = MetadataCatalog.get(name)
        if has_panoptic_metadata(meta):
            found.append((name, ClassLayout.from_metadata(meta, name)))
    for name, layout in found:
        _check_explicit(bp, layout, name)
        first_name, first = found[0]
        if (layout.num_classes, layout.thing_ids) != (first.num_classes, first.thing_ids):
            raise ClassLayoutError(
                f"datasets {first_name!r} and {name!r} have different class layouts "
                f"({first.num_classes} classes, things {list(first.thing_ids)} vs "
                f"{layout.num_classes}, {list(layout.thing_ids)})"
            )
    if found:
        return found[0][1]
    num_things = bp.NUM_THING_CLASSES
    if num_things == FROM_METADATA and len(bp.INSTANCE_ID_RANGE):
        num_things = bp.INSTANCE_ID_RANGE[1] - bp.INSTANCE_ID_RANGE[0] + 1
    if bp.NUM_CLASSES == FROM_METADATA or num_things == FROM_METADATA:
        raise ClassLayoutError(
            "MODEL.BOX_PANOPTIC.NUM_CLASSES / NUM_THING_CLASSES are -1 (read from the datasets' "
            f"metadata) but none of DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} / DATASETS.TEST "
            f"{tuple(cfg.DATASETS.TEST)} is a registered panoptic dataset: register it first, "
            "or set NUM_CLASSES, NUM_THING_CLASSES and INSTANCE_ID_RANGE"
        )
    id_range = bp.INSTANCE_ID_RANGE if len(bp.INSTANCE_ID_RANGE) else [0, num_things - 1]
    return ClassLayout.from_counts(bp.NUM_CLASSES, num_things, id_range)

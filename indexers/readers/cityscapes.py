"""Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*`` + ``gtFine/<split>/<city>/*_gtFine_labelIds.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexers.readers.base import DatasetReader, SampleRef, paired_files
from memory_bank import ClassTable

#: The 34 labelIds of cityscapesScripts ``helpers/labels.py`` as (name, labelId, trainId).
#: trainId 255 marks classes the official 19-class benchmark ignores. "license plate"
#: (labelId -1) never appears in the labelIds PNGs, so it is not listed.
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255),
    ("ego vehicle", 1, 255),
    ("rectification border", 2, 255),
    ("out of roi", 3, 255),
    ("static", 4, 255),
    ("dynamic", 5, 255),
    ("ground", 6, 255),
    ("road", 7, 0),
    ("sidewalk", 8, 1),
    ("parking", 9, 255),
    ("rail track", 10, 255),
    ("building", 11, 2),
    ("wall", 12, 3),
    ("fence", 13, 4),
    ("guard rail", 14, 255),
    ("bridge", 15, 255),
    ("tunnel", 16, 255),
    ("pole", 17, 5),
    ("polegroup", 18, 255),
    ("traffic light", 19, 6),
    ("traffic sign", 20, 7),
    ("vegetation", 21, 8),
    ("terrain", 22, 9),
    ("sky", 23, 10),
    ("person", 24, 11),
    ("rider", 25, 12),
    ("car", 26, 13),
    ("truck", 27, 14),
    ("bus", 28, 15),
    ("caravan", 29, 255),
    ("trailer", 30, 255),
    ("train", 31, 16),
    ("motorcycle", 32, 17),
    ("bicycle", 33, 18),
)

#: The 19 train classes in trainId order, with the official colours.
CITYSCAPES_CLASSES = ClassTable.from_names(
    [
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ],
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
)


#: cityscapesScripts' ``hasInstances`` classes, by labelId (caravan and trailer have no train id).
CITYSCAPES_INSTANCE_LABELS = (
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)


def _cityscapes_lut() -> np.ndarray:
    lut = np.full(256, -1, np.int16)
    for _name, label_id, train_id in CITYSCAPES_LABELS:
        lut[label_id] = train_id
    return lut


class CityscapesReader(DatasetReader):
    """Cityscapes with ``gtFine`` labelIds mapped to the 19 benchmark train ids.

    Raw labelIds 0..33 are valid; those without a train id (void, parking, rail track,
    guard rail, bridge, tunnel, polegroup, caravan, trailer) become 255. Any other value
    is an error. Instance maps are ``*_gtFine_instanceIds.png``: a value >= 1000 is
    ``labelId * 1000 + index`` (the instance id kept as is), one below 1000 a labelId with no
    instance (0 here). The thing classes are the ``hasInstances`` ones that have a train id.
    """

    name = "cityscapes"
    classes = CITYSCAPES_CLASSES
    default_splits = ("train",)
    lut = _cityscapes_lut()
    thing_classes = tuple(
        sorted(train for name, _, train in CITYSCAPES_LABELS if name in CITYSCAPES_INSTANCE_LABELS and train != 255)
    )

    def instance_path(self, ref: SampleRef) -> Path:
        return ref.label_path.with_name(ref.label_path.name.replace("_gtFine_labelIds.png", "_gtFine_instanceIds.png"))

    def map_instances(self, raw: np.ndarray) -> np.ndarray:
        return np.where(raw >= 1000, raw, 0).astype(np.int32)

    def find_pairs(self) -> list[SampleRef]:
        refs: list[SampleRef] = []
        for split in self.splits:
            refs += paired_files(
                self.root / "leftImg8bit" / split,
                self.root / "gtFine" / split,
                split,
                "*/*_leftImg8bit.png",
                lambda rel: rel.parent / rel.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"),
            )
        return refs

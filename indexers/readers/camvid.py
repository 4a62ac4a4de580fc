"""CamVid in the SegNet layout: ``train/`` + ``trainannot/``, ``val/`` + ``valannot/``, ``test/`` + ``testannot/``."""

from __future__ import annotations

from indexers.readers.base import DatasetReader, SampleRef, identity_lut, paired_files
from memory_bank import ClassTable

CAMVID_CLASSES = ClassTable.from_names(
    ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist"],
    [
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ],
)


class CamVidReader(DatasetReader):
    """CamVid, 11 classes; raw id 11 ("unlabelled") becomes 255."""

    name = "camvid"
    classes = CAMVID_CLASSES
    default_splits = ("train",)
    lut = identity_lut(11, ignore=(11, 255))

    def find_pairs(self) -> list[SampleRef]:
        refs: list[SampleRef] = []
        for split in self.splits:
            refs += paired_files(self.root / split, self.root / f"{split}annot", split, "*.png", lambda rel: rel)
        return refs

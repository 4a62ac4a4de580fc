"""ADE20K SceneParsing (ADEChallengeData2016): ``images/<split>/*.jpg`` + ``annotations/<split>/*.png``."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np

from indexers.readers.base import DatasetReader, SampleRef, identity_lut, paired_files
from memory_bank import ClassTable, DatasetError

#: The 150 SceneParsing classes in raw-id order 1..150: short names from objectInfo150 and the
#: customary ADE20K-150 palette (as used by mmsegmentation's ADE20KDataset), kept as data in
#: ``ade20k_classes.json`` beside this module (the folder reader's ``classes.json`` format).
ADE20K_CLASSES = ClassTable.from_list(json.loads(files("indexers.readers").joinpath("ade20k_classes.json").read_text()))


def _ade20k_lut() -> np.ndarray:
    # Raw 0 ("other objects") is unlabelled; raw 1..150 shift down to 0..149; 255 stays ignored.
    lut = identity_lut(0, ignore=(0, 255))
    lut[1:151] = range(150)
    return lut


class ADE20KReader(DatasetReader):
    """ADE20K SceneParsing, 150 classes: raw 1..150 become 0..149 and raw 0 ("other") becomes 255.

    Reads the ADEChallengeData2016 layout (``images/training``, ``annotations/training``,
    ``images/validation``, ``annotations/validation``). When ``images/`` holds the photos directly,
    with no split folders, the whole folder is read as the single split ``"all"``.
    """

    name = "ade20k"
    classes = ADE20K_CLASSES
    default_splits = ("training",)
    lut = _ade20k_lut()

    def find_pairs(self) -> list[SampleRef]:
        images, annotations = self.root / "images", self.root / "annotations"
        if not images.is_dir():
            raise DatasetError(f"{self.name}: missing directory {images}")
        if self._is_flat(images):
            self.splits = ("all",)
            return paired_files(images, annotations, "all", "*.jpg", lambda rel: rel.with_suffix(".png"))
        refs: list[SampleRef] = []
        for split in self.splits:
            refs += paired_files(
                images / split, annotations / split, split, "*.jpg", lambda rel: rel.with_suffix(".png")
            )
        return refs

    def _is_flat(self, images: Path) -> bool:
        """True for a flat ``images/*.jpg`` layout: no split folders and the default or ``"all"`` split asked for."""
        if self.splits not in (self.default_splits, ("all",)):
            return False
        return not any(p.is_dir() for p in images.iterdir())

"""COCO-Stuff in SPADE's layout: ``train_img/*.jpg`` + ``train_label/*.png``, ``val_img`` + ``val_label``,
and the instance maps ``train_inst/*.png``, ``val_inst/*.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexers.readers.base import DatasetReader, SampleRef, identity_lut, paired_files
from memory_bank import ClassTable
from memory_bank.classes import default_palette

#: The 182 COCO-Stuff labels (cocostuff ``labels.txt`` ids 1..182, here 0..181): the 91 COCO
#: thing ids, including the 11 that COCO never annotated (street sign, hat, shoe, eye glasses,
#: plate, mirror, window, desk, door, blender, hair brush), then the 91 stuff classes.
COCOSTUFF_NAMES: tuple[str, ...] = (
    # things (COCO ids 1..91)
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window",
    "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "hair brush",
    # stuff (cocostuff ids 92..182)
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

COCOSTUFF_CLASSES = ClassTable.from_names(COCOSTUFF_NAMES, default_palette(len(COCOSTUFF_NAMES)))


class CocoStuffReader(DatasetReader):
    """COCO-Stuff 164k as prepared for SPADE: label PNGs hold ids 0..181 and 255 for unlabelled.

    The ids already are the bank's (cocostuff id - 1), so the lut is the identity; raw
    182..254 are not COCO-Stuff labels and are refused. The thing classes are the 91 COCO thing
    ids (0..90). SPADE's instance maps (``<split>_inst/<name>.png``, written by its
    ``coco_generate_instance_map.py``) are the label map with each polygon annotation of the image
    painted over it with its index, counting from 0; so every value is shifted by one here, to keep
    0 for "no instance". Thing pixels no polygon covers (crowd annotations, stored as RLE) keep
    their label value, so they become one pseudo-instance per class.
    """

    name = "cocostuff"
    classes = COCOSTUFF_CLASSES
    default_splits = ("train",)
    lut = identity_lut(len(COCOSTUFF_NAMES), ignore=(255,))
    thing_classes = tuple(range(91))

    def instance_path(self, ref: SampleRef) -> Path:
        return self.root / f"{ref.split}_inst" / ref.label_path.name

    def map_instances(self, raw: np.ndarray) -> np.ndarray:
        return raw.astype(np.int32) + 1  # the first object is 0 in SPADE's maps

    def find_pairs(self) -> list[SampleRef]:
        refs: list[SampleRef] = []
        for split in self.splits:
            refs += paired_files(
                self.root / f"{split}_img",
                self.root / f"{split}_label",
                split,
                "*.jpg",
                lambda rel: rel.with_suffix(".png"),
            )
        return refs

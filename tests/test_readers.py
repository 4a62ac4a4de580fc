"""Dataset readers on tiny fixture datasets written in each dataset's real on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexers.readers import READERS, create_reader
from indexers.readers.ade20k import ADE20KReader
from indexers.readers.camvid import CamVidReader
from indexers.readers.cityscapes import CITYSCAPES_LABELS, CityscapesReader
from indexers.readers.cocostuff import CocoStuffReader
from indexers.readers.folder import FolderReader
from memory_bank import DatasetError

H, W = 24, 32


def photo(path: Path, seed: int = 0) -> None:
    """Write a random RGB photo (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def label(path: Path, values: np.ndarray) -> None:
    """Write a single-channel 8-bit label PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def stripes(*values: int) -> np.ndarray:
    """An (H, W) label map of vertical stripes, one per value, W // len(values) wide."""
    out = np.zeros((H, W), np.uint8)
    width = W // len(values)
    for i, v in enumerate(values):
        out[:, i * width : (i + 1) * width] = v
    return out


# --- Cityscapes ------------------------------------------------------------------------------------


def cityscapes_pair(root: Path, split: str, city: str, stem: str, raw: np.ndarray, seed: int = 0) -> None:
    photo(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed)
    label(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw)


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    cityscapes_pair(tmp_path, "train", "aachen", "aachen_000000_000019", stripes(7, 26, 0, 33))
    cityscapes_pair(tmp_path, "train", "bremen", "bremen_000001_000019", stripes(24, 9, 23, 11), seed=1)
    cityscapes_pair(tmp_path, "val", "frankfurt", "frankfurt_000000_000294", stripes(21, 8), seed=2)
    # Files the reader must not pick up: other gtFine products next to the labelIds.
    label(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_instanceIds.png", stripes(1))
    return tmp_path


def test_cityscapes_reads_pairs_and_maps_label_ids_to_train_ids(cityscapes: Path) -> None:
    reader = CityscapesReader(cityscapes, splits=["train", "val"])
    assert len(reader) == 3
    assert [r.split for r in reader.refs] == ["train", "train", "val"]
    assert [r.image_path.parent.name for r in reader.refs] == ["aachen", "bremen", "frankfurt"]
    sample = next(iter(reader))
    assert sample.image.shape == (H, W, 3)
    assert sample.image.dtype == np.uint8
    assert sample.source_file == "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert sample.label_file == "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    # road 7 -> 0, car 26 -> 13, unlabeled 0 -> 255, bicycle 33 -> 18
    np.testing.assert_array_equal(sample.label, stripes(0, 13, 255, 18))
    assert sample.label.dtype == np.uint8
    # person 24 -> 11, parking 9 -> ignored, sky 23 -> 10, building 11 -> 2
    np.testing.assert_array_equal(reader.load(reader.refs[1]).label, stripes(11, 255, 10, 2))


def test_cityscapes_class_table(cityscapes: Path) -> None:
    reader = CityscapesReader(cityscapes, splits=["val"])
    assert len(reader) == 1
    assert len(reader.classes) == 19
    assert reader.classes[0].name == "road"
    assert reader.classes[0].color == (128, 64, 128)
    assert reader.classes[13].name == "car"
    assert reader.classes[18].name == "bicycle"
    assert reader.classes[18].color == (119, 11, 32)
    # Every labelId with a train id lands on the class of the same name; the rest are ignored.
    for name, label_id, train_id in CITYSCAPES_LABELS:
        assert reader.lut[label_id] == train_id
        if train_id != 255:
            assert reader.classes[train_id].name == name
    assert sorted(label_id for _, label_id, _ in CITYSCAPES_LABELS) == list(range(34))
    assert (reader.lut[34:] == -1).all()


def test_cityscapes_label_id_outside_table_is_an_error(cityscapes: Path) -> None:
    label(cityscapes / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png", stripes(7, 34))
    reader = CityscapesReader(cityscapes, splits=["val"])
    with pytest.raises(DatasetError, match=r"frankfurt_000000_000294_gtFine_labelIds\.png.*\[34\]"):
        reader.load(reader.refs[0])
    with pytest.raises(DatasetError, match="cityscapes class table"):
        list(reader)


def test_cityscapes_image_without_label(cityscapes: Path) -> None:
    photo(cityscapes / "leftImg8bit/train/aachen/aachen_000000_000020_leftImg8bit.png")
    with pytest.raises(DatasetError, match="aachen_000000_000020_gtFine_labelIds.png"):
        CityscapesReader(cityscapes)


def test_cityscapes_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        CityscapesReader(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="leftImg8bit"):
        CityscapesReader(tmp_path)
    (tmp_path / "leftImg8bit/train").mkdir(parents=True)
    (tmp_path / "gtFine/train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no image/label pairs"):
        CityscapesReader(tmp_path, splits=["train"])


# --- ADE20K ----------------------------------------------------------------------------------------


@pytest.fixture
def ade(tmp_path: Path) -> Path:
    photo(tmp_path / "images/training/ADE_train_00000001.jpg")
    label(tmp_path / "annotations/training/ADE_train_00000001.png", stripes(1, 0, 150, 13))
    photo(tmp_path / "images/training/ADE_train_00000002.jpg", seed=1)
    label(tmp_path / "annotations/training/ADE_train_00000002.png", stripes(3, 21))
    photo(tmp_path / "images/validation/ADE_val_00000001.jpg", seed=2)
    label(tmp_path / "annotations/validation/ADE_val_00000001.png", stripes(0))
    return tmp_path


def test_ade20k_reads_pairs_and_shifts_ids(ade: Path) -> None:
    reader = ADE20KReader(ade, splits=["training", "validation"])
    assert len(reader) == 3
    assert reader.splits == ("training", "validation")
    assert [r.image_path.name for r in reader.refs] == [
        "ADE_train_00000001.jpg",
        "ADE_train_00000002.jpg",
        "ADE_val_00000001.jpg",
    ]
    sample = reader.load(reader.refs[0])
    assert sample.image.shape == (H, W, 3)
    assert sample.image.dtype == np.uint8
    assert sample.label_file == "annotations/training/ADE_train_00000001.png"
    # wall 1 -> 0, other 0 -> 255, flag 150 -> 149, person 13 -> 12
    np.testing.assert_array_equal(sample.label, stripes(0, 255, 149, 12))
    np.testing.assert_array_equal(reader.load(reader.refs[2]).label, stripes(255))
    assert len(reader.classes) == 150
    assert reader.classes[0].name == "wall"
    assert reader.classes[0].color == (120, 120, 120)
    assert reader.classes[12].name == "person"
    assert reader.classes[149].name == "flag"
    assert ADE20KReader(ade, splits=["validation"]).refs[0].split == "validation"


def test_ade20k_flat_layout(tmp_path: Path) -> None:
    photo(tmp_path / "images/b.jpg")
    label(tmp_path / "annotations/b.png", stripes(2, 0))
    photo(tmp_path / "images/a.jpg", seed=1)
    label(tmp_path / "annotations/a.png", stripes(5))
    reader = create_reader("ade20k", tmp_path)
    assert isinstance(reader, ADE20KReader)
    assert reader.splits == ("all",)
    assert [(r.image_path.name, r.split) for r in reader.refs] == [("a.jpg", "all"), ("b.jpg", "all")]
    np.testing.assert_array_equal(reader.load(reader.refs[1]).label, stripes(1, 255))
    # A named split that a flat layout does not have is an error, not "everything".
    with pytest.raises(DatasetError, match="validation"):
        ADE20KReader(tmp_path, splits=["validation"])


def test_ade20k_errors(ade: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        ADE20KReader(ade / "missing")
    photo(ade / "images/validation/ADE_val_00000002.jpg")
    with pytest.raises(DatasetError, match="ADE_val_00000002.png"):
        ADE20KReader(ade, splits=["training", "validation"])
    empty = tmp_path_factory.mktemp("ade_empty")
    (empty / "images").mkdir()
    (empty / "annotations").mkdir()
    with pytest.raises(DatasetError, match="no image/label pairs"):
        ADE20KReader(empty)
    with pytest.raises(DatasetError, match="images"):
        ADE20KReader(tmp_path_factory.mktemp("ade_nothing"))


# --- COCO-Stuff (SPADE layout) ---------------------------------------------------------------------


@pytest.fixture
def cocostuff(tmp_path: Path) -> Path:
    photo(tmp_path / "train_img/000000000009.jpg")
    label(tmp_path / "train_label/000000000009.png", stripes(0, 255, 181, 11))
    photo(tmp_path / "train_img/000000000025.jpg", seed=1)
    label(tmp_path / "train_label/000000000025.png", stripes(91, 156))
    photo(tmp_path / "val_img/000000000139.jpg", seed=2)
    label(tmp_path / "val_label/000000000139.png", stripes(255))
    return tmp_path


def test_cocostuff_reads_pairs(cocostuff: Path) -> None:
    reader = create_reader("cocostuff", cocostuff, ["train", "val"])
    assert isinstance(reader, CocoStuffReader)
    assert len(reader) == 3
    assert [(r.image_path.name, r.split) for r in reader.refs] == [
        ("000000000009.jpg", "train"),
        ("000000000025.jpg", "train"),
        ("000000000139.jpg", "val"),
    ]
    sample = reader.load(reader.refs[0])
    assert sample.image.shape == (H, W, 3)
    assert sample.image.dtype == np.uint8
    assert sample.label_file == "train_label/000000000009.png"
    np.testing.assert_array_equal(sample.label, stripes(0, 255, 181, 11))
    np.testing.assert_array_equal(reader.load(reader.refs[2]).label, stripes(255))
    assert len(reader.classes) == 182
    names = reader.classes.names
    assert names[0] == "person"
    assert names[11] == "street sign"  # an id COCO never annotated keeps its place and name
    assert names[90] == "hair brush"
    assert names[91] == "banner"
    assert names[156] == "sky-other"
    assert names[181] == "wood"
    assert len(set(names)) == 182


def test_cocostuff_errors(cocostuff: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        CocoStuffReader(cocostuff / "missing")
    photo(cocostuff / "val_img/000000000285.jpg")
    with pytest.raises(DatasetError, match="000000000285.png"):
        CocoStuffReader(cocostuff, splits=["train", "val"])
    empty = tmp_path_factory.mktemp("coco_empty")
    for d in ("train_img", "train_label", "val_img", "val_label"):
        (empty / d).mkdir()
    with pytest.raises(DatasetError, match="no image/label pairs"):
        CocoStuffReader(empty)
    (cocostuff / "val_img/000000000285.jpg").unlink()
    (cocostuff / "val_label/000000000139.png").unlink()
    (cocostuff / "val_label").rmdir()
    with pytest.raises(DatasetError, match="missing label directory .*val_label"):
        CocoStuffReader(cocostuff, splits=["train", "val"])


# --- Labels outside the class table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "reader_class", "split", "label_file", "values", "message"),
    [
        (
            "ade",
            ADE20KReader,
            "validation",
            "annotations/validation/ADE_val_00000001.png",
            (150, 151),
            r"ADE_val_00000001\.png.*\[151\]",
        ),
        ("cocostuff", CocoStuffReader, "val", "val_label/000000000139.png", (181, 182), r"000000000139\.png.*\[182\]"),
    ],
    ids=["ade20k", "cocostuff"],
)
def test_label_outside_table_is_an_error(
    request: pytest.FixtureRequest,
    dataset: str,
    reader_class: type[ADE20KReader | CocoStuffReader],
    split: str,
    label_file: str,
    values: tuple[int, ...],
    message: str,
) -> None:
    """A raw id past the class table fails naming the file and the id."""
    root = request.getfixturevalue(dataset)  # the dataset's fixture layout, above
    label(root / label_file, stripes(*values))
    reader = reader_class(root, splits=[split])
    with pytest.raises(DatasetError, match=message):
        reader.load(reader.refs[0])


# --- Generic folder --------------------------------------------------------------------------------

FOLDER_CLASSES = [
    {"id": 0, "name": "sky", "color": [70, 130, 180]},
    {"id": 1, "name": "tree", "color": [107, 142, 35]},
    {"id": 2, "name": "road", "color": [128, 64, 128]},
]


def folder_pairs(root: Path, sub: str = "") -> None:
    photo(root / "images" / sub / "b.jpg")
    label(root / "labels" / sub / "b.png", stripes(2, 255))
    photo(root / "images" / sub / "a.png", seed=1)
    label(root / "labels" / sub / "a.png", stripes(0, 1, 2))
    photo(root / "images" / sub / "c.jpeg", seed=2)
    label(root / "labels" / sub / "c.png", stripes(1))


def test_folder_with_classes_json(tmp_path: Path) -> None:
    folder_pairs(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps(FOLDER_CLASSES))
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    reader = create_reader("folder", tmp_path)
    assert isinstance(reader, FolderReader)
    assert len(reader) == 3
    assert reader.splits == ("all",)
    assert [r.image_path.name for r in reader.refs] == ["a.png", "b.jpg", "c.jpeg"]
    sample = reader.load(reader.refs[0])
    assert sample.image.shape == (H, W, 3)
    assert sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.label, stripes(0, 1, 2))
    np.testing.assert_array_equal(reader.load(reader.refs[1]).label, stripes(2, 255))
    assert reader.classes.names == ["sky", "tree", "road"]
    assert reader.classes[2].color == (128, 64, 128)
    label(tmp_path / "labels/c.png", stripes(1, 3))
    with pytest.raises(DatasetError, match=r"c\.png.*\[3\].*folder class table \(3 classes\)"):
        reader.load(reader.refs[2])


def test_folder_with_classes_csv_and_split_dirs(tmp_path: Path) -> None:
    folder_pairs(tmp_path, "train")
    photo(tmp_path / "images/val/z.jpg")
    label(tmp_path / "labels/val/z.png", stripes(0, 1))
    (tmp_path / "classes.csv").write_text("id,name,r,g,b\n0,sky,70,130,180\n1,tree,107,142,35\n")
    reader = FolderReader(tmp_path, splits=["train", "val"])
    assert reader.splits == ("train", "val")
    assert FolderReader(tmp_path).splits == ("train",)  # val only when asked for
    assert [(r.image_path.name, r.split) for r in reader.refs] == [
        ("a.png", "train"),
        ("b.jpg", "train"),
        ("c.jpeg", "train"),
        ("z.jpg", "val"),
    ]
    assert reader.classes.names == ["sky", "tree"]
    assert reader.classes[1].color == (107, 142, 35)
    np.testing.assert_array_equal(reader.load(reader.refs[3]).label, stripes(0, 1))
    # raw 2 is a class of the fixture's label maps but not of this two-class table
    with pytest.raises(DatasetError, match=r"\[2\]"):
        reader.load(reader.refs[0])
    val = FolderReader(tmp_path, splits=["val"])
    assert len(val) == 1


def test_folder_extra_ignore_values(tmp_path: Path) -> None:
    photo(tmp_path / "images/a.png")
    label(tmp_path / "labels/a.png", stripes(0, 200, 255, 2))
    (tmp_path / "classes.json").write_text(json.dumps({"classes": FOLDER_CLASSES, "ignore": [200]}))
    reader = FolderReader(tmp_path)
    np.testing.assert_array_equal(reader.load(reader.refs[0]).label, stripes(0, 255, 255, 2))


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("classes.json", "[{", "not readable JSON"),
        ("classes.json", json.dumps([{"id": 1, "name": "sky", "color": [0, 0, 0]}]), "0..0 in order"),
        ("classes.json", json.dumps([{"id": 0, "color": [0, 0, 0]}]), "'id' and 'name'"),
        ("classes.json", json.dumps([{"id": 0, "name": "sky", "color": [0, 0]}]), "not \\[r, g, b\\]"),
        ("classes.json", json.dumps([{"id": 0, "name": "sky", "color": [0, 0, 300]}]), "outside 0..255"),
        ("classes.json", json.dumps({"classes": FOLDER_CLASSES, "ignore": [1]}), "ignore value 1"),
        ("classes.json", json.dumps([]), "no classes"),
        ("classes.json", json.dumps({"names": []}), "expected a list of classes"),
        ("classes.csv", "0,sky,1,2\n", "row 1 has 4 fields"),
        ("classes.csv", "0,sky,1,2,x\n", "malformed class table"),
    ],
)
def test_folder_malformed_class_file(tmp_path: Path, filename: str, content: str, message: str) -> None:
    folder_pairs(tmp_path)
    (tmp_path / filename).write_text(content)
    with pytest.raises(DatasetError, match=message):
        FolderReader(tmp_path)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        FolderReader(tmp_path / "missing")
    folder_pairs(tmp_path)
    with pytest.raises(DatasetError, match="no classes.json or classes.csv"):
        FolderReader(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps(FOLDER_CLASSES))
    photo(tmp_path / "images/d.jpg")
    with pytest.raises(DatasetError, match=r"1 images have no label map.*d\.png"):
        FolderReader(tmp_path)
    photo(tmp_path / "images/a.jpg")  # a.png already exists: ambiguous stem
    label(tmp_path / "labels/d.png", stripes(0))
    with pytest.raises(DatasetError, match="share the stem 'a'"):
        FolderReader(tmp_path)


def test_folder_empty(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.csv").write_text("0,sky,0,0,255\n")
    with pytest.raises(DatasetError, match="no image/label pairs"):
        FolderReader(tmp_path)


# --- CamVid and the registry -----------------------------------------------------------------------


def test_camvid(tmp_path: Path) -> None:
    photo(tmp_path / "train/x.png")
    label(tmp_path / "trainannot/x.png", stripes(0, 3, 10, 11))
    photo(tmp_path / "val/y.png", seed=1)
    label(tmp_path / "valannot/y.png", stripes(8, 12))
    reader = create_reader("camvid", tmp_path, ["train", "val"])
    assert isinstance(reader, CamVidReader)
    assert len(reader) == 2
    sample = reader.load(reader.refs[0])
    assert sample.image.shape == (H, W, 3)
    np.testing.assert_array_equal(sample.label, stripes(0, 3, 10, 255))
    assert reader.classes[3].name == "road"
    with pytest.raises(DatasetError, match=r"y\.png.*\[12\]"):
        reader.load(reader.refs[1])


def test_registry() -> None:
    assert {"camvid", "cityscapes", "ade20k", "cocostuff", "folder"} <= set(READERS)
    for name, cls in READERS.items():
        assert cls.name == name
    with pytest.raises(DatasetError, match="unknown dataset 'kitti'"):
        create_reader("kitti", ".")


def test_create_reader_cityscapes(cityscapes: Path) -> None:
    reader = create_reader("Cityscapes", cityscapes, splits=["train"])
    assert isinstance(reader, CityscapesReader)
    assert len(reader) == 2
    assert reader.shard(2, 1) == reader.refs[1:]


# --- Instance maps ---------------------------------------------------------------------------------


def instance_png(path: Path, values: np.ndarray) -> None:
    """Write a 16-bit greyscale instance PNG (Cityscapes' instanceIds are 16-bit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)


def wide_stripes(*values: int) -> np.ndarray:
    """:func:`stripes` of values past 255."""
    return np.array(values)[stripes(*range(len(values)))]


def test_cityscapes_instance_maps(tmp_path: Path) -> None:
    stem = "aachen_000000_000019"
    cityscapes_pair(tmp_path, "train", "aachen", stem, stripes(7, 26, 26, 24))
    raw = wide_stripes(7, 26001, 26, 24000)  # a car instance, crowd cars (26 < 1000), a person
    instance_png(tmp_path / f"gtFine/train/aachen/{stem}_gtFine_instanceIds.png", raw)
    reader = CityscapesReader(tmp_path)
    names = reader.classes.names
    # cityscapesScripts' hasInstances classes that have a train id; caravan and trailer have none.
    assert [names[c] for c in reader.thing_classes] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"
    ]  # fmt: skip
    assert reader.has_instances
    assert reader.load(reader.refs[0]).instances is None  # only when asked for
    sample = reader.load(reader.refs[0], instances=True)
    assert sample.instances is not None and sample.instances.dtype == np.int32
    np.testing.assert_array_equal(sample.instances, wide_stripes(0, 26001, 0, 24000))


def test_cityscapes_missing_instance_map_is_an_error_naming_it(cityscapes: Path) -> None:
    reader = CityscapesReader(cityscapes, splits=["val"])
    assert not reader.has_instances
    with pytest.raises(DatasetError, match=r"frankfurt_000000_000294_gtFine_instanceIds\.png: instance map missing"):
        reader.load(reader.refs[0], instances=True)


def test_cocostuff_instance_maps(cocostuff: Path) -> None:
    inst = stripes(0, 3, 3, 7)  # objects 0 and 3 (one split in two stripes), and 7
    label(cocostuff / "train_inst/000000000009.png", inst)
    reader = CocoStuffReader(cocostuff)
    assert reader.thing_classes == tuple(range(91)) and reader.has_instances
    sample = reader.load(reader.refs[0], instances=True)
    # SPADE numbers an image's objects from 0: shifted by one, so that 0 means none.
    np.testing.assert_array_equal(sample.instances, inst.astype(np.int32) + 1)
    with pytest.raises(DatasetError, match=r"train_inst/000000000025\.png: instance map missing"):
        reader.load(reader.refs[1], instances=True)


def test_readers_without_instance_maps(tmp_path: Path) -> None:
    photo(tmp_path / "train" / "a.png")
    label(tmp_path / "trainannot" / "a.png", stripes(1, 2))
    reader = CamVidReader(tmp_path)
    assert reader.thing_classes == () and not reader.has_instances
    with pytest.raises(DatasetError, match="no instance maps"):
        reader.load(reader.refs[0], instances=True)

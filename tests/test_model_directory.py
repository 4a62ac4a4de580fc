"""The one model-directory format: registry, atomic writes, legacy keys, extra files, float16 export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthesis.configs import ConfigError
from synthesis.model_directory import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelNotFoundError,
    export_float16,
    from_pretrained,
    network_type,
    read_config,
    read_metadata,
    save_pretrained,
)
from synthesis.networks.layout_refiner import LayoutRefiner
from synthesis.networks.ordering import ClassPrior, OrderingNet
from synthesis.networks.refinement import CascadedRefinementNetwork
from synthesis.networks.segmenter import SegmentationNet
from synthesis.networks.transform import TransformNet

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.parent for p in (REPO / "weights").glob("*/config.json"))


def tiny_refiner(seed: int = 0) -> LayoutRefiner:
    torch.manual_seed(seed)
    return LayoutRefiner(num_classes=5, resolution=(16, 24), widths=(4, 4, 4), convs=1)


@pytest.mark.parametrize("directory", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_weights_folder_loads(directory: Path) -> None:
    model = from_pretrained(directory)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    # The class comes from config.json; the class's own verb agrees and refuses another network's folder.
    assert type(model).from_pretrained(directory).config == model.config == read_config(directory)
    other = TransformNet if not isinstance(model, TransformNet) else OrderingNet
    with pytest.raises(ConfigError, match=f"not {other.__name__}"):
        other.from_pretrained(directory)


def test_the_registry_picks_the_class_by_name() -> None:
    expected = {
        "CascadedRefinementNetwork": CascadedRefinementNetwork,
        "LayoutRefiner": LayoutRefiner,
        "TransformNet": TransformNet,
        "OrderingNet": OrderingNet,
        "SegmentationNet": SegmentationNet,
    }
    for name, cls in expected.items():
        assert network_type(name).network is cls
    with pytest.raises(ConfigError, match="unknown network class 'Nope'"):
        network_type("Nope")


def test_legacy_keys_of_shipped_weights_still_load(tmp_path: Path) -> None:
    # weights/segmenter names itself with model_type (it predates _class_name); T and ordering
    # checkpoints once carried a "model" tag: both are read, neither is written.
    assert "model_type" in json.loads((REPO / "weights/segmenter" / CONFIG_FILE).read_text())
    assert isinstance(from_pretrained(REPO / "weights/segmenter"), SegmentationNet)
    net = tiny_refiner()
    d = save_pretrained(net, tmp_path / "tagged")
    config = json.loads((d / CONFIG_FILE).read_text())
    assert config["_class_name"] == "LayoutRefiner" and "model_type" not in config
    del config["_class_name"]
    (d / CONFIG_FILE).write_text(json.dumps({**config, "model": "layout-refiner"}))
    assert LayoutRefiner.from_pretrained(d).config == net.config  # no _class_name: the class asked for
    with pytest.raises(ConfigError, match="no _class_name"):
        from_pretrained(d)


def test_save_is_atomic_and_replaces_the_whole_directory(tmp_path: Path) -> None:
    d = save_pretrained(tiny_refiner(1), tmp_path / "m", {"step": 1}, extra_files={"notes.txt": "first"})
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "notes.txt", "sims.json"]
    save_pretrained(tiny_refiner(2), d, {"step": 2})
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "sims.json"]
    assert read_metadata(d) == {"step": 2} and sorted(os.listdir(tmp_path)) == ["m"]  # no temporaries left
    # A failed write leaves the old directory as it was.
    with pytest.raises(ValueError, match="reserved"):
        save_pretrained(tiny_refiner(3), d, {"step": 3}, extra_files={CONFIG_FILE: "{}"})
    assert read_metadata(d) == {"step": 2} and sorted(os.listdir(tmp_path)) == ["m"]
    with pytest.raises(TypeError, match="not a registered network"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "linear")


def test_missing_and_broken_directories_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no layout refiner checkpoint"):
        LayoutRefiner.from_pretrained(tmp_path)
    d = save_pretrained(tiny_refiner(), tmp_path / "m")
    (d / CONFIG_FILE).write_text(json.dumps({**json.loads((d / CONFIG_FILE).read_text()), "convs": "two"}))
    with pytest.raises(ConfigError, match=r"config.json: convs: Input should be a valid integer.*got 'two'"):
        from_pretrained(d)


def test_float16_export_keeps_config_metadata_and_extra_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = OrderingNet(num_classes=3, input_size=(8, 8), widths=(4,), hidden=4, min_window=(8, 8))
    prior = ClassPrior((0.1, 0.9, 0.5))
    meta = {"step": 3, "loss_history": [3.0, 2.0]}
    src = save_pretrained(
        net, tmp_path / "ckpt", meta, training_state={"step": 3}, extra_files={"class_prior.json": prior.to_json()}
    )
    out = export_float16(src, tmp_path / "ship")
    assert sorted(p.name for p in out.iterdir()) == [
        "class_prior.json",
        "config.json",
        "model.safetensors",
        "sims.json",
    ]
    assert all(t.dtype == torch.float16 for t in load_file(str(out / WEIGHTS_FILE)).values())
    assert read_metadata(out) == {"step": 3, "final_loss": 2.0, "exported_from": "ckpt"}
    assert ClassPrior.load(out) == prior and OrderingNet.from_pretrained(out).config == net.config

"""The synthesis network: config validation, one-hot input, forward shapes and range, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from synthesis.model_directory import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    export_float16,
    from_pretrained,
    read_config,
    read_metadata,
    save_pretrained,
)
from synthesis.networks.refinement import CascadedRefinementNetwork, RefinementConfig
from synthesis.tensors import one_hot

torch.set_num_threads(1)

SMALL = {"num_classes": 5, "resolution": (16, 24), "encoder_widths": (4, 6, 8), "decoder_widths": (8, 6, 5)}


def small_net(seed: int = 0) -> CascadedRefinementNetwork:
    torch.manual_seed(seed)
    return CascadedRefinementNetwork(**SMALL)


def inputs(b: int = 2, h: int = 16, w: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    layout = torch.randint(0, 5, (b, h, w), generator=g)
    layout[:, :2] = 255  # unlabelled rows
    missing = (torch.rand(b, 1, h, w, generator=g) > 0.5).float()
    canvas = torch.rand(b, 3, h, w, generator=g) * (1 - missing)
    return layout, canvas, missing


def test_config_defaults_and_round_trip() -> None:
    cfg = RefinementConfig(11, [96, 128], [16, 32, 64, 128, 128], [32, 32, 64, 128, 128])
    assert cfg.encoder_convs == (2, 2, 3, 3, 3)  # VGG-like: 2, 2, then 3 convolutions per module
    assert cfg.scales == 5 and cfg.factor == 16 and cfg.in_channels == 11 + 4
    assert RefinementConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "change",
    [
        {"resolution": (18, 24)},  # 18 is not a multiple of 4
        {"decoder_widths": (8, 6)},
        {"encoder_convs": (2, 2)},
        {"num_classes": 0},
        {"encoder_widths": (4, 0, 8)},
    ],
)
def test_config_rejects_bad_values(change: dict) -> None:
    with pytest.raises(ValueError):
        RefinementConfig(**{**SMALL, **change})


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown"):
        RefinementConfig.from_dict({**SMALL, "width": 3})


def test_one_hot_layout_exact() -> None:
    layout = torch.tensor([[[0, 2], [255, 1]]])
    hot = one_hot(layout, 3)
    assert hot.shape == (1, 3, 2, 2) and hot.dtype == torch.float32
    expected = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 1]], [[0, 1], [0, 0]]], dtype=torch.float32)
    assert torch.equal(hot[0], expected)  # the unlabelled pixel is all zeros


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_one_hot_sums_to_one_on_labelled_pixels(num_classes: int, seed: int) -> None:
    g = np.random.default_rng(seed)
    layout = torch.from_numpy(g.choice([*range(num_classes), 255], size=(2, 5, 7)).astype(np.int64))
    hot = one_hot(layout, num_classes)
    assert torch.equal(hot.sum(1), (layout != 255).float())
    assert torch.equal(hot.argmax(1)[layout != 255], layout[layout != 255])


def test_forward_shape_dtype_and_range() -> None:
    net = small_net().eval()
    with torch.no_grad():
        out = net(*inputs())
    assert out.shape == (2, 3, 16, 24) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Fully convolutional: another size that is a multiple of 4 works too.
    with torch.no_grad():
        assert net(*inputs(1, 8, 12)).shape == (1, 3, 8, 12)


def test_forward_accepts_one_hot_float_layout() -> None:
    net = small_net().eval()
    layout, canvas, missing = inputs()
    with torch.no_grad():
        a = net(layout, canvas, missing)
        b = net(one_hot(layout, 5), canvas, missing)
    assert torch.equal(a, b)


def test_output_depends_on_canvas_and_layout() -> None:
    net = small_net().eval()
    layout, canvas, missing = inputs()
    with torch.no_grad():
        base = net(layout, canvas, missing)
        other_canvas = net(layout, torch.rand_like(canvas), missing)
        other_layout = net(torch.roll(layout, 3, dims=2), canvas, missing)
    assert (base - other_canvas).abs().max() > 1e-4
    assert (base - other_layout).abs().max() > 1e-4


def test_forward_rejects_bad_inputs() -> None:
    net = small_net()
    layout, canvas, missing = inputs()
    with pytest.raises(ValueError, match="canvas"):
        net(layout, canvas[:, :2], missing)
    with pytest.raises(ValueError, match="divisible"):
        net(*inputs(1, 18, 24))
    with pytest.raises(ValueError, match="float layout"):
        net(torch.rand(2, 4, 16, 24), canvas, missing)


def test_gradients_reach_every_parameter() -> None:
    net = small_net()
    net(*inputs()).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = small_net(3).eval()
    meta = {"step": 7, "vgg": {"arch": "vgg16"}, "parametric": False}
    path = save_pretrained(net, tmp_path / "model", meta)
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["_class_name"] == "CascadedRefinementNetwork" and config["decoder_widths"] == [8, 6, 5]
    assert read_config(path) == net.config
    loaded = from_pretrained(path)
    assert read_metadata(path) == meta and not read_metadata(path)["parametric"]
    x = inputs()
    with torch.no_grad():
        assert torch.equal(net(*x), loaded(*x))
    # Saving again replaces the directory atomically and leaves no temporaries behind.
    save_pretrained(small_net(4), tmp_path / "model", {"step": 8})
    assert read_metadata(path) == {"step": 8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_float16_export(tmp_path: Path) -> None:
    net = small_net(5).eval()
    save_pretrained(net, tmp_path / "ckpt", {"step": 3, "loss_history": [3.0, 2.0, 1.5]})
    out = export_float16(tmp_path / "ckpt", tmp_path / "ship")
    tensors = load_file(str(out / WEIGHTS_FILE))
    assert all(t.dtype == torch.float16 for t in tensors.values())
    loaded = from_pretrained(out)
    assert read_metadata(out)["final_loss"] == 1.5 and "loss_history" not in read_metadata(out)
    x = inputs()
    with torch.no_grad():
        assert (net(*x) - loaded(*x)).abs().max() < 1e-2


def test_from_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        from_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"_class_name": "Other", **SMALL}))
    with pytest.raises(ValueError, match="Other"):
        read_config(tmp_path)

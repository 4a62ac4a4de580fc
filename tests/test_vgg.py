"""The VGG loader: torchvision index mapping, input conventions, state-dict loading, the perceptual loss.

The comparison against real pretrained activations uses the VGG-16 named by ``SIMS_VGG_WEIGHTS``
(e.g. the shared ``vgg16_hed_features.pth``) and is skipped when that variable is unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from synthesis.losses import CRN_LAYER_WEIGHTS, PerceptualLoss
from synthesis.networks.vgg import (
    CONVENTIONS,
    VggFeatures,
    VggSpec,
    conv_feature_indices,
    file_sha256,
    infer_arch,
    load_vgg,
)

torch.set_num_threads(1)

VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
SHARED_WEIGHTS = os.environ.get("SIMS_VGG_WEIGHTS")


def random_features(arch: str, upto: str, seed: int = 0, prefix: str = "features.") -> dict[str, torch.Tensor]:
    """A random torchvision-style state dict holding the convolutions up to ``upto``."""
    g = torch.Generator().manual_seed(seed)
    state, in_ch = {}, 3
    widths = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    for name, index in conv_feature_indices(arch).items():  # type: ignore[arg-type]
        out_ch = widths[int(name[4])]
        state[f"{prefix}{index}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=g) * 0.05
        state[f"{prefix}{index}.bias"] = torch.randn(out_ch, generator=g) * 0.05
        in_ch = out_ch
        if name == upto:
            break
    return state


def test_feature_indices_follow_torchvision() -> None:
    v16, v19 = conv_feature_indices("vgg16"), conv_feature_indices("vgg19")
    assert list(v16.values()) == VGG16_CONVS
    assert list(v19.values()) == VGG19_CONVS
    assert [v16[n] for n in ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")] == [2, 7, 12, 19, 26]
    assert [v19[n] for n in ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")] == [2, 7, 12, 21, 30]
    assert "conv3_4" in v19 and "conv3_4" not in v16
    with pytest.raises(ValueError):
        conv_feature_indices("vgg11")  # type: ignore[arg-type]


def test_infer_arch_counts_convolutions() -> None:
    def fake(indices: list[int]) -> dict[str, torch.Tensor]:
        return {f"features.{i}.weight": torch.zeros(1, 1, 3, 3) for i in indices} | {
            "classifier.0.weight": torch.zeros(2, 2)
        }

    assert infer_arch(fake(VGG16_CONVS)) == "vgg16"
    assert infer_arch(fake(VGG19_CONVS)) == "vgg19"
    with pytest.raises(ValueError, match="13"):
        infer_arch(fake(VGG16_CONVS[:5]))


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_loader_maps_names_to_the_right_convolutions(arch: str) -> None:
    state = random_features(arch, "conv4_2") | {"classifier.0.weight": torch.zeros(3, 3)}
    vgg = VggFeatures(arch, ["conv1_2", "conv4_2"])  # type: ignore[arg-type]
    vgg.load_torchvision_state_dict(state)
    idx = conv_feature_indices(arch)  # type: ignore[arg-type]
    built = sorted(int(k) for k in vgg.convs)
    assert built == [i for i in (VGG16_CONVS if arch == "vgg16" else VGG19_CONVS) if i <= idx["conv4_2"]]
    for key, conv in vgg.convs.items():
        assert torch.equal(conv.weight, state[f"features.{key}.weight"])
        assert torch.equal(conv.bias, state[f"features.{key}.bias"])
    assert all(not p.requires_grad for p in vgg.parameters())


def test_loader_accepts_bare_indices_and_casts_half() -> None:
    state = {k.removeprefix("features."): v.half() for k, v in random_features("vgg16", "conv1_2").items()}
    vgg = VggFeatures("vgg16", ["conv1_2"])
    vgg.load_torchvision_state_dict(state)
    assert vgg.convs["2"].weight.dtype == torch.float32
    assert torch.equal(vgg.convs["2"].weight, state["2.weight"].float())


def test_loader_rejects_missing_and_misshapen_weights() -> None:
    vgg = VggFeatures("vgg19", ["conv3_2"])
    with pytest.raises(ValueError, match=r"features\.10"):
        vgg.load_torchvision_state_dict(random_features("vgg19", "conv2_2"))
    bad = random_features("vgg19", "conv3_2")
    bad["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    with pytest.raises(ValueError, match="does not fit"):
        vgg.load_torchvision_state_dict(bad)
    with pytest.raises(ValueError, match="no layer"):
        VggFeatures("vgg16", ["conv3_4"])


def test_input_conventions_exact() -> None:
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    bgr = CONVENTIONS["caffe-bgr"].apply(red).flatten().tolist()
    assert bgr == pytest.approx([0 - 104.00699, 0 - 116.66877, 255 - 122.67891])
    rgb = CONVENTIONS["imagenet"].apply(red).flatten().tolist()
    assert rgb == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])


def test_features_match_hand_computation_on_random_weights() -> None:
    state = random_features("vgg19", "conv2_2", seed=1)
    for pooling in ("avg", "max"):
        vgg = VggFeatures("vgg19", ["conv1_1", "conv2_2"], convention="imagenet", pooling=pooling)  # type: ignore[arg-type]
        vgg.load_torchvision_state_dict(state)
        x = torch.rand(2, 3, 8, 12)
        got = vgg(x)
        h = CONVENTIONS["imagenet"].apply(x)
        assert torch.equal(got["input"], h)
        for i in (0, 2):
            h = F.relu(F.conv2d(h, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
            if i == 0:
                torch.testing.assert_close(got["conv1_1"], h)
        h = F.avg_pool2d(h, 2) if pooling == "avg" else F.max_pool2d(h, 2)
        for i in (5, 7):
            h = F.relu(F.conv2d(h, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
        torch.testing.assert_close(got["conv2_2"], h)


def test_load_vgg_records_identity(tmp_path: Path) -> None:
    path = tmp_path / "vgg.pth"
    torch.save(random_features("vgg16", "conv2_2"), path)
    vgg, ident = load_vgg(VggSpec(str(path), arch="vgg16", convention="caffe-bgr"), ["conv2_2"])
    assert (ident.arch, ident.convention, ident.pooling, ident.file_name) == ("vgg16", "caffe-bgr", "avg", "vgg.pth")
    assert ident.sha256 == file_sha256(path) and len(ident.sha256) == 64
    assert vgg.convention.name == "caffe-bgr"
    with pytest.raises(ValueError, match="no VGG weights"):
        load_vgg(VggSpec(None), ["conv1_2"])
    with pytest.raises(FileNotFoundError):
        load_vgg(VggSpec(str(tmp_path / "absent.pth")), ["conv1_2"])
    with pytest.raises(ValueError, match="convention"):
        VggSpec(str(path), convention="rgb255")  # type: ignore[arg-type]


def test_perceptual_loss_is_zero_on_equal_images_and_has_gradients() -> None:
    vgg = VggFeatures("vgg16", ["conv1_2", "conv2_2"])
    vgg.load_torchvision_state_dict(random_features("vgg16", "conv2_2"))
    weights = {k: CRN_LAYER_WEIGHTS[k] for k in ("input", "conv1_2", "conv2_2")}
    loss_fn = PerceptualLoss(vgg, weights)
    target = torch.rand(2, 3, 16, 16)
    assert float(loss_fn(target, target)) == 0.0
    out = torch.rand(2, 3, 16, 16, requires_grad=True)
    terms = loss_fn.terms(out, target)
    assert set(terms) == {"input", "conv1_2", "conv2_2"} and all(float(v.detach()) > 0 for v in terms.values())
    loss_fn(out, target).backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="conv5_2"):
        PerceptualLoss(vgg)  # the default CRN weights need layers this VGG does not compute


@pytest.mark.skipif(
    not SHARED_WEIGHTS, reason="set SIMS_VGG_WEIGHTS to a VGG-16 state dict (e.g. vgg16_hed_features.pth)"
)
def test_pretrained_activations_match_raw_state_dict() -> None:
    path = Path(SHARED_WEIGHTS or "")
    state = torch.load(path, map_location="cpu", weights_only=True)
    vgg, ident = load_vgg(VggSpec(str(path), convention="caffe-bgr"), ["conv1_1", "conv1_2", "conv5_2"])
    assert ident.arch == "vgg16"
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 48)
    got = vgg(x)
    # conv1_1 by hand: RGB [0, 1] -> BGR 0..255 minus the HED mean, then the raw first layer.
    mean = torch.tensor([104.00699, 116.66877, 122.67891]).view(1, 3, 1, 1)
    h = x.flip(1) * 255.0 - mean
    w0, b0 = state["features.0.weight"].float(), state["features.0.bias"].float()
    conv1_1 = F.relu(F.conv2d(h, w0, b0, padding=1))
    torch.testing.assert_close(got["conv1_1"], conv1_1, rtol=1e-4, atol=1e-3)
    w2, b2 = state["features.2.weight"].float(), state["features.2.bias"].float()
    torch.testing.assert_close(got["conv1_2"], F.relu(F.conv2d(conv1_1, w2, b2, padding=1)), rtol=1e-4, atol=1e-3)
    assert got["conv5_2"].shape == (1, 512, 2, 3) and float(got["conv5_2"].abs().sum()) > 0

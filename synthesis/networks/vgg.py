"""A frozen VGG feature extractor for perceptual losses, loaded from torchvision-format state dicts.

torchvision is not a dependency, so the convolution stack is defined here and filled from a state
dict saved in torchvision's layout (``features.<index>.weight``/``.bias``). Two weight families are
supported, each with its own input convention:

- torchvision's ImageNet VGG-16/VGG-19: RGB in [0, 1], normalised by the ImageNet mean and std;
- the HED VGG-16 (Caffe lineage): BGR in 0..255 minus a per-channel mean, no std.

Feeding a network images in the wrong convention silently gives poor features, so the convention is
an explicit part of the configuration and of the :class:`VggIdentity` every checkpoint records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

Arch = Literal["vgg16", "vgg19"]
Pooling = Literal["avg", "max"]

#: Convolutions per block; torchvision's ``features`` numbers conv, ReLU and pool layers in one sequence.
BLOCKS: dict[str, tuple[int, ...]] = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)

#: torchvision's URL of the ImageNet VGG-19 weights (the SIMS paper's choice); see :func:`fetch_imagenet_vgg19`.
VGG19_IMAGENET_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
#: What to tell a user who has no VGG weights: the one command that fetches them, and how to use them.
VGG_HOW_TO = (
    "get torchvision's ImageNet VGG-19 with `sims train fetch-vgg` (downloads 548 MB), then pass the path it "
    'prints as --vgg-weights (or SIMS_VGG_WEIGHTS) with "vgg": {"arch": "vgg19", "convention": "imagenet"} '
    "in the config"
)


def conv_feature_indices(arch: Arch) -> dict[str, int]:
    """Map ``conv<block>_<n>`` names to their index in torchvision's ``features`` sequence.

    Each convolution is followed by a ReLU (two slots) and each block ends with a pool (one slot), so
    VGG-16 puts its convolutions at 0, 2, 5, 7, 10, 12, 14, 17, ... and VGG-19 at 0, 2, 5, 7, 10, ..., 16, 19, ...
    """
    if arch not in BLOCKS:
        raise ValueError(f"unknown VGG architecture {arch!r}; expected one of {sorted(BLOCKS)}")
    out: dict[str, int] = {}
    index = 0
    for block, convs in enumerate(BLOCKS[arch], start=1):
        for n in range(1, convs + 1):
            out[f"conv{block}_{n}"] = index
            index += 2  # conv, ReLU
        index += 1  # pool
    return out


@dataclass(frozen=True)
class InputConvention:
    """How a VGG expects its input, given an RGB image in [0, 1].

    ``mean`` and ``std`` are in the network's channel order and value scale.
    """

    name: str
    channel_order: Literal["rgb", "bgr"]
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, rgb01: Tensor) -> Tensor:
        """Turn a (B, 3, H, W) RGB batch in [0, 1] into this network's input."""
        x = rgb01.flip(1) if self.channel_order == "bgr" else rgb01
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * self.scale - mean) / std


CONVENTIONS: dict[str, InputConvention] = {
    "imagenet": InputConvention("imagenet", "rgb", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "caffe-bgr": InputConvention("caffe-bgr", "bgr", 255.0, (104.00699, 116.66877, 122.67891), (1.0, 1.0, 1.0)),
}


@dataclass(frozen=True)
class VggSpec:
    """Which VGG weights to load and how to feed them (part of a training config).

    Attributes:
        path: a torchvision-format state dict (``features.N.weight``...; a full model's classifier keys are ignored).
        arch: ``vgg16``, ``vgg19`` or ``auto`` (from the number of convolutions in the file).
        convention: ``imagenet`` (torchvision weights) or ``caffe-bgr`` (the HED VGG-16).
        pooling: ``avg`` as in the CRN reference code's VGG (smoother gradients), or ``max`` as trained.
    """

    path: str | None = None
    arch: Literal["auto", "vgg16", "vgg19"] = "auto"
    convention: Literal["imagenet", "caffe-bgr"] = "imagenet"
    pooling: Pooling = "avg"

    def __post_init__(self) -> None:
        if self.arch not in ("auto", *BLOCKS):
            raise ValueError(f"vgg.arch must be auto, vgg16 or vgg19, got {self.arch!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"vgg.convention must be one of {sorted(CONVENTIONS)}, got {self.convention!r}")
        if self.pooling not in ("avg", "max"):
            raise ValueError(f"vgg.pooling must be avg or max, got {self.pooling!r}")


@dataclass(frozen=True)
class VggIdentity:
    """Which VGG a loss used: recorded in every checkpoint so a result can be traced to its weights."""

    arch: Arch
    convention: str
    pooling: Pooling
    file_name: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VggIdentity:
        return cls(
            arch=d["arch"],
            convention=str(d["convention"]),
            pooling=d["pooling"],
            file_name=str(d["file_name"]),
            sha256=str(d["sha256"]),
        )


class VggFeatures(nn.Module):
    """VGG convolutions up to the deepest requested layer, returning post-ReLU activations by name.

    Takes RGB images in [0, 1] and applies the weights' input convention itself. The parameters are
    frozen (``requires_grad=False``) so a backward pass computes input gradients only.
    """

    def __init__(
        self,
        arch: Arch,
        layers: Iterable[str],
        *,
        convention: InputConvention | str = "imagenet",
        pooling: Pooling = "avg",
    ) -> None:
        super().__init__()
        indices = conv_feature_indices(arch)
        self.layers = tuple(dict.fromkeys(layers))
        unknown = [name for name in self.layers if name not in indices]
        if unknown:
            raise ValueError(f"{arch} has no layer(s) {unknown}; it has {list(indices)}")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be avg or max, got {pooling!r}")
        self.arch = arch
        self.convention = CONVENTIONS[convention] if isinstance(convention, str) else convention
        self.pooling = pooling
        deepest = max((indices[n] for n in self.layers), default=-1)
        # ModuleDict keyed by the torchvision index, so state-dict names map one to one. The plan is the
        # full conv/pool sequence cut after the deepest requested conv: nothing deeper is ever computed.
        self.convs = nn.ModuleDict()
        self._plan: list[str] = []  # conv index as a string, or "pool"
        in_ch = 3
        for block, convs in enumerate(BLOCKS[arch], start=1):
            for n in range(1, convs + 1):
                index = indices[f"conv{block}_{n}"]
                if index <= deepest:
                    self.convs[str(index)] = nn.Conv2d(in_ch, WIDTHS[block - 1], 3, padding=1)
                    self._plan.append(str(index))
                    in_ch = WIDTHS[block - 1]
            self._plan.append("pool")
        while self._plan and self._plan[-1] == "pool":
            self._plan.pop()
        self._names = {str(indices[n]): n for n in self.layers}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VggFeatures:
        # A loss network stays in eval mode whatever its owner does (it has no dropout/BN, but be explicit).
        return super().train(False)

    def forward(self, rgb01: Tensor) -> dict[str, Tensor]:
        """Activations of the requested layers (and ``input``, the convention-transformed image)."""
        x = self.convention.apply(rgb01)
        out: dict[str, Tensor] = {"input": x}
        for key in self._plan:
            if key == "pool":
                x = F.avg_pool2d(x, 2) if self.pooling == "avg" else F.max_pool2d(x, 2)
                continue
            x = F.relu(self.convs[key](x))
            if key in self._names:
                out[self._names[key]] = x
        return out

    def load_torchvision_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Fill the convolutions from ``features.N.weight``/``.bias`` (or ``N.weight``) entries, cast to float32."""
        features = _features_only(state)
        for key, conv in self.convs.items():
            w, b = features.get(f"{key}.weight"), features.get(f"{key}.bias")
            if w is None or b is None:
                raise ValueError(f"VGG state dict has no features.{key}.weight/bias (needed for {self.arch})")
            if tuple(w.shape) != tuple(conv.weight.shape) or tuple(b.shape) != tuple(conv.bias.shape):
                raise ValueError(
                    f"features.{key}: weight {tuple(w.shape)} does not fit {self.arch}'s {tuple(conv.weight.shape)}"
                )
            with torch.no_grad():
                conv.weight.copy_(w.float())
                conv.bias.copy_(b.float())


def _features_only(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``features`` entries of a VGG state dict, keyed ``<index>.<weight|bias>``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith("features."):
            out[name.removeprefix("features.")] = value
        elif name.split(".", 1)[0].isdigit():
            out[name] = value
    return out


def infer_arch(state: Mapping[str, Tensor]) -> Arch:
    """``vgg16`` or ``vgg19`` from the number of convolution weights in a state dict."""
    n = sum(1 for k, v in _features_only(state).items() if k.endswith(".weight") and v.ndim == 4)
    for arch, blocks in BLOCKS.items():
        if n == sum(blocks):
            return arch  # type: ignore[return-value]
    raise ValueError(f"state dict has {n} convolution weights; VGG-16 has 13 and VGG-19 has 16")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_vgg(spec: VggSpec, layers: Iterable[str]) -> tuple[VggFeatures, VggIdentity]:
    """Build a frozen :class:`VggFeatures` from the state dict at ``spec.path`` and say which it is."""
    if not spec.path:
        raise ValueError(
            "no VGG weights configured: set vgg.path in the config (or pass --vgg-weights / SIMS_VGG_WEIGHTS); "
            + VGG_HOW_TO
        )
    path = Path(spec.path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"VGG weights not found: {path}; {VGG_HOW_TO}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    arch: Arch = infer_arch(state) if spec.arch == "auto" else spec.arch  # type: ignore[assignment]
    model = VggFeatures(arch, layers, convention=spec.convention, pooling=spec.pooling)
    model.load_torchvision_state_dict(state)
    identity = VggIdentity(
        arch=arch, convention=spec.convention, pooling=spec.pooling, file_name=path.name, sha256=file_sha256(path)
    )
    return model, identity


def fetch_imagenet_vgg19(model_dir: Path) -> Path:
    """Download torchvision's ImageNet VGG-19 state dict into ``model_dir`` with torch's hub loader.

    For users who are online; SIMS never calls this by itself (training reads weights from a path).
    Use the result with ``VggSpec(path=..., arch="vgg19", convention="imagenet")``.
    """
    model_dir = Path(model_dir)
    torch.hub.load_state_dict_from_url(VGG19_IMAGENET_URL, model_dir=str(model_dir), map_location="cpu")
    return model_dir / VGG19_IMAGENET_URL.rsplit("/", 1)[1]

"""The perceptual loss of CRN and SIMS: weighted L1 distances between VGG activations.

``L = sum_l w_l * mean |phi_l(output) - phi_l(target)|`` over the input image and the post-ReLU
activations of conv1_2 ... conv5_2. The default weights are the CRN code's (as DESIGN.md lists them).
The ``input`` term compares the images in the VGG's own input convention, so the ratio between it and
the feature terms stays what the weights were tuned for whichever convention the weights need.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from synthesis.networks.vgg import VggFeatures

#: Layer weights of the CRN reference code (input 1, conv1_2 1/2.6, ... conv5_2 10/1.5).
CRN_LAYER_WEIGHTS: dict[str, float] = {
    "input": 1.0,
    "conv1_2": 1 / 2.6,
    "conv2_2": 1 / 4.8,
    "conv3_2": 1 / 3.7,
    "conv4_2": 1 / 5.6,
    "conv5_2": 10 / 1.5,
}


class PerceptualLoss(nn.Module):
    """Weighted L1 over VGG activations. ``vgg`` must compute every layer named in ``weights``."""

    def __init__(self, vgg: VggFeatures, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.weights = dict(CRN_LAYER_WEIGHTS if weights is None else weights)
        missing = [name for name in self.weights if name != "input" and name not in vgg.layers]
        if missing:
            raise ValueError(f"the VGG computes {list(vgg.layers)}; the loss also needs {missing}")
        self.vgg = vgg

    def terms(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Each weighted term, by layer name. Gradients flow to ``output`` only."""
        if output.shape != target.shape or output.ndim != 4 or output.shape[1] != 3:
            raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} must both be (B, 3, H, W)")
        with torch.no_grad():
            want = self.vgg(target)
        got = self.vgg(output)
        # Distances in float32 even when the VGG runs under bf16 autocast.
        return {name: w * (got[name].float() - want[name].float()).abs().mean() for name, w in self.weights.items()}

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """The scalar loss, averaged over the batch."""
        return torch.stack(list(self.terms(output, target).values())).sum()

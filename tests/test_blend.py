"""The full-resolution canvas blend: ranges and shapes of its maps, and what it does to the canvas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthesis.networks.blend import (
    ALPHA_INIT_LOGIT,
    BLEND_CHANNELS,
    MAX_OFFSET,
    BlendMaps,
    blend_canvas,
    blend_head,
    feather,
    upsample,
)
from synthesis.networks.refinement import CascadedRefinementNetwork

torch.set_num_threads(1)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.1, 50.0),
    h=st.integers(4, 40),
    w=st.integers(4, 40),
)
def test_blend_maps_are_in_range(seed: int, scale: float, h: int, w: int) -> None:
    raw = torch.randn(2, BLEND_CHANNELS, h, w, generator=torch.Generator().manual_seed(seed)) * scale
    maps = BlendMaps.from_raw(raw)
    assert maps.alpha.shape == (2, 1, h, w) and maps.gain.shape == maps.offset.shape == (2, 3, h, w)
    assert float(maps.alpha.min()) >= 0.0 and float(maps.alpha.max()) <= 1.0
    assert float(maps.gain.min()) >= 0.5 - 1e-6 and float(maps.gain.max()) <= 2.0 + 1e-6
    assert float(maps.offset.abs().max()) <= MAX_OFFSET + 1e-6
    big = maps.resized((3 * h, 2 * w))
    assert big.alpha.shape == (2, 1, 3 * h, 2 * w) and big.gain.shape == (2, 3, 3 * h, 2 * w)


def test_colour_maps_are_smooth() -> None:
    # Per-pixel noise in the raw colour channels is averaged over cells: far less variation is left.
    raw = torch.randn(1, BLEND_CHANNELS, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = BlendMaps.from_raw(raw)
    alpha_logit_std = float(raw[:, :1].std())
    gain_log_std = float(torch.log(maps.gain).std() / math.log(2.0))
    assert gain_log_std < 0.25 * alpha_logit_std


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), density=st.floats(0.0, 1.0))
def test_blend_keeps_only_kept_pixels(seed: int, density: float) -> None:
    g = torch.Generator().manual_seed(seed)
    generated = torch.rand(1, 3, 12, 16, generator=g)
    raw = torch.randn(1, BLEND_CHANNELS, 12, 16, generator=g) * 3
    canvas = torch.rand(1, 3, 36, 48, generator=g)
    kept = (torch.rand(1, 1, 36, 48, generator=g) < density).float()
    out = blend_canvas(generated, raw, canvas, kept)
    assert out.image.shape == canvas.shape and out.generated.shape == canvas.shape
    assert float(out.image.min()) >= 0.0 and float(out.image.max()) <= 1.0
    assert float(out.weight.min()) >= 0.0 and float(out.weight.max()) <= 1.0
    # Where the canvas is not kept, the output is the upsampled network image, whatever the canvas holds.
    off = kept[0, 0] == 0
    torch.testing.assert_close(out.image[0][:, off], upsample(generated, (36, 48))[0][:, off])
    assert float(out.weight[0, 0][off].abs().sum()) == 0.0


def test_feather_stays_inside_the_kept_region() -> None:
    kept = torch.zeros(1, 1, 20, 20)
    kept[..., 5:15, 5:15] = 1
    kept[..., 2, 2] = 1  # an isolated pixel, like elision's speckle
    f = feather(kept)
    assert float((f * (1 - kept)).abs().max()) == 0.0
    assert float(f[0, 0, 10, 10]) == 1.0  # deep inside
    assert float(f[0, 0, 5, 5]) < 0.5  # a corner of the region
    assert float(f[0, 0, 2, 2]) <= 1 / 25 + 1e-6  # speckle gets almost no weight


def test_untrained_head_keeps_the_canvas() -> None:
    head = blend_head(8)
    raw = head(torch.randn(1, 8, 6, 8))
    maps = BlendMaps.from_raw(raw)
    torch.testing.assert_close(maps.alpha, torch.full_like(maps.alpha, 1 / (1 + math.exp(-ALPHA_INIT_LOGIT))))
    torch.testing.assert_close(maps.gain, torch.ones_like(maps.gain))
    torch.testing.assert_close(maps.offset, torch.zeros_like(maps.offset))


def test_network_without_head_is_upsampled() -> None:
    torch.manual_seed(0)
    kwargs = {"num_classes": 11, "resolution": (24, 32), "encoder_widths": (4, 8, 8), "decoder_widths": (8, 8, 8)}
    net = CascadedRefinementNetwork(**kwargs)
    layout = torch.randint(0, 11, (1, 24, 32))
    canvas, missing = torch.rand(1, 3, 24, 32), torch.zeros(1, 1, 24, 32)
    rgb, raw = net.forward_with_blend(layout, canvas, missing)
    assert raw is None
    torch.testing.assert_close(rgb, net(layout, canvas, missing))
    out = blend_canvas(rgb, raw, torch.rand(1, 3, 48, 64), torch.ones(1, 1, 48, 64))
    torch.testing.assert_close(out.image, upsample(rgb, (48, 64)))
    blended = CascadedRefinementNetwork(**kwargs, canvas_blend=True)
    rgb, raw = blended.forward_with_blend(layout, canvas, missing)
    assert raw is not None and raw.shape == (1, BLEND_CHANNELS, 24, 32)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="raw blend maps"):
        BlendMaps.from_raw(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="must be"):
        blend_canvas(torch.zeros(1, 3, 4, 4), None, torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4, 4))


def test_numpy_canvas_round_trip_is_exact() -> None:
    # A kept canvas with alpha forced to 1 and neutral colour comes back bit for bit after uint8 rounding.
    raw = torch.zeros(1, BLEND_CHANNELS, 6, 8)
    raw[:, 0] = 60.0
    photo = np.random.default_rng(0).integers(0, 256, (24, 32, 3)).astype(np.uint8)
    canvas = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    out = blend_canvas(torch.zeros(1, 3, 6, 8), raw, canvas, torch.ones(1, 1, 24, 32))
    back = (out.image[0].permute(1, 2, 0) * 255).round().byte().numpy()
    np.testing.assert_array_equal(back, photo)


def test_seam_feather_falls_off_between_pieces_only() -> None:
    kept = torch.ones(1, 1, 12, 12)
    pieces = torch.zeros(1, 1, 12, 12, dtype=torch.long)
    pieces[..., :, 6:] = 7
    f = feather(kept, pieces=pieces)
    assert float(f[0, 0, 6, 0]) == 1.0 and float(f[0, 0, 6, 11]) == 1.0  # frame border is no seam
    assert float(f[0, 0, 6, 5]) < 1.0 and float(f[0, 0, 6, 6]) < 1.0  # both sides of the seam
    assert float(f[0, 0, 6, 2]) == 1.0  # three pixels away from it
    # Without pieces every pixel here is fully kept; one piece everywhere is the same as none.
    torch.testing.assert_close(feather(kept), kept)
    torch.testing.assert_close(feather(kept, pieces=torch.zeros_like(pieces)), feather(kept))
    sparse = (torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(1)) < 0.6).float()
    torch.testing.assert_close(feather(sparse, pieces=torch.zeros_like(pieces)), feather(sparse))


def test_feather_only_where_elision_leaves_speckle() -> None:
    from synthesis.networks.blend import FEATHER, feather_radius_for

    assert feather_radius_for(0.05, 0.8) == FEATHER > 0
    assert feather_radius_for(0.0, 0.8) == 0  # no band, no speckle
    assert feather_radius_for(0.05, 1.0) == 0  # the whole band elided: no speckle either
    assert feather_radius_for(0.05, 0.0) == 0

"""Power spectra of known signals: sinusoids peak at their frequency, white noise is flat, 1/f images slope -2;
the fine-detail share and ratio on blurred, noisy and real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from synthesis.evaluation.spectrum import (
    HIGH_FREQUENCY_CUTOFF,
    Spectrum,
    high_frequency_fraction,
    high_frequency_ratio,
    mean_power_spectrum,
    plot_spectra,
    power_spectrum,
    radial_bins,
    radial_frequency,
    spectrum_distance,
    to_gray,
)

ROWS, COLS = 48, 64
#: A real CamVid val photo (360x480) from the bundled sample.
PHOTO = Path(__file__).resolve().parents[1] / "examples/camvid-sample/val/0016E5_07959.png"


def _pink(rng: np.random.Generator, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Gaussian noise with amplitude 1/f, so power 1/f^2: the statistics of natural images."""
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.fftfreq(cols)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    coeffs = (rng.normal(size=(rows, cols)) + 1j * rng.normal(size=(rows, cols))) / f
    coeffs[0, 0] = 0.0
    return np.real(np.fft.ifft2(coeffs))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, ROWS // 2 - 2), vertical=st.booleans(), window=st.booleans(), phase=st.floats(0, 6.28))
def test_sinusoid_peaks_at_its_frequency(k: int, vertical: bool, window: bool, phase: float) -> None:
    n = ROWS if vertical else COLS
    wave = np.sin(2 * np.pi * k / n * np.arange(n) + phase)
    image = np.tile(wave[:, None], (1, COLS)) if vertical else np.tile(wave, (ROWS, 1))
    s = power_spectrum(image, window=window)
    assert s.freqs[np.argmax(s.power)] == pytest.approx(k / n, abs=0.5 / min(ROWS, COLS))
    if not window:
        # Without a window the power sits in that one ring: everything else is numerically zero.
        peak = np.argmax(s.power)
        assert np.delete(s.power, peak).max() < 1e-20 * s.power[peak] + 1e-20


def test_white_noise_is_flat() -> None:
    rng = np.random.default_rng(0)
    sigma = 0.1
    s = mean_power_spectrum(rng.normal(0, sigma, (ROWS, COLS)) for _ in range(40))
    assert s.count == 40
    # Flat at the variance (the window is normalised to keep it), within sampling noise.
    np.testing.assert_allclose(s.power[2:], sigma**2, rtol=0.25)
    assert abs(s.slope()) < 0.1


@pytest.mark.parametrize("window", [True, False])
def test_one_over_f_image_has_slope_minus_two(window: bool) -> None:
    rng = np.random.default_rng(1)
    s = mean_power_spectrum((_pink(rng) for _ in range(20)), window=window)
    assert s.slope() == pytest.approx(-2.0, abs=0.1)


def test_rgb_images_become_luminance() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255
    np.testing.assert_allclose(to_gray(rgb), 0.587)
    with pytest.raises(ValueError):
        to_gray(np.zeros((4, 4, 2)))


def test_radial_bins_put_fft_frequencies_in_their_ring() -> None:
    index, freqs = radial_bins((ROWS, COLS))
    assert len(freqs) == min(ROWS, COLS) // 2
    assert index[0, 0] == -1  # DC is left out
    for k in (1, 5, ROWS // 2):
        assert index[k, 0] == k - 1 and freqs[k - 1] == pytest.approx(k / ROWS)


def test_spectrum_distance() -> None:
    rng = np.random.default_rng(2)
    a = mean_power_spectrum(_pink(rng) for _ in range(3))
    b = Spectrum(a.freqs, a.power * 10.0)
    assert spectrum_distance(a, a) == 0.0
    assert spectrum_distance(a, b) == pytest.approx(1.0)  # a factor 10 everywhere
    assert spectrum_distance(b, a) == spectrum_distance(a, b)
    with pytest.raises(ValueError, match="grid"):
        spectrum_distance(a, power_spectrum(np.zeros((ROWS * 2, COLS * 2))))


def test_mean_spectrum_checks_sizes() -> None:
    with pytest.raises(ValueError, match="size"):
        mean_power_spectrum([np.zeros((ROWS, COLS)), np.zeros((ROWS, COLS + 8))])
    with pytest.raises(ValueError, match="no images"):
        mean_power_spectrum([])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    spectra = {"pink": mean_power_spectrum([_pink(rng)]), "white": mean_power_spectrum([rng.normal(size=(ROWS, COLS))])}
    out = plot_spectra(spectra, tmp_path / "sub" / "spectra.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Fine detail: the share of power above half the Nyquist radius


def _photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def _to_uint8(g: np.ndarray) -> np.ndarray:
    g = (g - g.min()) / (g.max() - g.min())
    return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def test_radial_frequency_reaches_nyquist_on_each_axis() -> None:
    r = radial_frequency((ROWS, COLS))
    assert r[0, 0] == 0.0
    assert r[ROWS // 2, 0] == pytest.approx(0.5) and r[0, COLS // 2] == pytest.approx(0.5)
    assert r.max() == pytest.approx(np.sqrt(0.5))  # the corners
    with pytest.raises(ValueError, match="too small"):
        radial_frequency((3, 8))


@settings(max_examples=20, deadline=None)
@given(k=st.integers(3, ROWS // 2 - 3), vertical=st.booleans())
def test_sinusoid_share_is_all_or_nothing_at_the_cutoff(k: int, vertical: bool) -> None:
    n = ROWS if vertical else COLS
    f = k / n
    if abs(f - HIGH_FREQUENCY_CUTOFF) < 3 / n:
        return  # the Hann window spreads power over ±2 bins: too close to the cutoff to call
    wave = np.sin(2 * np.pi * f * np.arange(n))
    image = np.tile(wave[:, None], (1, COLS)) if vertical else np.tile(wave, (ROWS, 1))
    share = high_frequency_fraction(image)
    assert share == pytest.approx(1.0 if f > HIGH_FREQUENCY_CUTOFF else 0.0, abs=1e-3)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(8, 40), cols=st.integers(8, 40))
def test_an_image_against_itself_has_ratio_one(seed: int, rows: int, cols: int) -> None:
    rng = np.random.default_rng(seed)
    image = _to_uint8(_pink(rng, rows, cols) + 0.01 * rng.normal(size=(rows, cols)))
    share = high_frequency_fraction(image)
    assert 0 < share < 1
    assert high_frequency_ratio([share], [share]) == pytest.approx(1.0)


def test_blurred_photo_has_little_fine_detail_and_noise_has_much() -> None:
    photo = _photo()
    real = high_frequency_fraction(photo)
    assert 0.001 < real < 0.2  # a natural photo: most power at low frequencies
    blurred = cv2.GaussianBlur(photo, (0, 0), sigmaX=3, sigmaY=3)
    assert high_frequency_ratio([high_frequency_fraction(blurred)], [real]) < 0.2
    noise = np.random.default_rng(0).integers(0, 256, photo.shape, dtype=np.uint8)
    assert high_frequency_ratio([high_frequency_fraction(noise)], [real]) > 3
    # White noise: the share is the area beyond the cutoff, 1 - pi * 0.25^2 ≈ 0.80.
    assert high_frequency_fraction(noise) == pytest.approx(1 - np.pi * HIGH_FREQUENCY_CUTOFF**2, abs=0.02)


def test_blurred_one_over_f_texture_ratio_is_well_below_half() -> None:
    rng = np.random.default_rng(4)
    textures = [_to_uint8(_pink(rng, 96, 128)) for _ in range(3)]
    blurred = [cv2.GaussianBlur(t, (0, 0), sigmaX=3, sigmaY=3) for t in textures]
    ratio = high_frequency_ratio(map(high_frequency_fraction, blurred), map(high_frequency_fraction, textures))
    assert ratio < 0.5
    assert high_frequency_ratio(map(high_frequency_fraction, textures), map(high_frequency_fraction, textures)) == 1


def test_flat_images_have_no_share_and_are_left_out() -> None:
    flat = np.full((ROWS, COLS, 3), 128, np.uint8)
    assert np.isnan(high_frequency_fraction(flat))
    assert high_frequency_ratio([0.2, float("nan")], [0.1]) == pytest.approx(2.0)
    assert np.isnan(high_frequency_ratio([0.2], [float("nan")]))


def test_full_resolution_spectrum_distance_of_a_photo_to_itself_is_zero() -> None:
    photo = _photo()
    assert photo.shape[:2] == (360, 480)
    s = power_spectrum(photo)
    assert spectrum_distance(s, power_spectrum(photo.copy())) == 0.0
    blurred = power_spectrum(cv2.GaussianBlur(photo, (0, 0), sigmaX=3, sigmaY=3))
    assert spectrum_distance(s, blurred) > 1.0  # orders of magnitude lost at high frequencies

"""Power spectra of known signals: sinusoids peak at their frequency, white noise is flat, 1/f images slope -2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthesis.evaluation.spectrum import (
    Spectrum,
    mean_power_spectrum,
    plot_spectra,
    power_spectrum,
    radial_bins,
    spectrum_distance,
    to_gray,
)

ROWS, COLS = 48, 64


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

"""Writing a ``sims eval`` report: ``report.md``, ``report.json`` and the PNG plots of an :class:`EvalReport`.

:func:`write_report` writes them all; :func:`render_markdown` is the markdown (the headline table,
per-class IoU and how to read each measure), :func:`plot_class_iou` and :func:`plot_samples` two of
the figures (the spectra are :func:`~synthesis.evaluation.spectrum.plot_spectra`'s).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memory_bank.images import resize_photo
from synthesis.evaluation.scoring import EvalReport
from synthesis.evaluation.spectrum import HIGH_FREQUENCY_CUTOFF, Spectrum, plot_spectra


def write_report(report: EvalReport, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``out_dir``; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False, default=_json) + "\n")
    plot_spectra(_spectra_to_plot(report), out / "spectra.png", title="Mean power spectrum (luminance)")
    plot_class_iou(report, out / "class_iou.png")
    plot_samples(report, out / "samples.png")
    md = out / "report.md"
    md.write_text(render_markdown(report))
    return md


def _json(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _spectra_to_plot(report: EvalReport) -> dict[str, Spectrum]:
    return {
        r.name if "x" in r.name.split()[-1] else f"{r.name} ({r.size[0]}x{r.size[1]})": r.spectrum
        for r in report.results
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _fmt_kid(kid: float | None, se: float | None) -> str:
    if kid is None or not np.isfinite(kid):
        return "—"
    return f"{1e3 * kid:.2f}" + ("" if se is None or not np.isfinite(se) else f" ± {1e3 * se:.2f}")


def render_markdown(report: EvalReport) -> str:
    """The report as markdown: the headline table, per-class IoU, definitions and the plots."""
    h, w = report.layout_size
    sh, sw = report.segmenter_resolution
    real = [r for r in report.results if r.reference and np.isfinite(r.hf_fraction)]
    real_share = "".join(
        f" Real photos at {r.size[0]}x{r.size[1]} hold {100 * r.hf_fraction:.2f}% of their power there." for r in real
    )
    lines = [
        f"# {report.title}",
        "",
        f"{report.num_images} layouts at {h}x{w}. Segmenter: `{report.segmenter}` (trained on real CamVid train "
        f"photos at {sh}x{sw}).",
        "",
        "| images | size | seg. mIoU ↑ | pixel acc. ↑ | L1 to photo ↓ | fine detail (1 = real) | "
        "spectrum distance ↓ | spectrum slope | KID ×10³ ↓ | seam score (1 = real) | hole detail (1 = real) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.results:
        name = f"{r.name} (reference)" if r.reference else f"**{r.name}**"
        dist = f"({_fmt(r.spectrum_distance)})" if r.reference else _fmt(r.spectrum_distance)
        kid = _fmt_kid(r.kid, r.kid_se)
        lines.append(
            f"| {name} | {r.size[0]}x{r.size[1]} | {_fmt(r.scores.miou)} | {_fmt(r.scores.pixel_accuracy)} | "
            f"{_fmt(r.l1)} | {_fmt(r.fine_detail_ratio)} | {dist} | {r.spectrum.slope():.2f} | "
            f"{f'({kid})' if r.reference and r.kid is not None else kid} | {_fmt(r.seam_score)} | "
            f"{_fmt(r.hole_detail)} |"
        )
    lines += [
        "",
        "Per-class IoU:",
        "",
        "| images | " + " | ".join(report.classes.names) + " |",
        "|---|" + "---:|" * len(report.classes),
    ]
    for r in report.results:
        lines.append(f"| {r.name} | " + " | ".join(_fmt(v, 2) for v in r.scores.class_iou) + " |")
    lines += [
        "",
        "How to read it:",
        "",
        "- *Segmentation consistency*: the segmenter's prediction on each image, resized to the layout, against "
        "the layout; mIoU over the classes present in the layouts, accumulated over all images; unlabelled "
        "pixels (255) are not counted. The real photos give the reference: a synthesis cannot be expected to "
        "score higher than real photos of the same size.",
        "- *Spectrum distance*: mean absolute difference of log10 power between the set's mean radially averaged "
        "power spectrum (luminance, Hann window) and the real photos' at the same size; 0.1 means a factor "
        "10^0.1 ≈ 1.26 on average. For reference rows, in parentheses: the distance between the even- and "
        "odd-numbered real photos, the noise floor of this measure. *Slope*: fitted log-log slope over 0.02-0.4 "
        "cycles/pixel (natural images: about -2).",
        "- *L1*: mean absolute difference to the real photo (area-resized to the set's size), 0..1 scale.",
        f"- *Fine detail*: per image, the share of its power (luminance, mean removed, Hann window, DC excluded) "
        f"at radial frequencies above {HIGH_FREQUENCY_CUTOFF} cycles/pixel (half the Nyquist radius); a set's mean "
        f"share over the real photos' at the same size, so 1.0 is as detailed as real photos, below 1 smoother, "
        f"above 1 noisier.{real_share}",
        "- *Seam score*: the squared colour step between 4-neighbouring pixels of one layout class that come "
        "from different sources (two bank photos, or a bank photo and the network's drawing), summed over the "
        "set, over the real photos' steps at the same pixel pairs: 1.0 = no visible seam, above 1 a step the "
        "photo does not have. *Hole detail*: the high-pass energy (luminance minus its 2x area-downsampled, "
        "upsampled copy: the top octave, where fine detail lives) on the pixels the canvas lacks, over the real "
        "photos' there: 1.0 = as detailed, near 0 an upsampled low-resolution drawing. Both are taken at the "
        "set's own canvas or, for rows without one (parametric models, folders, real photos), at the first SIMS "
        "set's canvas for the same layout"
        + (
            f" (the canvases lack {100 * report.results[0].hole_share:.1f}% of the pixels)."
            if np.isfinite(report.results[0].hole_share)
            else "; — when no set builds canvases."
        ),
        "- Every measure is taken at the size the set comes in (column *size*; checkpoint sets come at the "
        "layout's resolution, as the product pipeline returns them); real photos are area-resized to that size.",
        "- *KID ×10³*: kernel inception distance, the unbiased MMD² with the kernel (x·y/d + 1)³, between the "
        "set's and the real photos' features, ± its jackknife standard error. The features are the project's "
        "evaluation segmenter's (its deepest encoder block, global-average-pooled, each image at its own "
        "resolution), **not Inception's**: these numbers compare the rows of this report and are not comparable "
        "with the FID/KID of papers. Unbiased, so about 0 (possibly slightly negative) for a set indistinguishable "
        "from real photos. Reference rows at a smaller size, in parentheses: the resized real photos against the "
        "full-size ones (what the size alone costs); — for the real photos themselves.",
        "",
        "![mean power spectra](spectra.png)",
        "",
        "![per-class IoU](class_iou.png)",
        "",
        "![samples](samples.png)",
        "",
    ]
    if report.gallery:
        lines += [
            f"Per-layout gallery (layout, canvas, outputs, provenance, photo): [{report.gallery}]({report.gallery})",
            "",
        ]
    if report.command:
        lines += ["Reproduce:", "", "```bash", report.command, "```", ""]
    return "\n".join(lines)


def plot_class_iou(report: EvalReport, path: str | Path) -> Path:
    """Grouped bars of per-class IoU, one colour per image set."""
    from matplotlib.figure import Figure

    names = report.classes.names
    fig = Figure(figsize=(max(6.0, 0.8 * len(names)), 4), dpi=120)
    ax = fig.subplots()
    width = 0.8 / len(report.results)
    x = np.arange(len(names))
    for k, r in enumerate(report.results):
        ax.bar(x + (k - (len(report.results) - 1) / 2) * width, np.nan_to_num(r.scores.class_iou), width, label=r.name)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title("Segmentation consistency per class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_samples(report: EvalReport, path: str | Path) -> Path:
    """A grid: layout, real photo, then each set's image and the segmenter's reading of it, per sample."""
    from matplotlib.figure import Figure

    items = report.sample_items
    sets = [r for r in report.results if not r.reference]
    if not items:
        raise ValueError("the report holds no samples")
    lut = report.classes.palette()
    columns = ["layout", "real photo"] + [c for r in sets for c in (r.name, f"{r.name}: segmented")]
    fig = Figure(figsize=(2.2 * len(columns), 1.8 * len(items)), dpi=100)
    axes = np.asarray(fig.subplots(len(items), len(columns), squeeze=False))
    for i, item in enumerate(items):
        cells = [lut[item.layout], item.photo]
        for r in sets:
            cells += [r.samples[i], lut[r.predictions[i]]]
        for j, cell in enumerate(cells):
            ax = axes[i, j]
            ax.imshow(_thumbnail(cell), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=8)
        axes[i, 0].set_ylabel(item.name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def _thumbnail(image: np.ndarray, rows: int = 180) -> np.ndarray:
    # A figure cell is about 200 px wide: larger images only slow the plot down.
    if image.shape[0] <= rows:
        return image
    cols = round(image.shape[1] * rows / image.shape[0])
    return resize_photo(image, (rows, cols))


__all__ = ["plot_class_iou", "plot_samples", "render_markdown", "write_report"]

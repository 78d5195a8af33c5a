"""PNG figures for the ``skknn`` command: neighbour galleries and accuracy curves.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas,
not through ``pyplot``: no global backend or figure registry is touched, so the
functions are safe in scripts, notebooks and tests alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

# Size of one gallery cell: the PNG is (k + 1) * CELL_PX wide and
# GALLERY_HEIGHT_PX high, which tests and users can rely on.
DPI = 100
CELL_PX = 160
GALLERY_HEIGHT_PX = 230


def new_figure(width_px: int, height_px: int):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "Drawing PNG figures needs matplotlib: `pip install skknn[plot]`."
        ) from exc
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _show(ax, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        # Fixed limits: a faint image must look faint, not be stretched.
        vmax = 255 if image.dtype == np.uint8 else 1.0
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_gallery(
    path: str | os.PathLike,
    query_image: np.ndarray,
    neighbor_images: Sequence[np.ndarray],
    neighbor_labels: Sequence,
    weights: Sequence[float] | None,
    distances: Sequence[float],
    *,
    prediction,
    true_label=None,
    neighbor_ids: Sequence[int] | None = None,
    query_title: str = "query",
) -> tuple[int, int]:
    """Write a PNG: the query, then its neighbours with label, vote share, distance.

    Neighbours whose label equals the prediction get a green frame, others red.

    Parameters
    ----------
    path : str or path-like
        Where the PNG goes.
    query_image : ndarray
        (H, W) greyscale or (H, W, 3) RGB, floats in [0, 1] or uint8.
    neighbor_images : sequence of ndarray
        The neighbours' images, nearest first.
    neighbor_labels, weights, distances : sequence
        One per neighbour: label, share of the vote (None: not shown, as for a
        residual query's neighbours, which do not vote), distance to the query.
    prediction : object
        The predicted label.
    true_label : object, default=None
        The query's label, shown when known.
    neighbor_ids : sequence of int, default=None
        Sample ids shown under each neighbour.

    Returns
    -------
    size : tuple of (int, int)
        ``(width, height)`` of the PNG in pixels.
    """
    k = len(neighbor_images)
    width, height = (k + 1) * CELL_PX, GALLERY_HEIGHT_PX
    fig = new_figure(width, height)
    axes = fig.subplots(1, k + 1, squeeze=False)[0]
    fig.subplots_adjust(left=0.01, right=0.99, top=0.70, bottom=0.02, wspace=0.08)
    _show(axes[0], query_image)
    title = f"{query_title}\npredicted {prediction}"
    if true_label is not None:
        title += f"\ntrue {true_label}"
    axes[0].set_title(title, fontsize=9)
    for spine in axes[0].spines.values():
        spine.set_edgecolor("#1f4e9c")
        spine.set_linewidth(3)
    for i, ax in enumerate(axes[1:]):
        _show(ax, neighbor_images[i])
        head = f"#{i + 1}" if neighbor_ids is None else f"#{i + 1} id {neighbor_ids[i]}"
        share = "" if weights is None else f"w={weights[i]:.2f} "
        ax.set_title(
            f"{head}\nlabel {neighbor_labels[i]}\n{share}d={distances[i]:.3f}",
            fontsize=8,
        )
        colour = "#2a9d3a" if neighbor_labels[i] == prediction else "#d62828"
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.5)
    fig.savefig(os.fspath(path), dpi=DPI)
    return width, height


def plot_accuracy_by_k(
    path: str | os.PathLike,
    accuracy: Mapping[str, np.ndarray],
    *,
    title: str = "Accuracy by k",
) -> None:
    """Write a PNG of accuracy against ``k`` (log scale), one curve per rule.

    Parameters
    ----------
    path : str or path-like
    accuracy : mapping of str to ndarray
        ``accuracy[rule][k - 1]`` as :func:`skknn.evaluation.voting_accuracy_by_k`
        returns it.
    title : str, default="Accuracy by k"
    """
    fig = new_figure(720, 460)
    ax = fig.subplots()
    for rule, acc in accuracy.items():
        ks = np.arange(1, len(acc) + 1)
        best = int(np.argmax(acc))
        line = ax.plot(ks, 100 * np.asarray(acc), label=rule, linewidth=1.6)[0]
        ax.plot(ks[best], 100 * acc[best], "o", color=line.get_color())
    # Small k matter most and large k are many: a log axis shows both.
    if len(next(iter(accuracy.values()))) > 1:
        from matplotlib.ticker import FormatStrFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # 1, 10: not 10^0
    ax.set_xlabel("k (neighbours voting)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="voting (dot: best k)")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=DPI)


def plot_reliability(path: str | os.PathLike, calibration, *, title: str) -> None:
    """Write a reliability diagram: accuracy against confidence per bin, one
    line per voting rule at its best k (FORMULAS.md 7); the diagonal is perfect
    calibration."""
    fig = new_figure(720, 460)
    ax = fig.subplots()
    ax.plot([0, 100], [0, 100], color="0.6", linewidth=1, linestyle="--")
    for rule, (k, ece, bins) in calibration.items():
        filled = bins.count > 0
        ax.plot(
            100 * bins.confidence[filled],
            100 * bins.accuracy[filled],
            "o-",
            label=f"{rule} (k={k}, ECE {100 * ece:.1f}%)",
            linewidth=1.4,
        )
    ax.set_xlabel("confidence (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=DPI)


def plot_scaling(path: str | os.PathLike, scaling, *, title: str) -> None:
    """Write error against memory size on log-log axes with the fitted power
    law ``log(err) = a + b log(N)`` ([VM] 3.3)."""
    fig = new_figure(720, 460)
    ax = fig.subplots()
    sizes = np.asarray(scaling.sizes, dtype=float)
    ax.plot(sizes, 100 * scaling.error, "o", label="mean error of the draws")
    if np.isfinite(scaling.exponent):
        grid = np.geomspace(sizes.min(), sizes.max() * 10, 50)
        fitted = np.exp(scaling.intercept) * grid**scaling.exponent
        ax.plot(
            grid, 100 * fitted, "-", label=f"power law, exponent {scaling.exponent:.3f}"
        )
    from matplotlib.ticker import FormatStrFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    # 20, 100: not 2 x 10^1, 10^2; sizes span decades, so only they are named.
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("memory size N")
    ax.set_ylabel("error (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=DPI)

"""Score histograms per case title (paper Fig. 2) and a per-territory gain bar chart, as PNG.

Drawn on pyplot-free figures with their own Agg canvas (:func:`tall_jax.pages.new_figure`): matplotlib's
backend is never changed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tall_jax.pages import new_figure, save_figure


def plot_title_histograms(hist_by_model: dict[str, np.ndarray], titles: list[str], path: str | Path) -> Path:
    """One panel per case title: the normalised user histogram of predicted propensities per model
    (``hist_by_model[model] [C, bins]``, bins evenly over [0, 1], averaged over seeds by the caller)."""
    n = len(titles)
    fig = new_figure((4 * max(n, 1), 3.2))
    axes = fig.subplots(1, max(n, 1), squeeze=False)
    for c, ax in enumerate(axes[0][:n]):
        for name, hist in hist_by_model.items():
            bins = hist.shape[1]
            centres = (np.arange(bins) + 0.5) / bins
            ax.plot(centres, hist[c], marker="o", ms=3, label=name)
        ax.set_title(titles[c], fontsize=9)
        ax.set_xlabel("predicted propensity")
        ax.set_ylabel("share of users")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_gains(cells: list[str], table: dict[str, dict], path: str | Path) -> Path:
    """Bars of the relative PR-AUC gain (mean ± std over seeds) per territory for each comparison."""
    fig = new_figure((max(6, 0.6 * len(cells) * len(table)), 3.5))
    ax = fig.subplots()
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(cells))
    for j, (name, row) in enumerate(table.items()):
        ax.bar(x + j * width, row["mean"], width, yerr=row["std"], label=name, capsize=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x + width * (len(table) - 1) / 2, cells, fontsize=8)
    ax.set_ylabel("relative PR-AUC gain (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)

"""PNG figures of a training run: the paper's Fig. 1 (validation NDCG@20 per group over epochs) and
Fig. 3 (mean adaptive weight per group over epochs).

Figures are drawn on pyplot-free figures (:func:`tall_jax.pages.new_figure`), so importing or calling
this module leaves matplotlib's backend (and any interactive session) alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tall_jax.pages import new_figure, save_figure


def plot_group_curves(history: list[dict[str, Any]], key: str, ylabel: str, title: str,
                      path: str | Path, best_epoch: int | None = None) -> Path | None:
    """One line per user group of ``history[e][key][group]`` against the epoch; None if no groups."""
    if not history or not history[0].get(key):
        return None
    values = [v for h in history for v in h[key].values()]
    if max(values) - min(values) < 1e-12:  # e.g. weights that stay 1 (MultVAE, LMoE)
        return None
    epochs = [h["epoch"] for h in history]
    fig = new_figure((6.4, 4.0))
    ax = fig.subplots()
    for group in history[0][key]:
        ax.plot(epochs, [h[key].get(group, float("nan")) for h in history], label=group)
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_run(history: list[dict[str, Any]], out_dir: str | Path, label: str,
             best_epoch: int | None = None) -> list[Path]:
    """Write ``valid_ndcg20_by_group.png`` (Fig. 1) and ``weight_by_group.png`` (Fig. 3)."""
    out_dir = Path(out_dir)
    written = [
        plot_group_curves(history, "valid_ndcg@20_by_group", "validation NDCG@20",
                          f"{label}: validation NDCG@20 per user group", out_dir / "valid_ndcg20_by_group.png",
                          best_epoch),
        plot_group_curves(history, "weight_by_group", "mean adaptive weight",
                          f"{label}: mean weight per user group", out_dir / "weight_by_group.png",
                          best_epoch),
    ]
    return [p for p in written if p is not None]

"""After the gap: what the adaptive weights do to training, read from each run's per-epoch history.

The loss-change weights feed back on themselves: the users whose validation loss fell fastest over
the window get the largest weights, and a larger weight makes their loss fall faster still. On
ML-1M this shows as a jump of the weighted training loss some 40 epochs after the gap, with the
weights' spread growing and the test score dipping, then spiking, at the same time, and faithful
TALL's best-validation epoch falls there (docs/results/ml1m_ablations.md). This module finds the
jump and draws the curves.

- :func:`loss_jump`: the first epoch t > T (the gap) whose weighted training loss exceeds
  ``factor`` times its lowest value over epochs T+1..t-1 (None without one).
- :func:`jump_table`: per variant, how many runs jump, when, where their best epoch falls against
  it, and the weights' largest spread after it.
- :func:`plot_curves`: test NDCG@20, weighted training loss and the weights' std per epoch, mean
  over seeds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tall_jax.pages import new_figure, save_figure, table
from tall_jax.study.analysis import RunSummary
from tall_jax.study.analysis import mean_std_text as _ms

JUMP_FACTOR = 1.2


def loss_jump(epochs: np.ndarray, loss: np.ndarray, gap: int, factor: float = JUMP_FACTOR) -> int | None:
    """The first epoch t > ``gap`` with loss_t > ``factor`` * min(loss_s : gap < s < t), else None."""
    lowest = np.inf
    for epoch, value in zip(np.asarray(epochs), np.asarray(loss, float)):
        if epoch <= gap:
            continue
        if value > factor * lowest:
            return int(epoch)
        lowest = min(lowest, value)
    return None


def jump_epoch(r: RunSummary) -> int | None:
    """:func:`loss_jump` of a run (None without its curves or without a jump)."""
    c = r.curve
    return loss_jump(c["epoch"], c["loss"], r.gap) if c else None


def jump_table(names: list[str], runs: dict[str, list[RunSummary]]) -> list[str]:
    """Markdown rows: variant, runs with a jump, the jump's epoch, the best epoch, best epochs at or
    after the jump, the test NDCG@20 of the epoch before the jump and of the best epoch, and the
    weights' largest std after the jump (mean ± std over the runs that jump)."""
    header = ["variant", "runs that jump", "jump epoch", "best epoch", "best at or after the jump",
              "test NDCG@20 the epoch before the jump", "test NDCG@20 at the best epoch",
              "largest std w after the jump"]
    rows = []
    for name in names:
        rs = [r for r in runs.get(name, []) if r.curve]
        if not rs:
            continue
        jumped = [(r, j) for r in rs if (j := jump_epoch(r)) is not None]
        before, spread = [], []
        for r, j in jumped:
            epochs = list(r.curve["epoch"])
            i = epochs.index(j)
            before.append(float(r.curve["test"][i - 1]))
            after = r.curve["w_std"][i:]
            if np.isfinite(after).any():
                spread.append(float(np.nanmax(after)))
        cells = [f"{len(jumped)} of {len(rs)}", _ms([j for _, j in jumped], 1),
                 _ms([r.best_epoch for r in rs], 1),
                 f"{sum(r.best_epoch >= j for r, j in jumped)} of {len(rs)}",
                 _ms(before, 4), _ms([r.best["overall"] for r, _ in jumped], 4), _ms(spread, 2)]
        rows.append([name, *cells])
    return table(header, rows, "l" + "r" * 7)


def _mean_curve(rs: list[RunSummary], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and the mean of ``key`` over the runs that reached each epoch, up to the last epoch
    at least half of the runs reached (a mean of one late run would read as a trend)."""
    by_epoch: dict[int, list[float]] = {}
    for r in rs:
        for e, v in zip(r.curve["epoch"], r.curve[key]):
            if np.isfinite(v):
                by_epoch.setdefault(int(e), []).append(float(v))
    epochs = np.array([e for e in sorted(by_epoch) if 2 * len(by_epoch[e]) >= len(rs)], int)
    return epochs, np.array([np.mean(by_epoch[e]) for e in epochs])


def plot_curves(path: Path, names: list[str], runs: dict[str, list[RunSummary]], title: str) -> Path | None:
    """Three panels over epochs (test NDCG@20, weighted training loss, std of the weights), one line
    per variant: the mean over its seeds; a dotted line at the gap."""
    shown = [n for n in names if any(r.curve for r in runs.get(n, []))]
    if not shown:
        return None
    gaps = sorted({r.gap for n in shown for r in runs[n] if r.gap})
    start = max(1, gaps[0] - 10) if gaps else 1  # the epochs before the gap: w = 1 in every variant
    fig = new_figure((12.0, 3.6))
    axes = fig.subplots(1, 3, sharex=True)
    panels = (("test", "test NDCG@20"), ("loss", "weighted training loss"), ("w_std", "std of the weights w"))
    for ax, (key, label) in zip(axes, panels):
        for i, n in enumerate(shown):
            rs = [r for r in runs[n] if r.curve]
            epochs, values = _mean_curve(rs, key)
            keep = epochs >= start
            if keep.any():  # one colour per variant in every panel
                ax.plot(epochs[keep], values[keep], color=f"C{i % 10}", label=f"{n} ({len(rs)})", linewidth=1.0)
        for gap in gaps:
            ax.axvline(gap, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(label, fontsize="small")
        ax.set_xlabel("epoch", fontsize="small")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize="x-small")
    axes[0].legend(fontsize="x-small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)

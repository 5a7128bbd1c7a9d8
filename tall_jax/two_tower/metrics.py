"""Average precision (PR-AUC, docs/fidelity.md#two-tower-evaluation) per territory / group / title and relative-gain tables (Table 2).

AP is the step-wise area ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds, exactly
scikit-learn's ``average_precision_score`` (tied scores form one threshold). Degenerate cases are explicit:
no positives -> NaN (the caller reports how many such cells there were); all positives -> 1.0; no
examples -> NaN.
"""
from __future__ import annotations

import numpy as np

AP_DEFINITION = (
    "average precision = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds (sklearn "
    "average_precision_score; ties form one threshold); no positives -> NaN; all positives -> 1.0"
)


def average_precision(label_N: np.ndarray, score_N: np.ndarray) -> float:
    """Step-wise average precision of ``score_N`` for binary ``label_N`` (see module docstring)."""
    y = np.asarray(label_N).astype(bool).ravel()
    s = np.asarray(score_N, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"average_precision: {y.shape[0]} labels but {s.shape[0]} scores")
    n_pos = int(y.sum())
    if y.size == 0 or n_pos == 0:
        return float("nan")
    if n_pos == y.size:
        return 1.0
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]  # one threshold per distinct score
    tp, fp = tp[last_of_tie], (last_of_tie + 1) - tp[last_of_tie]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision_by_key(
    label_N: np.ndarray, score_N: np.ndarray, key_N: np.ndarray, n_keys: int
) -> dict[str, np.ndarray]:
    """AP per key value (territory or group): ``ap[K]`` (NaN where undefined), ``n_pos[K]``, ``n[K]``."""
    key_N = np.asarray(key_N)
    ap = np.full(n_keys, np.nan)
    n_pos = np.zeros(n_keys, np.int64)
    n = np.zeros(n_keys, np.int64)
    for k in range(n_keys):
        sel = key_N == k
        n[k], n_pos[k] = int(sel.sum()), int(np.asarray(label_N)[sel].sum())
        ap[k] = average_precision(np.asarray(label_N)[sel], np.asarray(score_N)[sel])
    return {"ap": ap, "n_pos": n_pos, "n": n, "n_undefined": int(np.isnan(ap).sum())}


def relative_gain(new: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Relative gain in percent, ``100 (new - reference) / reference`` (Table 2); NaN where undefined."""
    new, reference = np.asarray(new, np.float64), np.asarray(reference, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(reference > 0, 100.0 * (new - reference) / reference, np.nan)


def gain_table(ap_by_model: dict[str, np.ndarray], comparisons: list[tuple[str, str]]) -> dict[str, dict]:
    """Table 2 layout. ``ap_by_model[name]`` is ``[S seeds, D test days, K cells]``.

    For each ``(new, ref)``: the gain per seed and cell, averaged over test days as the paper does
    (mean of per-day gains), then mean and sample std over seeds -> ``{"mean": [K], "std": [K],
    "per_seed": [S, K]}``.
    """
    table = {}
    for new, ref in comparisons:
        gain_SxDxK = relative_gain(ap_by_model[new], ap_by_model[ref])
        with np.errstate(invalid="ignore"):
            per_seed_SxK = np.nanmean(gain_SxDxK, axis=1) if gain_SxDxK.size else gain_SxDxK
        s = per_seed_SxK.shape[0]
        table[f"{new} vs {ref}"] = {
            "mean": np.nanmean(per_seed_SxK, axis=0),
            "std": np.nanstd(per_seed_SxK, axis=0, ddof=1) if s > 1 else np.zeros(per_seed_SxK.shape[1]),
            "per_seed": per_seed_SxK,
        }
    return table


def format_table(row_names: list[str], columns: dict[str, tuple[np.ndarray, np.ndarray]], *, fmt: str = "{:.4f}") -> str:
    """Plain-text table: one row per cell (territory / group), columns ``name -> (mean[K], std[K])``."""
    width = max([len(r) for r in row_names] + [4])
    heads = list(columns)
    colw = max([len(h) for h in heads] + [len(fmt.format(0.0)) * 2 + 3])
    lines = [" " * width + " | " + " | ".join(h.rjust(colw) for h in heads)]
    for k, name in enumerate(row_names):
        cells = []
        for h in heads:
            mean, std = columns[h]
            cells.append(f"{fmt.format(mean[k])} ± {fmt.replace('+', '').format(std[k])}".rjust(colw))
        lines.append(name.ljust(width) + " | " + " | ".join(cells))
    return "\n".join(lines)

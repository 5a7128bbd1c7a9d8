"""What every results page is made of: Markdown tables and their number cells, the provenance line,
and the page's files (Markdown, CSV, PNG) written atomically. The page modules (:mod:`tall_jax.report`
with :mod:`tall_jax.table2`, :mod:`tall_jax.niche`, :mod:`tall_jax.study.writeup`,
:mod:`tall_jax.two_tower.study_page`) decide what a page says; this module how it is written.

Figures are drawn on a bare ``matplotlib.figure.Figure`` with its own Agg canvas
(:func:`new_figure`), never through pyplot, so drawing a page leaves matplotlib's backend (and any
interactive session) alone.
"""
from __future__ import annotations

import csv
import datetime
import io
import math
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tall_jax.files import atomic_write_bytes, atomic_write_text

DPI = 120  # the pages' figures


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    """A Markdown table's lines: the header, the rule and one line per row. ``align`` has one letter
    per column, "r" for a right-aligned one ("---:"), anything else (or a missing letter) for the
    default ("---")."""
    rule = "".join("---:|" if align[i:i + 1] == "r" else "---|" for i in range(len(header)))
    return [row_line(header), "|" + rule, *(row_line(r) for r in rows)]


def table_text(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """:func:`table` as one string (its lines joined by newlines)."""
    return "\n".join(table(header, rows, align))


def row_line(cells: Sequence[str]) -> str:
    """One Markdown table line: ``| a | b |``."""
    return "| " + " | ".join(cells) + " |"


def mean_std(mean: float, std: float | None = None, fmt: str = ".4f") -> str:
    """"mean ± std", each in ``fmt`` (just "mean" without a std)."""
    return format(mean, fmt) + ("" if std is None else f" ± {format(std, fmt)}")


def p_value(p: float, alpha: float | None = None) -> str:
    """A p-value: "–" for NaN, three decimals, or scientific below 0.001; with ``alpha``, a "*" when
    p < alpha."""
    if math.isnan(p):
        return "–"
    mark = "*" if alpha is not None and p < alpha else ""
    return (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}") + mark


def command_line(prog: str, args: Sequence[str]) -> str:
    """The command a page was made by, as a shell would take it: ``prog`` then the quoted ``args``."""
    return " ".join([prog, *map(shlex.quote, args)])


def produced_by(command: str) -> str:
    """The start of a page's provenance line: "Produced by `command` on <today's date>"."""
    return f"Produced by `{command}` on {datetime.date.today().isoformat()}"


def write_markdown(path: str | Path, text: str) -> Path:
    """A page's Markdown, written atomically."""
    return atomic_write_text(path, text)


def write_csv(path: str | Path, lines: Iterable[Sequence[Any]]) -> Path:
    """A page's CSV (one list per line, the header first), written atomically; csv's own ``\\r\\n``
    line ends, untranslated."""
    buf = io.StringIO()
    csv.writer(buf).writerows(lines)
    return atomic_write_bytes(path, buf.getvalue().encode())


def new_figure(figsize: tuple[float, float]):
    """A pyplot-free figure that renders with Agg (PNG) whatever backend the process uses."""
    # why: matplotlib is loaded when a figure is drawn, not by every module that may draw one
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path``; returns the path."""
    fig.savefig(path, dpi=dpi)
    return Path(path)

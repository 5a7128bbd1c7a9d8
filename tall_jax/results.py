"""The one writer of a run's ``results.json``: the environment block, the variant string, the
reference (paper) rows and the atomic write, shared by the MultVAE family (:mod:`tall_jax.experiment`), the
baselines (:mod:`tall_jax.baselines.experiment`) and the two-tower model (its
``two_tower_results.json``, a sibling schema: the same ``environment``, ``variant`` and ``settings``
keys around its own AP tables).
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tall_jax import paper
from tall_jax.configs import variant as _variant
from tall_jax.files import atomic_write_text

RESULTS_FILE = "results.json"


def environment() -> dict[str, Any]:
    """Where a run ran: JAX version and backend, the devices, Python, the platform, the UTC date and
    the commit of the tall_jax checkout it ran from (None outside a git checkout)."""
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "python": platform.python_version(),
            "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": source_commit()}


def source_commit(root: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout ``root`` (default: the one this package is imported
    from), with ``+dirty`` when tracked files differ from it; None for an installed copy or without
    git."""
    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def variant(config: Any, faithful: Any, execution_fields: tuple[str, ...]) -> str:
    """"field=value, ..." where ``config`` departs from ``faithful``, ignoring the seed and the
    execution-only fields (they never make a run a variant of the model)."""
    return _variant(config, faithful, ignore=("seed",) + tuple(execution_fields))


def reference_rows(dataset: str, model: str) -> dict[str, dict[str, float] | None]:
    """The reference NDCG@20 rows of (dataset, model): ``paper`` (TALL paper) and ``lft_repo``."""
    return {source: paper.paper_row(dataset, model, source) for source in ("paper", "lft_repo")}


def data_reading(ds) -> dict[str, Any]:
    """What loading did to the data that a results table must not hide: the k-core rule that ran,
    rows dropped below --min-rating, ids whose surrounding spaces were stripped (absent: not done)."""
    keys = ("kcore_rule", "below_min_rating", "ids_stripped")
    return {k: ds.info[k] for k in keys if k in ds.info}


def to_jsonable(obj: Any) -> Any:
    """NumPy arrays / scalars -> lists / floats / ints (non-finite floats -> None), recursively."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return obj


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """``record`` as indented JSON at ``path``, written atomically (NumPy scalars become floats)."""
    return atomic_write_text(path, json.dumps(record, indent=1, default=float))


def write_results(out_dir: str | Path, results: dict[str, Any], name: str = RESULTS_FILE) -> Path:
    """Write ``results`` plus its ``environment`` block to ``out_dir/name`` atomically; returns the path."""
    results.setdefault("environment", environment())
    return write_json(Path(out_dir) / name, results)


PER_USER_FILE = "per_user_test.npz"
USERS_FILE = "evaluated_users.npy"  # a user-subset run's evaluated users


RECORD_SUFFIX = "_runs"  # a page's record: <stem>_runs beside <stem>.md


def record_dir(page: str | Path) -> Path:
    """``<page>_runs``: the record of the page ``<page>.md``, committed beside it."""
    page = Path(page)
    return page.with_name(page.name + RECORD_SUFFIX)


def record_holding(folder: str | Path) -> Path | None:
    """The page record (:func:`record_dir`) that ``folder`` lies in, or None."""
    for parent in Path(folder).resolve().parents:
        stem = parent.name.removesuffix(RECORD_SUFFIX)
        if stem != parent.name and parent.with_name(stem + ".md").is_file():
            return parent
    return None


def keep_run(src: str | Path, dst: str | Path, metrics: tuple[str, ...], extra: tuple[str, ...] = ()) -> bool:
    """Copy what a finished run's table entry is computed from into ``dst`` (a committed record):
    its results.json, the per-user test ``metrics`` with the user groups (compressed; the other
    metrics and the top items are left out), the evaluated users of a subset run and the ``extra``
    files. Rewrites nothing when ``dst`` already holds the same results; returns whether it wrote."""
    src, dst = Path(src), Path(dst)
    results = (src / RESULTS_FILE).read_text()
    if (dst / RESULTS_FILE).exists() and (dst / RESULTS_FILE).read_text() == results:
        return False
    dst.mkdir(parents=True, exist_ok=True)
    if (src / PER_USER_FILE).exists():
        with np.load(src / PER_USER_FILE) as z:
            np.savez_compressed(dst / PER_USER_FILE, **{k: z[k] for k in (*metrics, "groups") if k in z.files})
    for name in (USERS_FILE, *extra):
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())
    atomic_write_text(dst / RESULTS_FILE, results)  # last: an entry with results is complete
    return True

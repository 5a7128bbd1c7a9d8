"""Your own interaction file as a dataset: ``.csv``, ``.tsv`` or ``::``-separated ``.dat`` (plain or .gz).

Columns are named by a header line (case-insensitive; ``user``/``user_id``/``userId``/``uid``,
``item``/``item_id``/``itemId``/``movieId``/..., ``rating``, ``timestamp``/``time``; other columns are
ignored) or, for a file without a header, by ``columns=("user", "item", "rating", "timestamp")`` in file
order (``skip`` ignores a column). Ids may be any strings; they are coded in order of first appearance
and the original ids are kept in ``Dataset.info["user_ids"]`` / ``["item_ids"]`` (row / column order).
With ``min_rating`` only interactions rated at least that are kept (explicit ratings); otherwise every
row is a positive. Repeated (user, item) pairs keep the first. Spaces around an id are stripped (a
warning gives how many ids changed; ``info["read"]["ids_stripped"]``). Then a true iterative k-core
(users and items with at least ``kcore`` interactions at the end; the built-in datasets keep the
authors' loop rule, docs/fidelity.md#filter), re-indexing by first appearance and the seeded 70/10/20
split as the built-in datasets. UTF-8 text, with or without a byte-order mark.

:func:`register_dataset` makes a file known by its file name (``interactions.csv``) to
:func:`tall_jax.datasets.load_dataset`, :func:`tall_jax.make_config` (the generic TALL defaults: the
``TALLConfig`` field values) and so to ``tall_jax.models.run_experiment`` and every baseline.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .readers import _malformed, drop_duplicates, open_text, read_error

log = logging.getLogger("tall_jax.datasets")

SEPARATORS = {".csv": ",", ".tsv": "\t", ".dat": "::"}
ROLES = ("user", "item", "rating", "timestamp")
SKIP = "skip"
# Header names (lower case, without "_", "-" and spaces) recognised for each role.
HEADER_NAMES = {
    "user": ("user", "userid", "uid", "customer", "customerid", "reviewer", "reviewerid"),
    "item": ("item", "itemid", "iid", "movie", "movieid", "product", "productid", "asin", "song",
             "songid", "track", "trackid", "book", "bookid", "business", "businessid"),
    "rating": ("rating", "score", "stars", "value"),
    "timestamp": ("timestamp", "time", "ts", "date", "datetime", "unixtime", "unixreviewtime"),
}
DEFAULT_KCORE = (10, 10)  # keep users with >= 10 interactions and items with >= 10, like ML-1M
MIN_USERS = 5  # five mainstream groups need at least five users
MIN_ITEMS = 2  # a ranking needs more than one item
_REGISTRY: dict[str, "OwnData"] = {}


def _norm(name: str) -> str:
    return "".join(c for c in name.strip().lower() if c not in "_- ")


def file_format(path: Path) -> tuple[str, str]:
    """(suffix, separator) of ``path`` (``.gz`` looked through); ValueError for another suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in SEPARATORS:
        raise ValueError(f"{path}: unknown file type {suffix or '(none)'!r}; your own data must be a "
                         f".csv (comma), .tsv (tab) or .dat ('::' separated) file, optionally .gz")
    return suffix, SEPARATORS[suffix]


def looks_like_path(name: str) -> bool:
    """Whether a dataset argument names a file rather than a built-in dataset."""
    p = Path(name)
    return "/" in name or p.exists() or any(s.lower() in (*SEPARATORS, ".gz") for s in p.suffixes)


def parse_columns(columns: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """``"user,item,rating"`` or a sequence -> validated tuple of roles (``skip`` allowed)."""
    if columns is None:
        return None
    names = [c.strip().lower() for c in (columns.split(",") if isinstance(columns, str) else columns)]
    bad = [c for c in names if c not in ROLES + (SKIP,)]
    if bad:
        raise ValueError(f"columns: unknown column name(s) {', '.join(map(repr, bad))}; use "
                         f"{', '.join(ROLES)} or {SKIP} (e.g. user,item,rating,timestamp)")
    for role in ROLES:
        if names.count(role) > 1:
            raise ValueError(f"columns: {role!r} is named {names.count(role)} times in {','.join(names)}")
    if "user" not in names or "item" not in names:
        raise ValueError(f"columns: need a user and an item column, got {','.join(names)}")
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class OwnData:
    """One interaction file and how to read it (see the module docstring)."""

    path: Path
    columns: tuple[str, ...] | None = None  # file order, no header; None: the first line is a header
    min_rating: float | None = None  # keep rating >= min_rating (needs a rating column)
    kcore: tuple[int, int] = DEFAULT_KCORE  # (min interactions per user, per item)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())
        object.__setattr__(self, "columns", parse_columns(self.columns))
        object.__setattr__(self, "kcore", tuple(int(k) for k in self.kcore))
        if len(self.kcore) != 2 or min(self.kcore) < 1:
            raise ValueError(f"kcore must be two integers >= 1 (min interactions per user, per "
                             f"item), got {self.kcore}")
        if self.min_rating is not None:
            if not math.isfinite(float(self.min_rating)):
                raise ValueError(f"min_rating must be a finite number, got {self.min_rating}")
            if self.columns is not None and "rating" not in self.columns:
                raise ValueError(f"min_rating needs a rating column; columns are {','.join(self.columns)}")
        if not self.path.is_file():
            what = "is a folder, not a file" if self.path.exists() else "no such file"
            raise FileNotFoundError(f"your own data file {self.path}: {what}")
        file_format(self.path)

    @property
    def name(self) -> str:
        """The dataset name: the file name, e.g. ``interactions.csv`` (never a built-in name)."""
        return self.path.name

    @property
    def kcore_rule(self) -> str:
        """The filter your own files get: a true iterative k-core (:func:`~.split.kcore_iterative`)."""
        return "iterative"

    def settings(self) -> dict[str, Any]:
        """What, besides the file's bytes, decides the processed split (for the cache key)."""
        return {"columns": list(self.columns) if self.columns else "header",
                "separator": file_format(self.path)[1], "min_rating": self.min_rating,
                "kcore": list(self.kcore), "kcore_rule": self.kcore_rule}


def register_dataset(path: str | Path, *, columns=None, min_rating: float | None = None,
                     kcore: tuple[int, int] = DEFAULT_KCORE) -> str:
    """Make ``path`` a dataset named by its file name; return that name.

    Afterwards ``load_dataset(name)``, ``make_config(name, model)`` and ``run_experiment(name, ...)``
    accept it; its config preset is the generic TALL defaults (``TALLConfig``'s field values)."""
    spec = OwnData(Path(path), columns=columns, min_rating=min_rating, kcore=kcore)
    _REGISTRY[spec.name] = spec
    return spec.name


def is_registered(name: str) -> bool:
    """Whether ``name`` was made a dataset by :func:`register_dataset`."""
    return str(name) in _REGISTRY


def own_data(name: str | Path) -> OwnData | None:
    """The registered :class:`OwnData` called ``name``, one with default options if ``name`` is a
    path to a file, else None (a built-in or unknown name)."""
    name = str(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    if looks_like_path(name):
        return OwnData(Path(name))
    return None


def _expected(columns: tuple[str, ...], sep: str) -> str:
    return (f"{len(columns)} fields separated by {sep!r}: {sep.join(columns)} (ids: any non-empty "
            "text; rating: a number)")


def _rows(path: Path, sep: str):
    """(line number, line, raw fields) of every non-blank line; CSV quoting for , and tab.

    UTF-8 with or without a byte-order mark. A byte that is not UTF-8, a broken ``.gz`` or a quoting
    error raises ``ValueError`` naming the file (and the line, where there is one)."""
    f = open_text(path)
    with f:
        start = 1
        try:
            if sep == "::":
                for lineno, line in enumerate(f, start=1):
                    line = line.rstrip("\n")
                    if line.strip():
                        yield lineno, line, line.split(sep)
            else:
                reader = csv.reader(f, delimiter=sep, strict=True)
                for fields in reader:
                    if fields and any(p.strip() for p in fields):
                        yield start, sep.join(fields), fields
                    start = reader.line_num + 1
        except csv.Error as e:
            raise ValueError(f"{path}, line {start}: cannot parse ({e})") from None
        except (UnicodeDecodeError, OSError, EOFError, zlib.error) as e:
            raise read_error(path, e) from None


def read_interactions(spec: OwnData) -> tuple[np.ndarray, np.ndarray, list[str], list[str], dict]:
    """Read ``spec``'s file -> (user codes, item codes, user ids by code, item ids by code, stats).

    Codes follow first appearance among the kept rows; repeated pairs are dropped (the first kept).
    A malformed line raises ``ValueError`` naming the file, the line number and the reason."""
    path = spec.path
    _, sep = file_format(path)
    rows = _rows(path, sep)
    columns = spec.columns
    if columns is None:
        try:
            lineno, line, header = next(rows)
        except StopIteration:
            raise ValueError(f"{path}: empty file; expected a header line naming a user and an item "
                             "column, then one interaction per line") from None
        columns = _header_roles(path, lineno, line, header, sep)
    if spec.min_rating is not None and "rating" not in columns:
        raise ValueError(f"{path}: min_rating {spec.min_rating} needs a rating column, but the "
                         f"columns are {','.join(columns)}")
    expected = _expected(columns, sep)
    n = len(columns)
    col = {role: columns.index(role) for role in ROLES if role in columns}
    users: list[int] = []
    items: list[int] = []
    user_code: dict[str, int] = {}
    item_code: dict[str, int] = {}
    n_rows = n_low = 0
    stripped: set[tuple[str, str]] = set()  # (role, id as written) of ids with surrounding spaces
    for lineno, line, fields in rows:
        if len(fields) != n:
            raise _malformed(path, lineno, line, expected, f"{len(fields)} fields, not {n}")
        u_raw, i_raw = fields[col["user"]], fields[col["item"]]
        u, i = u_raw.strip(), i_raw.strip()
        if u != u_raw:
            stripped.add(("user", u_raw))
        if i != i_raw:
            stripped.add(("item", i_raw))
        if not u or not i:
            raise _malformed(path, lineno, line, expected, f"empty {'user' if not u else 'item'} id")
        n_rows += 1
        if "rating" in col:
            try:
                r = float(fields[col["rating"]])
            except ValueError:
                hint = " (a header line? then drop --columns)" if lineno == 1 else ""
                raise _malformed(path, lineno, line, expected,
                                 f"rating {fields[col['rating']].strip()!r} is not a number{hint}") from None
            if not math.isfinite(r):
                raise _malformed(path, lineno, line, expected, f"rating {r} is not finite")
            if spec.min_rating is not None and r < spec.min_rating:
                n_low += 1
                continue
        users.append(user_code.setdefault(u, len(user_code)))
        items.append(item_code.setdefault(i, len(item_code)))
    if not users:
        why = (f"none of its {n_rows} rows has a rating >= {spec.min_rating}" if n_rows
               else "no interaction lines")
        raise ValueError(f"{path}: no interactions ({why})")
    if stripped:
        log.warning("%s: %d ids had spaces before or after them (e.g. %r); they were stripped, so ' a' "
                    "and 'a' are the same id", path, len(stripped), sorted(stripped)[0][1])
    if spec.min_rating is not None:
        log.info("%s: dropped %d rows rated below %g (min_rating), kept %d of %d", path, n_low,
                 spec.min_rating, n_rows - n_low, n_rows)
    u_arr, i_arr = drop_duplicates(np.asarray(users, np.int64), np.asarray(items, np.int64), str(path))
    stats = {"rows": n_rows, "below_min_rating": n_low, "duplicates_dropped": len(users) - u_arr.size,
             "ids_stripped": len(stripped), "columns": list(columns)}
    return u_arr, i_arr, list(user_code), list(item_code), stats


def _header_roles(path: Path, lineno: int, line: str, header: list[str], sep: str) -> tuple[str, ...]:
    roles: list[str] = []
    for name in header:
        key = _norm(name)
        role = next((r for r, names in HEADER_NAMES.items() if key in names), SKIP)
        roles.append(SKIP if role in roles else role)
    if "user" not in roles or "item" not in roles:
        known = "; ".join(f"{r}: {', '.join(names[:4])}" for r, names in HEADER_NAMES.items())
        raise ValueError(
            f"{path}, line {lineno}: {line[:200]!r} is not a header naming a user and an item column "
            f"(recognised names, any case: {known}, ...). Put such a header first, or say what the "
            f"columns are with --columns (columns=...), e.g. --columns user,item,rating,timestamp")
    return tuple(roles)

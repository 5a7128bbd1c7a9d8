"""Readers for the original rating files (docs/fidelity.md#data).

Every reader returns the raw ``(users_R, items_R)`` id pairs in file order, with repeated
(user, item) pairs dropped (the first is kept, the count dropped is logged). Ratings and
timestamps are validated but dropped: every observed pair is a positive. A malformed line raises
``ValueError`` naming the file, the line number, the line and the expected format.
"""
from __future__ import annotations

import gzip
import io
import logging
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger("tall_jax.datasets")

ML1M_RATINGS_FORMAT = "UserID::MovieID::Rating::Timestamp (integers)"
YELP_FORMAT = "user<TAB>item<TAB>rating<TAB>time (integer ids, numeric rating, integer time)"
AMAZON_FORMAT = "item,user,rating,time (no header; numeric rating, integer time)"
ML1M_USERS_FORMAT = "UserID::Gender::Age::Occupation::Zip-code"
ML1M_MOVIES_FORMAT = "MovieID::Title::Genres"
SPLIT_CSV_FORMAT = "header 'userId,itemId' then rows of two non-negative integers"


def open_text(path: str | Path, encoding: str = "utf-8-sig") -> io.TextIOBase:
    """Open a plain or ``.gz`` text file (universal newlines, so CRLF files read like LF ones).

    The default ``utf-8-sig`` reads UTF-8 and drops a byte-order mark before the first line (files
    saved by spreadsheet programs). Read errors of a broken ``.gz`` surface as ``EOFError`` /
    ``OSError`` / ``zlib.error``; :func:`read_error` turns them into a ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline=None)
    return open(path, encoding=encoding, newline=None)


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _bad_text_line(path: Path, encoding: str) -> tuple[int, int, bytes] | None:
    """(line number, byte column, the bad bytes) of the first line that does not decode, or None."""
    codec = "utf-8" if encoding.replace("_", "-").lower() in ("utf-8-sig", "utf8-sig") else encoding
    try:
        with _open_bytes(path) as f:
            for lineno, raw in enumerate(f, start=1):
                if lineno == 1 and codec == "utf-8" and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    raw.decode(codec)
                except UnicodeDecodeError as e:
                    return lineno, e.start + 1, raw[e.start:e.end]
    except (OSError, EOFError, zlib.error):
        return None
    return None


def read_error(path: str | Path, e: BaseException, encoding: str = "utf-8") -> ValueError:
    """A ``ValueError`` naming ``path`` and what is wrong, for an error raised while reading it:
    a byte that is not ``encoding`` (with its line), a truncated or corrupt ``.gz``, a ``.gz`` that is
    not gzip."""
    path = Path(path)
    name = "utf-8" if encoding.lower().startswith("utf") else encoding
    if isinstance(e, UnicodeDecodeError):
        where = _bad_text_line(path, encoding)
        if where is None:
            return ValueError(f"{path}: not valid {name} text ({e.reason})")
        lineno, col, bad = where
        return ValueError(f"{path}, line {lineno}: not valid {name} text (byte {bad!r} at column {col}: "
                          f"{e.reason}); save the file as {name}")
    if path.suffix == ".gz":
        if isinstance(e, EOFError):
            return ValueError(f"{path}: truncated gzip file (it ends before the end of the compressed "
                              "data; was the download or copy cut off?)")
        if isinstance(e, gzip.BadGzipFile) and "Not a gzipped file" in str(e):
            return ValueError(f"{path}: not a gzip file (the name ends in .gz but the content is not "
                              "gzip-compressed; rename it without .gz or compress it)")
        if isinstance(e, (gzip.BadGzipFile, zlib.error)):
            return ValueError(f"{path}: corrupt gzip file ({e})")
    return ValueError(f"{path}: cannot read ({e})")


def _read_text(path: Path, encoding: str = "utf-8-sig") -> str:
    try:
        with open_text(path, encoding) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as e:
        raise read_error(path, e, encoding) from None


def _malformed(path: Path, lineno: int, line: str, expected: str, why: str) -> ValueError:
    shown = line if len(line) <= 200 else line[:200] + "..."
    return ValueError(
        f"{path}, line {lineno}: malformed line {shown!r} ({why}); expected {expected}"
    )


def _parse_rows(
    path: Path,
    text: str,
    sep: str,
    converters: Sequence[Callable[[str], object]],
    expected: str,
    skip_header: bool = False,
) -> list[list[object]]:
    """Split ``text`` into rows of ``len(converters)`` fields and convert each field.

    The slow, line-by-line path: it is the reference for every fast path below and the one that
    locates a malformed line.
    """
    n = len(converters)
    rows: list[list[object]] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        if skip_header and lineno == 1:
            continue
        parts = line.split(sep)
        if len(parts) != n:
            raise _malformed(path, lineno, line, expected, f"{len(parts)} fields, not {n}")
        try:
            rows.append([conv(p) for conv, p in zip(converters, parts)])
        except ValueError as e:
            raise _malformed(path, lineno, line, expected, str(e)) from None
    return rows


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise ValueError(f"negative id {v}")
    return v


def drop_duplicates(
    users_R: np.ndarray, items_R: np.ndarray, source: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first occurrence of every (user, item) pair, in file order; log how many dropped."""
    if users_R.size == 0:
        return users_R, items_R
    key = users_R.astype(np.int64) * (int(items_R.max()) + 1) + items_R.astype(np.int64)
    _, first = np.unique(key, return_index=True)
    first.sort()
    n_dropped = users_R.size - first.size
    if n_dropped:
        log.info("%s: dropped %d repeated (user, item) pairs (kept the first)", source, n_dropped)
    return users_R[first], items_R[first]


def _fast_numeric(text: str, n_fields: int, n_lines: int) -> np.ndarray | None:
    """All whitespace-separated numbers as an [n_lines, n_fields] array, or None if that fails."""
    try:
        arr = np.array(text.split(), dtype=np.float64)
    except ValueError:
        return None
    if arr.size != n_fields * n_lines:
        return None
    return arr.reshape(n_lines, n_fields)


def _count_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") or not text else 1)


def _int_columns(arr: np.ndarray, cols: Sequence[int]) -> bool:
    sub = arr[:, cols]
    return bool(np.all(sub == np.floor(sub)) and np.all(sub >= 0) and np.all(sub < 2**62))


def _read_numeric(
    path: Path, sep: str, expected: str, int_cols: Sequence[int]
) -> np.ndarray:
    """Rows of 4 numeric fields; vectorised when the file is well-formed, line by line otherwise."""
    text = _read_text(path)
    n_lines = _count_lines(text)
    # The vectorised path splits on any whitespace, so it only runs when the separator is the sole
    # one present; anything odd goes to the line-by-line path, which finds and names the bad line.
    rest = text.replace(sep, "")
    if not any(c in rest for c in " \t\r") and text.count(sep) == 3 * n_lines:
        arr = _fast_numeric(text.replace(sep, " "), 4, n_lines)
        if arr is not None and _int_columns(arr, int_cols):
            return arr
    convs: list[Callable[[str], object]] = [float] * 4
    for c in int_cols:
        convs[c] = _nonneg_int
    rows = _parse_rows(path, text, sep, convs, expected)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def read_ml1m_ratings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MovieLens-1M ``ratings.dat`` (``::`` separated, plain or .gz) -> (user_ids_R, movie_ids_R)."""
    path = Path(path)
    arr = _read_numeric(path, "::", ML1M_RATINGS_FORMAT, int_cols=(0, 1, 2, 3))
    users, items = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    return drop_duplicates(users, items, str(path))


def read_yelp(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The eALS ``yelp.rating`` (tab separated: user, item, rating, time) -> (users_R, items_R)."""
    path = Path(path)
    arr = _read_numeric(path, "\t", YELP_FORMAT, int_cols=(0, 1, 3))
    users, items = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    return drop_duplicates(users, items, str(path))


def read_amazon_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The 2018 Amazon ratings-only CSV (``item,user,rating,time``, no header, LF or CRLF).

    The string ids are coded as integers in order of first appearance in the file (which the
    re-indexing of docs/fidelity.md#reindexing preserves), so the result is ``(user_codes_R, item_codes_R)``.
    """
    path = Path(path)
    text = _read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    user_code: dict[str, int] = {}
    item_code: dict[str, int] = {}
    users = np.empty(len(lines), dtype=np.int64)
    items = np.empty(len(lines), dtype=np.int64)
    for r, line in enumerate(lines):
        parts = line.split(",")
        bad = None
        if len(parts) != 4:
            bad = f"{len(parts)} fields, not 4"
        elif not parts[0] or not parts[1]:
            bad = "empty id"
        else:
            try:
                float(parts[2])
                int(parts[3])
            except ValueError as e:
                bad = str(e)
        if bad is not None:
            raise _malformed(path, r + 1, line, AMAZON_FORMAT, bad)
        items[r] = item_code.setdefault(parts[0], len(item_code))
        users[r] = user_code.setdefault(parts[1], len(user_code))
    return drop_duplicates(users, items, str(path))


def read_split_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One file of the TALL authors' committed split (``userId,itemId`` header, 0-based ids)."""
    path = Path(path)
    text = _read_text(path)
    first, _, body = text.partition("\n")
    if first.strip() != "userId,itemId":
        raise _malformed(path, 1, first, SPLIT_CSV_FORMAT, "header is not 'userId,itemId'")
    n_lines = _count_lines(body)
    arr = None
    if "\t" not in body and " " not in body:
        try:
            cand = np.array(body.replace(",", " ").split(), dtype=np.int64)
            if cand.size == 2 * n_lines and body.count(",") == n_lines and (cand >= 0).all():
                arr = cand.reshape(-1, 2)
        except ValueError:
            arr = None
    if arr is None:
        rows = _parse_rows(path, text, ",", [_nonneg_int, _nonneg_int], SPLIT_CSV_FORMAT, True)
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    return drop_duplicates(arr[:, 0], arr[:, 1], str(path))


def read_ml1m_users(path: str | Path) -> dict[str, np.ndarray]:
    """MovieLens-1M ``users.dat`` -> columns user_id, gender, age, occupation, zip (file order)."""
    path = Path(path)
    rows = _parse_rows(
        path, _read_text(path, "latin-1"), "::",
        [_nonneg_int, _gender, _nonneg_int, _nonneg_int, str], ML1M_USERS_FORMAT,
    )
    cols = list(zip(*rows)) if rows else [()] * 5
    return {
        "user_id": np.asarray(cols[0], dtype=np.int64),
        "gender": np.asarray(cols[1], dtype="<U1"),
        "age": np.asarray(cols[2], dtype=np.int64),
        "occupation": np.asarray(cols[3], dtype=np.int64),
        "zip": np.asarray(cols[4], dtype=str),
    }


def _gender(s: str) -> str:
    if s not in ("M", "F"):
        raise ValueError(f"gender {s!r} is not M or F")
    return s


def read_ml1m_movies(path: str | Path) -> dict[str, np.ndarray]:
    """MovieLens-1M ``movies.dat`` (Latin-1) -> columns movie_id, title, genres ('|' separated)."""
    path = Path(path)
    rows = _parse_rows(
        path, _read_text(path, "latin-1"), "::", [_nonneg_int, str, str], ML1M_MOVIES_FORMAT
    )
    cols = list(zip(*rows)) if rows else [()] * 3
    return {
        "movie_id": np.asarray(cols[0], dtype=np.int64),
        "title": np.asarray(cols[1], dtype=str),
        "genres": np.asarray(cols[2], dtype=str),
    }

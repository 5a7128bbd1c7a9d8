"""Your own interaction logs for the two-tower models (docs/two_tower.md#your-own-logs): reading and
checking them, chunk by chunk.

A log is a ``.csv`` (plain or ``.gz``) or ``.parquet`` file, or a folder of such files read as one log
in name order. Columns: ``user`` (an integer id), ``title`` and ``territory`` (any non-empty text),
``day`` (an integer, or an ISO date ``YYYY-MM-DD``; one kind per log) and optionally ``label`` (0 or
1). Without ``label`` every row is a positive. A bad row is a ``ValueError`` whose message starts
``FILE:LINE:`` (``LINE`` is the row number in a Parquet file, the header being line 1 of a CSV file).

The reader never holds the log: :meth:`LogReader.chunks` yields NumPy columns of at most ``chunk`` rows;
titles and territories are coded in order of first appearance (the vocabularies, a few hundred names,
stay in the reader).
"""
from __future__ import annotations

import csv
import datetime as dt
import re
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from tall_jax.datasets.readers import _bad_text_line, open_text

REQUIRED = ("user", "title", "territory", "day")
OPTIONAL = ("label",)
SUFFIXES = (".csv", ".csv.gz", ".parquet")
CHUNK = 1 << 16  # rows per parsed chunk: a CSV chunk is held as Python objects before it becomes arrays
_INT = re.compile(r"[+-]?\d+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def log_files(path: str | Path) -> list[Path]:
    """The files of a log: ``path`` itself, or the ``.csv`` / ``.csv.gz`` / ``.parquet`` files directly
    in the folder ``path``, in name order."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _kind(p))
        if not files:
            raise ValueError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
        return files
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if not _kind(path):
        raise ValueError(f"{path}: unknown file type; a log is a {', '.join(SUFFIXES)} file or a folder of them")
    return [path]


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return "csv"
    return None


def parse_day(text: str) -> tuple[int, str]:
    """``(value, kind)`` of a day field: an integer (kind ``"int"``) or an ISO date (kind ``"date"``,
    value: the proleptic Gregorian ordinal); ValueError otherwise."""
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text), "int"
    if _DATE.fullmatch(text):
        return dt.date.fromisoformat(text).toordinal(), "date"
    raise ValueError(f"day {text!r} is neither an integer nor a date YYYY-MM-DD")


def day_name(value: int, kind: str) -> str:
    """A day value as written in the log (an integer, or the ISO date of an ordinal)."""
    return dt.date.fromordinal(int(value)).isoformat() if kind == "date" else str(int(value))


class LogReader:
    """Reads the files of one log into chunks of coded columns (module docstring).

    After reading, ``titles`` / ``territories`` are the names by code, ``day_kind`` is ``"int"`` or
    ``"date"`` and ``has_label`` whether the log has a ``label`` column (every file alike)."""

    def __init__(self, chunk: int = CHUNK):
        self.chunk = chunk
        self.titles: dict[str, int] = {}
        self.territories: dict[str, int] = {}
        self.day_kind: str | None = None
        self.has_label: bool | None = None

    def chunks(self, path: Path) -> Iterator[dict[str, np.ndarray]]:
        """Chunks of ``path``: ``user`` int64, ``title`` / ``territory`` int32 codes, ``day`` int64,
        ``label`` float32 (ones without a label column) and ``line`` int64 (for later messages)."""
        return self._csv(path) if _kind(path) == "csv" else self._parquet(path)

    def _columns(self, path: Path, names: list[str], where: str) -> dict[str, int]:
        norm = [n.strip().lower() for n in names]
        bad = [n for n in norm if n not in REQUIRED + OPTIONAL]
        if bad:
            raise ValueError(f"{where}: unknown column {bad[0]!r}; a log has the columns "
                             f"{', '.join(REQUIRED)} and optionally label")
        missing = [n for n in REQUIRED if n not in norm]
        if missing:
            raise ValueError(f"{where}: missing column {missing[0]!r}; a log has the columns "
                             f"{', '.join(REQUIRED)} and optionally label")
        dup = [n for n in norm if norm.count(n) > 1]
        if dup:
            raise ValueError(f"{where}: column {dup[0]!r} appears twice")
        has_label = "label" in norm
        if self.has_label is not None and has_label != self.has_label:
            raise ValueError(f"{where}: {'has' if has_label else 'has no'} label column, unlike the log's "
                             "earlier files (every file of a log has one, or none does)")
        self.has_label = has_label
        return {n: norm.index(n) for n in norm}

    def _day_kind(self, kind: str, where: str, text: str) -> None:
        if self.day_kind is None:
            self.day_kind = kind
        elif kind != self.day_kind:
            raise ValueError(f"{where}: day {text!r} is {'a date' if kind == 'date' else 'an integer'}, "
                             f"but earlier days are {'dates' if self.day_kind == 'date' else 'integers'}")

    def _csv(self, path: Path) -> Iterator[dict[str, np.ndarray]]:
        f = open_text(path)
        with f:
            reader = csv.reader(f, strict=True)
            line = 1
            try:
                header = next(reader, None)
                if header is None:
                    raise ValueError(f"{path}:1: empty file; expected a header line "
                                     f"{','.join(REQUIRED)}[,label] and one row per line")
                col = self._columns(path, header, f"{path}:1")
                n = len(header)
                buf: dict[str, list] = {k: [] for k in ("user", "title", "territory", "day", "label", "line")}
                days: dict[str, int] = {}
                rows = 0
                line = reader.line_num + 1
                for fields in reader:
                    where = f"{path}:{line}"
                    if not fields or not any(x.strip() for x in fields):
                        line = reader.line_num + 1
                        continue
                    if len(fields) != n:
                        raise ValueError(f"{where}: {len(fields)} fields, not {n} ({','.join(header)})")
                    self._row(fields, col, where, buf, days)
                    buf["line"].append(line)
                    rows += 1
                    if len(buf["line"]) >= self.chunk:
                        yield _arrays(buf)
                    line = reader.line_num + 1
                if buf["line"]:
                    yield _arrays(buf)
                if rows == 0:
                    raise ValueError(f"{path}:2: no rows after the header")
            except csv.Error as e:
                raise ValueError(f"{path}:{line}: cannot parse ({e})") from None
            except UnicodeDecodeError as e:
                bad = _bad_text_line(path, "utf-8")
                at = f"{bad[0]}: not UTF-8 text (byte {bad[2]!r})" if bad else f"{line}: not UTF-8 text"
                raise ValueError(f"{path}:{at} ({e.reason}); save the file as UTF-8") from None
            except (OSError, EOFError, zlib.error) as e:
                raise ValueError(f"{path}:{line}: cannot read ({e})") from None

    def _row(self, fields: list[str], col: dict[str, int], where: str, buf: dict[str, list],
             days: dict[str, int]) -> None:
        u = fields[col["user"]].strip()
        if not _INT.fullmatch(u):
            raise ValueError(f"{where}: user {u!r} is not an integer")
        title, terr = fields[col["title"]].strip(), fields[col["territory"]].strip()
        if not title or not terr:
            raise ValueError(f"{where}: empty {'title' if not title else 'territory'}")
        d = fields[col["day"]]
        if d not in days:
            try:
                value, kind = parse_day(d)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            self._day_kind(kind, where, d)
            days[d] = value
        if "label" in col:
            y = fields[col["label"]].strip()
            if y not in ("0", "1"):
                raise ValueError(f"{where}: label {y!r} is not 0 or 1")
            buf["label"].append(y == "1")
        else:
            buf["label"].append(True)
        buf["user"].append(int(u))
        buf["title"].append(self.titles.setdefault(title, len(self.titles)))
        buf["territory"].append(self.territories.setdefault(terr, len(self.territories)))
        buf["day"].append(days[d])

    def _parquet(self, path: Path) -> Iterator[dict[str, np.ndarray]]:
        try:
            # why: pyarrow is the optional extra "parquet"; only a Parquet log needs it
            import pyarrow as pa
            import pyarrow.parquet as pq  # why: as above
        except ImportError:
            raise ValueError(f"{path}:1: reading Parquet needs pyarrow (pip install 'tall_jax[parquet]')") from None

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}:1: not a readable Parquet file ({e})") from None
        col = self._columns(path, pf.schema_arrow.names, f"{path}:1")
        if pf.metadata.num_rows == 0:
            raise ValueError(f"{path}:1: no rows")
        start = 0
        for batch in pf.iter_batches(batch_size=self.chunk, columns=list(col)):
            n = batch.num_rows
            line = np.arange(start + 1, start + n + 1, dtype=np.int64)
            out = {"line": line}
            for name in col:
                arr = batch.column(name)
                if arr.null_count:
                    bad = int(np.nonzero(np.asarray(arr.is_null()))[0][0])
                    raise ValueError(f"{path}:{line[bad]}: empty {name}")
                out[name] = self._parquet_column(path, name, arr, line)
            if "label" not in col:
                out["label"] = np.ones(n, np.float32)
            start += n
            yield out

    def _parquet_column(self, path: Path, name: str, arr, line: np.ndarray) -> np.ndarray:
        # why: pyarrow is the optional extra "parquet"; only a Parquet log needs it
        import pyarrow as pa

        t = arr.type
        if name == "user":
            if not pa.types.is_integer(t):
                raise ValueError(f"{path}:{line[0]}: user is {t}, not an integer column")
            return arr.to_numpy().astype(np.int64)
        if name in ("title", "territory"):
            vocab = self.titles if name == "title" else self.territories
            values = np.asarray(arr.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
            names, first, inv = np.unique(values, return_index=True, return_inverse=True)
            codes = np.empty(len(names), np.int32)
            for k in np.argsort(first):  # codes in order of first appearance, as in a CSV file
                s = names[k].strip()
                if not s:
                    raise ValueError(f"{path}:{line[np.nonzero(inv == k)[0][0]]}: empty {name}")
                codes[k] = vocab.setdefault(s, len(vocab))
            return codes[inv]
        if name == "label":
            y = arr.to_numpy(zero_copy_only=False).astype(np.float64)
            bad = np.nonzero((y != 0) & (y != 1))[0]
            if len(bad):
                raise ValueError(f"{path}:{line[bad[0]]}: label {y[bad[0]]:g} is not 0 or 1")
            return y.astype(np.float32)
        if pa.types.is_integer(t):
            self._day_kind("int", f"{path}:{line[0]}", str(arr[0]))
            return arr.to_numpy().astype(np.int64)
        if pa.types.is_date(t) or pa.types.is_timestamp(t):
            days = arr.cast(pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]").astype(np.int64)
            self._day_kind("date", f"{path}:{line[0]}", str(arr[0]))
            return days + dt.date(1970, 1, 1).toordinal()
        values = np.asarray(arr.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
        names, inv = np.unique(values, return_inverse=True)
        parsed = np.empty(len(names), np.int64)
        for k, s in enumerate(names):
            where = f"{path}:{line[np.nonzero(inv == k)[0][0]]}"
            try:
                parsed[k], kind = parse_day(s)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            self._day_kind(kind, where, s)
        return parsed[inv]


def _arrays(buf: dict[str, list]) -> dict[str, np.ndarray]:
    """The buffered rows as NumPy columns; the buffer is emptied."""
    dtypes = {"user": np.int64, "title": np.int32, "territory": np.int32, "day": np.int64,
              "label": np.float32, "line": np.int64}
    out = {k: np.asarray(v, dtype=dtypes[k]) for k, v in buf.items()}
    for v in buf.values():
        v.clear()
    return out


def read_feature_file(path: str | Path, what: str, *, integer_ids: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors[N, F], ids[N])`` of a feature file: a ``.npy`` matrix with a sidecar text file
    ``<name>.ids`` beside it (``vectors.npy`` -> ``vectors.ids``), one id per line, row order. The
    vectors come back memory-mapped (read as needed); they are checked finite chunk by chunk, each chunk
    through its own mapping, so checking a table larger than memory holds only a chunk. With
    ``integer_ids`` (users) the ids are parsed as int64 by numpy when they all are integers: a Python
    string a line would leave ~30 bytes a user of fragmented heap behind (a file with other ids comes
    back as strings, and the caller says which line is not an integer)."""
    path = Path(path).expanduser()
    ids_path = path.with_suffix(".ids")
    for p in (path, ids_path):
        if not p.is_file():
            raise ValueError(f"{p}: no such file (--{what}-features needs FILE.npy and FILE.ids beside it)")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}:1: not a .npy file ({e})") from None
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}:1: need a 2-d numeric matrix [ids, features], got {x.dtype} {x.shape}")
    ids = None
    if integer_ids:
        try:
            ids = np.loadtxt(ids_path, dtype=np.int64, ndmin=1, comments=None, encoding="utf-8")
        except ValueError:  # (UnicodeDecodeError too) the string path below names the line
            pass
    if ids is None:
        try:
            lines = [s.strip() for s in ids_path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as e:
            raise ValueError(f"{ids_path}:1: not UTF-8 text ({e.reason})") from None
        while lines and not lines[-1]:
            lines.pop()
        ids = np.asarray(lines, dtype=str)
        del lines
    if len(ids) != x.shape[0]:
        raise ValueError(f"{ids_path}:{len(ids)}: {len(ids)} ids for {x.shape[0]} rows of {path.name}")
    order = np.argsort(ids, kind="stable")  # a repeat sorts after its first line
    again = order[1:][ids[order[1:]] == ids[order[:-1]]]
    if len(again):
        dup = int(again.min())
        raise ValueError(f"{ids_path}:{dup + 1}: id {str(ids[dup])!r} appears twice")
    for lo in range(0, x.shape[0], CHUNK):
        chunk = np.load(path, mmap_mode="r", allow_pickle=False)[lo: lo + CHUNK]
        bad = np.nonzero(~np.isfinite(chunk).all(1))[0]
        if len(bad):
            raise ValueError(f"{path}:{lo + bad[0] + 1}: row of id {str(ids[lo + bad[0]])!r} is not finite")
    return x, ids


def read_groups(path: str | Path) -> dict[str, str]:
    """``territory -> group`` from a CSV file with the header ``territory,group``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: no such file (--groups needs a CSV file territory,group)")
    out: dict[str, str] = {}
    with open_text(path) as f:
        reader = csv.reader(f, strict=True)
        try:
            header = [h.strip().lower() for h in next(reader, [])]
            if header != ["territory", "group"]:
                raise ValueError(f"{path}:1: expected the header territory,group, got {','.join(header) or '(empty)'}")
            for fields in reader:
                where = f"{path}:{reader.line_num}"
                if not any(x.strip() for x in fields):
                    continue
                if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                    raise ValueError(f"{where}: expected territory,group")
                t = fields[0].strip()
                if t in out:
                    raise ValueError(f"{where}: territory {t!r} appears twice")
                out[t] = fields[1].strip()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:1: not UTF-8 text ({e.reason})") from None
    if not out:
        raise ValueError(f"{path}:2: no territory,group rows")
    return out


__all__ = ["REQUIRED", "OPTIONAL", "LogReader", "log_files", "parse_day", "day_name", "read_feature_file",
           "read_groups"]

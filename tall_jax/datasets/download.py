"""Download a file with checksum verification, written atomically (urllib only).

The transfer streams into ``dest.with_suffix(dest.suffix + ".part")``; only a complete, verified
file is renamed onto ``dest``. A truncated transfer or a checksum mismatch deletes the partial file
and raises :class:`DownloadError` saying so.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from tall_jax.files import atomic_write

log = logging.getLogger("tall_jax.datasets")

_CHUNK = 1 << 20
ENV_OFFLINE = "TALL_JAX_OFFLINE"  # 1/true/yes/on: never download
ENV_TIMEOUT = "TALL_JAX_DOWNLOAD_TIMEOUT"  # seconds per URL
DEFAULT_TIMEOUT = 60.0
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
PROVIDE_HINT = (
    "Provide the file yourself: put it in a folder laid out like <dir>/{rel} and pass "
    "data_dir=<dir> (CLI: --data-dir <dir>) or set TALL_JAX_DATA=<dir>."
)


class DownloadError(RuntimeError):
    """A download failed (offline, HTTP error, truncated transfer or checksum mismatch)."""


def offline_from_env() -> bool:
    """Whether ``$TALL_JAX_OFFLINE`` says never to download (1/true/yes/on; unset, 0/false/no/off)."""
    value = os.environ.get(ENV_OFFLINE, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{ENV_OFFLINE}={os.environ[ENV_OFFLINE]!r}: use 1 (never download) or 0")


def check_timeout(seconds: float, what: str = "download timeout") -> float:
    """``seconds`` as a float; ValueError unless it is a finite number > 0."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds > 0, got {seconds!r}") from None
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{what} must be a number of seconds > 0, got {seconds!r}")
    return value


def timeout_from_env() -> float:
    """``$TALL_JAX_DOWNLOAD_TIMEOUT`` seconds per URL, else 60."""
    value = os.environ.get(ENV_TIMEOUT, "").strip()
    return check_timeout(value, ENV_TIMEOUT) if value else DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Source:
    """Where a raw file comes from and how to verify it."""

    rel: str  # path under a data root, e.g. "yelp/yelp.rating"
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None
    git_blob_sha1: str | None = None
    expected_rows: int | None = None
    note: str = ""
    extract: dict[str, str] = field(default_factory=dict)  # zip member -> rel path


ML1M_ZIP = Source(
    rel="ml-1m/ml-1m.zip",
    urls=("https://files.grouplens.org/datasets/movielens/ml-1m.zip",),
    md5="c4d9eecfca2ab87c1945afe126590906",
    note="MovieLens-1M (GroupLens; research use, no redistribution, cite Harper & Konstan 2015)",
    extract={
        "ml-1m/ratings.dat": "ml-1m/raw/ratings.dat",
        "ml-1m/users.dat": "ml-1m/raw/users.dat",
        "ml-1m/movies.dat": "ml-1m/raw/movies.dat",
    },
)
YELP = Source(
    rel="yelp/yelp.rating",
    urls=(
        "https://raw.githubusercontent.com/hexiangnan/sigir16-eals/master/data/yelp.rating",
        "https://raw.githubusercontent.com/jin530/LOCA/master/data/recsys_data/yelp/yelp.rating",
    ),
    git_blob_sha1="60b4b3fe23bac9fdbf0ca5252a193033f93cf7d6",
    note="Yelp 2015 as distributed with eALS (hexiangnan/sigir16-eals)",
)
CDS = Source(
    rel="cds/CDs_and_Vinyl.csv",
    urls=(
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/CDs_and_Vinyl.csv",
        "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/CDs_and_Vinyl.csv",
        "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/categoryFilesSmall/CDs_and_Vinyl.csv",
    ),
    expected_rows=4_543_369,
    note="Amazon 2018 (Ni, Li & McAuley) CDs & Vinyl ratings-only CSV",
)
_TALL_COMMIT = "d038e0e77c4e62c81906706e7acf997c7dc354a3"
_TALL_BASE = (
    "https://raw.githubusercontent.com/JP-25/end-To-end-Adaptive-Local-Leanring-TALL-/"
    f"{_TALL_COMMIT}/data/recsys_data/ml-1m/"
)
ML1M_AUTHORS = {
    part: Source(
        rel=f"ml-1m/tall_split/{part}_df.csv",
        urls=(_TALL_BASE + f"{part}_df.csv",),
        git_blob_sha1=blob,
        note="the TALL authors' committed ML-1M split (deleted upstream in 9d8db99a)",
    )
    for part, blob in (
        ("train", "416c2bad409d66f2aae1bc825a255edded9d7493"),
        ("vali", "a52d540f406073b9171c2f2ed99e7122df7583d1"),
        ("test", "ca48dfebf2e4a6e1a7a4eed939a4ed2fd84297d1"),
    )
}


def git_blob_sha1(path: Path) -> str:
    """``git hash-object``: sha1 of ``b"blob <len>\\0" + content``."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _stream(url: str, part: Path, timeout: float) -> tuple[dict[str, str], int]:
    """Copy ``url`` into ``part``; returns (md5/sha256 hex digests, newline count)."""
    hashes = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    n_newlines, got = 0, 0
    req = urllib.request.Request(url, headers={"User-Agent": "tall_jax"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as f:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, desc=part.name, disable=None) as bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except http.client.IncompleteRead as e:
                    got += len(e.partial)
                    raise DownloadError(
                        f"truncated transfer from {url}: connection closed after {got} of "
                        f"{total} bytes"
                    ) from None
                if not chunk:
                    break
                f.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
                n_newlines += chunk.count(b"\n")
                got += len(chunk)
                bar.update(len(chunk))
        if total is not None and got != total:
            raise DownloadError(
                f"truncated transfer from {url}: got {got} bytes, Content-Length said {total}"
            )
    if got and not _ends_with_newline(part):
        n_newlines += 1
    return {k: h.hexdigest() for k, h in hashes.items()}, n_newlines


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _verify(part: Path, digests: dict[str, str], rows: int, md5, sha256, blob, expected_rows) -> None:
    checks = [("md5", md5, lambda: digests["md5"]), ("sha256", sha256, lambda: digests["sha256"]),
              ("git blob sha1", blob, lambda: git_blob_sha1(part)),
              ("row count", expected_rows, lambda: rows)]
    for what, want, got_fn in checks:
        if want is None:
            continue
        got = got_fn()
        if str(got).lower() != str(want).lower():
            raise DownloadError(
                f"{what} mismatch: expected {want}, got {got}; deleted the partial file {part}"
            )


def fetch(
    url_or_mirrors: str | list[str] | tuple[str, ...],
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    git_blob_sha1: str | None = None,
    expected_rows: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    rel: str | None = None,
) -> Path:
    """Download the first mirror that yields a verified file to ``dest``; return ``dest``.

    Each mirror streams into ``dest.part``; a truncated transfer or a failed check deletes it. If
    every mirror fails, the error lists each URL with its reason and how to provide the file.
    """
    urls = [url_or_mirrors] if isinstance(url_or_mirrors, str) else list(url_or_mirrors)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    errors: list[str] = []
    offline = True
    timed_out = False
    for url in urls:
        log.info("downloading %s -> %s", url, dest)
        try:
            digests, rows = _stream(url, part, timeout)
            _verify(part, digests, rows, md5, sha256, git_blob_sha1, expected_rows)
        except DownloadError as e:
            part.unlink(missing_ok=True)
            offline = False
            errors.append(f"{url}: {e}")
            continue
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException, OSError) as e:
            part.unlink(missing_ok=True)
            if isinstance(e, urllib.error.HTTPError):
                offline = False
            reason = getattr(e, "reason", None) or e
            timed_out |= isinstance(e, (socket.timeout, TimeoutError)) or isinstance(reason, (
                socket.timeout, TimeoutError)) or "timed out" in str(reason)
            errors.append(f"{url}: {type(e).__name__}: {reason}")
            continue
        os.replace(part, dest)
        return dest
    head = "offline or unreachable" if offline else "download failed"
    hint = PROVIDE_HINT.format(rel=rel or dest.name)
    if timed_out:
        hint = (f"Each URL had {timeout:g} s; allow more with download_timeout=SECONDS (CLI: "
                f"--download-timeout SECONDS, or {ENV_TIMEOUT}=SECONDS). " + hint)
    raise DownloadError(f"{head}: could not fetch {dest.name}; tried " + "; ".join(errors) + ". " + hint)


def fetch_source(src: Source, root: Path, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download ``src`` under ``root`` (and extract its zip members); return the main file."""
    dest = root / src.rel
    if not dest.is_file():
        log.info("fetching %s", src.note or src.rel)
        fetch(list(src.urls), dest, md5=src.md5, sha256=src.sha256,
              git_blob_sha1=src.git_blob_sha1, expected_rows=src.expected_rows,
              timeout=timeout, rel=src.rel)
    for member, rel in src.extract.items():
        out = root / rel
        if out.is_file():
            continue
        try:
            with zipfile.ZipFile(dest) as z, z.open(member) as f:
                atomic_write(out, lambda g: g.write(f.read()))
        except (zipfile.BadZipFile, KeyError) as e:
            raise DownloadError(f"{dest}: cannot extract {member} ({e}); delete it and retry") from None
    return dest

"""fetch() against a local HTTP server: good, bad checksum, truncated, mirrors, offline."""
from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from tall_jax.datasets import download as dl

BODY = b"0\t0\t4.0\t1329148800\n0\t1\t4.0\t1335888000\n1\t1\t5.0\t1\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server API)
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY) + 1000))
            self.end_headers()
            self.wfile.write(BODY)
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.files = {"/good": BODY}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.files
    httpd.shutdown()
    httpd.server_close()


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_good_checksums(server, tmp_path):
    base, _ = server
    dest = tmp_path / "yelp" / "yelp.rating"
    out = dl.fetch([base + "/good"], dest, md5=hashlib.md5(BODY).hexdigest(),
                   sha256=hashlib.sha256(BODY).hexdigest(), git_blob_sha1=_blob(BODY),
                   expected_rows=3, timeout=5)
    assert out == dest and dest.read_bytes() == BODY
    assert not dest.with_suffix(".rating.part").exists()


def test_bad_checksum_deletes_partial(server, tmp_path):
    base, _ = server
    dest = tmp_path / "f.rating"
    with pytest.raises(dl.DownloadError) as e:
        dl.fetch([base + "/good"], dest, md5="0" * 32, timeout=5)
    msg = str(e.value)
    assert "0" * 32 in msg and hashlib.md5(BODY).hexdigest() in msg and "deleted" in msg
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_bad_git_blob_and_row_count(server, tmp_path):
    base, _ = server
    with pytest.raises(dl.DownloadError, match=_blob(BODY)):
        dl.fetch(base + "/good", tmp_path / "a", git_blob_sha1="1" * 40, timeout=5)
    with pytest.raises(dl.DownloadError, match="row count mismatch: expected 4, got 3"):
        dl.fetch(base + "/good", tmp_path / "b", expected_rows=4, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_truncated_transfer_deletes_partial(server, tmp_path):
    base, _ = server
    dest = tmp_path / "t.csv"
    with pytest.raises(dl.DownloadError, match="truncated"):
        dl.fetch([base + "/truncated"], dest, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_falls_back_to_next_mirror(server, tmp_path):
    base, _ = server
    dest = tmp_path / "m.csv"
    dl.fetch([base + "/missing", base + "/truncated", base + "/good"], dest, expected_rows=3,
             timeout=5)
    assert dest.read_bytes() == BODY


def test_offline_message_names_urls_and_alternatives(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/yelp.rating"
    with pytest.raises(dl.DownloadError) as e:
        dl.fetch([url], tmp_path / "yelp.rating", timeout=5, rel="yelp/yelp.rating")
    msg = str(e.value)
    assert url in msg and "TALL_JAX_DATA" in msg and "data_dir" in msg and "yelp/yelp.rating" in msg
    assert list(tmp_path.iterdir()) == []


def test_fetch_source_extracts_zip(server, tmp_path):
    base, files = server
    zpath = tmp_path / "src.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("ml-1m/ratings.dat", "1::1::5::1\n")
        z.writestr("ml-1m/users.dat", "1::F::1::10::48067\n")
    data = zpath.read_bytes()
    files["/ml-1m.zip"] = data
    src = dl.Source(rel="ml-1m/ml-1m.zip", urls=(base + "/ml-1m.zip",),
                    md5=hashlib.md5(data).hexdigest(),
                    extract={"ml-1m/ratings.dat": "ml-1m/raw/ratings.dat",
                             "ml-1m/users.dat": "ml-1m/raw/users.dat"})
    root = tmp_path / "root"
    dl.fetch_source(src, root, timeout=5)
    assert (root / "ml-1m" / "raw" / "ratings.dat").read_text() == "1::1::5::1\n"
    assert (root / "ml-1m" / "raw" / "users.dat").is_file()


def test_load_dataset_downloads_into_user_cache(server, tmp_path, monkeypatch):
    """load_dataset falls back to the download source and stores the file in the user cache."""
    from tall_jax.datasets import load

    base, files = server
    body = "".join(f"{u}\t{i}\t4.0\t1\n" for u in range(12) for i in range(25)).encode()
    files["/yelp.rating"] = body
    monkeypatch.setenv("TALL_JAX_CACHE", str(tmp_path / "uc"))
    monkeypatch.delenv("TALL_JAX_DATA", raising=False)
    src = dl.Source(rel="yelp/yelp.rating", urls=(base + "/yelp.rating",), git_blob_sha1=_blob(body))
    monkeypatch.setitem(load._RAW, "yelp", (["yelp/yelp.rating"], load.read_yelp, src))
    ds = load.load_dataset("yelp", cache_dir=tmp_path / "c")
    assert (tmp_path / "uc" / "yelp" / "yelp.rating").read_bytes() == body
    assert ds.n_users == 12 and ds.n_items == 25


def test_offline_and_timeout_settings_from_the_environment(monkeypatch):
    for value, offline in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("TALL_JAX_OFFLINE", value)
        assert dl.offline_from_env() is offline
    monkeypatch.setenv("TALL_JAX_OFFLINE", "perhaps")
    with pytest.raises(ValueError, match="TALL_JAX_OFFLINE"):
        dl.offline_from_env()
    monkeypatch.delenv("TALL_JAX_DOWNLOAD_TIMEOUT", raising=False)
    assert dl.timeout_from_env() == dl.DEFAULT_TIMEOUT == 60.0
    monkeypatch.setenv("TALL_JAX_DOWNLOAD_TIMEOUT", "2.5")
    assert dl.timeout_from_env() == 2.5
    for bad in ("0", "-1", "inf", "soon"):
        monkeypatch.setenv("TALL_JAX_DOWNLOAD_TIMEOUT", bad)
        with pytest.raises(ValueError, match="TALL_JAX_DOWNLOAD_TIMEOUT"):
            dl.timeout_from_env()

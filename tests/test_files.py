"""tall_jax.files: the atomic writers leave a complete file or the old one, never a temporary."""
import numpy as np
import pytest

from tall_jax.files import atomic_savez, atomic_write, atomic_write_bytes, atomic_write_text


def test_writers_round_trip_and_leave_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a" / "t.json", "héllo")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_savez(tmp_path / "c.npz", x=np.arange(3))
    assert (tmp_path / "a" / "t.json").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with np.load(tmp_path / "c.npz") as z:
        np.testing.assert_array_equal(z["x"], np.arange(3))
    assert not list(tmp_path.rglob("*.tmp"))


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def boom(f):
        f.write("partial")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom, mode="w")
    assert path.read_text() == "old"
    assert not list(tmp_path.glob("*.tmp"))

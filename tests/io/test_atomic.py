"""Atomic writers leave nothing partial behind."""

from __future__ import annotations

import pytest

from mslam_ns.io.atomic import atomic_output_dir, atomic_write


def test_atomic_write_success_and_binary(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    with atomic_write(p) as f:
        f.write("hello")
        assert not p.exists()  # nothing visible before the block ends
    assert p.read_text() == "hello"
    with atomic_write(p, "wb") as f:
        f.write(b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.txt"]


def test_atomic_write_failure_keeps_old_and_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("new partial")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_rejects_append(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "x", "a"):
            pass


def test_atomic_output_dir_success_merges(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "keep.txt").write_text("k")
    (final / "replace.txt").write_text("old")
    with atomic_output_dir(final) as d:
        (d / "replace.txt").write_text("new")
        (d / "rgb").mkdir()
        (d / "rgb" / "0.png").write_bytes(b"x")
        assert not (final / "rgb").exists()
    assert (final / "keep.txt").read_text() == "k"
    assert (final / "replace.txt").read_text() == "new"
    assert (final / "rgb" / "0.png").read_bytes() == b"x"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]


def test_atomic_output_dir_failure_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(KeyError):
        with atomic_output_dir(final) as d:
            (d / "a.txt").write_text("partial")
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []

"""The one atomic-write helper: no partial files, no stray temps, normal permissions."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from fastvit.fileio import (
    WriteError,
    atomic_path,
    check_writable_target,
    clean_stale_temps,
    write_bytes_atomic,
)


def test_write_replaces_atomically_with_umask_permissions(tmp_path):
    target = tmp_path / "a.bin"
    old = os.umask(0o022)
    try:
        write_bytes_atomic(target, b"one")
        write_bytes_atomic(target, b"two")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_failure_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_no_overwrite_refuses_before_writing(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(WriteError, match="already exists; pass --overwrite"):
        write_bytes_atomic(target, b"new", overwrite=False)
    assert target.read_bytes() == b"old"


def test_full_disk_is_one_line(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    msg = r"no space left on device while writing .*a\.bin"
    with pytest.raises(WriteError, match=msg), atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_check_writable_target(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(WriteError, match="is a file, not a folder"):
        check_writable_target(tmp_path / "f" / "out.onnx")
    with pytest.raises(WriteError, match="existing folder"):
        check_writable_target(tmp_path)
    with pytest.raises(WriteError, match="already exists"):
        check_writable_target(tmp_path / "f")
    assert check_writable_target(tmp_path / "new.onnx") == tmp_path / "new.onnx"


def test_folder_targets_and_stale_temp_cleanup(tmp_path):
    target = tmp_path / "m.mlpackage"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["y"]
    (tmp_path / ".last.pt.abcd1234.tmp").write_bytes(b"junk")
    removed = clean_stale_temps(tmp_path)
    assert [p.name for p in removed] == [".last.pt.abcd1234.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]

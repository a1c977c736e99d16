"""Atomic writes: the previous file survives a failed write; new files get umask permissions."""
import os

import pytest

from draw.atomic import atomic_path, atomic_write_bytes


def test_write_replaces_the_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, error):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"good")
    with pytest.raises(type(error)):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644


def test_an_unwritable_place_is_an_error_naming_the_file_asked_for(tmp_path):
    target = tmp_path / "missing" / "x.html"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write_bytes(target, b"new")
    assert info.value.filename == str(target)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)

"""atomic_write: the target holds the old bytes or the new ones, never a mix; no temp file stays."""

import pytest

from nanogpt.atomic import atomic_write, temp_files


def test_a_completed_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new")
        assert path.read_bytes() == b"old" and len(temp_files(path)) == 1  # readers see the old file meanwhile
    assert path.read_bytes() == b"new"
    assert temp_files(path) == []


def test_a_write_that_raises_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]

"""Atomic writes: a file is whole or absent; a failed write leaves the previous file and no temporary."""

import pytest

from lit_vattn.io import atomic_path, atomic_replace, write_json, write_text


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "table.md"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_the_temporary_keeps_the_suffix_for_writers_that_read_it(tmp_path):
    with atomic_path(tmp_path / "sub" / "curve.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path / "sub" and tmp.name.startswith(".")
        tmp.write_bytes(b"png")
    assert (tmp_path / "sub" / "curve.png").read_bytes() == b"png"


def test_a_directory_is_swapped_whole(tmp_path):
    final, new = tmp_path / "record", tmp_path / "record.tmp"
    write_json(final / "done.json", {"v": 1})
    write_json(new / "done.json", {"v": 2})
    atomic_replace(new, final)
    assert (final / "done.json").read_text() == '{\n  "v": 2\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record"]

"""The one atomic-write helper: a failed writer leaves the previous file intact and no temporary behind."""

import pytest

from vis_core.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text


def test_success_replaces_the_file_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(path, "first")
    assert atomic_write_bytes(path, b"second") == path and path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_a_failing_writer_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_text(path, '{"ok": 1}')
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"half')  # the writer dies half-way
        raise RuntimeError("killed")
    assert path.read_text() == '{"ok": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_nothing_appears_when_the_first_write_fails(tmp_path):
    with pytest.raises(ValueError), atomic_path(tmp_path / "new.png"):
        raise ValueError("bad input")
    assert list(tmp_path.iterdir()) == []

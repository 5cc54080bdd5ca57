"""A state record is rewritten by swapping it with its new version (minibox/records.py, write_atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minibox import records
from minibox._native import lib


def test_a_rewrite_swaps_in_the_new_version_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = str(tmp_path / "abc.json")
    records.write_atomically(path, {"version": 1})
    first = os.stat(path).st_ino
    records.write_atomically(path, {"version": 2}, replacing=True)
    assert records.json.loads(Path(path).read_bytes()) == {"version": 2}
    assert os.stat(path).st_ino != first  # a new file took the name: readers saw one version or the other
    assert sorted(os.listdir(tmp_path)) == ["abc.json"]


def test_the_swap_is_an_exchange_of_two_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    assert lib.RENAME_EXCHANGE == 2  # linux/fs.h
    assert records._swap(str(a), str(b))
    assert (a.read_text(), b.read_text()) == ("B", "A")
    assert not records._swap(str(a), str(tmp_path / "missing"))  # nothing to exchange with: the caller renames


def test_replacing_a_record_that_does_not_exist_yet_writes_it(tmp_path: Path) -> None:
    path = str(tmp_path / "new.json")
    records.write_atomically(path, {"id": "new"}, replacing=True)
    assert records.json.loads(Path(path).read_bytes()) == {"id": "new"}
    assert os.listdir(tmp_path) == ["new.json"]


def test_without_renameat2_a_rewrite_renames_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a C core built before renameat2 was bound (another checkout's build, say)
    monkeypatch.setattr(records, "_swap", lambda a, b: False)
    path = str(tmp_path / "abc.json")
    records.write_atomically(path, {"version": 1})
    records.write_atomically(path, {"version": 2}, replacing=True)
    assert records.json.loads(Path(path).read_bytes()) == {"version": 2}
    assert os.listdir(tmp_path) == ["abc.json"]

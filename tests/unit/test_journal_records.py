"""The journal validates itself: a torn or foreign record is dropped, never merged."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpiscore.errors import StorageError
from mpiscore.journal import JOURNAL, Journal, completed

TOKEN, BATCHES = "0123456789abcdef", 100


def written(run_dir: Path, batch_ids: list[int]) -> bytes:
    journal = Journal(run_dir, TOKEN, BATCHES, fresh=True)
    for batch_id in batch_ids:
        journal.record(batch_id)
    journal.close()
    return (run_dir / JOURNAL).read_bytes()


def test_records_round_trip(tmp_path: Path) -> None:
    written(tmp_path, [3, 1, 2, 99])
    assert completed(tmp_path, TOKEN, BATCHES) == {1, 2, 3, 99}


def test_a_bundle_is_one_write_of_records_each_verified_alone(tmp_path: Path) -> None:
    """A report's batches go in one write; the bytes are those of one record each, so a
    write torn inside the bundle keeps the records before the tear."""
    journal = Journal(tmp_path, TOKEN, BATCHES, fresh=True)
    journal.record(5, 6, 7)
    journal.close()
    bundled = (tmp_path / JOURNAL).read_bytes()
    one_by_one = tmp_path / "one-by-one"
    one_by_one.mkdir()
    assert bundled == written(one_by_one, [5, 6, 7])
    assert completed(tmp_path, TOKEN, BATCHES) == {5, 6, 7}
    (tmp_path / JOURNAL).write_bytes(bundled[:-4])  # the write stopped inside batch 7's
    assert completed(tmp_path, TOKEN, BATCHES) == {5, 6}


def test_every_tear_of_the_last_record_drops_it_and_a_resume_appends_cleanly(
        tmp_path: Path) -> None:
    """The reported fault: ``...\\n3`` torn, then ``3\\n`` appended gave ``33``. Tear the
    last record at every byte offset; the torn record never counts, and records
    appended on resume never merge with the fragment."""
    full = written(tmp_path, [1, 2, 3])
    last = full.rindex(b"\n", 0, len(full) - 1) + 1  # where batch 3's record starts
    for cut in range(last, len(full)):
        (tmp_path / JOURNAL).write_bytes(full[:cut])
        assert completed(tmp_path, TOKEN, BATCHES) == {1, 2}, cut
        journal = Journal(tmp_path, TOKEN, BATCHES, fresh=False)
        journal.record(33)
        journal.record(4)
        journal.close()
        assert completed(tmp_path, TOKEN, BATCHES) == {1, 2, 33, 4}, cut
        assert (tmp_path / JOURNAL).read_bytes().startswith(full[:last])


def test_a_record_that_does_not_verify_ends_what_is_trusted(tmp_path: Path) -> None:
    full = written(tmp_path, [1, 2, 3])
    (tmp_path / JOURNAL).write_bytes(full.replace(b"\n2 ", b"\n7 ", 1))  # a flipped digit
    assert completed(tmp_path, TOKEN, BATCHES) == {1}
    (tmp_path / JOURNAL).write_bytes(full + b"93 0000abcd\n")  # garbage with a newline
    assert completed(tmp_path, TOKEN, BATCHES) == {1, 2, 3}


def test_ids_outside_the_plan_and_foreign_journals_are_not_trusted(tmp_path: Path) -> None:
    written(tmp_path, [1, 2, 3])
    assert completed(tmp_path, TOKEN, 3) == {1, 2}  # a 3-batch plan has no batch 3
    assert completed(tmp_path, "another-plan", BATCHES) == set()
    (tmp_path / JOURNAL).write_text("1\n2\n3\n")  # the old, unchecked format
    assert completed(tmp_path, TOKEN, BATCHES) == set()


def test_a_journal_on_a_full_disk_is_a_storage_error(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    (tmp_path / JOURNAL).symlink_to("/dev/full")
    with pytest.raises(StorageError, match=r"journal.txt: .*ENOSPC.*--resume"):
        Journal(tmp_path, TOKEN, BATCHES, fresh=True)

"""File input (io/files.py), the item plan (plan.make_item_plan) and the append_row and
summary_only sinks (io/lines.py), on real files in tmp_path; parallel assembly by
ranks emulated with threads."""

from __future__ import annotations

import errno
import os
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpiscore.config import BatchSize, InputSpec, JobConfig
from mpiscore.errors import ConfigError, InputError, OutputError
from mpiscore.io import lines
from mpiscore.io.fields import FILE_PATHS, HEADER, LINES, Field
from mpiscore.io.files import FilesSourceKind
from mpiscore.io.lines import LinesSinkKind, NoOutputSinkKind
from mpiscore.journal import stamped
from mpiscore.plan import Batch, Plan, SourceFile, make_item_plan


def items(count: int) -> list[SourceFile]:
    return [SourceFile(f"f{i}", 1) for i in range(count)]


def spans(plan: Plan) -> list[tuple[int, int]]:
    """(first file, count) of each batch, checking ids, start and global_start."""
    for batch_id, batch in enumerate(plan.batches):
        assert (batch.batch_id, batch.start, batch.global_start) == \
            (batch_id, 0, batch.file_index)
    return [(b.file_index, b.rows) for b in plan.batches]


# ---- the item plan ---------------------------------------------------------------------


def test_item_plan_counts_files() -> None:
    plan = make_item_plan(items(7), BatchSize(rows=3), [1] * 7)
    assert spans(plan) == [(0, 3), (3, 3), (6, 1)]
    assert plan.batch_rows == 3 and plan.total_rows == 7


def test_item_plan_packs_bytes_and_a_big_file_is_alone() -> None:
    sizes = [10, 20, 50, 10, 5, 100, 0, 1]
    plan = make_item_plan(items(8), BatchSize(nbytes=30), sizes)
    # 10+20 fit exactly; 50 > 30 alone; 10+5; 100 alone; 0+1 packed
    assert spans(plan) == [(0, 2), (2, 1), (3, 2), (5, 1), (6, 2)]
    assert plan.batch_rows == 2


def test_item_plan_covers_every_file_once_in_order() -> None:
    sizes = [(i * 37) % 101 for i in range(200)]
    plan = make_item_plan(items(200), BatchSize(nbytes=150), sizes)
    covered = [i for first, count in spans(plan) for i in range(first, first + count)]
    assert covered == list(range(200))
    for first, count in spans(plan):
        assert count == 1 or sum(sizes[first:first + count]) <= 150


def test_item_plan_refuses_sizes_of_other_files() -> None:
    with pytest.raises(ValueError, match="one size per file"):
        make_item_plan(items(3), BatchSize(rows=1), [1, 2])


# ---- file input ------------------------------------------------------------------------


def config(tmp_path: Path, *patterns: str, **options: object) -> JobConfig:
    return JobConfig(model=None, entry_script=tmp_path / "score.py",
                     inputs=tuple(InputSpec(p) for p in patterns), output=tmp_path / "out.txt",
                     **options)  # type: ignore[arg-type]


def tree(root: Path, names: dict[str, bytes]) -> None:
    for name, data in names.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_a_directory_is_every_file_below_it_sorted_hidden_skipped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tree(data, {"z.txt": b"zz", "a/b/c.bin": b"c", "a.png": b"aaaa", ".hidden": b"h",
                ".git/config": b"g", "a/.cache/x": b"x", "a/d": b""})
    os.symlink(data / "a", data / "loop")  # a link to a directory is not followed
    kind = FilesSourceKind()
    source = kind.resolve(config(tmp_path, str(data)), [(InputSpec(str(data)), str(data))], [])
    expected = ["a.png", "a/b/c.bin", "a/d", "z.txt"]  # as a ** glob would sort them
    assert source.paths == tuple(str(data / name) for name in expected)
    assert source.sizes == (4, 1, 0, 2)
    files, fields, kept = kind.describe(source)
    assert files == [SourceFile(p, 1) for p in source.paths] and fields == {} and kept == []
    assert kind.names(source) == list(source.paths)


def test_files_and_directories_keep_the_order_given(tmp_path: Path) -> None:
    tree(tmp_path, {"b.txt": b"b", "dir/a.txt": b"a"})
    paths = [(InputSpec("x"), str(tmp_path / "b.txt")), (InputSpec("y"), str(tmp_path / "dir"))]
    source = FilesSourceKind().resolve(config(tmp_path, "x"), paths, [])
    assert source.paths == (str(tmp_path / "b.txt"), str(tmp_path / "dir" / "a.txt"))


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    tree(tmp_path, {"empty/.only-hidden": b""})
    empty = str(tmp_path / "empty")
    with pytest.raises(InputError, match="directory holds no files"):
        FilesSourceKind().resolve(config(tmp_path, empty), [(InputSpec(empty), empty)], [])


def test_tabular_options_are_refused_for_file_input(tmp_path: Path) -> None:
    tree(tmp_path, {"a.txt": b"a"})
    job = config(tmp_path, "a.txt", columns=("x",))
    with pytest.raises(ConfigError, match="--columns"):
        FilesSourceKind().resolve(job, [(InputSpec("a"), str(tmp_path / "a.txt"))], [])


def test_the_reader_gives_each_batch_its_paths(tmp_path: Path) -> None:
    tree(tmp_path, {f"in/{i:02d}.npy": b"x" * (i + 1) for i in range(7)})
    root = str(tmp_path / "in")
    kind = FilesSourceKind()
    source = kind.resolve(config(tmp_path, root), [(InputSpec(root), root)], [])
    plan = kind.plan(source, kind.describe(source)[0], BatchSize(nbytes=8))
    reader = kind.open_reader(source)
    seen = []
    for batch in plan.batches:
        arrays, columns = reader.read(batch)
        assert arrays == {} and list(columns) == [FILE_PATHS]
        seen.append([Path(p).name for p in columns[FILE_PATHS]])  # type: ignore[attr-defined]
    reader.close()
    # sizes 1..7 packed up to 8 bytes
    assert seen == [["00.npy", "01.npy", "02.npy"], ["03.npy"], ["04.npy"], ["05.npy"],
                    ["06.npy"]]


def test_bound_to_the_plan_the_paths_are_held_and_sent_once(tmp_path: Path) -> None:
    """A planned file input keeps no paths or sizes of its own: its file table is the
    plan's (the same tuple, also after a pickle round trip, as every rank and scoring
    process gets it), so the job carries each path once; the reader reads from it."""
    tree(tmp_path, {f"in/{i:04d}.txt": b"x" * (i % 5 + 1) for i in range(300)})
    root = str(tmp_path / "in")
    kind = FilesSourceKind()
    source = kind.resolve(config(tmp_path, root), [(InputSpec(root), root)], [])
    plan = kind.plan(source, stamped(kind.describe(source)[0]), BatchSize(rows=7))
    bound = source.bound(plan.files)
    assert bound.paths == () and bound.sizes == () and bound.files is plan.files
    assert bound.bound(plan.files) is bound and kind.names(bound) == list(source.paths)
    alone = len(pickle.dumps(plan.shared()))
    both = len(pickle.dumps((source, plan.shared())))
    sent = pickle.dumps((bound, plan.shared()))
    assert len(sent) < alone + 200 and both > alone + 300 * 5  # no second list of 300
    received, shared = pickle.loads(sent)
    assert received.files is shared.files
    reader = kind.open_reader(received)
    assert [reader.read(b)[1][FILE_PATHS] for b in plan.batches] == \
        [list(source.paths[b.file_index:b.file_index + b.rows]) for b in plan.batches]
    assert kind.plan(bound, plan.files, BatchSize(nbytes=8)) == \
        kind.plan(source, plan.files, BatchSize(nbytes=8))
    with pytest.raises(ValueError, match="its own files only"):
        source.bound(plan.files[1:])


# ---- append_row: writing ---------------------------------------------------------------


def lines_output(tmp_path: Path, batches: int, name: str = "scores.txt"
                 ) -> tuple[Path, Path, Plan]:
    final = tmp_path / name
    partial = final.with_name(final.name + ".partial")
    plan = make_item_plan(items(batches), BatchSize(rows=1), [1] * batches)
    LinesSinkKind().create(partial, [], [], plan, {"model": "score.py"})
    return final, partial, plan


def open_writer(final: Path, partial: Path, plan: Plan) -> lines.LinesWriter:
    writer = LinesSinkKind().open_writer(partial, final, [], [], plan, {}, {})
    assert isinstance(writer, lines.LinesWriter)
    return writer


def test_a_part_gets_its_name_only_when_synced(tmp_path: Path) -> None:
    final, partial, plan = lines_output(tmp_path, 3)
    writer = open_writer(final, partial, plan)
    writer.write(plan.batches[1], {LINES: ["a b", "c"]})
    writer.write(plan.batches[2], {LINES: []})
    writer.write(plan.batches[0], {"row_status": [1], FILE_PATHS: ["f0"]})  # a fill batch
    assert lines.written_batches(partial) == set()
    assert len(os.listdir(partial / lines.STAGING)) == 3
    writer.sync()
    assert lines.written_batches(partial) == {0, 1, 2}
    assert (partial / "part-000000001.txt").read_text() == "a b\nc\n"
    assert (partial / "part-000000002.txt").read_bytes() == b""  # no lines: empty part
    assert (partial / "part-000000000.txt").read_bytes() == b""  # fill: empty part
    assert os.listdir(partial / lines.STAGING) == []


def test_resume_counts_synced_parts_and_drops_half_written_ones(tmp_path: Path) -> None:
    final, partial, plan = lines_output(tmp_path, 3)
    writer = open_writer(final, partial, plan)
    writer.write(plan.batches[0], {LINES: ["x"]})
    writer.sync()
    writer.write(plan.batches[1], {LINES: ["y"]})  # the process is killed before sync
    kind = LinesSinkKind()
    assert kind.written(partial, {0, 1, 2}) == {0}
    assert kind.written(partial, {1, 2}) == set()
    assert os.listdir(partial / lines.STAGING) == []
    assert kind.reopen(partial, [], []) == {}


def test_every_batch_must_have_the_same_header(tmp_path: Path) -> None:
    final, partial, plan = lines_output(tmp_path, 2, "scores.csv")
    open_writer(final, partial, plan).write(plan.batches[0], {LINES: ["1,2"], HEADER: "a,b"})
    open_writer(final, partial, plan).sync()  # another process's writer: nothing of its own
    first = open_writer(final, partial, plan)
    first.write(plan.batches[0], {LINES: ["1,2"], HEADER: "a,b"})
    first.sync()
    with pytest.raises(OutputError, match="batch 1 has the CSV header 'a,c'"):
        open_writer(final, partial, plan).write(plan.batches[1], {LINES: ["3"], HEADER: "a,c"})


def test_kept_columns_are_refused() -> None:
    kept = [Field("id", "<i8", ())]
    with pytest.raises(ConfigError, match="append_row"):
        LinesSinkKind().check([], kept)
    with pytest.raises(ConfigError, match="summary_only"):
        NoOutputSinkKind().check([], kept)
    LinesSinkKind().check([], [])


# ---- append_row: assembly --------------------------------------------------------------


@dataclass
class ThreadRanks:
    """A rank of a world of threads: the barrier is shared, the rank is each one's."""

    rank: int
    size: int
    shared: threading.Barrier

    def barrier(self) -> None:
        self.shared.wait(timeout=30)


def on_ranks(size: int, step: Callable[[ThreadRanks], None]) -> list[BaseException | None]:
    """Run ``step`` on ``size`` threads at once; each one's exception, or None."""
    shared = threading.Barrier(size)
    failures: list[BaseException | None] = [None] * size

    def run(rank: int) -> None:
        try:
            step(ThreadRanks(rank, size, shared))
        except BaseException as exc:
            failures[rank] = exc

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a rank hangs"
    return failures


def batch_lines(batch: Batch) -> list[str]:
    """Lines of very different counts and lengths, so that shares cut through parts."""
    count = (batch.batch_id * 7) % 5  # some batches have none
    return [f"{batch.batch_id}:{j}:" + "x" * (batch.batch_id % 13) for j in range(count)]


def write_all(final: Path, partial: Path, plan: Plan, header: str | None = None,
              skip: tuple[int, ...] = ()) -> str:
    """Write every batch but ``skip`` in reverse order (as ranks finish in any order);
    returns what the output must hold."""
    writer = open_writer(final, partial, plan)
    for batch in reversed(plan.batches):
        if batch.batch_id not in skip:
            columns: dict[str, object] = {LINES: batch_lines(batch)}
            if header is not None:
                columns[HEADER] = header
            writer.write(batch, columns)
    writer.sync()
    text = "".join(line + "\n" for b in plan.batches for line in batch_lines(b))
    return text if header is None else header + "\n" + text


def test_a_lone_rank_assembles_in_input_order(tmp_path: Path) -> None:
    final, partial, plan = lines_output(tmp_path, 12)
    expected = write_all(final, partial, plan)
    [failure] = on_ranks(1, lambda ranks: open_writer(final, partial, plan).finish(ranks, True))
    assert failure is None
    assert final.read_text() == expected
    assert not partial.exists()


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_three_ranks_assemble_header_first_in_input_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool) -> None:
    if not kernel_copy:  # a file system without copy_file_range: pread/pwrite instead
        def refuse(*args: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    final, partial, plan = lines_output(tmp_path, 40, "scores.csv")
    expected = write_all(final, partial, plan, header="id,value")
    shares = []
    real_copy = lines.Assembly._copy_range

    def spy(self: lines.Assembly, out: int, sizes: list, low: int, high: int) -> None:
        shares.append((low, high))
        real_copy(self, out, sizes, low, high)

    monkeypatch.setattr(lines.Assembly, "_copy_range", spy)
    failures = on_ranks(3, lambda ranks: open_writer(final, partial, plan).finish(ranks, True))
    assert failures == [None, None, None]
    assert final.read_text() == expected and expected.startswith("id,value\n")
    total = len(expected.encode())
    assert sorted(shares) == [(0, total // 3), (total // 3, 2 * total // 3),
                              (2 * total // 3, total)]
    assert not partial.exists()


def test_an_unfinished_job_keeps_its_parts(tmp_path: Path) -> None:
    final, partial, plan = lines_output(tmp_path, 4)
    write_all(final, partial, plan, skip=(2,))
    failures = on_ranks(2, lambda ranks: open_writer(final, partial, plan).finish(ranks, False))
    assert failures == [None, None]
    assert not final.exists() and lines.written_batches(partial) == {0, 1, 3}


def test_a_missing_part_is_an_error_and_no_output(tmp_path: Path) -> None:
    final, partial, plan = lines_output(tmp_path, 6)
    write_all(final, partial, plan, skip=(1, 4))
    failures = on_ranks(3, lambda ranks: open_writer(final, partial, plan).finish(ranks, True))
    assert isinstance(failures[0], OutputError)
    assert "batches 1, 4 are missing; rerun with --resume" in str(failures[0])
    assert failures[1:] == [None, None]  # rank 0 says why
    assert not final.exists() and lines.written_batches(partial) == {0, 2, 3, 5}


def test_a_rank_that_fails_its_copy_leaves_no_output(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    final, partial, plan = lines_output(tmp_path, 9)
    expected = write_all(final, partial, plan)
    real_share = lines.Assembly.copy_share

    def failing(self: lines.Assembly, rank: int, size: int) -> None:
        if rank == 1:
            raise OutputError("rank 1: disk on fire")
        real_share(self, rank, size)

    monkeypatch.setattr(lines.Assembly, "copy_share", failing)
    failures = on_ranks(3, lambda ranks: open_writer(final, partial, plan).finish(ranks, True))
    assert "ranks 1 of 3 did not copy their share" in str(failures[0])
    assert str(failures[1]) == "rank 1: disk on fire" and failures[2] is None
    assert not final.exists()
    monkeypatch.setattr(lines.Assembly, "copy_share", real_share)  # --resume assembles again
    assert on_ranks(3, lambda r: open_writer(final, partial, plan).finish(r, True)) == [None] * 3
    assert final.read_text() == expected


# ---- ownership, and summary_only -------------------------------------------------------


def test_only_our_partial_directory_is_ours(tmp_path: Path) -> None:
    final, partial, plan = lines_output(tmp_path, 2)
    kind = LinesSinkKind()
    assert kind.owned(partial)  # just created: the marker and an empty staging area
    write_all(final, partial, plan)
    (partial / lines.STAGING / "part-000000000.txt.123.tmp").write_text("half")
    assert kind.owned(partial)
    (partial / "notes.md").write_text("mine")
    assert not kind.owned(partial)
    (partial / "notes.md").unlink()
    (partial / lines.MARKER).unlink()
    assert not kind.owned(partial)  # names alone prove nothing
    final.write_text("old scores\n")
    assert not kind.owned(final)  # a text file cannot be proven ours


def test_summary_only_uses_the_directory_in_place(tmp_path: Path) -> None:
    out = tmp_path / "results"
    kind = NoOutputSinkKind()
    plan = make_item_plan(items(2), BatchSize(rows=1), [1, 1])
    assert kind.in_place
    kind.create(out, [], [], plan, {})
    (out / "script-wrote.txt").write_text("kept")
    kind.create(out, [], [], plan, {})  # a second run keeps what the script wrote
    assert (out / "script-wrote.txt").read_text() == "kept"
    writer = kind.open_writer(out, out, [], [], plan, {}, {})
    writer.write(plan.batches[0], {})
    writer.sync()
    writer.close()
    assert on_ranks(2, lambda ranks: writer.finish(ranks, True)) == [None, None]
    assert kind.written(out, {0, 1}) == {0, 1} and not kind.owned(out)
    assert sorted(os.listdir(out)) == ["script-wrote.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        kind.create(tmp_path / "file", [], [], plan, {})

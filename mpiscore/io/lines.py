"""Output of entry scripts that write no rows: lines of text (``--output-action
append_row``, sink kind "lines") and nothing at all (``summary_only``, kind "none").

append_row: OUTPUT is one text file, its lines in input order. Each batch's lines
become one part file ``OUTPUT.partial/part-<batch_id:09d>.txt``, written under a
temporary name in ``_staging/``, flushed by ``sync`` and only then renamed: the
name is what ``--resume`` counts as written (as for Parquet output). A batch that
failed for good gets an empty part, so that it is accounted for and adds no line.
A CSV header goes once to ``header.txt``.

Assembly, once every batch is written, runs on every rank together and sends no
data through rank 0 (:class:`Assembly`): rank 0 lists the part sizes once (a
listing per rank would be a metadata storm on a parallel file system), writes
them to ``_staging/layout.json`` and creates ``assembled.tmp`` at its full size;
then each rank copies an equal share of the bytes, header first, then parts in
batch order, to their offsets (prefix sums of the sizes), with
``os.copy_file_range`` where the file system has it, else pread/pwrite, fsyncs,
and leaves a note saying which layout it copied. Rank 0 renames the file to
OUTPUT only when every rank's note is there and names its layout, then deletes
the partial directory. A rank that failed leaves no note, so a file that is not
whole is never given the name OUTPUT. A run killed between the rename and the
deletion leaves both; the next run recognises that (``LinesSinkKind.settle``) and
deletes the partial.

A final text file carries nothing that proves mpiscore wrote it, so
``--overwrite`` never deletes one (:meth:`LinesSinkKind.owned`): the user removes
an old append_row output himself. The partial directory holds a marker
(``_mpiscore.json``) and is recognised by it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from ..errors import ConfigError, OutputError, storage_error
from ..plan import Batch, Plan
from ..report import LOG
from . import staging
from .fields import HEADER, LINES, Columns, Field, Ranks, Writer

STAGING = staging.STAGING  # temporary files, the layout and the ranks' notes
MARKER = "_mpiscore.json"  # what makes a partial directory ours
HEADER_FILE = "header.txt"
ASSEMBLED = "assembled.tmp"  # OUTPUT being assembled, renamed to OUTPUT once whole
LAYOUT = "layout.json"  # in STAGING: header and part sizes, as rank 0 listed them
PART = re.compile(r"part-(\d{9})\.txt")
TMP = re.compile(r"(part-\d{9}\.txt|header\.txt|layout\.json)\.\d+\.tmp")  # number: the pid
COPIED = re.compile(r"copied-\d+")  # in STAGING: rank N copied its share of the layout
LOG_FINISH_PARTS = 10_000  # listing this many parts takes long enough to say so
CHUNK = 8 * 2**20  # bytes per pread/pwrite where copy_file_range is not to be had
SHOWN = 8


def part_name(batch_id: int) -> str:
    """A batch's file: zero-padded, so name order is batch order is input order."""
    return f"part-{batch_id:09d}.txt"


def _cut(values: Sequence[object]) -> str:
    text = ", ".join(map(str, values[:SHOWN]))
    return f"{text} ... and {len(values) - SHOWN} more" if len(values) > SHOWN else text


class LinesWriter:
    """Writes each batch's lines (``columns[LINES]``) as its own part file."""

    def __init__(self, partial: Path, final: Path, batch_count: int) -> None:
        self.partial, self.final, self.batch_count = partial, final, batch_count
        self.header: str | None = None  # the header this process wrote or found
        self.unsynced: list[tuple[Path, Path]] = []  # (written .tmp, its final name)

    def write(self, batch: Batch, columns: Columns) -> None:
        """A batch's lines, or, for a batch that failed for good (no LINES among its
        fill columns), an empty part: it adds no line but shows the batch is done."""
        lines = cast("Sequence[object]", columns.get(LINES, ()))
        header = columns.get(HEADER)
        if isinstance(header, str):
            self._header(batch, header)
        text = "\n".join(map(str, lines)) + "\n" if len(lines) else ""
        self._stage(batch, self.partial / part_name(batch.batch_id), text)

    def _header(self, batch: Batch, header: str) -> None:
        """Stage the CSV header once per process; every batch must have the same one."""
        if header == self.header:
            return
        path = self.partial / HEADER_FILE
        try:
            found = path.read_text(encoding="utf-8").removesuffix("\n")
        except FileNotFoundError:
            found = None
        except OSError as exc:
            raise storage_error(path, exc, "cannot read the CSV header") from exc
        if found is not None and found != header:
            raise OutputError(f"{self.final}: batch {batch.batch_id} has the CSV header "
                              f"{header!r}, an earlier batch {found!r}; every batch must return "
                              "the same columns")
        self.header = header
        if found is None:
            self._stage(batch, path, header + "\n")

    def _stage(self, batch: Batch, target: Path, text: str) -> None:
        temporary = self.partial / STAGING / f"{target.name}.{os.getpid()}.tmp"
        try:
            temporary.write_bytes(text.encode("utf-8"))
        except OSError as exc:
            raise storage_error(target, exc, f"cannot write batch {batch.batch_id}") from exc
        self.unsynced.append((temporary, target))

    def sync(self) -> None:
        """Flush what was written since the last sync, then give each file its name (the
        header before the parts: a part under its name is what --resume counts)."""
        unsynced, self.unsynced = self.unsynced, []
        for temporary, target in unsynced:
            try:
                staging.durable_replace(temporary, target)
            except OSError as exc:
                raise storage_error(target, exc, "cannot flush batch output") from exc

    def close(self) -> None:
        """Nothing stays open between batches."""

    def finish(self, ranks: Ranks, complete: bool) -> None:
        """Every rank together: assemble OUTPUT from the parts, in input order (see the
        module's docstring). An incomplete job leaves the parts for --resume.

        Every rank passes the same barriers whatever fails, so that none waits for
        one that gave up; each raises its own failure after the last one."""
        ranks.barrier()  # every batch, rank 0's fills included, is synced
        if not complete:
            return
        assembly = Assembly(self.partial, self.batch_count)
        failure = _attempt(assembly.prepare) if ranks.rank == 0 else None
        ranks.barrier()
        failure = failure or _attempt(lambda: assembly.copy_share(ranks.rank, ranks.size))
        ranks.barrier()
        if failure is not None:
            raise failure
        if ranks.rank == 0:
            assembly.commit(self.final, ranks.size)


def _attempt(step: Any) -> OutputError | None:
    """Run ``step``, returning its failure as an OutputError instead of raising it."""
    try:
        step()
    except OutputError as exc:
        return exc
    return None


class Assembly:
    """Concatenating the header and the parts of a partial directory into one file,
    each rank copying its share in place (see the module's docstring)."""

    def __init__(self, partial: Path, batch_count: int) -> None:
        """``batch_count``: the plan's; batch ids run from 0 to it, one part file each."""
        self.partial, self.batch_count = partial, batch_count
        self.staging = partial / STAGING
        self.target = partial / ASSEMBLED

    def prepare(self) -> None:
        """Rank 0: forget an earlier attempt, list the sizes, create the file full size."""
        try:
            for name in os.listdir(self.staging):
                if COPIED.fullmatch(name) or name == LAYOUT:
                    (self.staging / name).unlink()
            sizes = self._sizes()
            with open(self.target, "wb") as out:
                out.truncate(sum(size for _, size in sizes))
            layout = self.staging / f"{LAYOUT}.{os.getpid()}.tmp"
            layout.write_text(json.dumps(sizes))
            staging.durable_replace(layout, self.staging / LAYOUT)
        except OSError as exc:
            raise storage_error(self.target, exc, "cannot prepare the output's assembly") \
                from exc

    def _sizes(self) -> list[tuple[str, int]]:
        """(file, size) in output order: the header, if any, then every batch's part."""
        if self.batch_count >= LOG_FINISH_PARTS:
            LOG.info("listing the %d part files of %s", self.batch_count, self.partial)
        header = self.partial / HEADER_FILE
        sizes = [(HEADER_FILE, header.stat().st_size)] if header.exists() else []
        missing = []
        for batch_id in range(self.batch_count):
            try:
                sizes.append((part_name(batch_id),
                              (self.partial / part_name(batch_id)).stat().st_size))
            except FileNotFoundError:
                missing.append(batch_id)
        if missing:
            raise OutputError(f"{self.partial}: part files of batches {_cut(missing)} are "
                              "missing; rerun with --resume (resume=True) to write them")
        return sizes

    def copy_share(self, rank: int, size: int) -> None:
        """Copy bytes ``total*rank/size`` to ``total*(rank+1)/size`` of the concatenation,
        fsync them, and note which layout they follow. Nothing, if rank 0 left no layout
        (it failed, and says why)."""
        try:
            text = (self.staging / LAYOUT).read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error(self.staging / LAYOUT, exc, "cannot read the layout") from exc
        sizes = [(str(name), int(nbytes)) for name, nbytes in json.loads(text)]
        total = sum(nbytes for _, nbytes in sizes)
        low, high = total * rank // size, total * (rank + 1) // size
        try:
            out = os.open(self.target, os.O_WRONLY)
            try:
                self._copy_range(out, sizes, low, high)
                os.fsync(out)
            finally:
                os.close(out)
            (self.staging / f"copied-{rank}").write_text(hashlib.sha256(text).hexdigest())
        except OSError as exc:
            raise storage_error(self.target, exc, f"rank {rank} cannot copy its share") from exc

    def _copy_range(self, out: int, sizes: list[tuple[str, int]], low: int, high: int) -> None:
        offset = 0
        for name, nbytes in sizes:
            start, stop = max(low, offset), min(high, offset + nbytes)
            if start < stop:
                source = os.open(self.partial / name, os.O_RDONLY)
                try:
                    copy_bytes(source, out, start - offset, start, stop - start, name)
                finally:
                    os.close(source)
            offset += nbytes

    def was_committed(self, final: Path) -> bool:
        """Whether an earlier run's commit named the assembled file ``final`` and was
        stopped before deleting the partial: the layout every rank copied is there, the
        assembled file is not, and ``final`` has the layout's size."""
        try:
            text = (self.staging / LAYOUT).read_bytes()
            copied = (self.staging / "copied-0").read_text()
            total = sum(int(nbytes) for _, nbytes in json.loads(text))
            return (copied == hashlib.sha256(text).hexdigest() and not self.target.exists()
                    and final.is_file() and final.stat().st_size == total)
        except (OSError, ValueError, TypeError):
            return False

    def commit(self, final: Path, size: int) -> None:
        """Rank 0: once every rank has copied its share of this layout, the file is whole:
        name it OUTPUT and delete the partial directory."""
        try:
            digest = hashlib.sha256((self.staging / LAYOUT).read_bytes()).hexdigest()
            notes = {name: (self.staging / name).read_text() for name in os.listdir(self.staging)
                     if COPIED.fullmatch(name)}
        except OSError as exc:
            raise storage_error(self.staging, exc, "cannot check the assembly") from exc
        short = [rank for rank in range(size) if notes.get(f"copied-{rank}") != digest]
        if short:
            raise OutputError(f"{self.partial}: ranks {_cut(short)} of {size} did not copy "
                              "their share of the output (see their errors); rerun with "
                              "--resume (resume=True) to assemble it again")
        try:
            os.replace(self.target, final)
        except OSError as exc:
            raise storage_error(final, exc, f"cannot rename {self.target} to it") from exc
        try:
            shutil.rmtree(self.partial)
        except OSError as exc:
            raise OutputError(f"{self.partial}: {final} is complete, but this partial output "
                              f"could not be deleted ({exc.strerror or exc}); delete it") from exc


def copy_bytes(source: int, out: int, source_offset: int, out_offset: int, count: int,
               name: str) -> None:
    """``count`` bytes of ``source`` to ``out``, in the kernel where it can (no trip
    through user space; a server-side copy on NFS 4.2 and some parallel file systems)."""
    while count > 0:
        try:
            done = os.copy_file_range(source, out, count, source_offset, out_offset)
        except (AttributeError, OSError) as exc:  # AttributeError: not Linux
            if isinstance(exc, OSError) and exc.errno not in (
                    errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            _pcopy(source, out, source_offset, out_offset, count, name)
            return
        if done == 0:
            raise OutputError(f"{name}: {count} bytes shorter than when listed; was it changed?")
        source_offset, out_offset, count = source_offset + done, out_offset + done, count - done


def _pcopy(source: int, out: int, source_offset: int, out_offset: int, count: int,
           name: str) -> None:
    while count > 0:
        data = os.pread(source, min(count, CHUNK), source_offset)
        if not data:
            raise OutputError(f"{name}: {count} bytes shorter than when listed; was it changed?")
        written = os.pwrite(out, data, out_offset)
        source_offset, out_offset, count = source_offset + written, out_offset + written, \
            count - written


def create(partial: Path, attrs: dict[str, Any]) -> None:
    """The partial directory, its staging area and the marker that makes it ours (rank 0)."""
    try:
        (partial / STAGING).mkdir(parents=True)
        (partial / MARKER).write_text(json.dumps({"mpiscore": "append_row", "attrs": attrs},
                                                 default=str))
    except OSError as exc:
        raise storage_error(partial, exc, "cannot create the append_row output") from exc


def written_batches(partial: Path) -> set[int]:
    """Batches whose part file is on disk under its name (what --resume may skip)."""
    return staging.written_batches(partial, PART)


def discard_staged(partial: Path) -> None:
    """Delete files a killed scoring process left half-written in the staging area."""
    staging.discard_staged(partial, TMP)


def owned(path: Path) -> bool:
    """Whether ``path`` is a partial append_row output: our marker, and nothing but our
    files. Never a final text file, which nothing proves ours (module docstring)."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        if json.loads((path / MARKER).read_text()).get("mpiscore") != "append_row":
            return False
        with os.scandir(path) as entries:
            return all(_staging_owned(entry) if entry.name == STAGING else
                       _ours_by_name(entry.name) and entry.is_file(follow_symlinks=False)
                       for entry in entries)
    except (OSError, ValueError, AttributeError):
        return False


def _ours_by_name(name: str) -> bool:
    return name in (MARKER, HEADER_FILE, ASSEMBLED) or PART.fullmatch(name) is not None


def _staging_owned(entry: os.DirEntry) -> bool:
    if not entry.is_dir(follow_symlinks=False):
        return False
    with os.scandir(entry.path) as inside:
        return all((TMP.fullmatch(e.name) or COPIED.fullmatch(e.name) or e.name == LAYOUT)
                   and e.is_file(follow_symlinks=False) for e in inside)


class LinesSinkKind:
    """append_row output: one text file of lines in input order (module docstring).

    Chosen by ``--output-action append_row``, never by the output's suffix."""

    suffixes: tuple[str, ...] = ()
    directories: bool = False
    rank_zero_finishes: bool = False  # every rank copies its share of the parts

    def check(self, outputs: list[Field], kept: list[Field]) -> None:
        _refuse_kept(kept, "append_row")

    def create(self, partial: Path, fields: list[Field], kept: list[Field], plan: Plan,
               attrs: dict[str, Any]) -> dict[str, int]:
        create(partial, attrs)
        return {}

    def reopen(self, partial: Path, fields: list[Field], kept: list[Field]) -> dict[str, int]:
        return {}

    def written(self, partial: Path, journal: set[int]) -> set[int]:
        try:
            discard_staged(partial)  # half-written by processes of the cut-short run
            return journal & written_batches(partial)
        except OSError as exc:
            raise storage_error(partial, exc, "cannot list the part files") from exc

    def open_writer(self, partial: Path, final: Path, fields: list[Field], kept: list[Field],
                    plan: Plan, offsets: dict[str, int], attrs: dict[str, Any]) -> Writer:
        return LinesWriter(partial, final, plan.batch_count)

    def owned(self, path: Path) -> bool:
        return owned(path)

    def damage(self, final: Path, batch_count: int) -> str | None:
        return None  # one text file: nothing in it tells its lines from others

    def warm(self) -> None:
        """Finishing needs nothing heavy (os.copy_file_range)."""

    def settle(self, partial: Path, final: Path) -> None:
        """Delete the partial directory an earlier run committed but was stopped before
        deleting (:meth:`Assembly.was_committed`): OUTPUT holds all of it. Otherwise
        OUTPUT and its partial side by side would ask for both --resume and --overwrite,
        and --overwrite never deletes a text file."""
        if not (final.is_file() and owned(partial)
                and Assembly(partial, 0).was_committed(final)):
            return
        LOG.info("%s: deleting %s, left by a run stopped just after it completed the output",
                 final, partial)
        try:
            shutil.rmtree(partial)
        except OSError as exc:
            raise storage_error(partial, exc, f"cannot delete it ({final} is complete)") \
                from exc


def _refuse_kept(kept: list[Field], action: str) -> None:
    if kept:
        raise ConfigError(f"--keep-columns {','.join(f.name for f in kept)}: do not apply to "
                          f"--output-action {action}, whose output holds no columns")


class NoOutputWriter:
    """summary_only: the script writes its own files; there is nothing to write or finish."""

    def write(self, batch: Batch, columns: Columns) -> None:
        """The script's result is nothing to keep."""

    def sync(self) -> None:
        """Nothing written, nothing to flush."""

    def close(self) -> None:
        """Nothing open."""

    def finish(self, ranks: Ranks, complete: bool) -> None:
        """Nothing to assemble or rename."""


class NoOutputSinkKind:
    """summary_only: OUTPUT is the directory the script writes into (EntryScript's
    ``output_dir``). It is used in place (``in_place``: the registry passes OUTPUT
    itself where other kinds get OUTPUT.partial), created if missing, and never
    deleted or replaced, since what is in it is the script's."""

    suffixes: tuple[str, ...] = ()
    directories: bool = False
    in_place: bool = True
    rank_zero_finishes: bool = False  # its writers' finish does nothing, on any rank

    def check(self, outputs: list[Field], kept: list[Field]) -> None:
        _refuse_kept(kept, "summary_only")

    def create(self, partial: Path, fields: list[Field], kept: list[Field], plan: Plan,
               attrs: dict[str, Any]) -> dict[str, int]:
        """Make the directory (``partial`` is OUTPUT itself), keeping what is in it."""
        try:
            partial.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise OutputError(f"{partial}: not a directory; --output-action summary_only "
                              "needs a directory for the script's files") from exc
        except OSError as exc:
            raise storage_error(partial, exc, "cannot create the output directory") from exc
        return {}

    def reopen(self, partial: Path, fields: list[Field], kept: list[Field]) -> dict[str, int]:
        return {}

    def written(self, partial: Path, journal: set[int]) -> set[int]:
        return journal  # the script's own files are its business

    def open_writer(self, partial: Path, final: Path, fields: list[Field], kept: list[Field],
                    plan: Plan, offsets: dict[str, int], attrs: dict[str, Any]) -> Writer:
        return NoOutputWriter()

    def owned(self, path: Path) -> bool:
        return False  # the script's files are never ours to delete

    def damage(self, final: Path, batch_count: int) -> str | None:
        return None  # the script's files are its own

    def warm(self) -> None:
        """There is nothing to finish."""

"""The table of input and output formats: each kind registers a source or a sink, and
a job reaches its format only through this table (h5py's driver table).

A new format is one module holding its SourceKind or SinkKind, and one
``register_source`` or ``register_sink`` call below; kinds.py holds HDF5 and
Parquet. A job carries only the kind's name and what the kind resolved, so both
travel to every rank and scoring process as plain data.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config import BatchSize, JobConfig
from ..errors import ConfigError, ModelError, OutputError
from ..plan import Plan, SourceFile
from .fields import ROW_STATUS, Field, Reader, Writer
from .files import FilesSourceKind
from .kinds import Hdf5SinkKind, Hdf5SourceKind, ParquetSinkKind, ParquetSourceKind, Resolved
from .lines import LinesSinkKind, NoOutputSinkKind
from .sources import dataset_files, expand

if TYPE_CHECKING:
    from ..model import TensorSpec


class SourceKind(Protocol):
    """An input format: what its ``--input`` paths resolve to, and what that gives (files
    and fields to plan on rank 0, a reader in each scoring process)."""

    label: str  # the format's name in messages
    suffixes: tuple[str, ...]  # --input-format auto takes a path with one of these for it
    directories: bool  # and a directory, or a path without a suffix

    def resolve(self, config: JobConfig, paths: Resolved, inputs: list[TensorSpec]
                ) -> Any: ...

    def describe(self, resolved: Any) -> tuple[list[SourceFile], dict[str, Field], list[Field]]:
        """Files, model-input fields and carried fields."""

    def plan(self, resolved: Any, files: list[SourceFile], batch_size: BatchSize,
             row_nbytes: int) -> Plan:
        """The batches over ``files`` (rows of ``row_nbytes`` bytes), in row order."""

    def bound(self, resolved: Any, files: tuple[SourceFile, ...]) -> Any:
        """``resolved`` naming its files by the plan's file table (one SourceFile per
        input file, in order), the same path objects: a job that carries both pickles
        each path once."""

    def open_reader(self, resolved: Any) -> Reader: ...

    def names(self, resolved: Any) -> list[str]:
        """The input files and datasets or columns, for provenance."""

    def feeds(self, resolved: Any) -> list[Any]:
        """What each model input reads (datasets, columns), apart from which files: the
        fingerprint's, so that --resume with other columns is refused, not mixed."""


class SinkKind(Protocol):
    """An output format: checks, creation on rank 0, resuming, and a writer per process."""

    suffixes: tuple[str, ...]  # as SourceKind's, for --output-format auto
    directories: bool
    # whether its writers' finish is a barrier, then rank 0's work alone: the other ranks
    # then pass the barrier without a writer, nor its library (OutputTarget.finisher)
    rank_zero_finishes: bool

    def check(self, outputs: list[Field], kept: list[Field]) -> None:
        """Refuse outputs (as the probe found them) and carried columns the format cannot
        hold: before anything is written, in one line, not in a traceback or in every
        batch."""

    def create(self, partial: Path, fields: list[Field], kept: list[Field], plan: Plan,
               attrs: dict[str, Any]) -> dict[str, int]:
        """Create the partial output (rank 0); returns what writers need (byte offsets)."""

    def reopen(self, partial: Path, fields: list[Field], kept: list[Field]) -> dict[str, int]:
        """What :meth:`create` returned, from an interrupted run's partial output."""

    def written(self, partial: Path, journal: set[int]) -> set[int]:
        """Of the batches the journal lists, those whose output is still there to keep."""

    def open_writer(self, partial: Path, final: Path, fields: list[Field], kept: list[Field],
                    plan: Plan, offsets: dict[str, int], attrs: dict[str, Any]) -> Writer: ...

    def owned(self, path: Path) -> bool:
        """Whether ``path`` is an output or partial output of this kind that mpiscore wrote."""

    def damage(self, final: Path, batch_count: int) -> str | None:
        """What a quick look finds missing from a complete output (a part file deleted
        since, say), in words; None if nothing. Before a job is called already complete."""

    def warm(self) -> None:
        """Import what a rank's writer needs to finish the output (OutputTarget.warm)."""


SOURCES: dict[str, SourceKind] = {}
SINKS: dict[str, SinkKind] = {}
ACTION_SINKS: dict[str, SinkKind] = {}  # by --output-action, for entry scripts' outputs


def register_source(kind: str, source: SourceKind) -> None:
    """Make ``--input-format KIND`` read with ``source``."""
    SOURCES[kind] = source


def register_sink(kind: str, sink: SinkKind) -> None:
    """Make ``--output-format KIND`` write with ``sink``."""
    SINKS[kind] = sink


def register_action(action: str, sink: SinkKind) -> None:
    """Make ``--output-action ACTION`` write with ``sink`` (whatever ``--output`` is)."""
    ACTION_SINKS[action] = sink


register_source("hdf5", Hdf5SourceKind())
register_source("parquet", ParquetSourceKind())
register_source("files", FilesSourceKind())
register_sink("hdf5", Hdf5SinkKind())
register_sink("parquet", ParquetSinkKind())
register_action("append_row", LinesSinkKind())
register_action("summary_only", NoOutputSinkKind())


def detect_format(path: str, declared: str, what: str) -> str:
    """The kind of ``path``: ``declared``, or the one whose suffixes (or directories) it
    has. ``what`` is the option, ``--input`` or ``--output``: it picks sources or sinks."""
    table: dict[str, SourceKind] | dict[str, SinkKind] = SOURCES if what == "--input" else SINKS
    if declared != "auto":
        if declared not in table:
            raise ConfigError(f"{what}-format {declared!r}: choose one of {', '.join(table)}")
        return declared
    suffix = Path(path).suffix.lower()
    for kind, impl in table.items():
        if suffix in impl.suffixes:
            return kind
    for kind, impl in table.items():
        if impl.directories and (Path(path).is_dir() or not suffix):
            return kind
    known = " or ".join(impl.suffixes[0] for impl in table.values() if impl.suffixes)
    raise ConfigError(
        f"{what} {path}: cannot tell the format from the suffix {suffix!r}; "
        f"use {known}, or pass {what}-format {' or '.join(table)}")


@dataclass(frozen=True)
class InputSource:
    """A job's input: its kind, and what the kind resolved the ``--input``s to."""

    kind: str
    resolved: Any

    def bound(self, files: tuple[SourceFile, ...]) -> InputSource:
        """This input with its paths taken from ``files``, the plan's file table
        (SourceKind.bound); itself if they are already."""
        resolved = SOURCES[self.kind].bound(self.resolved, files)
        return self if resolved is self.resolved else InputSource(self.kind, resolved)


def resolve_input(config: JobConfig, inputs: list[TensorSpec]) -> InputSource:
    """Expand the ``--input`` globs and decide which data feeds each model input.

    ``inputs`` are the model's inputs: their names pick a default dataset or
    column, their shapes say what a default Parquet column must hold.
    """
    input_names = [spec.name for spec in inputs]
    specs = [(spec, path) for spec in config.inputs for path in expand(spec)]
    kind = _input_kind(config, [path for _, path in specs])
    if config.partition_by and kind != "parquet":
        raise ConfigError(f"--partition-by {','.join(config.partition_by)}: groups Parquet "
                          f"rows; this input is {SOURCES[kind].label}")
    if len(input_names) > 1 and not config.mapping:
        raise ModelError(f"{config.model}: the model has inputs {', '.join(input_names)}; "
                         "say where each comes from with --map NAME=SOURCE")
    return InputSource(kind, SOURCES[kind].resolve(config, specs, inputs))


def _input_kind(config: JobConfig, paths: list[str]) -> str:
    """The one kind of every input path. ``--input-mode files`` makes every file an item;
    for an entry script, ``auto`` does too when no path is HDF5 or Parquet (images,
    .npy files, a folder of them); a model reads only HDF5 or Parquet."""
    script = config.scorer_kind == "script"
    if config.input_mode == "files":
        if not script:
            raise ConfigError("--input-mode files: file input feeds entry scripts only (pass "
                              "--entry-script), a --model reads HDF5 or Parquet rows")
        return "files"
    if script and config.input_mode == "auto" and config.input_format == "auto" and \
            not any(_tabular(path) for path in paths):
        return "files"
    kinds = {detect_format(path, config.input_format, "--input") for path in paths}
    if len(kinds) > 1:
        mixed = " and ".join(impl.label for kind, impl in SOURCES.items() if kind in kinds)
        raise ConfigError(f"--input mixes {mixed} files; score them in separate jobs")
    return kinds.pop()


def _tabular(path: str) -> bool:
    """Whether ``path`` is HDF5 or Parquet data by its suffix, or a directory holding
    Parquet files."""
    suffix = Path(path).suffix.lower()
    if any(suffix in kind.suffixes for kind in (SOURCES["hdf5"], SOURCES["parquet"])):
        return True
    return os.path.isdir(path) and bool(dataset_files(path, SOURCES["parquet"].suffixes))


def describe(source: InputSource) -> tuple[list[SourceFile], dict[str, Field], list[Field]]:
    """Files, model-input fields and carried fields of the input (rank 0)."""
    return SOURCES[source.kind].describe(source.resolved)


def plan_batches(config: JobConfig, source: InputSource, files: list[SourceFile],
                 row_nbytes: int) -> Plan:
    """The job's batches, as the input's kind cuts them (rank 0)."""
    return SOURCES[source.kind].plan(source.resolved, files, config.batch_size, row_nbytes)


def open_reader(source: InputSource) -> Reader:
    return SOURCES[source.kind].open_reader(source.resolved)


def input_names(source: InputSource) -> list[str]:
    """The input files and datasets or columns, for provenance."""
    return SOURCES[source.kind].names(source.resolved)


def input_feeds(source: InputSource) -> list[Any]:
    """What each model input reads (SourceKind.feeds), for the fingerprint."""
    return SOURCES[source.kind].feeds(source.resolved)


@dataclass(frozen=True)
class OutputTarget:
    """Where output goes: format, the final path, and the path used until complete."""

    format: str
    final: Path
    overwrite: bool

    @classmethod
    def of(cls, config: JobConfig) -> OutputTarget:
        """The output of ``config``: by ``--output-action``, or for rows by
        ``--output-format`` or the path."""
        if config.output_action in ACTION_SINKS:
            return cls(config.output_action, config.output, config.overwrite)
        return cls(detect_format(str(config.output), config.output_format, "--output"),
                   config.output, config.overwrite)

    @property
    def in_place(self) -> bool:
        """Whether the output is a directory others write into (summary_only): made if
        missing, never replaced, no partial name."""
        return getattr(self.sink, "in_place", False)

    @property
    def partial(self) -> Path:
        if self.in_place:
            return self.final
        return self.final.with_name(self.final.name + ".partial")

    @property
    def sink(self) -> SinkKind:
        return ACTION_SINKS.get(self.format) or SINKS[self.format]

    def settle(self) -> None:
        """Finish what an earlier run left between naming OUTPUT and deleting its partial:
        only a kind whose commit takes two steps (append_row's) has a ``settle``."""
        settle = getattr(self.sink, "settle", None)
        if settle is not None:
            settle(self.partial, self.final)

    def check(self, outputs: list[Field], kept: list[Field], resume: bool,
              inputs: list[str], resumable: bool = True) -> None:
        """Refuse clashing names, unwritable places, and any output already there unless
        it is to be resumed or replaced, and may be: ``--overwrite`` replaces only
        what mpiscore wrote, never one of the job's ``inputs``."""
        clashes = sorted({f.name for f in outputs} & {f.name for f in kept})
        if ROW_STATUS.name in clashes:  # mpiscore's own: no --rename renames it
            raise ConfigError(f"--keep-columns {ROW_STATUS.name}: the name of mpiscore's own "
                              "per-row status column; an input column of that name cannot "
                              "be carried (rename it in the input)")
        if clashes:
            raise ConfigError(f"--keep-columns {','.join(clashes)}: also an output name; "
                              "rename the model output with --rename OUTPUT=NEW_NAME")
        for path in (self.final, self.partial):
            _refuse_an_input(path, inputs)
        if self.in_place:
            if self.final.exists() and not self.final.is_dir():
                raise OutputError(f"{self.final}: not a directory; --output-action "
                                  "summary_only names the directory the script writes into")
            return
        if resume:
            if self.final.exists():
                raise ConfigError(f"--resume: {self.final} is complete; nothing to resume")
            if not self.partial.exists():
                raise ConfigError(f"--resume: {self.partial} not found; nothing to resume")
            return
        self._check_replaceable(resumable)
        parent = self.final.parent if str(self.final.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"{self.final}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{self.final}: directory {parent} is not writable")
        self.sink.check(outputs, kept)

    def _check_replaceable(self, resumable: bool) -> None:
        """``resumable``: whether the run directory holds an interrupted run's records
        (its fingerprint); a partial output without them can only be started over."""
        self._refuse_not_ours(self.final)  # before advising --overwrite, which would not
        if self.final.exists() and not self.overwrite:
            raise OutputError(f"{self.final}: output exists; pass --overwrite (overwrite=True) to "
                              "replace it")
        if self.partial.exists() and not self.overwrite and not resumable:
            raise OutputError(
                f"{self.partial}: an interrupted run's partial output is here, but that run "
                "stopped before it recorded its job in the run directory (or --run-dir is not "
                "the one it used), so it cannot be resumed; rerun with --overwrite "
                "(overwrite=True) to discard it and start over")
        if self.partial.exists() and not self.overwrite:
            raise OutputError(
                f"{self.partial}: an interrupted run's partial output is here; rerun with "
                "--resume (resume=True) to finish it, or with --overwrite (overwrite=True) to "
                "discard it and start over")
        self._refuse_not_ours(self.partial)

    def _refuse_not_ours(self, path: Path) -> None:
        if not (path.exists() or path.is_symlink()) or _ours(path):
            return
        kind = "a directory" if path.is_dir() else "a file"
        why = ("not an mpiscore output, or a text file, which carries nothing that proves "
               "mpiscore wrote it" if self.format == "append_row" else "not an mpiscore output")
        raise OutputError(f"{path}: {kind} that mpiscore did not write ({why}), so --overwrite "
                          "will not delete it; choose another --output or move it away "
                          "yourself")

    def create(self, fields: list[Field], kept: list[Field], plan: Plan,
               attrs: dict[str, Any]) -> dict[str, int]:
        """Create the (partial) output on rank 0; HDF5 returns dataset byte offsets."""
        for stale in () if self.in_place else (self.final, self.partial):
            if stale.exists() or stale.is_symlink():
                remove(stale)
        return self.sink.create(self.partial, fields, kept, plan, attrs)

    def reopen(self, fields: list[Field], kept: list[Field]) -> dict[str, int]:
        """Offsets into the partial output of an interrupted run (for --resume)."""
        return self.sink.reopen(self.partial, fields, kept)

    def written(self, journal: set[int]) -> set[int]:
        """Of the batches the journal lists, those whose output is still there to keep."""
        return self.sink.written(self.partial, journal)

    def open_writer(self, fields: list[Field], kept: list[Field], plan: Plan,
                    offsets: dict[str, int], attrs: dict[str, Any]) -> Writer:
        """A writer for a scoring process (write, close) or a rank (finish)."""
        return self.sink.open_writer(self.partial, self.final, fields, kept, plan, offsets,
                                     attrs)

    def finisher(self, rank: int) -> bool:
        """Whether ``rank`` opens a writer to finish the output: rank 0 always; the others
        only for a kind whose finish they share (append_row's assembly), else they only
        pass the finish's barrier (api._finish_output), and never import the format's
        library: h5py and numpy cost a rank ~85 ms of CPU, pyarrow more."""
        return rank == 0 or not self.sink.rank_zero_finishes

    def warm(self, rank: int) -> threading.Thread | None:
        """Import, on a thread, what finishing the output will need on ``rank`` (none where
        it is no :meth:`finisher`) while the rank waits for the job to be prepared
        (api._warm_output), so that it is not imported after the last batch, on every
        job's critical path. An import that fails here fails again, with its message, when
        finishing. The thread is joined before the scoring loop: an import running
        beside the loop cost the rank more than its own CPU (benchmarks/README.md,
        Waiting)."""
        if not self.finisher(rank):
            return None
        thread = threading.Thread(target=self._warm_quietly, name="warm-output", daemon=True)
        thread.start()
        return thread

    def _warm_quietly(self) -> None:
        try:
            self.sink.warm()
        except Exception:  # reported again by the finish that needs it
            return


def _refuse_an_input(path: Path, inputs: list[str]) -> None:
    """An output path that is, or holds, one of the job's input files is never ours."""
    if not path.exists():
        return
    for name in inputs:
        source = Path(name)
        if source.exists() and (os.path.samefile(source, path) or
                                (path.is_dir() and path.resolve() in source.resolve().parents)):
            raise OutputError(f"{path}: is (or holds) the input {name} of this job; choose "
                              "another --output")


def _ours(path: Path) -> bool:
    """Whether ``path`` is an output or partial output that mpiscore wrote."""
    if path.is_symlink():
        return False
    return any(sink.owned(path) for sink in [*SINKS.values(), *ACTION_SINKS.values()])


def remove(path: Path) -> None:
    """Delete an output file or directory (for --overwrite and stale partial output)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()

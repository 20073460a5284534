"""The "script" scorer: a user's entry script, loaded once in a scoring process.

An entry script follows Azure ML's parallel-run convention: ``init()`` (optional)
once, ``run(mini_batch)`` per batch, ``shutdown()`` (optional) at the end. The
script sees what it would see there: ``sys.argv`` is its path and the words after
``--``, its own directory comes first on ``sys.path`` (its helper modules import),
and ``from azureml_user.parallel_run import EntryScript`` works (compat/, appended
to the END of ``sys.path``, so a really installed ``azureml_user`` wins). Its
``print()``, the root ``logging`` logger and ``EntryScript().logger`` all write to
this process's log, ``LOG_DIR/script-rank<R>-pid<P>.log``, each line tagged with
time, level, rank and pid (stdout/stderr are redirected only while the script's
functions run: a thread the script leaves printing afterwards writes to the real
streams, as does C code writing to file descriptors 1 and 2).

A failure in the script is one line naming the innermost frame in the script
(``score.py, line 40, in run: KeyError: 'x' (traceback in LOG)``); the full
traceback, from the script's frames on, goes to the log and is kept on the error
as ``script_traceback``. Loading or ``init()`` failing is a ModelError (the job
cannot start), ``run()`` failing a ScoringError (a failed batch, retried).

What ``run`` returns becomes, by ``--output-action``: output columns, one row per
item (``rows``; the first result fixes the columns, see :meth:`ScriptScorer.fix_schema`),
lines of text (``append_row``), or nothing (``summary_only``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import linecache
import logging
import os
import re
import sys
import traceback
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config import ScorerSettings, ScriptSettings
from ...errors import ModelError, MpiscoreError, ScoringError
from ...io.fields import FILE_PATHS, HEADER, LINES
from ...model import Column, TensorSpec
from .script_log import ProcessLog
from .script_results import (
    Row,
    csv_lines,
    fits_integers,
    result_columns,
    result_rows,
    tabular_batch,
)

COMPAT_DIR = Path(__file__).resolve().parent.parent / "compat"
"""Holds the ``azureml_user`` shim; not a package itself, so nothing shadows a real one."""

LABEL_WIDTH = 64  # bytes of string results in HDF5; a longer one fails its batch when written



@dataclass(frozen=True)
class EntryContext:
    """What ``EntryScript()`` reports in this process (read by the compat shim)."""

    logger: logging.Logger
    script: str
    rank: int
    output_dir: str
    log_dir: str
    working_dir: str
    log_file: str  # "" when the log is stderr


_context: EntryContext | None = None


def entry_context() -> EntryContext | None:
    """The open entry script's context, or None outside a script job."""
    return _context


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the script's frames on: mpiscore's frames that called it are
    noise to the script's author."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class ScriptScorer:
    """Runs an entry script's ``run`` on each batch (a scorers.Scorer of kind "script")."""

    fixed_batch: int | None = None
    label_width = LABEL_WIDTH
    run_rows = 0  # run() gets each mini-batch whole
    data_stamps = ()  # no data_files

    @property
    def layouts(self) -> dict[str, bool]:
        """A script's results have no layout to decide (a list is one value per item)."""
        return {}

    @property
    def data_files(self) -> dict[str, Path]:
        """None known: what init() loads (its --model_dir) is the script's own affair."""
        return {}

    def __init__(self, script: str, settings: ScriptSettings, rank: int) -> None:
        self.script, self.settings, self.rank = script, settings, rank
        self.log = ProcessLog(settings, rank)
        self.saved_argv, self.added_paths = list(sys.argv), list[str]()
        self.module_name = ""
        self.functions: dict[str, Callable[..., Any]] = {}
        self.schema: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] | None = None
        self.seen: dict[str, Column] = {}
        self.restored = False

    @classmethod
    def open(cls, source: bytes, script: str, settings: ScorerSettings) -> ScriptScorer:
        """The "script" kind's factory: load ``source`` (the file ``script``), call its
        ``init()``; the process's log, argv and import path are set up first."""
        assert settings.script is not None, "a script job's settings name the script"
        scorer = cls(script, settings.script, settings.rank)
        try:
            scorer._start(source)
        except BaseException:
            scorer._restore()
            raise
        return scorer

    def _start(self, source: bytes) -> None:
        global _context
        _context = EntryContext(self.log.entry_logger, self.script, self.rank,
                                self.settings.output_dir, self.settings.log_dir,
                                os.getcwd(), self.log.where if self.log.owned else "")
        sys.argv = [self.script, *self.settings.args]
        self._add_path(str(Path(self.script).resolve().parent), first=True)
        self._add_path(str(COMPAT_DIR), first=False)
        module = self._load(source)
        for name in ("init", "run", "shutdown"):
            function = getattr(module, name, None)
            if callable(function):
                self.functions[name] = function
        if "run" not in self.functions:
            raise ModelError(f"{self.script}: has no run(mini_batch) function; an entry script "
                             "defines init() (optional) and run(mini_batch)")
        if "init" in self.functions:
            self._init_in_place()

    def _add_path(self, path: str, first: bool) -> None:
        """The script's directory first (its modules win), the shim's last (a real
        ``azureml_user`` wins); each removed again by :meth:`_restore`."""
        if first and sys.path[:1] != [path]:
            sys.path.insert(0, path)
        elif not first and path not in sys.path:
            sys.path.append(path)
        else:
            return
        self.added_paths.append(path)

    def _load(self, source: bytes) -> types.ModuleType:
        """Compile and execute the script as a module in ``sys.modules`` (so that pickle
        and ``import score`` elsewhere find the same module)."""
        try:
            code = compile(source, self.script, "exec", dont_inherit=True)
        except SyntaxError as exc:
            shown = f": {exc.text.strip()}" if exc.text and exc.text.strip() else ""
            line = f", line {exc.lineno}" if exc.lineno else ""  # none for null bytes
            raise ModelError(f"{self.script}{line}: not Python: {exc.msg}{shown}") from exc
        except ValueError as exc:  # null bytes (Python 3.11 before 3.11.4)
            raise ModelError(f"{self.script}: not Python: {exc}") from exc
        text = source.decode("utf-8", "replace")
        linecache.cache[self.script] = (len(text), None, text.splitlines(True), self.script)
        self.module_name = _module_name(self.script)
        module = types.ModuleType(self.module_name)
        module.__file__ = os.path.abspath(self.script)
        sys.modules[self.module_name] = module
        self._call_guarded("loading", ModelError, exec, code, module.__dict__)
        return module

    def _call(self, name: str, error: type[MpiscoreError], *args: object) -> object:
        return self._call_guarded(f"{name}()", error, self.functions[name], *args)

    def _call_guarded(self, doing: str, error: type[MpiscoreError],
                      function: Callable[..., Any], *args: object) -> object:
        """``function(*args)`` with the script's output in the log; a failure becomes
        ``error`` in one line, its traceback logged and kept as ``script_traceback``."""
        with self.log.captured():
            try:
                return function(*args)
            except (Exception, SystemExit) as exc:
                failure = error(self._describe(exc))
                text = _user_traceback(exc)
                self.log.mpiscore_logger.error("%s failed:\n%s", doing, text.rstrip())
                failure.script_traceback = text  # type: ignore[attr-defined]
                raise failure from exc

    def _init_in_place(self) -> None:
        """Call ``init()``, then change back to the job's working directory if it moved:
        the job's own relative paths (input, output, run directory) are relative to it,
        and the rows would otherwise go to a partial output in the script's directory.
        Only here: no reader or writer thread runs yet, so none can open a path while the
        directory is another (run() that moves it is the script's to avoid)."""
        cwd = os.getcwd()
        try:
            self._call("init", ModelError)
        finally:
            if (moved := os.getcwd()) != cwd:
                os.chdir(cwd)
                self.log.mpiscore_logger.warning(
                    "init() changed the working directory to %s; mpiscore changed it back to "
                    "%s, the job's (open the script's files by absolute paths)", moved, cwd)

    def _describe(self, exc: BaseException) -> str:
        """``score.py, line 12, in init: ValueError: bad weights (traceback in LOG)``."""
        frames = traceback.extract_tb(exc.__traceback__)
        own = [frame for frame in frames if frame.filename == self.script]
        where = self.script
        if own:
            where = f"{self.script}, line {own[-1].lineno}, in {own[-1].name}"
        if isinstance(exc, SystemExit):
            said = self.log.stderr.last_line or self.log.stdout.last_line
            what = f"exited with status {exc.code}" + (f": {said}" if said else "")
        else:
            text = _first_line(exc)
            what = type(exc).__name__ + (f": {text}" if text else "")
        return f"{where}: {what} (traceback in {self.log.where})"

    @property
    def inputs(self) -> list[TensorSpec]:
        """Empty: a script declares no tensors; it gets the batch's columns as read."""
        return []

    @property
    def columns(self) -> dict[str, Column]:
        """The key of every column its results have had so far, each its own output."""
        return dict(self.seen)

    def fix_schema(self, schema: Mapping[str, tuple[str, tuple[int, ...]]],
                   layouts: Mapping[str, bool]) -> None:
        """Expect these columns (key -> dtype, per-row shape): those the job's probe found,
        so that a scoring process's first batch is held to them too (a script's results
        have no layouts to hold)."""
        self.schema = {key: (np.dtype(dtype), tuple(shape)) for key, (dtype, shape)
                       in schema.items()}

    def score(self, feeds: Mapping[str, object]) -> dict[str, object]:
        """Call ``run`` on the batch's mini-batch; its result as the output action wants."""
        mini_batch, items = self._mini_batch(feeds)
        result = self._call("run", ScoringError, mini_batch)
        action = self.settings.output_action
        if action == "summary_only":
            return {}
        if action == "append_row":
            columns: dict[str, object] = dict(self._lines(result, items))
        else:
            inputs = [value for value in feeds.values() if isinstance(value, np.ndarray)]
            columns = dict(self._rows(result, items, inputs))
        self.seen.update({key: Column(key) for key in columns})
        return columns

    def close(self) -> None:
        """Call the script's ``shutdown()``, if any; then undo what :meth:`open` set up.
        A failing ``shutdown()`` raises a ModelError after the cleanup."""
        try:
            if "shutdown" in self.functions and not self.restored:
                self._call("shutdown", ModelError)
        finally:
            self._restore()

    def _restore(self) -> None:
        global _context
        if self.restored:
            return
        self.restored = True
        _context = None
        sys.argv = self.saved_argv
        for path in self.added_paths:
            with contextlib.suppress(ValueError):
                sys.path.remove(path)
        self.added_paths = []
        if self.module_name:
            sys.modules.pop(self.module_name, None)
        self.log.close()

    # -- what run() gets

    def _mini_batch(self, feeds: Mapping[str, object]) -> tuple[object, int]:
        """The batch as ``run`` takes it, and how many items it holds."""
        if FILE_PATHS in feeds:
            paths = [str(path) for path in feeds[FILE_PATHS]]  # type: ignore[attr-defined]
            return paths, len(paths)
        if not feeds:
            return [], 0
        items = len(next(iter(feeds.values())))  # type: ignore[arg-type]
        if all(isinstance(value, np.ndarray) for value in feeds.values()):
            if len(feeds) == 1 and not self.settings.mapped:
                return next(iter(feeds.values())), items
            return dict(feeds), items
        return tabular_batch(feeds, self.settings.batch_format), items

    # -- what run() returns: rows

    def _rows(self, result: object, items: int, inputs: list[np.ndarray]
              ) -> dict[str, np.ndarray]:
        if result is None:
            raise ScoringError(f"{self.script}: run() returned None for {items} items; return "
                               "one result per item (a list, array, dict of arrays or DataFrame)")
        columns = {key: self._column(key, value, items, inputs)
                   for key, value in result_columns(result, self.script).items()}
        return self._fit(columns)

    def _column(self, key: str, value: object, items: int, inputs: list[np.ndarray]
                ) -> np.ndarray:
        try:
            array = np.asarray(value)
        except ValueError as exc:  # ragged lists
            raise ScoringError(f"{self.script}: run() returned column {key!r} that is not an "
                               f"array: {_first_line(exc)}") from exc
        if array.ndim == 0 or len(array) != items:
            count = 1 if array.ndim == 0 else len(array)
            raise ScoringError(f"{self.script}: run() returned {count} results for {items} "
                               f"items (column {key!r})")
        if array.dtype.kind == "O":
            array = self._objects(key, array)
        if any(np.may_share_memory(array, buffer) for buffer in inputs):
            array = array.copy()  # input buffers are reused by the next read
        return array

    def _objects(self, key: str, array: np.ndarray) -> np.ndarray:
        """Object arrays of strings stay; of numbers become numbers; else the batch fails."""
        flat = array.reshape(-1)
        if all(isinstance(value, str | bytes) for value in flat):
            return array
        with contextlib.suppress(ValueError, TypeError):
            numbers = np.array(flat.tolist()).reshape(array.shape)
            if numbers.dtype.kind in "biuf":
                return numbers
        odd = next(v for v in flat if not isinstance(v, str | bytes))
        raise ScoringError(f"{self.script}: run() returned column {key!r} holding "
                           f"{type(odd).__name__} values ({odd!r}); return numbers, strings "
                           "or arrays of them")

    def _fit(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The first result fixes the columns; later ones must match, cast if need be."""
        if self.schema is None:
            self.schema = {key: (array.dtype, array.shape[1:]) for key, array in columns.items()}
            return columns
        if set(columns) != set(self.schema):
            raise ScoringError(f"{self.script}: run() returned columns {', '.join(columns)}; "
                               f"the first batch had {', '.join(self.schema)}; return the same "
                               "columns for every batch")
        return {key: self._cast(key, columns[key]) for key in self.schema}

    def _cast(self, key: str, array: np.ndarray) -> np.ndarray:
        dtype, shape = self.schema[key]  # type: ignore[index]
        if array.shape[1:] != shape:
            raise ScoringError(f"{self.script}: run() returned column {key!r} with rows of "
                               f"shape {array.shape[1:]}; the first batch's were {shape}")
        strings = (dtype.kind in "SUO", array.dtype.kind in "SUO")
        if all(strings):
            return array  # widths differ; the output's width is checked when written
        if any(strings) or not np.can_cast(array.dtype, dtype, "same_kind") or \
                not fits_integers(array, dtype):
            raise ScoringError(f"{self.script}: run() returned column {key!r} as {array.dtype}; "
                               f"the first batch's was {dtype}, and {array.dtype} does not "
                               f"cast to it safely")
        return array.astype(dtype, copy=False)

    # -- what run() returns: lines

    def _lines(self, result: object, items: int) -> dict[str, object]:
        """One line per returned element (append_row); fewer than ``items`` is allowed
        (the caller counts the rest as failed items), more is not. A line may not
        hold a newline (it would be two lines of the file): the batch fails, naming
        the element."""
        header, rows = result_rows(result, self.script, items)
        if self.settings.csv and header is not None:
            lines = csv_lines(rows)
        else:
            lines = [" ".join(map(str, row)) if isinstance(row, Row) else str(row)
                     for row in rows]
        if len(lines) > items:
            raise ScoringError(f"{self.script}: run() returned {len(lines)} results for "
                               f"{items} items; append_row takes at most one per item")
        for index, line in enumerate(lines):
            if "\n" in line or "\r" in line:
                raise ScoringError(f"{self.script}: run() returned item {index} with a line "
                                   f"break ({line[:40]!r}); append_row writes one line per item")
        columns: dict[str, object] = {LINES: lines}
        if self.settings.csv and header is not None:
            columns[HEADER] = csv_lines([Row(header)])[0]
        return columns


def _module_name(script: str) -> str:
    """The script's module name: its file's stem (``score``), unless that names another
    module, which the script must not shadow: then ``mpiscore_entry_<stem>``."""
    stem = re.sub(r"\W", "_", Path(script).stem) or "script"
    if stem.isidentifier() and stem not in sys.modules:
        try:
            spec = importlib.util.find_spec(stem)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        if spec is None or (origin and Path(origin).resolve() == Path(script).resolve()):
            return stem
    return f"mpiscore_entry_{stem}"

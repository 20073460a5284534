"""An entry script's process log: one file per scoring process in the run directory's
``logs/``, where its ``print()``, the root logger and ``EntryScript().logger`` go, each
line tagged with time, level, rank and pid (script.py opens it)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from ...config import ScriptSettings
from ...errors import OutputError


class TaggedStream(io.TextIOBase):
    """A text stream that writes each complete line to ``sink`` with a log-style tag, so
    that ``print()`` output reads like the log records around it."""

    def __init__(self, sink: TextIO, tag: str) -> None:
        super().__init__()
        self.sink, self.tag, self.pending, self.last_line = sink, tag, "", ""

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"  # libraries that ask (click, tqdm) get an answer, not None

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def end_line(self) -> None:
        """Write a last line left without its newline."""
        if self.pending:
            self._emit(self.pending)
            self.pending = ""
        self.sink.flush()

    def _emit(self, line: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        self.sink.write(f"{stamp},{int(now * 1000) % 1000:03d} {self.tag}: {line}\n")
        if line.strip():
            self.last_line = line.strip()


class ProcessLog:
    """This process's script log: a file (or stderr), a handler on the root logger and
    on ``EntryScript().logger``, and streams that stand in for stdout and stderr."""

    def __init__(self, settings: ScriptSettings, rank: int) -> None:
        tag = f"rank {rank} pid {os.getpid()}"
        self.owned = bool(settings.log_dir)
        if self.owned:
            path = Path(settings.log_dir) / f"script-rank{rank}-pid{os.getpid()}.log"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.stream: TextIO = path.open("a", buffering=1, encoding="utf-8",
                                                errors="backslashreplace")
            except OSError as exc:
                raise OutputError(f"{path}: cannot open the entry script's log: "
                                  f"{exc.strerror or exc}") from exc
            self.where = str(path)
        else:
            self.stream, self.where = sys.stderr, "stderr"
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {tag} %(name)s: %(message)s"))
        self.stdout = TaggedStream(self.stream, f"PRINT {tag} stdout")
        self.stderr = TaggedStream(self.stream, f"PRINT {tag} stderr")
        self.entry_logger = self._own_logger("EntryScript")
        self.mpiscore_logger = self._own_logger("mpiscore.script")
        root = logging.getLogger()
        self.root_level = root.level
        root.addHandler(self.handler)
        root.setLevel(min(root.level, logging.INFO))  # Azure's default level

    def _own_logger(self, name: str) -> logging.Logger:
        logger = logging.getLogger(name)
        logger.addHandler(self.handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # still here if the script reconfigures the root logger
        return logger

    @contextlib.contextmanager
    def captured(self) -> Iterator[None]:
        """The script's ``print()`` and writes to ``sys.stderr`` go to the log meanwhile."""
        self.stdout.last_line = self.stderr.last_line = ""
        with contextlib.redirect_stdout(self.stdout), contextlib.redirect_stderr(self.stderr):
            try:
                yield
            finally:
                self.stdout.end_line()
                self.stderr.end_line()

    def close(self) -> None:
        for logger in (logging.getLogger(), self.entry_logger, self.mpiscore_logger):
            logger.removeHandler(self.handler)
        logging.getLogger().setLevel(self.root_level)
        if self.owned:
            self.stream.close()

"""``from azureml_user.parallel_run import EntryScript`` in an mpiscore scoring process.

``EntryScript()`` is one object per process (a singleton, as Azure's), with what
entry scripts use of Azure's helper, mapped onto mpiscore:

    logger        this process's script log, RUN_DIR/logs/script-rank<R>-pid<P>.log
                  (stderr when there is no run directory), records tagged with time,
                  level, rank and pid; ``print()`` and the root logger go there too
    output_dir    --output for --output-action summary_only (the directory the script
                  writes into), else the run directory
    log_dir       RUN_DIR/logs, where the script may write files of its own (name
                  them with ``agent_name`` so that processes do not collide)
    working_dir   the current directory when the script was loaded
    agent_name    "rank<R>-pid<P>": unique per scoring process (Azure: "processNNN")
    process_name  the same as agent_name
    node_id       the host name (Azure: the node's index in the cluster)
    entry_script_dir  the script's directory
    rank          mpiscore's own: the MPI rank this scoring process serves

``EntryScript(logging_level="DEBUG")`` sets the logger's level, as Azure's does.
Not supported (Azure-only services with no meaning on a cluster): the run context,
``Run.get_context()``, dataset mounts and uploads of the log folders; ``config``
and other attributes not listed above raise AttributeError.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from mpiscore.scoring.scorers.script import EntryContext, entry_context


class EntryScript:
    """The entry script's view of its process: logger, directories and names."""

    _instance: EntryScript | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> EntryScript:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __init__(self, logging_level: str | int | None = None) -> None:
        if logging_level is not None:
            self.logger.setLevel(logging_level)

    def __reduce__(self) -> tuple[type[EntryScript], tuple[()]]:
        return (self.__class__, ())  # unpickles to this process's own singleton

    @staticmethod
    def _context() -> EntryContext | None:
        return entry_context()

    @property
    def logger(self) -> logging.Logger:
        context = self._context()
        return context.logger if context is not None else logging.getLogger("EntryScript")

    @property
    def working_dir(self) -> str:
        context = self._context()
        return context.working_dir if context is not None else os.getcwd()

    @property
    def output_dir(self) -> str:
        context = self._context()
        return context.output_dir if context is not None and context.output_dir \
            else self.working_dir

    @property
    def log_dir(self) -> str:
        context = self._context()
        return context.log_dir if context is not None and context.log_dir \
            else os.path.join(self.working_dir, "logs")

    @property
    def rank(self) -> int:
        context = self._context()
        return context.rank if context is not None else 0

    @property
    def agent_name(self) -> str:
        return f"rank{self.rank}-pid{os.getpid()}"

    @property
    def process_name(self) -> str:
        return self.agent_name

    @property
    def node_id(self) -> str:
        return socket.gethostname()

    @property
    def entry_script_dir(self) -> str:
        context = self._context()
        script = context.script if context is not None else ""
        return str(Path(script).resolve().parent) if script else self.working_dir


__all__ = ["EntryScript"]

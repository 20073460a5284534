"""The one exception hierarchy of mpiscore, and the exit code of each error.

    MpiscoreError            anything mpiscore reports to the user (exit 1)
     +-- ConfigError         options that contradict each other or make no sense (exit 2)
     +-- InputError          missing or malformed input files, datasets, columns (exit 3)
     +-- ModelError          unreadable model, or a model that does not fit the data (exit 4)
     +-- ScoringError        ONNX Runtime failed on a batch (exit 5)
     +-- OutputError         output exists, is not writable or could not be written (exit 6)
     +-- Interrupted         stopped by a signal; resumable with --resume (exit 75)

Messages name the object and where: ``data/x.h5:/features rows 0-4095: ...``.
"""

from __future__ import annotations


class MpiscoreError(Exception):
    """Root of every error mpiscore raises on purpose.

    ``collective`` is True when every rank raised the same error at the same
    point (errors found while setting up the job are broadcast from rank 0),
    so the entry point can exit cleanly instead of aborting the MPI job.
    """

    exit_code = 1

    def __init__(self, message: str, *, collective: bool = False) -> None:
        super().__init__(message)
        self.collective = collective

    def as_collective(self) -> MpiscoreError:
        """Return this error marked as raised on every rank."""
        self.collective = True
        return self


class ConfigError(MpiscoreError):
    """The job's options are invalid or inconsistent."""

    exit_code = 2


class InputError(MpiscoreError):
    """An input file, dataset or column is missing, empty or malformed."""

    exit_code = 3


class ModelError(MpiscoreError):
    """The model cannot be loaded or does not match the input data."""

    exit_code = 4


class ScoringError(MpiscoreError):
    """Scoring a batch failed."""

    exit_code = 5


class OutputError(MpiscoreError):
    """The output cannot be created or written."""

    exit_code = 6


class Interrupted(MpiscoreError):
    """The job stopped early on SIGTERM/SIGINT; ``--resume`` finishes it.

    Exit code 75 (EX_TEMPFAIL) tells a batch script the job can be resumed.
    """

    exit_code = 75

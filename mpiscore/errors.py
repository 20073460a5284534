"""The one exception hierarchy of mpiscore, and the exit code of each error.

    MpiscoreError            anything mpiscore reports to the user (exit 1)
     +-- ConfigError         options that contradict each other or make no sense (exit 2)
     +-- InputError          missing or malformed input files, datasets, columns (exit 3)
     |    +-- InputChanged   an input file was modified while the job ran (exit 3)
     +-- ModelError          unreadable model, or a model that does not fit the data (exit 4)
     +-- ScoringError        a batch could not be scored; more such than the error budget
     |                       allows end the job (exit 5)
     +-- OutputError         output exists, is not writable or could not be written (exit 6)
     |    +-- StorageError   the disk is full, over quota, read-only or failing (exit 6):
     |                       the job stops at once, resumable; never a batch's failure
     +-- ScoringProcessError a scoring process died loading the model, idle or starting,
     |                       or did not start in time: infrastructure, not the budget (exit 7)
     +-- Interrupted         stopped by a signal; resumable with --resume (exit 75)
     +-- AlreadyComplete     this very job's output is complete already: nothing to do (exit 0)

Messages name the object and where: ``data/x.h5:/features rows 0-4095: ...``.
"""

from __future__ import annotations

import errno


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


class InputChanged(InputError):
    """An input file was modified while the job read it; an output mixing its old
    and new rows would be wrong, so the job stops and the output stays partial."""


class ModelError(MpiscoreError):
    """The model cannot be loaded or does not match the input data."""

    exit_code = 4


class AmbiguousRows(ModelError):
    """An output's layout cannot be told from this many rows (a sequence of as many
    tensors as rows, each that many rows long: one per row, or one per target?); the
    probe scores another number of rows."""


class ScoringError(MpiscoreError):
    """Scoring a batch failed."""

    exit_code = 5


class ScoringProcessError(MpiscoreError):
    """A scoring process failed outside any batch: it died while loading the model,
    while idle or while starting, could not set up, or did not start in time.

    Its own exit code (7), apart from ScoringError's error budget (5): a batch
    script can tell a node or installation problem, worth a resubmission
    elsewhere, from data the model cannot score.
    """

    exit_code = 7


class OutputError(MpiscoreError):
    """The output cannot be created or written."""

    exit_code = 6


class StorageError(OutputError):
    """The output or run directory's storage refused a write: full, over quota, too
    big for a file-size limit, read-only, or failing. Not the batch's fault, so it
    stops the job at once instead of being retried and counted against the error
    budget; once there is space again, ``--resume`` finishes the job."""


STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the storage refusing a write."""
    while exc is not None:
        if isinstance(exc, StorageError) or (
                isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


# What to do about the storage, by errno (the rest: free space, or raise the limit)
_STORAGE_FIXES = {errno.EROFS: "make it writable (a read-only filesystem or mount)",
                  errno.EIO: "check the storage (an I/O error: a failing disk or server)"}
RESUME, RERUN = "rerun with --resume", "rerun the same command"


def storage_error(path: object, exc: OSError, doing: str, then: str = RESUME) -> OutputError:
    """The one-line error for a failed write of ``path``: a StorageError, naming the
    errno and what to do, when the storage refused it; else an OutputError. ``then``:
    RERUN where the failure came before anything was made (a lock, the output's
    creation), so there is nothing to resume."""
    code = errno.errorcode.get(exc.errno or 0, "")
    text = " ".join(str(exc.strerror or exc).split())  # one line, even for HDF5's messages
    reason = f"{text} ({code})" if code else text
    if exc.errno in STORAGE_ERRNOS:
        fix = _STORAGE_FIXES.get(exc.errno, "free space (or raise the quota or limit)")
        return StorageError(f"{path}: {doing}: {reason}; {fix}, then {then}")
    return OutputError(f"{path}: {doing}: {reason}")


class Interrupted(MpiscoreError):
    """The job stopped early on SIGTERM/SIGINT; ``--resume`` finishes it.

    Exit code 75 (EX_TEMPFAIL) tells a batch script the job can be resumed.
    """

    exit_code = 75


class AlreadyComplete(MpiscoreError):
    """The output is complete and the run directory's fingerprint is this job's (same
    model, inputs, plan and output): a requeued or resubmitted job has nothing to do.

    Exit code 0: the job's work is done, so a batch script or workflow goes on.
    """

    exit_code = 0


def error_class(name: str) -> type[MpiscoreError]:
    """The error class called ``name`` (error kinds travel between processes by name)."""
    kinds = {cls.__name__: cls for cls in _subclasses(MpiscoreError)}
    return kinds.get(name, MpiscoreError)


def _subclasses(cls: type[MpiscoreError]) -> list[type[MpiscoreError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _subclasses(sub))]

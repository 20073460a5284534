"""A job's exclusive hold on its output and run directory, for its whole life.

Two jobs writing one output would each think the other's rows are theirs, so
before anything on disk is touched, rank 0's job takes a lock file beside the
output (``OUTPUT.lock``) and one in the run directory (``RUN_DIR/lock``). The
rule, chosen to work on the filesystems clusters have (Lustre, GPFS, NFSv3+,
local disks), where ``flock`` is often not coherent across nodes:

- A lock is taken by creating its file with ``O_CREAT | O_EXCL``, which is
  atomic on all of them. It holds JSON naming its job: host, rank 0's pid, the
  Slurm job id, when it started, and a random token.
- Rank 0 refreshes it (sets its mtime) every REFRESH_SECONDS while the job
  runs, checking it is still its own, and removes it when the job ends, however
  it ends short of a kill.
- A lock left by a killed job is stale, and the next job takes it over (saying
  so): on the same host when its pid is gone; from the same Slurm job id (a
  requeued job) when it is not this process; from anywhere when it has not been
  refreshed for STALE_SECONDS. Otherwise the job is refused, naming the holder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import RERUN, OutputError, storage_error
from .placement import slurm_ids
from .report import LOG
from .tuning import REFRESH_SECONDS, STALE_SECONDS


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: the job's rank 0 process."""

    host: str
    pid: int
    slurm_job_id: str | None
    started: float
    token: str
    slurm_restart: int = 0  # SLURM_RESTART_COUNT: which run of a requeued job

    @classmethod
    def here(cls) -> LockOwner:
        """This process, as the owner of a job starting now."""
        ids = slurm_ids() or {}
        job_id = str(ids["job_id"]) if "job_id" in ids else None
        if "array_task_id" in ids:  # one output per array task: each its own job
            job_id = f"{ids.get('array_job_id', job_id)}_{ids['array_task_id']}"
        return cls(socket.gethostname(), os.getpid(), job_id, time.time(),
                   os.urandom(8).hex(), int(ids.get("restart_count", 0)))

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        job = f"Slurm job {self.slurm_job_id}, " if self.slurm_job_id else ""
        return f"{job}pid {self.pid} on {self.host}, started {since}"


@dataclass
class JobLock:
    """The lock files a job holds, refreshed and released by rank 0."""

    paths: tuple[Path, ...]
    owner: LockOwner
    created: tuple[Path, ...] = ()  # directories made to hold a lock: gone with it if empty
    refreshed: float = field(default_factory=time.monotonic)

    def refresh(self, taken: bool = True) -> None:
        """Every REFRESH_SECONDS: check the locks are still ours and mark them alive.

        ``taken=False`` while the job is still being set up (its locks may not be
        taken yet, or be another job's): mark alive only those that are ours."""
        if time.monotonic() - self.refreshed < REFRESH_SECONDS:
            return
        self.refreshed = time.monotonic()
        now = time.time()
        for path in self.paths:
            holder = _holder(path)
            if holder is None:  # removed by hand: nothing to mark
                continue
            if holder.token != self.owner.token:
                if taken:
                    raise OutputError(f"{path}: the lock was taken over by another job "
                                      f"({holder.describe()}); this job stops, its output "
                                      "partial")
                continue
            with contextlib.suppress(OSError):  # a missed beat is harmless; many are not
                os.utime(path, (now, now))

    def confirm(self) -> None:
        """:meth:`refresh` now, however recent the last: before a job names its output
        OUTPUT, the output must still be its own (a job that took the lock over may be
        writing the partial)."""
        self.refreshed = float("-inf")
        self.refresh()

    def release(self) -> None:
        """Remove the locks that are still ours (idempotent)."""
        for path in self.paths:
            holder = _holder(path)
            if holder is not None and holder.token == self.owner.token:
                with contextlib.suppress(OSError):
                    path.unlink()
        for directory in self.created:
            with contextlib.suppress(OSError):  # not empty: the job wrote its records
                directory.rmdir()


def lock_paths(output: Path, run_dir: Path) -> tuple[Path, ...]:
    """The lock files of a job: beside its output, and in its run directory."""
    return output.with_name(output.name + ".lock"), run_dir / "lock"


def acquire(paths: tuple[Path, ...], owner: LockOwner) -> JobLock:
    """Take every lock of ``paths`` (creating the run directory for the last one), or
    raise an OutputError naming the job that holds one, taking none."""
    taken: list[Path] = []
    created: list[Path] = []
    try:
        for path in paths:
            if not path.parent.exists():
                _make_directory(path)
                created.append(path.parent)
            _claim(path, owner)
            taken.append(path)
    except BaseException:
        JobLock(tuple(taken), owner, tuple(created)).release()
        raise
    return JobLock(paths, owner, tuple(created))


def _make_directory(lock: Path) -> None:
    try:
        lock.parent.mkdir()
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise OutputError(f"{lock.parent}: cannot be created: directory "
                          f"{lock.parent.parent} does not exist") from None
    except OSError as exc:
        raise storage_error(lock.parent, exc, "cannot create the directory", RERUN) from exc


def _claim(path: Path, owner: LockOwner) -> None:
    record = json.dumps(asdict(owner)).encode()
    for _ in range(3):  # a stale lock broken, then ours; another job may race us for it
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _take_over_if_stale(path, owner)
            continue
        except FileNotFoundError:
            raise OutputError(f"{path.with_suffix('')}: directory {path.parent} does not "
                              "exist") from None
        except OSError as exc:
            raise storage_error(path, exc, "cannot create the job's lock file", RERUN) \
                from exc
        try:
            if os.write(fd, record) != len(record):  # the disk just filled up
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            path.unlink()
            raise storage_error(path, exc, "cannot write the job's lock file", RERUN) \
                from exc
        os.close(fd)
        return
    raise OutputError(f"{path}: another job keeps taking this lock; make sure only one job "
                      "writes this output")


def check_free(paths: tuple[Path, ...], owner: LockOwner) -> None:
    """Refuse, as :func:`acquire` would, where a live job holds one of ``paths``; take
    nothing (a dry run answers as the job would, and changes nothing)."""
    for path in filter(Path.exists, paths):
        holder = _holder(path)
        _refuse_if_held(path, holder, _why_stale(path, holder, owner), owner)


def _take_over_if_stale(path: Path, owner: LockOwner) -> None:
    """Remove the lock at ``path`` if its job is gone, saying so; else refuse the job."""
    holder = _holder(path)
    why = _why_stale(path, holder, owner)
    _refuse_if_held(path, holder, why, owner)
    LOG.warning("%s: the job that held this lock %s; taking it over", path, why)
    with contextlib.suppress(FileNotFoundError):  # another job took it over first
        path.unlink()


def _refuse_if_held(path: Path, holder: LockOwner | None, why: str | None,
                    owner: LockOwner) -> None:
    """The refusal of ``owner``'s job, whose lock ``path`` another holds (``why`` it is
    stale: None); a holder of the same Slurm job is another of its steps."""
    target = path.with_suffix("") if path.name.endswith(".lock") else path.parent
    if why is None and holder is None:
        raise OutputError(f"{target}: another job is taking its lock {path} right now (or "
                          "left it unreadable); retry in a few seconds, or delete it if no "
                          "job uses this output")
    if why is None:
        assert holder is not None
        same_job = holder.slurm_job_id is not None and holder.slurm_job_id == owner.slurm_job_id
        other = "another step of this Slurm job" if same_job else "another mpiscore job"
        raise OutputError(
            f"{target}: in use by {other} ({holder.describe()}; lock {path}); "
            "wait for it to end or choose another --output/--run-dir (if that job is "
            f"gone, the lock goes stale within {STALE_SECONDS:.0f}s, or delete {path})")


def _why_stale(path: Path, holder: LockOwner | None, owner: LockOwner) -> str | None:
    """How the holder of ``path`` is known to be gone, or None if it may be alive."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "just released it"
    if holder is None:  # half-written by a job killed while taking it, or not ours
        return f"left it unreadable {age:.0f}s ago" if age > REFRESH_SECONDS else None
    same_host = holder.host == owner.host
    if same_host and holder.pid != owner.pid and not pid_alive(holder.pid):
        return f"({holder.describe()}) died: its process is gone"
    if holder.slurm_job_id and holder.slurm_job_id == owner.slurm_job_id and \
            holder.slurm_restart < owner.slurm_restart:
        return f"({holder.describe()}) was an earlier run of this Slurm job"
    if age > STALE_SECONDS:
        return f"({holder.describe()}) stopped refreshing it {age:.0f}s ago"
    return None


def _holder(path: Path) -> LockOwner | None:
    """Who the lock at ``path`` names, or None when absent or unreadable."""
    try:
        said = json.loads(path.read_bytes())
        known = {f.name for f in fields(LockOwner)}  # a later mpiscore may say more
        return LockOwner(**{k: v for k, v in said.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie, whose parent was
    killed and which nobody reaps, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: the pid exists
    return state not in ("Z", "X")

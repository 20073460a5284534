"""Job locks: taken atomically, refused while their job lives, taken over once it is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from mpiscore.errors import OutputError
from mpiscore.lock import STALE_SECONDS, LockOwner, acquire, check_free, lock_paths


def paths(tmp_path: Path) -> tuple[Path, ...]:
    return lock_paths(tmp_path / "y.h5", tmp_path / "y.h5.run")


def held_by(path: Path, owner: LockOwner, age: float = 0.0) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(asdict(owner)))
    os.utime(path, (time.time() - age, time.time() - age))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_acquire_and_release_leave_nothing(tmp_path: Path) -> None:
    lock = acquire(paths(tmp_path), LockOwner.here())
    assert all(p.exists() for p in lock.paths)
    assert json.loads(lock.paths[0].read_text())["pid"] == os.getpid()
    lock.release()
    assert not any(p.exists() for p in lock.paths)
    assert not (tmp_path / "y.h5.run").exists()  # made for the lock, and empty


def test_a_live_job_is_named_and_nothing_is_taken(tmp_path: Path) -> None:
    other = replace(LockOwner.here(), pid=os.getppid(), slurm_job_id="4242", token="other")
    held_by(paths(tmp_path)[1], other)
    with pytest.raises(OutputError, match=r"in use by another mpiscore job \(Slurm job 4242, "
                       rf"pid {os.getppid()} on"):
        acquire(paths(tmp_path), LockOwner.here())
    assert not paths(tmp_path)[0].exists()  # the first lock, taken, was given back


def test_stale_locks_are_taken_over(tmp_path: Path) -> None:
    me = LockOwner.here()
    dead = replace(me, pid=dead_pid(), token="dead")
    held_by(paths(tmp_path)[0], dead)
    acquire(paths(tmp_path), me).release()
    far = replace(me, host="nid00042", token="far")
    held_by(paths(tmp_path)[0], far, age=STALE_SECONDS + 5)
    acquire(paths(tmp_path), me).release()
    held_by(paths(tmp_path)[0], far)  # another node, still refreshing: alive
    with pytest.raises(OutputError, match="nid00042"):
        acquire(paths(tmp_path), me)


def test_a_requeued_slurm_job_takes_its_own_lock(tmp_path: Path) -> None:
    """Its run before (SLURM_RESTART_COUNT one less) is gone, wherever it ran."""
    me = replace(LockOwner.here(), slurm_job_id="77", slurm_restart=1)
    held_by(paths(tmp_path)[0], replace(me, host="nid00001", pid=1, token="before",
                                        slurm_restart=0))
    acquire(paths(tmp_path), me).release()


def test_another_live_step_of_the_same_slurm_job_keeps_its_lock(tmp_path: Path) -> None:
    """Two ``srun`` steps of one job run at once: the same job id and run, a live pid
    (here, or on another node still refreshing it) is a job to wait for, not to take."""
    me = replace(LockOwner.here(), slurm_job_id="77")
    for other in (replace(me, pid=os.getppid(), token="step 1"),
                  replace(me, host="nid00001", pid=1, token="step 1 elsewhere")):
        held_by(paths(tmp_path)[0], other)
        with pytest.raises(OutputError, match=r"in use by another step of this Slurm job "
                                              r"\(Slurm job 77.*wait for it to end"):
            acquire(paths(tmp_path), me)


def test_a_lock_naming_more_than_this_mpiscore_knows_is_still_read(tmp_path: Path) -> None:
    """A later mpiscore may record more of its job: the holder is still known, not taken
    for an unreadable lock (taken over once its file is old)."""
    holder = replace(LockOwner.here(), pid=os.getppid(), token="later")
    paths(tmp_path)[0].write_text(json.dumps({**asdict(holder), "gpu": "0"}))
    with pytest.raises(OutputError, match="in use by another mpiscore job"):
        acquire(paths(tmp_path), LockOwner.here())


def test_refresh_notices_a_lock_taken_over(tmp_path: Path) -> None:
    lock = acquire(paths(tmp_path), LockOwner.here())
    held_by(lock.paths[0], replace(lock.owner, token="thief"))
    lock.refreshed = time.monotonic() - 1000
    with pytest.raises(OutputError, match="taken over"):
        lock.refresh()
    lock.release()
    assert lock.paths[0].exists()  # not ours to remove


def test_a_zombie_holder_is_gone(tmp_path: Path) -> None:
    """A rank whose launcher was killed can linger as a zombie nobody reaps."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    me = LockOwner.here()
    held_by(paths(tmp_path)[0], replace(me, pid=child.pid, token="zombie"))
    acquire(paths(tmp_path), me).release()
    child.wait()


def test_a_lock_being_written_is_not_taken_and_says_so(tmp_path: Path) -> None:
    lock = paths(tmp_path)[0]
    lock.write_text("")  # created by another job, its record not written yet
    with pytest.raises(OutputError, match=r"taking its lock .* right now"):
        acquire(paths(tmp_path), LockOwner.here())
    os.utime(lock, (time.time() - 60, time.time() - 60))  # never written: left by a kill
    acquire(paths(tmp_path), LockOwner.here()).release()


def test_a_storage_refusal_says_what_to_fix_and_whether_to_resume() -> None:
    import errno

    from mpiscore.errors import RERUN, StorageError, storage_error

    full = storage_error("y.h5.partial", OSError(errno.ENOSPC, "No space left on device"),
                         "cannot finish the output")
    assert isinstance(full, StorageError) and str(full) == (
        "y.h5.partial: cannot finish the output: No space left on device (ENOSPC); free space "
        "(or raise the quota or limit), then rerun with --resume")
    read_only = storage_error("y.h5.lock", OSError(errno.EROFS, "Read-only file system"),
                              "cannot create the job's lock file", RERUN)
    assert str(read_only) == (
        "y.h5.lock: cannot create the job's lock file: Read-only file system (EROFS); make it "
        "writable (a read-only filesystem or mount), then rerun the same command")
    other = storage_error("y.h5", OSError(errno.EACCES, "Permission denied"), "cannot write")
    assert not isinstance(other, StorageError) and "rerun" not in str(other)


def test_confirm_checks_at_once_however_recent_the_last_refresh(tmp_path: Path) -> None:
    lock = acquire(paths(tmp_path), LockOwner.here())
    lock.confirm()  # ours
    held_by(lock.paths[0], replace(lock.owner, token="thief"))
    lock.refresh()  # refreshed just now: it does not look yet
    with pytest.raises(OutputError, match="taken over"):
        lock.confirm()
    lock.release()


def test_check_free_refuses_a_live_holder_and_takes_nothing(tmp_path: Path) -> None:
    """What a dry run asks: the job's answer, without taking or removing any lock."""
    me = LockOwner.here()
    check_free(paths(tmp_path), me)  # no lock at all
    held_by(paths(tmp_path)[0], replace(me, pid=os.getppid(), token="live"))
    with pytest.raises(OutputError, match="in use by another mpiscore job"):
        check_free(paths(tmp_path), me)
    held_by(paths(tmp_path)[0], replace(me, pid=dead_pid(), token="dead"))
    check_free(paths(tmp_path), me)  # stale: the job would take it over
    assert json.loads(paths(tmp_path)[0].read_text())["token"] == "dead"  # left as it was

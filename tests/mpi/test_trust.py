"""A file named OUTPUT is complete and right, or it does not exist: real faults under mpiexec.

Each test makes the fault happen for real: a file-size limit set on rank 0
while it runs (as a quota would), a second job on the same output, an input
rewritten in place, a real full filesystem, a hangup signal. Outputs are
compared bitwise with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.dataset as ds
import pytest

from tests import builders
from tests.mpi.launch import error_lines, finish, mpiscore, rank_pids, wait_for_batches

ROWS = 1200


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("trust")
    x = builders.features(ROWS, seed=21)
    files = {"model": builders.mlp(folder / "mlp.onnx"),
             "h5": builders.write_h5(folder / "x.h5", features=x),
             "other": builders.write_h5(folder / "other.h5", features=x[::-1].copy()),
             "parquet": builders.write_parquet(folder / "x.parquet", x, np.arange(ROWS),
                                               row_group_size=100)}
    for batch in (4, 40):
        files[f"clean{batch}"] = folder / f"clean{batch}.h5"
        result = mpiscore(2, *job(files, files[f"clean{batch}"], batch))
        assert result.returncode == 0, result.stderr
    return files


def job(files: dict[str, Path], out: Path, batch: int = 40, *extra: object) -> list[object]:
    return ["--model", files["model"], "--input", files["h5"], "--output", out,
            "--mini-batch-size", batch, "--intra-op-threads", 1, *extra]


def identical(path: Path, clean: Path) -> None:
    with h5py.File(path, "r") as got, h5py.File(clean, "r") as want:
        assert got.attrs["mpiscore_status"] == "complete"
        for name in ("logits", "label", "row_status"):
            assert got[name][()].tobytes() == want[name][()].tobytes(), name


def own_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mpiscore:")]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_journal_torn_by_a_file_size_limit_then_resume_is_exact(data, tmp_path, jobs) -> None:
    """The reported fault: rank 0's file size capped mid-run tore a journal record;
    the resume then trusted a merged record and completed with rows of zeros."""
    out = tmp_path / "y.h5"
    process = jobs(2, *job(data, out, 4), faults="sleep:0.02")
    wait_for_batches(process, out, 200)
    size = Path(f"{out}.run/journal.txt").stat().st_size
    limit = size + 7  # inside the next record or two
    resource.prlimit(rank_pids(out)[0], resource.RLIMIT_FSIZE, (limit, limit))
    code, stderr = finish(process)
    assert code == 6, stderr
    lines = own_lines(stderr)
    assert len(lines) == 1 and "journal.txt" in lines[0] and "EFBIG" in lines[0], stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    report = summary(Path(f"{out}.run"))
    assert report["status"] == "failed" and report["error"] == "StorageError"
    assert report["batches_failed"] == 0
    result = mpiscore(2, *job(data, out, 4, "--resume"))
    assert result.returncode == 0, result.stderr
    identical(out, data["clean4"])


@pytest.mark.parametrize("output", ["y.h5", "y.parquet"])
def test_a_second_job_on_the_same_output_is_refused(data, tmp_path, output, jobs) -> None:
    out = tmp_path / output
    first = jobs(2, *job(data, out), faults="sleep:0.1")
    wait_for_batches(first, out, 2)
    holder = rank_pids(out)[0]
    second = mpiscore(1, *job(data, out, 40, "--overwrite"))
    assert second.returncode == 6, second.stderr
    [line] = error_lines(second)
    assert "in use by another mpiscore job" in line and f"pid {holder}" in line
    code, stderr = finish(first)
    assert code == 0, stderr
    if output.endswith(".h5"):
        identical(out, data["clean40"])
    else:
        table = ds.dataset(out).to_table()
        with h5py.File(data["clean40"], "r") as want:
            assert table["label"].to_numpy().tobytes() == want["label"][()].tobytes()
    assert not Path(f"{out}.lock").exists() and not Path(f"{out}.run/lock").exists()


@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_job_says_it_died_and_its_lock_is_taken_over(data, tmp_path, killed, jobs) -> None:
    out = tmp_path / "y.h5"
    process = jobs(2, *job(data, out), faults="sleep:0.05")
    wait_for_batches(process, out, 3)
    os.kill(rank_pids(out)[killed], signal.SIGKILL)
    _, stderr = finish(process)
    [line] = own_lines(stderr)  # said once, by rank 0's scoring process, which outlives it
    assert "the job died: rank 0 of 2" in line and "--resume" in line
    # the other rank's death is named (which came first, the launcher's output says)
    assert re.search(r"; rank 1 of 2 \(\S+\) died too, \d+ ms (before|after) it \(", line), line
    assert Path(f"{out}.lock").exists()  # left behind by the kill
    deadline = time.monotonic() + 10  # written by rank 0's scoring process as it goes
    while summary(Path(f"{out}.run"))["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    report = summary(Path(f"{out}.run"))
    assert report["status"] == "died" and "rank 0 of 2" in report["stop_reason"]
    [died] = history(Path(f"{out}.run"))  # the job's totals and `mpiscore slurm` count it
    assert died["status"] == "died" and died["stop_reason"] == report["stop_reason"]
    assert died["ranks"] == 2 and died["wall_seconds"] > died["setup_seconds"] > 0
    assert 0 <= died["rows_scored"] <= ROWS and isinstance(died["batches_done"], int)
    assert report["job"] == {"runs": 1, "wall_seconds": died["wall_seconds"],
                             "rows_scored": died["rows_scored"],
                             "history": str(Path(f"{out}.run/history.jsonl"))}
    result = mpiscore(2, *job(data, out, 40, "--resume"))
    assert result.returncode == 0, result.stderr
    assert "died" in result.stderr and "taking it over" in result.stderr
    identical(out, data["clean40"])
    assert [run["status"] for run in history(Path(f"{out}.run"))] == ["died", "complete"]
    assert summary(Path(f"{out}.run"))["job"]["runs"] == 2


def test_overwrite_never_deletes_an_input_or_a_foreign_directory(data, tmp_path) -> None:
    source = tmp_path / "x.h5"
    shutil.copy(data["h5"], source)
    before = source.read_bytes()
    result = mpiscore(1, "--model", data["model"], "--input", source, "--output", source,
                      "--overwrite")
    assert result.returncode == 6 and "input" in error_lines(result)[0], result.stderr
    assert source.read_bytes() == before
    folder = tmp_path / "isdir.h5"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    result = mpiscore(1, *job(data, folder, 40, "--overwrite"))
    assert result.returncode == 6 and "did not write" in error_lines(result)[0]
    assert (folder / "precious.txt").read_text() == "keep me"
    result = mpiscore(1, "--model", data["model"], "--input", data["parquet"], "--columns",
                      "f*", "--output", tmp_path, "--overwrite")  # a folder holding an input
    assert result.returncode == 6 and "did not write" in error_lines(result)[0]
    assert data["parquet"].exists()


def test_a_partial_output_needs_resume_or_overwrite(data, tmp_path, jobs) -> None:
    out = tmp_path / "y.h5"
    process = jobs(2, *job(data, out), faults="sleep:0.05")
    wait_for_batches(process, out, 3)
    process.send_signal(signal.SIGTERM)
    assert finish(process)[0] == 75
    partial = Path(f"{out}.partial").read_bytes()
    result = mpiscore(2, *job(data, out))
    assert result.returncode == 6, result.stderr
    [line] = error_lines(result)
    assert "--resume (resume=True) to finish it" in line
    assert "--overwrite (overwrite=True) to discard it" in line
    assert Path(f"{out}.partial").read_bytes() == partial  # untouched
    assert mpiscore(2, *job(data, out, 40, "--overwrite")).returncode == 0
    identical(out, data["clean40"])


def test_an_input_rewritten_in_place_stops_the_job(data, tmp_path, jobs) -> None:
    source = tmp_path / "x.h5"
    shutil.copy(data["h5"], source)
    inode = source.stat().st_ino
    out = tmp_path / "y.h5"
    args = job(data, out)
    args[args.index(data["h5"])] = source
    process = jobs(2, *args, faults="sleep:0.05")
    wait_for_batches(process, out, 3)
    time.sleep(0.01)  # a later mtime even on coarse clocks
    shutil.copyfile(data["other"], source)  # cp over it: same inode, other rows
    assert source.stat().st_ino == inode
    code, stderr = finish(process)
    assert code == 3, stderr
    lines = own_lines(stderr)
    assert len(lines) == 1 and str(source) in lines[0] and "changed" in lines[0], stderr
    assert not out.exists()
    assert summary(Path(f"{out}.run"))["error"] == "InputChanged"


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A real 1 MiB filesystem (tmpfs), so writes meet a real ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_a_full_disk_stops_the_job_at_once_and_resume_finishes(data, tmp_path,
                                                               small_disk) -> None:
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - 28 * 1024))  # room for the file's head and a few batches
    out, run_dir = small_disk / "y.h5", tmp_path / "run"
    started = time.monotonic()
    result = mpiscore(2, *job(data, out, 40, "--run-dir", run_dir))
    assert result.returncode == 6, result.stderr
    assert time.monotonic() - started < 30
    [line] = error_lines(result)
    assert "StorageError" in line and "ENOSPC" in line and str(out) in line
    report = summary(run_dir)
    assert report["batches_failed"] == 0 and report["error"] == "StorageError"
    assert "ENOSPC" in report["stop_reason"] and report["batches_done"] < report["batches"]
    filler.unlink()
    result = mpiscore(2, *job(data, out, 40, "--run-dir", run_dir, "--resume"))
    assert result.returncode == 0, result.stderr
    identical(out, data["clean40"])


def test_a_full_run_directory_is_one_line_and_exit_6(data, tmp_path, small_disk) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 4096))
    result = mpiscore(2, *job(data, tmp_path / "y.h5", 40, "--run-dir", small_disk / "run"))
    assert result.returncode == 6, result.stderr
    [line] = error_lines(result)
    assert "ENOSPC" in line and "Traceback" not in result.stderr


def test_sighup_drains_like_sigterm(data, tmp_path, jobs) -> None:
    out = tmp_path / "y.h5"
    process = jobs(2, *job(data, out), faults="sleep:0.05")
    wait_for_batches(process, out, 3)
    for pid in rank_pids(out).values():  # what a closed terminal sends its processes
        os.kill(pid, signal.SIGHUP)
    code, stderr = finish(process)
    assert code == 75, stderr
    assert summary(Path(f"{out}.run"))["status"] == "stopped"
    result = mpiscore(2, *job(data, out, 40, "--resume"))
    assert result.returncode == 0, result.stderr
    identical(out, data["clean40"])


def test_a_disk_full_while_creating_the_output_leaves_nothing_behind(data, tmp_path,
                                                                      small_disk) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 8 * 1024))
    out = small_disk / "y.h5"
    result = mpiscore(2, *job(data, out, 40, "--run-dir", tmp_path / "run"))
    assert result.returncode == 6, result.stderr
    [line] = error_lines(result)
    assert "ENOSPC" in line and "Traceback" not in result.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    filler.unlink()
    result = mpiscore(2, *job(data, out, 40, "--run-dir", tmp_path / "run"))  # as first asked
    assert result.returncode == 0, result.stderr
    identical(out, data["clean40"])


def test_a_write_refused_by_storage_leaves_summary_and_journal_agreeing(data, tmp_path,
                                                                        jobs) -> None:
    """One scoring process's output writes hit a file-size limit: the job stops (exit 6);
    the batches written meanwhile by the others are journaled, as summary.json counts
    them, so --resume does not score them again."""
    from tests.mpi.campaign import _processes

    out = tmp_path / "y.h5"
    process = jobs(2, *job(data, out, 4), faults="sleep:0.02")
    wait_for_batches(process, out, 20)
    _, scorers = _processes(out)
    resource.prlimit(scorers[-1], resource.RLIMIT_FSIZE, (1000, 1000))
    code, stderr = finish(process)
    assert code == 6, stderr
    assert "EFBIG" in own_lines(stderr)[0], stderr
    run_dir = Path(f"{out}.run")
    records = (run_dir / "journal.txt").read_text().splitlines()[1:]
    assert summary(run_dir)["batches_done"] == len(records), (summary(run_dir), len(records))
    result = mpiscore(2, *job(data, out, 4, "--resume"))
    assert result.returncode == 0, result.stderr
    assert f"{len(records)} of 300 batches already written" in result.stderr, result.stderr
    identical(out, data["clean4"])

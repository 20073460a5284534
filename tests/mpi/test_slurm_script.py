"""``mpiscore slurm``'s script run by bash as Slurm would run it, without Slurm: the
SLURM_* variables a job has, its ranks signalled as ``--signal=TERM@N`` does, then run
again as the requeue (``SLURM_RESTART_COUNT=1``). tests/slurm does the same under a real
Slurm; this needs only mpiexec, and takes seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mpiscore
from tests.mpi import launch

ROWS, BATCH = 400, 20  # 20 batches
SCRIPT = """\
import sys, time
import pandas as pd

def init():
    with open(__file__ + ".argv", "a") as f:
        print(" ".join(sys.argv[1:]), file=f)

def run(mini_batch):
    time.sleep(0.2)
    return pd.DataFrame({"n": mini_batch["f0"].to_numpy() * 2})
"""


# This tree's mpiscore, wherever the command runs (the script cds to its folder)
TREE = {"PYTHONPATH": str(Path(mpiscore.__file__).parents[1])}


def batch_job(folder: Path, restarts: int | None) -> subprocess.Popen[str]:
    """The script in the background as run ``restarts + 1`` of Slurm job 1 of one task."""
    env = {**os.environ, **TREE, "SLURM_NTASKS": "1", "SLURM_JOB_ID": "1"}
    env.pop("SLURM_RESTART_COUNT", None)
    if restarts is not None:
        env["SLURM_RESTART_COUNT"] = str(restarts)
    return subprocess.Popen(["bash", "job.sbatch"], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def ranks(job: subprocess.Popen[str], out: Path) -> list[int]:
    """The job's mpiscore ranks: ``mpiscore score ... --output OUT`` with a PMI rank (not
    mpiexec) whose parent is not one (a rank's forked scoring processes look the same)."""
    found: dict[int, int] = {}
    for pid in launch.descendants(job.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        ranked = any(item.startswith(b"PMI_RANK=") for item in env)
        if ranked and b"score" in argv and str(out).encode() in argv:
            found[pid] = parent
    assert found, f"no ranks below {job.pid}"
    return [pid for pid, parent in found.items() if parent not in found]


def finish(job: subprocess.Popen[str]) -> str:
    """The run's log (stdout and stderr) once it ends; a hang fails, and kills it."""
    try:
        out, err = job.communicate(timeout=60)
    finally:
        launch.kill(job)
    return out + err


@pytest.mark.timeout(120)
def test_stopped_script_job_resumes_with_its_words_last(tmp_path: Path) -> None:
    """An entry script's words after --, and a --run-dir: the requeued run gets --resume
    among mpiscore's options (not the script's words), resumes, and completes."""
    (tmp_path / "s.py").write_text(SCRIPT)
    f0 = np.arange(ROWS, dtype=np.float64)
    pq.write_table(pa.table({"f0": f0}), tmp_path / "x.parquet")
    out = tmp_path / "y.parquet"
    options = ["--launcher", "mpiexec", "--time", "1:00:00", "--entry-script", "s.py",
               "--input", "x.parquet", "--output", out, "--run-dir", "r", "--mini-batch-size",
               BATCH, "--stop-grace", 2, "--progress-seconds", 60, "--", "--model_dir",
               "./m x", "--tag", "t"]
    render = subprocess.run([sys.executable, "-m", "mpiscore", "slurm", *map(str, options)],
                            cwd=tmp_path, env={**os.environ, **TREE}, capture_output=True,
                            text=True, timeout=60)
    assert render.returncode == 0, render.stderr
    (tmp_path / "job.sbatch").write_text(render.stdout)
    journal = tmp_path / "r" / "journal.txt"

    first = batch_job(tmp_path, None)
    try:
        launch.wait_until(lambda: journal.exists() and len(journal.read_text().splitlines()) > 3,
                          first, "3 journaled batches")
        for pid in ranks(first, out):
            os.kill(pid, signal.SIGTERM)  # --signal=TERM@N: to the tasks
    finally:
        log = finish(first)
    assert first.returncode == 75, log
    assert out.with_name("y.parquet.partial").exists() and not out.exists()

    second = batch_job(tmp_path, 1)
    log = finish(second)
    assert second.returncode == 0, log
    assert "run 2 at" in log and log.splitlines()[0].endswith(" --resume"), log
    got = pa.concat_tables(pq.read_table(part) for part in sorted(out.glob("part-*.parquet")))
    assert np.array_equal(got.column("n").to_numpy(), f0 * 2)
    words = (tmp_path / "s.py.argv").read_text().splitlines()
    assert words == ["--model_dir ./m x --tag t"] * 2  # one init per run, words only


SUMMARY_SCRIPT = """\
import os, time
from azureml_user.parallel_run import EntryScript

def run(mini_batch):
    time.sleep(0.2)
    first = int(mini_batch["f0"].iloc[0])
    with open(os.path.join(EntryScript().output_dir, f"b{first:04d}-{time.time_ns()}"), "w"):
        pass
    return []
"""


@pytest.mark.timeout(120)
def test_a_requeued_summary_only_job_resumes_into_its_directory(tmp_path: Path) -> None:
    """summary_only's directory has no partial name: the requeue sees the run's records
    and resumes, so no batch writes its file twice."""
    (tmp_path / "s.py").write_text(SUMMARY_SCRIPT)
    pq.write_table(pa.table({"f0": np.arange(ROWS, dtype=np.float64)}), tmp_path / "x.parquet")
    out = tmp_path / "files"
    options = ["--launcher", "mpiexec", "--time", "1:00:00", "--entry-script", "s.py",
               "--input", "x.parquet", "--output", out, "--output-action", "summary_only",
               "--mini-batch-size", BATCH, "--stop-grace", 2, "--progress-seconds", 60]
    render = subprocess.run([sys.executable, "-m", "mpiscore", "slurm", *map(str, options)],
                            cwd=tmp_path, env={**os.environ, **TREE}, capture_output=True,
                            text=True, timeout=60)
    assert render.returncode == 0, render.stderr
    (tmp_path / "job.sbatch").write_text(render.stdout)
    first = batch_job(tmp_path, None)
    try:
        launch.wait_until(lambda: out.is_dir() and len(list(out.iterdir())) > 3, first,
                          "3 batches' files")
        for pid in ranks(first, out):
            os.kill(pid, signal.SIGTERM)
    finally:
        log = finish(first)
    assert first.returncode == 75, log
    second = batch_job(tmp_path, 1)
    log = finish(second)
    assert second.returncode == 0, log
    assert log.splitlines()[0].endswith(" --resume"), log
    starts = sorted(name.split("-")[0] for name in os.listdir(out))
    assert starts == [f"b{first_row:04d}" for first_row in range(0, ROWS, BATCH)], starts

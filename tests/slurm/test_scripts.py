"""The batch scripts in slurm/, submitted for real to a single-node Slurm (conftest.py).

Each test submits a script from slurm/ as a user would, parameterised by its
environment variables for small test data, and checks what the job left: the
MPI world size in summary.json, the output against onnxruntime or against an
uninterrupted run (bitwise, after stop -> requeue -> resume), and the job's
state and restart count in Slurm.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import onnxruntime as ort
import pytest

from tests import builders
from tests.mpi.launch import mpiscore
from tests.slurm.conftest import TERMINAL

SCRIPTS = Path(__file__).parents[2] / "slurm"
ROWS, BATCH = 6000, 50  # 120 batches
ARGS = f"--mini-batch-size {BATCH} --intra-op-threads 1 --progress-seconds 60"
JOB_SECONDS = 120  # the longest a short job may take on a loaded machine


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slurm-data")
    x = builders.features(ROWS, seed=5)
    files = {"model": builders.mlp(folder / "mlp.onnx"),
             "h5": builders.write_h5(folder / "x.h5", features=x), "clean": folder / "clean.h5"}
    result = mpiscore(2, "--model", files["model"], "--input", files["h5"], "--output",
                      files["clean"], *ARGS.split())
    assert result.returncode == 0, result.stderr
    return files


def job_env(data: dict[str, Path], output: Path, **extra: object) -> dict[str, object]:
    return {"MODEL": data["model"], "INPUT": data["h5"], "OUTPUT": output,
            "MPISCORE_ARGS": ARGS, **extra}


def summary(output: Path) -> dict:
    return json.loads((output.with_name(output.name + ".run") / "summary.json").read_text())


def datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        assert handle.attrs["mpiscore_status"] == "complete"
        return {name: handle[name][()] for name in handle if not name.startswith("_")}


def assert_identical(got: Path, want: Path) -> None:
    a, b = datasets(got), datasets(want)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


def assert_scored(output: Path, data: dict[str, Path], rows: slice = slice(None)) -> None:
    with h5py.File(data["h5"], "r") as handle:
        x = handle["features"][rows]
    want = ort.InferenceSession(str(data["model"]), providers=["CPUExecutionProvider"]
                                ).run(["logits"], {"features": x})[0]
    got = datasets(output)
    assert not got["row_status"].any()
    builders.assert_close(got["logits"], want, "logits")


def log(folder: Path) -> str:
    return "".join(path.read_text() for path in sorted(folder.glob("*.out")))


def wait_for_batches(output: Path, batches: int, timeout: float = JOB_SECONDS) -> None:
    """Until the job's journal lists ``batches`` batches (it runs and has written some)."""
    journal = output.with_name(output.name + ".run") / "journal.txt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) > batches:
            return
        time.sleep(0.2)
    pytest.fail(f"{journal}: fewer than {batches} batches after {timeout:.0f}s")


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_score_sbatch_launchers(slurm, data, tmp_path, launcher) -> None:
    out = tmp_path / "y.h5"
    job = slurm.submit(SCRIPTS / "score.sbatch", "-n", 2, "-c", 1, "-o", "job.out",
                       cwd=tmp_path, LAUNCHER=launcher, **job_env(data, out))
    info = slurm.wait(job, JOB_SECONDS)
    assert info["JobState"] == "COMPLETED", log(tmp_path)
    assert summary(out)["ranks"] == 2
    assert_scored(out, data)


def test_resubmitted_complete_job_exits_0(slurm, data, tmp_path) -> None:
    out = tmp_path / "y.h5"
    env = job_env(data, out)
    for _ in range(2):
        job = slurm.submit(SCRIPTS / "score.sbatch", "-n", 2, "-c", 1, "-o", "job.out",
                           "--open-mode=append", cwd=tmp_path, **env)
        assert slurm.wait(job, JOB_SECONDS)["JobState"] == "COMPLETED", log(tmp_path)
    assert "already complete" in log(tmp_path)
    assert_identical(out, data["clean"])


def test_threads_follow_cpus_per_task(slurm, data, tmp_path) -> None:
    """-n 1 -c 1 on a node with more CPUs: one ONNX Runtime thread, not one per core."""
    out = tmp_path / "y.h5"
    env = job_env(data, out, MPISCORE_ARGS=f"--mini-batch-size {BATCH}")
    job = slurm.submit(SCRIPTS / "score.sbatch", "-n", 1, "-c", 1, "-o", "job.out",
                       cwd=tmp_path, **env)
    assert slurm.wait(job, JOB_SECONDS)["JobState"] == "COMPLETED", log(tmp_path)
    ranks = summary(out)["per_rank"]
    assert [r["intra_op_threads"] for r in ranks] == [1]


def test_plain_srun_singletons_are_caught(slurm, data, tmp_path) -> None:
    """srun without a working --mpi starts N 1-rank jobs: each stops at once, one line."""
    out = tmp_path / "y.h5"
    job = slurm.submit(SCRIPTS / "score.sbatch", "-n", 2, "-c", 1, "-o", "job.out",
                       cwd=tmp_path, MPI_PLUGIN="none", **job_env(data, out))
    info = slurm.wait(job, JOB_SECONDS)
    text = log(tmp_path)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", text
    lines = [line for line in text.splitlines() if line.startswith("mpiscore:")]
    assert len(lines) == 1 and "--mpi=pmi2" in lines[0] and "srun --mpi=list" in lines[0], text
    assert "Traceback" not in text
    assert not out.exists() and not out.with_name("y.h5.partial").exists()


def test_job_array_one_output_per_task(slurm, data, tmp_path) -> None:
    with h5py.File(data["h5"], "r") as handle:
        x = handle["features"][()]
    parts = [builders.write_h5(tmp_path / f"part{i}.h5", features=x[i * 1000:(i + 1) * 1000])
             for i in range(3)]
    (tmp_path / "inputs.txt").write_text("".join(f"{p}\n" for p in parts))
    job = slurm.submit(SCRIPTS / "array.sbatch", "--array=0-2", "-n", 1, "-c", 1,
                       cwd=tmp_path, MODEL=data["model"], MPISCORE_ARGS=ARGS)
    for task in range(3):
        info = slurm.wait(f"{job}_{task}", JOB_SECONDS)  # type: ignore[arg-type]
        assert info["JobState"] == "COMPLETED", log(tmp_path)
    for task in range(3):
        assert_scored(tmp_path / "scores" / f"scores-{task}.h5",
                      {**data, "h5": parts[task]})
    assert sorted(p.name for p in (tmp_path / "scores").glob("*.h5")) == [
        "scores-0.h5", "scores-1.h5", "scores-2.h5"]


def slow_first_run(slurm, folder: Path, seconds_per_batch: float) -> Path:
    """An ``mpiscore`` for long.sbatch's MPISCORE that sleeps ``seconds_per_batch`` in
    every batch of the job's first run only (MPISCORE_FAULTS), so that run is still
    going when Slurm's signal comes, and the requeued ones run at full speed."""
    wrapper = folder / "mpiscore-slow-first-run"
    wrapper.write_text("#!/bin/bash\n"
                       'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then\n'
                       f"    export MPISCORE_FAULTS=sleep:{seconds_per_batch}\n"
                       "fi\n"
                       f'exec {shlex.quote(slurm.env["MPISCORE"])} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.timeout(360)
def test_walltime_stop_requeues_and_resumes_identically(slurm, data, tmp_path) -> None:
    """A 1-minute job whose first run's work would take ~45 s: SIGTERM@50 comes 10-40 s
    in (Slurm checks limits every 30 s), the job drains and requeues itself, and the
    resumed output is identical to an uninterrupted run. Only the first run is slowed,
    so the test waits for one signal, not for the whole 45 s of work."""
    out = tmp_path / "y.h5"
    job = slurm.submit(SCRIPTS / "long.sbatch", "-n", 2, "-c", 1, "-o", "job.out",
                       "--time=1", "--signal=TERM@50", cwd=tmp_path, STOP_GRACE=5,
                       MPISCORE=slow_first_run(slurm, tmp_path, 0.75), **job_env(data, out))
    info = slurm.wait(job, 300, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    text = log(tmp_path)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, text
    assert "requeued" in text and "Traceback" not in text
    assert_identical(out, data["clean"])


def test_scancel_is_not_overridden(slurm, data, tmp_path) -> None:
    out = tmp_path / "y.h5"
    job = slurm.submit(SCRIPTS / "long.sbatch", "-n", 2, "-c", 1, "-o", "job.out",
                       cwd=tmp_path, MPISCORE_FAULTS="sleep:0.15", **job_env(data, out))
    wait_for_batches(out, 2)
    assert slurm.run("scancel", job).returncode == 0
    info = slurm.wait(job, JOB_SECONDS, {"CANCELLED", "COMPLETED", "FAILED"})
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0"
    time.sleep(3)  # the script has ended: a requeue would show by now
    info = slurm.job(job)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", log(tmp_path)
    assert not out.exists()


def test_restart_cap(slurm, data, tmp_path) -> None:
    out = tmp_path / "y.h5"
    job = slurm.submit(SCRIPTS / "long.sbatch", "-n", 1, "-c", 1, "-o", "job.out",
                       cwd=tmp_path, MPISCORE_FAULTS="sleep:0.15", MAX_RESTARTS=0,
                       **job_env(data, out))
    wait_for_batches(out, 2)
    assert slurm.run("scancel", "--signal=TERM", job).returncode == 0
    info = slurm.wait(job, JOB_SECONDS, {"CANCELLED", "COMPLETED", "FAILED"})
    text = log(tmp_path)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "75:0", text
    assert info["Restarts"] == "0" and "MAX_RESTARTS" in text


def rendered(slurm, data: dict[str, Path], folder: Path, *options: object) -> Path:
    """``mpiscore slurm`` output for the test job in ``folder`` (output ``out dir/y.h5``,
    relative paths are the folder's), written to ``folder/job.sbatch``."""
    (folder / "out dir").mkdir(parents=True)
    command = [slurm.env["MPISCORE"], "slurm", "--ntasks-per-node", 2, "--cpus-per-task", 1,
               "--time", "0-00:03:00", "--stop-grace", 5, *options,
               "--model", data["model"], "--input", data["h5"], "--output", "out dir/y.h5",
               "--mini-batch-size", BATCH, "--progress-seconds", 60]
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          timeout=30, cwd=folder, env=slurm.env)
    assert done.returncode == 0 and done.stdout.startswith("#!/bin/bash"), done
    (folder / "job.sbatch").write_text(done.stdout)
    return folder / "job.sbatch"


def runs(output: Path) -> list[str]:
    """The status of each run of the job, from its run directory's history."""
    history = output.with_name(output.name + ".run") / "history.jsonl"
    return [json.loads(line)["status"] for line in history.read_text().splitlines()]


@pytest.mark.timeout(90)
def test_mpiscore_slurm_script_stops_requeues_and_resumes(slurm, data, tmp_path) -> None:
    """`mpiscore slurm --overwrite` output as a user would submit it (paths with spaces):
    a stop signal to the tasks, drain, requeue, and the requeued run resumes (the
    first run's --overwrite is not repeated: the job's history keeps both runs), the
    output bitwise identical."""
    folder = tmp_path / "job dir"
    script = rendered(slurm, data, folder, "--launcher", "mpiexec", "--overwrite")
    out = folder / "out dir" / "y.h5"
    job = slurm.submit(script, cwd=folder, MPISCORE_FAULTS="sleep:0.15")
    wait_for_batches(out, 4)
    assert slurm.run("scancel", "--signal=TERM", job).returncode == 0
    info = slurm.wait(job, 80, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    text = log(folder)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, text
    assert "requeued" in text and "--resume" in text and "Traceback" not in text
    assert re.search(rf"^mpiscore-long: job {job} run 2 at \S+ --resume$", text, re.M), text
    assert runs(out)[0] == "stopped" and runs(out)[-1] == "complete"
    assert summary(out)["ranks"] == 2
    assert_identical(out, data["clean"])


def job_tasks(job: int) -> list[int]:
    """The pids of the job's mpiscore ranks on this node (its step's tasks) that have
    their SIGTERM handler in place: from then on, a signal is mpiscore's to handle."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if b"mpiscore" not in b"".join(command) or b"score" not in command \
                    or b"-S" in command:
                continue
            if f"SLURM_JOB_ID={job}".encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            caught = next(line for line in (proc / "status").read_text().splitlines()
                          if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            continue
        if int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
            found.append(int(proc.name))
    return found


@pytest.mark.timeout(90)
def test_sigterm_during_start_up_then_resume_as_told(slurm, data, tmp_path) -> None:
    """Slurm's stop signal to the tasks while mpiscore is still starting (its ranks have
    just installed their first handler; set-up takes a second or more after that): a
    clean stop, exit 75, no traceback. With `--max-restarts 0` and `--overwrite` the
    script is not requeued and says how to resume it by hand (RESUME=1, not "submit it
    again", whose first run would start afresh); doing so resumes and completes."""
    folder = tmp_path / "job dir"
    script = rendered(slurm, data, folder, "--overwrite", "--max-restarts", 0)
    out = folder / "out dir" / "y.h5"
    job = slurm.submit(script, cwd=folder)
    deadline = time.monotonic() + JOB_SECONDS
    while len(job_tasks(job)) < 2:
        if time.monotonic() > deadline or slurm.job(job)["JobState"] in TERMINAL:
            pytest.fail(f"job {job}'s 2 ranks did not start: {log(folder)}")
        time.sleep(0.005)
    assert slurm.run("scancel", "--signal=TERM", job).returncode == 0
    info = slurm.wait(job, JOB_SECONDS)
    text = log(folder)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "75:0", text
    assert "SIGTERM during start-up" in text and "mpiscore-long: exit 75" in text, text
    assert "Traceback" not in text and "Killed" not in text
    told = "not requeued; sbatch --export=ALL,RESUME=1 this script to resume"
    assert told in text and "sbatch this script again" not in text, text
    again = slurm.submit(script, "--export=ALL,RESUME=1", cwd=folder)
    info = slurm.wait(again, JOB_SECONDS)
    text = log(folder)
    assert info["JobState"] == "COMPLETED", text
    assert re.search(rf"^mpiscore-long: job {again} run 1 at \S+ --resume$", text, re.M), text
    assert "Traceback" not in text
    assert runs(out) == ["stopped", "complete"]  # resumed: an --overwrite run starts anew
    assert_identical(out, data["clean"])


@pytest.mark.parametrize("bind", [[], ["--gpus-per-task=1"]])  # both GPUs seen, or one
def test_gpu_sbatch_one_scoring_process_per_gpu(slurm, data, tmp_path, bind) -> None:
    """slurm/gpu.sbatch through Slurm's GPU allocation (gres/gpu; the test node's 2 GPUs
    are device nodes with no hardware, and this onnxruntime has no CUDA provider, so
    the sessions score on the CPU provider). Whether Slurm shows each task both GPUs
    (CUDA_VISIBLE_DEVICES=0,1: rank i takes GPU i by its node-local rank) or binds one
    per task (CUDA_VISIBLE_DEVICES=0 or 1), the two ranks are given different GPUs,
    one scoring process each. What is tested is the allocation and the mapping, not
    CUDA."""
    slurm.gpus()
    out = tmp_path / "y.h5"
    job = slurm.submit(SCRIPTS / "gpu.sbatch", "-N", 1, "--ntasks-per-node", 2, "-c", 1,
                       "--gpus-per-node", 2, *bind, "-o", "job.out", cwd=tmp_path,
                       PROVIDERS="CPUExecutionProvider",
                       **job_env(data, out, MPISCORE_ARGS=f"--mini-batch-size {BATCH}"))
    info = slurm.wait(job, JOB_SECONDS)
    assert info["JobState"] == "COMPLETED", log(tmp_path)
    assert "gpu:2" in info.get("TresPerNode", "") + info.get("AllocTRES", ""), info
    ranks = summary(out)["per_rank"]
    assert [r["gpu"] for r in ranks] == ["0", "1"], ranks
    for rank in range(2):
        said = (out.with_name("y.h5.run") / "logs" / f"rank-0000{rank}.log").read_text()
        assert "scoring: 1 scoring process on this rank" in said, said
    assert_scored(out, data)


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sbatch")))
def test_scripts_are_valid_bash(script) -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script, options, ranks", [
    ("multinode.sbatch", ["-N", 1, "--ntasks-per-node", 1, "-c", 2], 1),  # 1 rank x 2 procs
    ("per-core.sbatch", ["-N", 1, "--ntasks-per-node", 2, "-c", 1], 2)])
def test_layout_scripts(slurm, data, tmp_path, script, options, ranks) -> None:
    """The multi-node and per-core layouts on the test node: the world size, one thread
    per scoring process, and the right output."""
    out = tmp_path / "y.h5"
    job = slurm.submit(SCRIPTS / script, *options, "-o", "job.out", cwd=tmp_path, PROCS=2,
                       **job_env(data, out, MPISCORE_ARGS=f"--mini-batch-size {BATCH}"))
    assert slurm.wait(job, JOB_SECONDS)["JobState"] == "COMPLETED", log(tmp_path)
    info = summary(out)
    assert info["ranks"] == ranks and info["slurm"]["job_id"] == str(job)
    assert [r["intra_op_threads"] for r in info["per_rank"]] == [1] * ranks
    assert_scored(out, data)

"""Entry scripts (issue 13) under mpiexec -n 1/2/3: results of every kind, Azure's script
unchanged, file input, append_row and summary_only, failures, crashes, SIGTERM and
--resume, --partition-by, the launch's environment, and every bad input.

The scripts and data are in tests/scripts_fixtures.py; expected results are computed
there with plain numpy/pandas, never by mpiscore.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import scripts_fixtures as fx
from tests.mpi import launch
from tests.mpi.launch import error_lines, mpiscore, wait_for_batches


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Scripts (by stem) and data (parquet, hive, model, files), written once."""
    folder = tmp_path_factory.mktemp("scripts")
    return {**fx.write_scripts(folder), **fx.write_data(folder)}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return {name: column.to_numpy() for name, column in zip(
        fx.table().column_names, fx.table().columns, strict=True)}


def score(ranks: int, script: Path, source: Path, out: Path, *args: object,
          script_args: tuple[object, ...] = (), batch: object = fx.BATCH,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = ["--entry-script", script, "--input", source, "--output", out,
            "--mini-batch-size", batch, *args]
    if script_args:
        argv += ["--", *script_args]
    return mpiscore(ranks, *argv, timeout=timeout)


def parquet_rows(out: Path) -> pa.Table:
    """A complete Parquet output's parts in name (= input) order."""
    parts = sorted(out.glob("part-*.parquet"))
    assert parts, f"no parts in {out}"
    return pa.concat_tables(pq.read_table(part) for part in parts)


def summary(out: Path) -> dict:
    return json.loads(Path(f"{out}.run/summary.json").read_text())


def failed_batches(out: Path) -> list[dict]:
    return json.loads(Path(f"{out}.run/failed_batches.json").read_text())["failed"]


def line_of(script: str, text: str) -> int:
    """The line number of ``text`` in the written script ``script`` (as the traceback says)."""
    lines = textwrap.dedent(fx.SCRIPTS[script]).lstrip().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


# -- results of every kind, Azure's script, the environment


EXPECTED = {
    "frame": lambda d: {"id": d["id"], "y": d["f0"] * 2, "n": d["id"] + 1},
    "array": lambda d: {"id": d["id"], "result": np.stack([d["f0"], d["f1"]], axis=1)},
    "dict": lambda d: {"id": d["id"], "a": d["f0"] * 2, "b": d["id"] % 7},
    "list": lambda d: {"id": d["id"], "result": np.array([f"row{i}" for i in d["id"]])},
}


@pytest.mark.parametrize(("kind", "ranks"), [("frame", 1), ("array", 2), ("dict", 3),
                                             ("list", 2)])
def test_tabular_script_results(env, data, tmp_path, kind, ranks) -> None:
    out = tmp_path / "y.parquet"
    result = score(ranks, env[kind], env["parquet"], out, "--keep-columns", "id",
                   script_args=("--scale", 2))
    assert result.returncode == 0, result.stderr
    got = parquet_rows(out)
    want = EXPECTED[kind](data)
    assert set(got.column_names) == {*want, "row_status"}
    for name, values in want.items():
        column = got.column(name).to_pylist()
        np.testing.assert_array_equal(np.array(column), values, err_msg=name)
    assert not any(got.column("row_status").to_pylist())


@pytest.mark.parametrize(("kind", "ranks"), [("h5_array", 2), ("arrow", 1), ("numpy", 3)])
def test_script_batch_formats(env, data, tmp_path, kind, ranks) -> None:
    out = tmp_path / "y.h5"
    source = env["h5"] if kind == "h5_array" else env["parquet"]
    result = score(ranks, env[kind], source, out, "--batch-format",
                   "numpy" if kind == "h5_array" else kind)
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as handle:
        assert handle.attrs["mpiscore_status"] == "complete"
        got = {name: handle[name][()] for name in handle if not name.startswith("_")}
    assert not got.pop("row_status").any()
    want = {"h5_array": {"result": fx.h5_features().sum(axis=1)},
            "arrow": {"twice": data["f0"] * 2},
            "numpy": {"sum": data["f0"] + data["f1"]}}[kind]
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        assert got[name].dtype == values.dtype, name
        np.testing.assert_array_equal(got[name], values, err_msg=name)


@pytest.mark.parametrize(("name", "ranks"), [("lines.csv", 3), ("lines.txt", 1)])
def test_append_row_of_a_dataframe(env, data, tmp_path, name, ranks) -> None:
    out = tmp_path / name
    result = score(ranks, env["frame"], env["parquet"], out, "--output-action", "append_row")
    assert result.returncode == 0, result.stderr
    rows = [(str(y), str(n)) for y, n in zip(data["f0"] * 1.0, data["id"] + 1, strict=True)]
    if name.endswith(".csv"):
        want = ["y,n", *(f"{y},{n}" for y, n in rows)]
    else:
        want = [f"{y} {n}" for y, n in rows]
    assert out.read_text().splitlines() == want


def h5_bytes(path: Path) -> dict[str, bytes]:
    with h5py.File(path, "r") as handle:
        assert handle.attrs["mpiscore_status"] == "complete"
        return {name: handle[name][()].tobytes() for name in handle if not name.startswith("_")}


def test_rows_bitwise_identical_across_rank_counts(env, data, tmp_path) -> None:
    outputs = {}
    for ranks in (1, 2, 3):
        out = tmp_path / f"y{ranks}.h5"
        result = score(ranks, env["frame"], env["parquet"], out, "--keep-columns", "id",
                       script_args=("--scale", 2), batch=45)
        assert result.returncode == 0, result.stderr
        outputs[ranks] = h5_bytes(out)
    assert outputs[1] == outputs[2] == outputs[3]
    with h5py.File(tmp_path / "y3.h5", "r") as handle:
        np.testing.assert_array_equal(handle["y"][()], data["f0"] * 2)
        np.testing.assert_array_equal(handle["id"][()], data["id"])


def test_azure_script_runs_unchanged(env, data, tmp_path) -> None:
    out = tmp_path / "scores.parquet"
    result = score(2, env["azure"], env["parquet"], out, script_args=("--model_dir", env["model"]))
    assert result.returncode == 0, result.stderr
    weights = np.load(env["model"] / "weights.npy")
    x = np.stack([data["f0"], data["f1"]], axis=1)
    np.testing.assert_array_equal(parquet_rows(out).column("score").to_numpy(), x @ weights)
    logs = sorted(Path(f"{out}.run/logs").glob("script-rank*-pid*.log"))
    assert logs, list(Path(f"{out}.run/logs").iterdir())
    text = "".join(log.read_text() for log in logs)
    assert text.count("scoring 50 items") == fx.ROWS // fx.BATCH, text
    assert "loaded 2 weights from" in text and "printed by the script" in text
    assert " INFO rank " in text and " pid " in text  # records tagged with rank and pid
    assert "printed by the script" not in result.stdout + result.stderr


@pytest.mark.parametrize("how", ["inherited", "genv"])
def test_launch_environment_reaches_the_script(env, data, tmp_path, monkeypatch, how) -> None:
    out = tmp_path / "lines.txt"
    argv = ["--entry-script", env["environ"], "--input", env["parquet"], "--output", out,
            "--mini-batch-size", fx.BATCH, "--output-action", "append_row"]
    if how == "inherited":
        monkeypatch.setenv("MPISCORE_TEST_TOKEN", "tok3n")
        result = mpiscore(2, *argv, timeout=60)
    else:  # mpiexec -genv, as a launcher passes variables (mpiexec -x, srun --export)
        monkeypatch.delenv("MPISCORE_TEST_TOKEN", raising=False)
        line = launch.command(2, *argv)
        line[1:1] = ["-genv", "MPISCORE_TEST_TOKEN", "tok3n"]
        result = subprocess.run(line, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "".join(f"tok3n:{i}\n" for i in data["id"])


@pytest.mark.parametrize(("threads", "launch", "expected"), [
    (3, {}, "[3]:3:3"),
    # OpenBLAS sized itself by the launch's OMP_NUM_THREADS, as it reads it (2 cores here)
    (1, {"OMP_NUM_THREADS": "2"}, f"[{min(2, len(os.sched_getaffinity(0)))}]:2:1"),
    # the launch sized MKL only: NumPy's OpenBLAS gets the process's share all the same
    (3, {"MKL_NUM_THREADS": "2"}, "[3]:3:3"),
])
def test_a_script_s_blas_and_openmp_get_the_process_s_threads(
        env, tmp_path, monkeypatch, threads, launch, expected) -> None:
    """NumPy's BLAS, loaded with one thread (scoring/start.py), is sized to the scoring
    process's share (``--intra-op-threads``) before the script runs, and so are the
    variables libraries read when loaded later (OpenMP, OpenBLAS), but for those the
    launch set. The line: BLAS threads, OMP_NUM_THREADS, OPENBLAS_NUM_THREADS."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "GOTO_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "lines.txt"
    result = score(1, env["threads"], env["parquet"], out, "--output-action", "append_row",
                   "--intra-op-threads", threads)
    assert result.returncode == 0, result.stderr
    assert set(out.read_text().splitlines()) == {expected}


# -- file input


@pytest.mark.parametrize(("ranks", "how"), [(1, "directory"), (3, "glob")])
def test_file_input_append_row_every_file_once_in_order(env, tmp_path, ranks, how) -> None:
    source = env["files"] if how == "directory" else Path(f"{env['files']}/**/*.txt")
    out = tmp_path / "labels.txt"
    result = score(ranks, env["per_file"], source, out,
                   "--input-mode", "files", "--output-action", "append_row",
                   batch=fx.FILE_BATCH)
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines() == fx.file_lines()
    assert not Path(f"{out}.partial").exists()
    assert summary(out)["batches_done"] == -(-fx.FILES // fx.FILE_BATCH)


def test_file_input_summary_only_writes_into_output_dir(env, tmp_path) -> None:
    out = tmp_path / "results"
    result = score(2, env["summary"], env["files"], out, "--input-mode", "files",
                   "--output-action", "summary_only", batch=fx.FILE_BATCH)
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in out.iterdir())
    assert written == [f"item{i:02d}.txt.out" for i in range(fx.FILES)]
    assert (out / "item07.txt.out").read_text() == "CONTENT 7\n"
    assert not Path(f"{out}.partial").exists()
    assert summary(out)["status"] == "complete"


# -- failures within and beyond the budget


@pytest.mark.parametrize(("bad", "items", "batches", "code"), [
    ([120], 50, -1, 0),  # 50 items failed, 50 allowed
    ([120], 49, -1, 5),  # one item too many
    ([120, 250], -1, 2, 0),  # 2 batches failed, 2 allowed
    ([120, 250], -1, 1, 5),  # one batch too many
    ([120, 250], -1, -1, 0),  # -1: any number
])
def test_failing_run_within_and_beyond_budget(env, data, tmp_path, bad, items, batches,
                                              code) -> None:
    out = tmp_path / "y.parquet"
    words = [word for item in bad for word in ("--bad", item)]
    result = score(2, env["failing"], env["parquet"], out, "--error-threshold", items,
                   "--mini-batch-error-threshold", batches, "--max-retries", 1,
                   script_args=tuple(words))
    assert result.returncode == code, result.stderr
    where = f"failing.py, line {line_of('failing.py', 'raise ValueError')}, in run"
    failed = failed_batches(out)
    assert {f["batch_id"] for f in failed} <= {b // fx.BATCH for b in bad}
    first = [f for f in failed if f["batch_id"] == bad[0] // fx.BATCH]
    assert first and len(first[0]["attempts"]) == 2
    traceback = first[0]["attempts"][0]["traceback"]
    assert traceback.startswith("Traceback"), traceback  # the script's own, from its frame on
    number = line_of("failing.py", "raise ValueError")
    assert f'File "{env["failing"]}", line {number}, in run' in traceback, traceback
    assert "mpiscore/" not in traceback, traceback
    assert f"ValueError: cannot score id {bad[0]}" in traceback
    if code:
        lines = error_lines(result)
        assert len(lines) == 1, result.stderr
        assert "error budget exceeded" in lines[0] and where in lines[0], lines[0]
        assert not out.exists()
        return
    got = parquet_rows(out)
    status = np.array(got.column("row_status").to_pylist())
    masked = np.zeros(fx.ROWS, bool)
    for item in bad:
        masked[item // fx.BATCH * fx.BATCH:(item // fx.BATCH + 1) * fx.BATCH] = True
    assert (status[masked] == 1).all() and not status[~masked].any()
    y = got.column("y").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(y[~masked], data["f0"][~masked])


@pytest.mark.parametrize(("threshold", "code"), [(1, 0), (0, 5)])
def test_append_row_short_result_counts_failed_items(env, tmp_path, threshold, code) -> None:
    out = tmp_path / "labels.txt"
    result = score(2, env["per_file"], env["files"], out, "--input-mode", "files",
                   "--output-action", "append_row", "--error-threshold", threshold,
                   batch=fx.FILE_BATCH, script_args=("--short", "item04.txt"))
    assert result.returncode == code, result.stderr
    if code:
        lines = error_lines(result)
        assert len(lines) == 1 and "error budget exceeded" in lines[0], result.stderr
        assert "1 file failed" in lines[0] and "--error-threshold 0" in lines[0], lines[0]
        assert not out.exists()
    else:
        assert out.read_text().splitlines() == fx.file_lines(skip="item04.txt")
        report = summary(out)
        assert report["rows_failed"] == 1  # and not scored too: they add up to the files
        assert report["rows_scored"] + report["rows_failed"] == len(fx.file_lines())


def test_append_row_short_result_names_the_batch(env, tmp_path) -> None:
    out = tmp_path / "labels.txt"
    result = score(1, env["per_file"], env["files"], out, "--input-mode", "files",
                   "--output-action", "append_row", batch=fx.FILE_BATCH,
                   script_args=("--short", "item04.txt"))
    line = refused(result, out, 5, ["error budget exceeded"])
    assert "first failure: None" not in line and "batch 1" in line, line
    assert [f["batch_id"] for f in failed_batches(out)] == [1]


def test_append_row_short_result_in_the_completion_line(env, tmp_path) -> None:
    out = tmp_path / "labels.txt"
    result = score(1, env["per_file"], env["files"], out, "--input-mode", "files",
                   "--output-action", "append_row", "--error-threshold", 1,
                   batch=fx.FILE_BATCH, script_args=("--short", "item04.txt"))
    assert result.returncode == 0, result.stderr
    done = [line for line in result.stderr.splitlines() if "complete: " in line]
    assert len(done) == 1 and "0 failed" not in done[0], done


def test_crashing_script_is_recovered_by_retry(env, data, tmp_path) -> None:
    out = tmp_path / "y.parquet"
    marker = tmp_path / "crashed-once"
    result = score(2, env["crash"], env["parquet"], out, script_args=("--marker", marker))
    assert result.returncode == 0, result.stderr
    assert marker.exists()
    got = parquet_rows(out)
    np.testing.assert_array_equal(got.column("y").to_numpy(), data["f0"] * 3)
    np.testing.assert_array_equal(got.column("id2").to_numpy(), data["id"])
    assert not any(got.column("row_status").to_pylist())
    assert sum(r["scorer_restarts"] for r in summary(out)["per_rank"]) == 1
    # an entry script's init() runs only once the job's lock is taken: never before the job
    assert [r["preopened_sessions"] for r in summary(out)["per_rank"]] == [0, 0]


# -- SIGTERM and --resume


def interrupt(jobs, ranks: int, out: Path, argv: list[object], batches: int) -> None:
    process = jobs(ranks, *argv)
    wait_for_batches(process, out, batches)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 75, stderr
    assert "rerun with --resume" in stderr
    assert not out.exists()
    assert summary(out)["status"] == "stopped"


def test_sigterm_then_resume_entry_script(env, tmp_path, jobs) -> None:
    argv: list[object] = ["--entry-script", env["crash"], "--input", env["parquet"],
                          "--mini-batch-size", 20, "--keep-columns", "id"]
    clean = tmp_path / "clean.parquet"
    result = mpiscore(2, *argv, "--output", clean, "--", "--sleep", 0.02, timeout=60)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "y.parquet"
    slow: list[object] = [*argv, "--output", out, "--", "--sleep", 0.15]
    interrupt(jobs, 2, out, slow, batches=3)
    done = summary(out)["batches_done"]
    assert 3 <= done < fx.ROWS // 20
    result = mpiscore(3, *slow[:-3], "--resume", *slow[-3:], timeout=60)
    assert result.returncode == 0, result.stderr
    assert parquet_rows(out).equals(parquet_rows(clean))
    assert summary(out)["rows_scored"] == fx.ROWS - 20 * done


def test_sigterm_then_resume_file_input(env, tmp_path, jobs) -> None:
    out = tmp_path / "labels.txt"
    argv: list[object] = ["--entry-script", env["per_file"], "--input", env["files"],
                          "--input-mode", "files", "--mini-batch-size", 1,
                          "--output-action", "append_row", "--output", out]
    interrupt(jobs, 2, out, [*argv, "--", "--sleep", 0.2], batches=3)
    result = mpiscore(2, *argv, "--resume", "--", "--sleep", 0.2, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "".join(f"{line}\n" for line in fx.file_lines())
    assert not Path(f"{out}.partial").exists()


# -- --partition-by


def expected_seen(sizes: list[int], batch: int) -> dict[int, int]:
    """Per key value, how many of its rows one run() call sees: the group, or its
    near-equal pieces when larger than the batch."""
    seen = {}
    for index, size in enumerate(sizes):
        pieces = -(-size // batch)
        seen[index * 10 + 3] = -(-size // pieces)
    return seen


@pytest.mark.parametrize(("ranks", "source", "batch"), [(2, "parquet", 60), (3, "hive", 200)])
def test_partition_by_hands_run_whole_groups(env, data, tmp_path, ranks, source, batch) -> None:
    out = tmp_path / "groups.parquet"
    result = score(ranks, env["groups"], env[source], out, "--partition-by", "g",
                   "--keep-columns", "id", batch=batch)
    assert result.returncode == 0, result.stderr
    got = parquet_rows(out)
    ids = got.column("id").to_numpy()
    assert sorted(ids) == list(range(fx.ROWS))  # every row once
    keys = data["g"][ids]
    seen = expected_seen(fx.GROUPS, batch)
    np.testing.assert_array_equal(got.column("seen").to_numpy(), [seen[k] for k in keys])
    assert (got.column("keys").to_numpy() == 1).all()  # never two groups in one call
    if source == "parquet":
        np.testing.assert_array_equal(ids, data["id"])  # input order
    assert summary(out)["batches_done"] == sum(-(-s // batch) for s in fx.GROUPS)


# -- bad input


def refused(result: subprocess.CompletedProcess[str], out: Path, code: int,
            names: list[str]) -> str:
    """Exactly one error line naming every one of ``names``, exit ``code``, no output."""
    lines = error_lines(result)
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize(("ranks", "script", "code", "names"), [
    (1, "missing", 4, ["missing.py", "No such file"]),
    (2, "not_python", 4, ["not_python.py", "line 2", "not Python"]),
    (1, "h5", 4, ["x.h5", "not Python", "null bytes"]),  # a binary file
    (3, "no_run", 4, ["no_run.py", "run"]),
    (1, "init_raises", 4, ["init_raises.py", "line 3", "in init", "KeyError"]),
    (3, "init_raises", 4, ["init_raises.py", "line 3", "in init", "KeyError"]),
    (2, "exit_in_init", 4, ["exit_in_init.py", "exited with code 7", "entry script"]),  # os._exit
])
def test_bad_script(env, tmp_path, ranks, script, code, names) -> None:
    out = tmp_path / "y.parquet"
    path = env.get(script, tmp_path / f"{script}.py")
    result = score(ranks, path, env["parquet"], out, timeout=30)
    line = refused(result, out, code, names)
    assert "Traceback" not in result.stderr and "line None" not in line, result.stderr
    assert not Path(f"{out}.partial").exists(), line


@pytest.mark.parametrize(("ranks", "script", "names"), [
    (2, "returns_none", ["returns_none.py", "None"]),
    (1, "wrong_length", ["wrong_length.py", "1 results for 2 items"]),  # caught by the probe
    (3, "short_later", ["short_later.py", "batch 2 (rows 100-149)", "49 results for 50 items"]),
    (3, "wrong_type", ["wrong_type.py", "int"]),
    (2, "schema_changes", ["schema_changes.py", "columns z; the first batch had y"]),
])
def test_bad_run_result(env, tmp_path, ranks, script, names) -> None:
    out = tmp_path / "y.parquet"
    result = score(ranks, env[script], env["parquet"], out, "--max-retries", 0, timeout=30)
    refused(result, out, 5, names)


def test_files_glob_matching_nothing(env, tmp_path) -> None:
    out = tmp_path / "labels.txt"
    result = score(2, env["per_file"], Path(f"{env['files']}/**/*.png"), out,
                   "--input-mode", "files", "--output-action", "append_row", timeout=30)
    refused(result, out, 3, ["*.png"])


def test_append_row_to_h5_output(env, tmp_path) -> None:
    out = tmp_path / "labels.h5"
    result = score(2, env["list"], env["parquet"], out, "--output-action", "append_row",
                   timeout=30)
    refused(result, out, 2, [".h5", "append_row", "labels.txt"])


def test_partition_by_missing_column(env, tmp_path) -> None:
    out = tmp_path / "y.parquet"
    result = score(2, env["groups"], env["parquet"], out, "--partition-by", "gg", timeout=30)
    refused(result, out, 2, ["gg", "--partition-by"])


@pytest.mark.parametrize("which", ["both", "neither"])
def test_model_and_entry_script_both_or_neither(env, tmp_path, which) -> None:
    out = tmp_path / "y.parquet"
    given: list[object] = ["--model", env["model"] / "weights.npy", "--entry-script",
                           env["frame"]] if which == "both" else []
    result = mpiscore(2, *given, "--input", env["parquet"], "--output", out, timeout=30)
    refused(result, out, 2, ["--model", "--entry-script"])


SLOW_SECOND_PROCESS = """\
import os, time
from pathlib import Path

def init():
    if os.environ.get("PMI_RANK") != "1":
        return
    try:
        Path(__file__).with_name("rank1.started").touch(exist_ok=False)
    except FileExistsError:  # rank 1's second process: its first scores meanwhile
        time.sleep(3)

def run(mini_batch):
    return mini_batch["f0"].to_numpy() * 2
"""


def test_batches_a_rank_scores_while_its_other_process_starts_are_reported(
        env, tmp_path) -> None:
    """A rank asks for work before its processes are ready; the one ready first scores
    batches while the other still runs init(). Those batches' reports were dropped by
    the wait for the other process, and the job waited for ever at 99%."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SECOND_PROCESS)
    out = tmp_path / "y.h5"
    result = score(2, script, env["parquet"], out, "--procs-per-rank", 2, batch=2,
                   timeout=60)
    assert result.returncode == 0, result.stderr
    import h5py

    with h5py.File(out) as handle:
        assert not handle["row_status"][()].any()
        np.testing.assert_array_equal(handle["result"][()],
                                      fx.table().column("f0").to_numpy() * 2)

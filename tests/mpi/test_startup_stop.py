"""An entry script whose init() never returns cannot hold a job past its stop: the waits
of the start-up look at a stop signal and at rank 0's Drain (rank/pool.py start and
_answer), and processes still starting are killed as the pool closes."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.mpi.launch import error_lines, finish, mpiscore, wait_until

FILES = 40

SCRIPT = """\
import os, time
from azureml_user.parallel_run import EntryScript

def init():
    hang = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hang")
    if os.path.exists(hang) and EntryScript().rank in {ranks}:
        time.sleep(3600)

def run(mini_batch):
    time.sleep(0.02)
    return list(mini_batch)
"""


def job(tmp_path: Path, ranks: set[int], *more: object) -> list[object]:
    """A files job of FILES one-line files whose script hangs in init() on ``ranks``
    while ``tmp_path/hang`` exists."""
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for i in range(FILES):
        (folder / f"f{i:03d}.txt").write_text(f"{i}\n")
    script = tmp_path / "score.py"
    script.write_text(SCRIPT.format(ranks=ranks))
    (tmp_path / "hang").touch()
    return ["--entry-script", script, "--input", folder, "--mini-batch-size", 4,
            "--output", tmp_path / "lines.txt", "--output-action", "append_row",
            "--stop-grace", 2, *more]


def test_an_init_that_never_returns_on_one_rank_stops_at_the_progress_timeout(tmp_path) -> None:
    argv = job(tmp_path, {1}, "--progress-timeout", 3)
    stopped = mpiscore(2, *argv)
    assert stopped.returncode == 75, stopped.stderr
    [line] = error_lines(stopped)
    assert "--progress-timeout 3" in line and "rerun with --resume" in line
    (tmp_path / "hang").unlink()
    resumed = mpiscore(2, *argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    lines = (tmp_path / "lines.txt").read_text().splitlines()  # one per file, its path
    assert sorted(lines) == [str(tmp_path / "in" / f"f{i:03d}.txt") for i in range(FILES)]


def test_a_signal_while_rank_0_s_init_never_returns_stops_within_the_grace(tmp_path,
                                                                          jobs) -> None:
    process = jobs(2, *job(tmp_path, {0, 1}))
    lock = tmp_path / "lines.txt.lock"
    wait_until(lock.exists, process, "the job's lock")  # rank 0's first process prepares
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 75, stderr
    [line] = [text for text in stderr.splitlines() if text.startswith("mpiscore:")]
    assert "SIGTERM during start-up: " in line and "init() that does not return?" in line
    assert not lock.exists()  # released: the next run need not take it over

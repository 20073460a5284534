"""Run history (report.append_history) and the Slurm ids (placement.slurm_ids)."""

from __future__ import annotations

import json
from dataclasses import replace

from mpiscore.placement import describe_slurm, slurm_ids
from mpiscore.report import HISTORY, RunReport, append_history, read_history


def report(rows: int, wall: float) -> RunReport:
    return RunReport("stopped", "SIGTERM", None, None, "y.h5.partial", "y.h5.run", 1000, rows,
                     10, 3, 0, 0, 2, wall, 0.5, rows / wall, [], slurm={"job_id": "7"})


def test_runs_append_and_a_torn_line_is_skipped(tmp_path) -> None:
    assert append_history(tmp_path, report(300, 2.0))["runs"] == 1
    with (tmp_path / HISTORY).open("a") as handle:
        handle.write('{"status": "comp')  # a run killed while appending its line
    totals = append_history(tmp_path, replace(report(700, 3.0), status="complete"))
    assert (totals["runs"], totals["rows_scored"], totals["wall_seconds"]) == (2, 1000, 5.0)
    runs = read_history(tmp_path / HISTORY)
    assert [r["status"] for r in runs] == ["stopped", "complete"]
    assert runs[1]["slurm"] == {"job_id": "7"} and runs[1]["setup_seconds"] == 0.5
    assert json.loads((tmp_path / HISTORY).read_text().splitlines()[-1])["rows_scored"] == 700


def test_slurm_ids(monkeypatch) -> None:
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert slurm_ids() is None
    monkeypatch.setenv("SLURM_JOB_ID", "125")
    assert slurm_ids() == {"job_id": "125", "restart_count": 0}
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "120")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    ids = slurm_ids()
    assert ids == {"job_id": "125", "array_job_id": "120", "array_task_id": "5",
                   "restart_count": 2}
    assert describe_slurm(ids) == "Slurm job 125 (array 120_5), run 3 (restart 2)"


def test_a_run_killed_after_its_line_is_not_recorded_again_as_died(tmp_path) -> None:
    """Each line carries its run's start (from the running summary). Rank 0 killed in the
    instant after it appended its line and before its final summary: the death recorder
    finds the run's line and writes the summary from it instead of a second, "died" line.
    A run that dies before its line gets one."""
    from mpiscore.report import record_death, write_json

    write_json(tmp_path / "summary.json", {"status": "running", "pid": 7, "started_at": 100.0})
    append_history(tmp_path, report(300, 2.0))
    assert not record_death(tmp_path, "y.h5.partial", "rank 0 was killed")
    runs = read_history(tmp_path / HISTORY)
    assert [(r["status"], r["run_started_at"]) for r in runs] == [("stopped", 100.0)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["stop_reason"], summary["job"]["runs"]) == \
        ("stopped", "SIGTERM", 1)
    write_json(tmp_path / "summary.json", {"status": "running", "pid": 8, "started_at": 200.0})
    assert record_death(tmp_path, "y.h5.partial", "rank 0 was killed")
    runs = read_history(tmp_path / HISTORY)
    assert [(r["status"], r["run_started_at"]) for r in runs] == \
        [("stopped", 100.0), ("died", 200.0)]


def test_rank_0_s_line_names_the_other_ranks_that_died_and_when(tmp_path) -> None:
    from mpiscore.report import death_reason, forget_death, note_death

    (tmp_path / "logs").mkdir()
    when = 1_000_000.0
    assert death_reason(tmp_path, "rank 0 of 4 (a)", when, "y.h5.partial") == (
        "rank 0 of 4 (a) was killed while the job ran (by a signal, out of memory, or by the "
        "MPI launcher after another rank died); y.h5.partial stays partial: rerun with --resume")
    note_death(tmp_path, 1, "rank 1 of 4 (a)", when + 0.002)  # ended after rank 0
    assert "; rank 1 of 4 (a) died too, 2 ms after it (by a signal" in death_reason(
        tmp_path, "rank 0 of 4 (a)", when, "y.h5.partial")
    note_death(tmp_path, 2, "rank 2 of 4 (b)", when - 0.009)
    note_death(tmp_path, 3, "rank 3 of 4 (b)", when - 0.004)
    assert "; of 3 other ranks that died, rank 2 of 4 (b) was first, 9 ms before it (" in \
        death_reason(tmp_path, "rank 0 of 4 (a)", when, "y.h5.partial")
    forget_death(tmp_path, 2)  # as a resumed job's rank 2 starts
    (tmp_path / "logs" / "rank-00003.died").write_text("{torn")  # never trusted
    assert "; rank 1 of 4 (a) died too, 2 ms after it" in death_reason(
        tmp_path, "rank 0 of 4 (a)", when, "y.h5.partial")

"""A summary_only entry-script job resubmitted after it completed, in process: "already
complete" (exit 0, nothing run again) with or without --resume, as for the other
outputs (tests/mpi/test_rerun.py); --overwrite runs it again, keeping the directory."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpiscore.cli import main

FILES = 12

SCRIPT = """
    import os

    from azureml_user.parallel_run import EntryScript

    def run(mini_batch):
        out = EntryScript().output_dir
        for path in mini_batch:
            with open(os.path.join(out, os.path.basename(path) + ".out"), "w") as handle:
                handle.write(open(path).read().upper())
        return []
    """


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def job(tmp_path: Path) -> tuple[list[object], Path]:
    """A complete summary_only job: its arguments and output directory."""
    (tmp_path / "in").mkdir()
    for i in range(FILES):
        (tmp_path / "in" / f"f{i:02d}.txt").write_text(f"item {i}\n")
    script = tmp_path / "so.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / "sodir"
    args: list[object] = ["score", "--entry-script", script, "--input", tmp_path / "in",
                          "--input-mode", "files", "--output", out,
                          "--output-action", "summary_only", "--mini-batch-size", 5]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert len(list(out.iterdir())) == FILES
    return args, out


def records(out: Path) -> dict[str, object]:
    """What a run leaves: the script's files (with their times) and the run's records."""
    run_dir = Path(f"{out}.run")
    return {**{path.name: path.stat().st_mtime_ns for path in out.iterdir()},
            **{name: (run_dir / name).read_bytes()
               for name in ("summary.json", "history.jsonl", "journal.txt")}}


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_a_complete_summary_only_job_again_is_already_complete(job, extra) -> None:
    args, out = job
    before = records(out)
    result = invoke(*args, *extra)
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if line.startswith("mpiscore:")]
    assert len(said) == 1 and "already complete" in said[0] and "nothing to do" in said[0]
    assert "Traceback" not in result.output
    assert records(out) == before  # no batch run again, no record lost


def test_overwrite_runs_a_complete_summary_only_job_again_keeping_the_directory(job) -> None:
    args, out = job
    (out / "theirs.txt").write_text("not mpiscore's\n")
    before = records(out)
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "already complete" not in result.output
    after = records(out)
    assert (out / "theirs.txt").read_text() == "not mpiscore's\n"
    assert after["theirs.txt"] == before["theirs.txt"]
    assert all(after[f"f{i:02d}.txt.out"] != before[f"f{i:02d}.txt.out"] for i in range(FILES))
    assert after["summary.json"] != before["summary.json"]


def test_a_summary_only_job_stopped_before_completing_is_not_complete(job) -> None:
    """A run directory whose summary does not say complete (the job was cut short): the
    same command again is refused, as a partial output is (it would run every batch
    again, adding the script's files twice); --resume finishes it."""
    args, out = job
    summary = Path(f"{out}.run") / "summary.json"
    summary.write_text(summary.read_text().replace('"complete"', '"stopped"', 1))
    refused = invoke(*args)
    assert refused.exit_code == 6, refused.output
    assert "an interrupted run of a job writing into it is recorded in" in refused.output
    result = invoke(args[0], "--resume", *args[1:])
    assert result.exit_code == 0, result.output
    assert "already complete" not in result.output
    assert '"complete"' in summary.read_text()


def test_another_job_into_a_complete_summary_only_directory_needs_overwrite(job) -> None:
    args, _ = job
    other = [a if a != 5 else 4 for a in args]  # another --mini-batch-size: another plan
    refused = invoke(*other)
    assert refused.exit_code == 6, refused.output
    assert "holds the files of another job that completed" in refused.output
    assert invoke(*other, "--overwrite").exit_code == 0

"""A files job whose output is written into its input folder (results next to the
data) never takes its own output, lock or run directory as items, in process."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from mpiscore.cli import main

FILES = 5


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def files_job(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of FILES one-line files, and a script giving each file's line."""
    folder = tmp_path / "fdir"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"f{i}").write_text(f"{i}\n")
    script = tmp_path / "s.py"
    script.write_text("def run(mini_batch):\n    return [open(p).read().strip() for p in "
                      "mini_batch]\n")
    return folder, script


def score_args(folder: Path, script: Path, out: Path) -> list[object]:
    return ["score", "--entry-script", script, "--input", folder, "--input-mode", "files",
            "--mini-batch-size", 2, "--output", out, "--output-action", "append_row"]


def test_a_files_job_skips_its_own_output_lock_and_run_dir(tmp_path: Path) -> None:
    folder, script = files_job(tmp_path)
    out = folder / "out.txt"
    args = score_args(folder, script, out)
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert sorted(out.read_text().split()) == [str(i) for i in range(FILES)]
    again = invoke(*args, "--resume")  # out.txt and out.txt.run are in the folder now
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    only_ours = invoke("score", "--entry-script", script, "--input", f"{folder}/other.txt*",
                       "--input-mode", "files", "--output", folder / "other.txt",
                       "--output-action", "append_row")  # matches only what the job makes
    assert only_ours.exit_code == 3 and "no files but this job's own" in only_ours.output


def test_a_partial_left_by_a_run_stopped_after_naming_the_output_is_settled(
        tmp_path: Path, monkeypatch) -> None:
    """append_row names OUTPUT, then deletes its partial directory: a run killed between
    the two leaves both. The same command again (a requeue) deletes the partial and says
    the job is complete, instead of asking for --resume and for --overwrite."""
    from mpiscore.io import lines

    folder, script = files_job(tmp_path)
    out = tmp_path / "out.txt"
    args = score_args(folder, script, out)
    with monkeypatch.context() as patched:  # the kill: the partial is never deleted
        patched.setattr(lines.shutil, "rmtree", lambda path: None)
        first = invoke(*args)
    assert first.exit_code == 0, first.output
    partial = Path(f"{out}.partial")
    assert partial.is_dir() and out.read_text().split() == [str(i) for i in range(FILES)]
    invoke(*args, "--dry-run")  # changes nothing, takes no lock: leaves it
    assert partial.is_dir()
    again = invoke(*args)
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    assert not partial.exists() and out.read_text().split() == [str(i) for i in range(FILES)]
    # a partial that was not committed is a run to resume, and is kept
    failed_args = score_args(folder, script, tmp_path / "other.txt")
    failed = CliRunner().invoke(main, [str(a) for a in [*failed_args, "--max-retries", 0]],
                                env={"MPISCORE_FAULTS": "raise-always:1"})
    assert failed.exit_code == 5, failed.output
    kept = Path(f"{tmp_path / 'other.txt'}.partial")
    (tmp_path / "other.txt").write_text("0\n")  # a text file of the user's beside it
    refused = invoke(*failed_args)
    assert refused.exit_code == 6 and "a text file, which carries nothing that proves" \
        in refused.output, refused.output
    assert kept.is_dir()

"""A files job whose output is written into its input folder (results next to the
data) never takes its own output, lock or run directory as items, in process."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from mpiscore.cli import main

FILES = 5


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_files_job_skips_its_own_output_lock_and_run_dir(tmp_path: Path) -> None:
    folder = tmp_path / "fdir"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"f{i}").write_text(f"{i}\n")
    script = tmp_path / "s.py"
    script.write_text("def run(mini_batch):\n    return [open(p).read().strip() for p in "
                      "mini_batch]\n")
    out = folder / "out.txt"
    args = ["score", "--entry-script", script, "--input", folder, "--input-mode", "files",
            "--mini-batch-size", 2, "--output", out, "--output-action", "append_row"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert sorted(out.read_text().split()) == [str(i) for i in range(FILES)]
    again = invoke(*args, "--resume")  # out.txt and out.txt.run are in the folder now
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    only_ours = invoke("score", "--entry-script", script, "--input", f"{folder}/other.txt*",
                       "--input-mode", "files", "--output", folder / "other.txt",
                       "--output-action", "append_row")  # matches only what the job makes
    assert only_ours.exit_code == 3 and "no files but this job's own" in only_ours.output

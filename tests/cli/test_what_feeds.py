"""What decides the rows besides the model and the input files (journal.SCORING_KEYS):
an interrupted run resumed with another dataset, other columns, other script arguments
or another --on-nan is refused naming the change, and a complete output is not "already
complete" for another of them. In process, with real scoring processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpiscore.cli import main
from mpiscore.journal import as_recorded
from tests import builders

ROWS = 40


def invoke(*args: object, faults: str = ""):
    return CliRunner().invoke(main, [str(a) for a in args], env={"MPISCORE_FAULTS": faults})


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("mpiscore:")]


def interrupted(*args: object) -> None:
    """A run whose batch 1 fails for good: its output stays partial, to be resumed. (Its
    options go first: what follows ``--`` is the script's.)"""
    failed = invoke(args[0], "--max-retries", 0, *args[1:], faults="raise-always:1")
    assert failed.exit_code == 5, failed.output


def refused_resume(*args: object) -> str:
    refused = invoke(args[0], "--resume", *args[1:])
    assert refused.exit_code == 2, refused.output
    [line] = error_lines(refused.output)
    assert line.startswith("mpiscore: ConfigError: --resume refused: since the interrupted "
                           "run, "), line
    return line


@pytest.fixture
def two_datasets(tmp_path: Path) -> dict[str, Path]:
    """``x.h5`` with /A and /B, the same rows in another column order."""
    data = builders.features(ROWS, seed=4)
    return {"model": builders.mlp(tmp_path / "m.onnx"), "out": tmp_path / "y.h5",
            "h5": builders.write_h5(tmp_path / "x.h5", A=data, B=data[:, ::-1].copy())}


def hdf5_args(job: dict[str, Path], dataset: str, *more: object) -> list[object]:
    return ["score", "--model", job["model"], "--input", f"{job['h5']}:{dataset}", "--output",
            job["out"], "--mini-batch-size", 10, *more]


def test_resume_from_another_dataset_is_refused(two_datasets) -> None:
    interrupted(*hdf5_args(two_datasets, "/A"))
    line = refused_resume(*hdf5_args(two_datasets, "/B"))
    assert "the data feeding the model changed: features=/A (1 file) then, features=/B " \
           "(1 file) now" in line, line
    resumed = invoke(*hdf5_args(two_datasets, "/A", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    want = builders.reference(two_datasets["model"], features=builders.features(ROWS, seed=4))
    builders.assert_matches(builders.read_h5(two_datasets["out"]), want)


def test_a_complete_output_of_another_dataset_is_not_already_complete(two_datasets) -> None:
    first = invoke(*hdf5_args(two_datasets, "/A"))
    assert first.exit_code == 0, first.output
    again = invoke(*hdf5_args(two_datasets, "/A"))
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    other = invoke(*hdf5_args(two_datasets, "/B"))
    assert other.exit_code != 0 and "output exists; pass --overwrite" in other.output, \
        other.output


def test_resume_with_the_columns_in_another_order_is_refused(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "m.onnx", features=4)
    data = builders.write_parquet(tmp_path / "x.parquet", builders.features(ROWS, 4), None, 10)
    args = ["score", "--model", model, "--input", data, "--output", tmp_path / "y.parquet",
            "--mini-batch-size", 10]
    interrupted(*args, "--columns", "f0,f1,f2,f3")
    line = refused_resume(*args, "--columns", "f3,f2,f1,f0")
    assert "the data feeding the model changed: features=f0,f1,f2,f3 then, " \
           "features=f3,f2,f1,f0 now" in line, line


def test_resume_with_other_script_arguments_or_on_nan_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import argparse\n\ndef init():\n    global k\n"
                      "    k = argparse.ArgumentParser().parse_known_args()[0]\n\n"
                      "def run(mini_batch):\n    return mini_batch['f0'].to_numpy()\n")
    data = builders.write_parquet(tmp_path / "x.parquet", builders.features(ROWS, 2), None, 10)
    args = ["score", "--entry-script", script, "--input", data, "--output",
            tmp_path / "y.h5", "--mini-batch-size", 10]
    interrupted(*args, "--", "--k", "1")
    line = refused_resume(*args, "--", "--k", "1000")
    assert "the entry script's arguments (after --) changed: '--k 1' then, '--k 1000' now" \
        in line, line
    line = refused_resume(*args, "--on-nan", "pass", "--", "--k", "1")
    assert "--on-nan changed: error then, pass now" in line, line
    script.write_text(script.read_text() + "# edited\n")
    line = refused_resume(*args, "--", "--k", "1")
    assert "the entry script changed: SHA-256 " in line, line
    folder = invoke("score", "--entry-script", tmp_path, "--input", data, "--output",
                    tmp_path / "z.h5")
    assert folder.exit_code == 4, folder.output
    assert f"{tmp_path}: a directory, not the entry script; name the entry script's file" \
        in folder.output, folder.output


def test_a_run_directory_of_an_earlier_mpiscore_still_compares_without_scoring() -> None:
    """Its fingerprint has no ``scoring``: a job resumed across the upgrade resumes."""
    current = {"model_sha256": "a", "inputs": [], "scoring": {"on_nan": "error"}}
    assert as_recorded({"model_sha256": "a", "inputs": []}, current) == \
        {"model_sha256": "a", "inputs": []}
    assert as_recorded({**current}, current) == current


@pytest.mark.parametrize("damage", ["a part file deleted", "the file cut short"])
def test_a_complete_output_damaged_since_is_not_already_complete(tmp_path: Path,
                                                                 damage: str) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(ROWS))
    out = tmp_path / ("y.parquet" if "part" in damage else "y.h5")
    args = ["score", "--model", model, "--input", data, "--output", out,
            "--mini-batch-size", 10]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    if out.suffix == ".parquet":  # still ours: --overwrite replaces it
        (out / "part-000000002.parquet").unlink()
        said, advice = "part files of batches 2 are missing", "score it again with --overwrite"
    else:  # no HDF5 any more: nothing proves it ours, so the user deletes it
        os.truncate(out, out.stat().st_size // 2)
        said, advice = "cannot be read as HDF5", "delete it, then score it again"
    for again in (invoke(*args), invoke(args[0], "--resume", *args[1:])):
        assert again.exit_code == 6, again.output
        [line] = error_lines(again.output)
        assert f"{out}: {said}" in line and \
            f"although this job completed it; {advice}" in line, line
    if out.suffix == ".h5":
        out.unlink()
    assert invoke(*args, "--overwrite").exit_code == 0


def test_a_partial_output_whose_run_left_no_records_is_only_started_over(two_datasets) -> None:
    """A run stopped (a full run directory, say) before it recorded its job: both the
    same command and --resume say to start over, rather than sending each to the other."""
    interrupted(*hdf5_args(two_datasets, "/A"))
    (Path(f"{two_datasets['out']}.run") / "fingerprint.json").unlink()
    again = invoke(*hdf5_args(two_datasets, "/A"))
    assert again.exit_code == 6, again.output
    assert "stopped before it recorded its job in the run directory (or --run-dir is not " \
        "the one it used), so it cannot be resumed; rerun with --overwrite" in again.output, \
        again.output
    resumed = invoke(*hdf5_args(two_datasets, "/A", "--resume"))
    assert resumed.exit_code == 2, resumed.output
    assert "nothing to resume; rerun with --overwrite" in resumed.output, resumed.output
    assert invoke(*hdf5_args(two_datasets, "/A", "--overwrite")).exit_code == 0


def test_a_run_directory_of_an_earlier_mpiscore_resumes_keeping_its_batches(
        two_datasets) -> None:
    """Its fingerprint has no ``scoring`` and its journal is bound to that fingerprint:
    --resume trusts the journal, scoring only the batches it lacks."""
    import json

    from mpiscore.journal import JournalFile, journal_token

    interrupted(*hdf5_args(two_datasets, "/A"))
    run_dir = Path(f"{two_datasets['out']}.run")
    recorded = json.loads((run_dir / "fingerprint.json").read_text())
    del recorded["scoring"]  # as written before it had the key
    (run_dir / "fingerprint.json").write_text(json.dumps(recorded))
    journal = JournalFile(run_dir / "journal.txt", journal_token(recorded), 4)
    (run_dir / "journal.txt").write_bytes(journal.header + journal.record(0) + journal.record(2)
                                          + journal.record(3))
    resumed = invoke(*hdf5_args(two_datasets, "/A", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert "3 of 4 batches already written" in resumed.output, resumed.output
    want = builders.reference(two_datasets["model"], features=builders.features(ROWS, seed=4))
    builders.assert_matches(builders.read_h5(two_datasets["out"]), want)

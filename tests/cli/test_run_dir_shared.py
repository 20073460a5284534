"""A fresh job's --run-dir is new, empty, or its own output's: never another job's
records, which it would replace, nor a folder of the user's (in process)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from mpiscore.cli import main
from tests import builders


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def own_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("mpiscore:")]


def test_a_second_job_on_a_run_dir_of_another_output_is_refused(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(40))
    shared = tmp_path / "shared"

    def job(out: str, *more: object):
        return invoke("score", "--model", model, "--input", data, "--output", tmp_path / out,
                      "--run-dir", shared, "--mini-batch-size", 10, *more)

    assert job("a.h5").exit_code == 0
    journal = (shared / "journal.txt").read_bytes()
    second = job("b.h5")
    assert second.exit_code == 2, second.output
    assert own_lines(second.output) == [
        f"mpiscore: ConfigError: --run-dir {shared}: holds the records of the job that writes "
        f"{tmp_path / 'a.h5'}; give each job its own --run-dir (or pass --overwrite to replace "
        "those records)"]
    assert (shared / "journal.txt").read_bytes() == journal and not (tmp_path / "b.h5").exists()
    assert job("a.h5", "--resume").exit_code == 0  # its own job: already complete
    assert job("b.h5", "--overwrite").exit_code == 0  # asked for


def test_a_folder_of_the_user_s_is_not_a_run_dir(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(40))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text("my notes\n")
    result = invoke("score", "--model", model, "--input", data, "--output", tmp_path / "y.h5",
                    "--run-dir", mine)
    assert result.exit_code == 2, result.output
    [line] = own_lines(result.output)
    assert "holds files mpiscore did not write (summary.json)" in line
    assert (mine / "summary.json").read_text() == "my notes\n"
    assert sorted(p.name for p in mine.iterdir()) == ["summary.json"]

"""``mpiscore slurm``'s batch script (mpiscore/slurm.py): what it carries, how it quotes,
that bash accepts it, and that its stop/requeue logic is slurm/long.sbatch's own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpiscore import slurm
from mpiscore.cli import main
from mpiscore.errors import ConfigError

EXAMPLES = Path(__file__).parents[2] / "slurm"


def job(tmp_path: Path, **fields: object) -> slurm.SlurmJob:
    values: dict = {"score_args": ("--model", "m.onnx", "--input", "x.h5"),
                    "output": Path("y.h5"), "workdir": tmp_path, "mpiscore": "/opt/bin/mpiscore",
                    **fields}
    return slurm.SlurmJob(**values)


def settings_of(script: str, cwd: Path) -> dict[str, list[str]]:
    """Run the script's settings in bash: the score, fresh and script_args arrays and the
    variables, as bash sees them."""
    settings = script.split(slurm.SETTINGS_END)[0]
    arrays = "".join(f'printf "\\1"; for a in "${{{name}[@]}}"; do printf "%s\\0" "$a"; done; '
                     for name in ("score", "fresh", "script_args"))
    probe = settings + ('printf "%s\\0" "$PWD" "$OUTPUT" "$MPISCORE" "$LAUNCHER" "$MPI_PLUGIN" '
                        f'"$MAX_RESTARTS"; {arrays}\n')
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=cwd,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    variables, score, fresh, script_args = (part.split("\0")[:-1]
                                            for part in done.stdout.split("\1"))
    names = ["PWD", "OUTPUT", "MPISCORE", "LAUNCHER", "MPI_PLUGIN", "MAX_RESTARTS"]
    return {**{n: [v] for n, v in zip(names, variables, strict=True)}, "score": score,
            "fresh": fresh, "script_args": script_args}


def bash_syntax_ok(script: str) -> None:
    done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr


def test_script_carries_the_job_and_resources(tmp_path: Path) -> None:
    script = slurm.render_script(job(
        tmp_path, nodes=2, ntasks_per_node=4, cpus_per_task=8, procs_per_rank="2",
        time="1-00:00:00", partition="gpu", account="proj1", max_restarts=3, stop_grace=20))
    assert script.startswith("#!/bin/bash\n")
    bash_syntax_ok(script)
    for line in ("--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=8", "--time=1-00:00:00",
                 "--partition=gpu", "--account=proj1", "--requeue", "--open-mode=append"):
        assert f"#SBATCH {line}\n" in script
    assert f"#SBATCH --signal=TERM@{20 + 60 + slurm.FINISH_SECONDS}\n" in script
    got = settings_of(script, tmp_path)
    assert got["score"] == ["--output", "y.h5", "--model", "m.onnx", "--input", "x.h5",
                            "--procs-per-rank", "2", "--stop-grace", "20",
                            "--intra-op-threads", "4"]  # 8 CPUs / 2 processes
    assert got["MAX_RESTARTS"] == ["3"] and got["LAUNCHER"] == ["srun"]
    assert got["MPI_PLUGIN"] == ["pmi2"] and got["fresh"] == []


def test_paths_with_spaces_and_quotes_survive(tmp_path: Path) -> None:
    where = tmp_path / "my jobs"
    where.mkdir()
    odd = "it's a $HOME `x` \"dir\"/m.onnx"
    script = slurm.render_script(job(
        where, score_args=("--model", odd, "--input", "data dir/*.h5:/features"),
        output=Path("out dir/y.h5"), mpiscore="/opt/my env/bin/mpiscore", overwrite=True,
        intra_op_threads="3"))
    bash_syntax_ok(script)
    got = settings_of(script, tmp_path)
    assert got["PWD"] == [str(where)] and got["OUTPUT"] == ["out dir/y.h5"]
    assert got["MPISCORE"] == ["/opt/my env/bin/mpiscore"]
    assert got["score"][:6] == ["--output", "out dir/y.h5", "--model", odd, "--input",
                                "data dir/*.h5:/features"]  # the glob left for mpiscore
    assert got["score"][-2:] == ["--intra-op-threads", "3"] and got["fresh"] == ["--overwrite"]


def test_body_is_long_sbatch_s() -> None:
    """The stop/requeue logic is rendered from the template slurm/long.sbatch is."""
    example = (EXAMPLES / "long.sbatch").read_text()
    assert example == slurm.template()
    body = example.split(slurm.SETTINGS_END, 1)[1].split("\n", 1)[1]
    script = slurm.render_script(slurm.SlurmJob(("--model", "m", "--input", "x"), Path("y")))
    assert script.endswith(body) and "scontrol requeue" in body
    bash_syntax_ok(example)


@pytest.mark.parametrize("text, seconds", [
    ("30", 1800), ("5:30", 330), ("2:00:00", 7200), ("1-0", 86400), ("1-2:30", 95400),
    ("2-00:00:10", 172810)])
def test_walltime_formats(text: str, seconds: int) -> None:
    assert slurm.walltime_seconds(text) == seconds


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="D-HH:MM:SS"):
        slurm.walltime_seconds("2h")
    with pytest.raises(ConfigError, match="too short"):
        slurm.render_script(job(tmp_path, time="2"))
    with pytest.raises(ConfigError, match="more scoring processes than CPUs"):
        slurm.render_script(job(tmp_path, cpus_per_task=2, procs_per_rank="4"))
    with pytest.raises(ConfigError, match="exclude each other"):
        job(tmp_path, mpi="pmix", launcher="mpiexec")


def test_lead_time_from_measured_start_up(tmp_path: Path) -> None:
    run_dir = tmp_path / "y.h5.run"
    run_dir.mkdir()
    (run_dir / "history.jsonl").write_text(
        "".join(json.dumps({"setup_seconds": s}) + "\n" for s in (3.2, 7.5)) + "torn{\n")
    assert job(tmp_path, stop_grace=10).lead_seconds() == 10 + 8 + slurm.FINISH_SECONDS


def test_gpus_one_rank_per_gpu(tmp_path: Path) -> None:
    script = slurm.render_script(job(tmp_path, gpus_per_node=4, launcher="mpiexec"))
    assert "#SBATCH --gpus-per-node=4\n" in script and "#SBATCH --ntasks-per-node=4\n" in script
    assert settings_of(script, tmp_path)["LAUNCHER"] == ["mpiexec"]


def test_cli_prints_the_script_with_the_score_options_given(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "slurm", "--cpus-per-task", "4", "--time", "2:00:00", "--mpi", "pmix",
        "--model", "m.onnx", "--input", "a.h5:/x", "--input", "b.h5:/x", "--output", "y.h5",
        "--map", "f=/x", "--no-spin", "--error-threshold", "-1"])
    assert result.exit_code == 0, result.output
    got = settings_of(result.output, Path.cwd())
    assert got["score"] == ["--output", "y.h5", "--model", "m.onnx", "--input", "a.h5:/x",
                            "--input", "b.h5:/x", "--map", "f=/x", "--no-spin",
                            "--error-threshold", "-1", "--procs-per-rank", "1",
                            "--stop-grace", "30", "--intra-op-threads", "4"]
    assert got["MPI_PLUGIN"] == ["pmix"] and "#SBATCH --time=2:00:00\n" in result.output


def test_cli_refusal_is_one_line() -> None:
    result = CliRunner().invoke(main, ["slurm", "--launcher", "mpiexec", "--mpi", "pmi2",
                                       "--model", "m", "--input", "x", "--output", "y.h5"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "mpiscore: ConfigError: --mpi and --launcher mpiexec exclude each other: --mpi picks "
        "srun's MPI plugin"]


def slurm_cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["slurm", *map(str, args)])
    return result.exit_code, result.output


def test_entry_script_words_come_after_every_option(tmp_path: Path) -> None:
    """The script's words are script_args, which the body puts last, after --: the
    template's --resume/--overwrite and --procs-per-rank, --stop-grace stay mpiscore's."""
    code, output = slurm_cli("--launcher", "mpiexec", "--entry-script", "s.py", "--input",
                             "x.parquet", "--output", "y.parquet", "--stop-grace", 5, "--",
                             "--model_dir", "./m x", "--resume")
    assert code == 0, output
    got = settings_of(output, tmp_path)
    assert got["score"] == ["--output", "y.parquet", "--entry-script", "s.py", "--input",
                            "x.parquet", "--procs-per-rank", "1", "--stop-grace", "5"]
    assert got["script_args"] == ["--model_dir", "./m x", "--resume"]  # words, not options
    assert 'args+=(-- "${script_args[@]}")' in output.split(slurm.SETTINGS_END)[1]
    assert "--resume" not in got["score"] + got["fresh"]


def test_azure_yaml_program_arguments_come_last(tmp_path: Path) -> None:
    (tmp_path / "parallel.yml").write_text(
        "type: parallel\nmini_batch_size: '50'\ntask:\n  type: run_function\n  code: .\n"
        "  entry_script: s.py\n  program_arguments: --model_dir ./m --tag yml\n")
    code, output = slurm_cli("--config", tmp_path / "parallel.yml", "--input", "x.parquet",
                             "--output", "y.parquet")
    assert code == 0, output
    got = settings_of(output, tmp_path)
    assert "--" not in got["score"] and got["score"][-4:] == [
        "--procs-per-rank", "1", "--stop-grace", "30"]
    assert got["script_args"] == ["--model_dir", "./m", "--tag", "yml"]


def test_run_dir_reaches_the_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--run-dir, given or from a job file, is the job's, as the lead time from its
    history assumed."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myrun").mkdir()
    (tmp_path / "myrun" / "history.jsonl").write_text(json.dumps({"setup_seconds": 100}))
    code, output = slurm_cli("--model", "m.onnx", "--input", "x.h5", "--output", "y.h5",
                             "--run-dir", "myrun", "--stop-grace", 5)
    assert code == 0, output
    assert settings_of(output, tmp_path)["score"][:4] == ["--output", "y.h5",
                                                          "--run-dir", "myrun"]
    assert f"#SBATCH --signal=TERM@{5 + 100 + slurm.FINISH_SECONDS}\n" in output
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.toml").write_text('run_dir = "r"\n')
    code, output = slurm_cli("--config", "jobs/job.toml", "--model", "m.onnx", "--input",
                             "x.h5", "--output", "y.h5")
    assert code == 0, output
    assert settings_of(output, tmp_path)["score"][2:4] == ["--run-dir", "jobs/r"]
    assert "--run-dir" not in settings_of(slurm.render_script(job(tmp_path)), tmp_path)["score"]


@pytest.mark.parametrize("options, message", [
    (["--resume"], "--resume: the script adds it itself to every run that finds "
     "OUTPUT.partial (the first run too, unless --overwrite); leave it out"),
    (["--dry-run"], "--dry-run: a batch job of --dry-run would only estimate, scoring "
     "nothing; run `mpiscore score --dry-run ...` for the estimate (without --submit, "
     "`mpiscore slurm` only prints the script)"),
    (["--ranks", "8"], "--ranks (a --dry-run option): a batch job of --dry-run"),
    (["--json"], "--json (a --dry-run option): a batch job of --dry-run"),
    (["--stop-grace", "70000"], "--stop-grace 70000: the stop signal would come 70075s "
     "before the limit (--stop-grace + start-up + 15s), more than Slurm's --signal allows "
     "(65535s); ask for a shorter --stop-grace"),
    (["--stop-grace", "-1"], "--stop-grace must be >= 0")])
def test_cli_refuses_what_no_batch_job_can_run(options: list[str], message: str) -> None:
    code, output = slurm_cli("--model", "m.onnx", "--input", "x.h5", "--output", "y.h5",
                             *options)
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mpiscore: ConfigError: {message}")


def test_resume_from_a_job_file_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text("resume = true\n")
    code, output = slurm_cli("--config", tmp_path / "job.toml", "--model", "m.onnx",
                             "--input", "x.h5", "--output", "y.h5")
    assert code == 2 and output.startswith("mpiscore: ConfigError: --resume: the script")
    (tmp_path / "job.toml").write_text("resume = false\n")
    assert slurm_cli("--config", tmp_path / "job.toml", "--model", "m.onnx", "--input",
                     "x.h5", "--output", "y.h5")[0] == 0

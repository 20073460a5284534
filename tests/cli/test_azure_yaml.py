"""Azure ML parallel job YAML as a job file: ``mpiscore score --config parallel.yml``.

The translation of each setting (azure_yaml.translate), the ignored keys named in one
warning line, a real entry-script job run through the CLI from a YAML file, and bad
YAML files: one line each, exit 2.
"""

from __future__ import annotations

import json
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpiscore import azure_yaml
from mpiscore.azure_yaml import translate
from mpiscore.cli import main, score
from mpiscore.errors import ConfigError
from mpiscore.jobfile import option_kinds, read_job

FILES = 5

SCRIPT = """
import argparse
import os

def init():
    global tag
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", default="none")
    args, _ = parser.parse_known_args()
    tag = args.tag

def run(mini_batch):
    return [f"{tag}:{os.path.basename(path)}:{len(mini_batch)}" for path in mini_batch]
"""

# Azure's own shape (the iris example of reference-yaml-job-parallel), trimmed
PARALLEL_YML = """
$schema: https://azuremlschemas.azureedge.net/latest/parallelJob.schema.json
type: parallel
display_name: batch-score
compute: azureml:cpu-cluster
inputs:
  job_data:
    type: uri_folder
    path: ./data
  score_model:
    type: uri_folder
    path: ./model
outputs:
  job_output_file:
    type: uri_file
input_data: ${{inputs.job_data}}
mini_batch_size: "2"
resources:
  instance_count: 2
max_concurrency_per_instance: 1
error_threshold: 0
mini_batch_error_threshold: 1
logging_level: WARNING
retry_settings:
  max_retries: 1
  timeout: 30
environment_variables:
  AZUREML_TOKEN: abc
task:
  type: run_function
  code: ./src
  entry_script: score.py
  environment: azureml:AzureML-sklearn-1.0:1
  program_arguments: >-
    --tag yml --model_dir ${{inputs.score_model}} --resource_monitor_interval 0
  append_row_to: ${{outputs.job_output_file}}
"""


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def own_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("mpiscore:")]


def parallel(text: str) -> dict:
    import yaml

    return yaml.safe_load(textwrap.dedent(text))


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "job"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "score.py").write_text(SCRIPT)
    (folder / "data").mkdir()
    for i in range(FILES):
        (folder / "data" / f"f{i}.txt").write_text(str(i))
    (folder / "parallel.yml").write_text(PARALLEL_YML)
    return folder


# -- a real job


def test_an_azure_parallel_job_runs_from_its_yaml(job_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # task.code is relative to the YAML file, not the cwd
    out = tmp_path / "lines.txt"
    result = invoke("score", "--config", "job/parallel.yml", "--input", job_dir / "data",
                    "--input-mode", "files", "--output", out)
    assert result.exit_code == 0, result.output
    # two files per batch (mini_batch_size "2"), --tag from program_arguments, in order
    want = [f"yml:f{i}.txt:{2 if i < 4 else 1}" for i in range(FILES)]
    assert out.read_text().splitlines() == want
    stored = tomllib.loads((tmp_path / "lines.txt.run" / "config.toml").read_text())
    assert stored["entry_script"] == str(job_dir / "src" / "score.py")
    assert stored["script_args"] == ["--tag", "yml"]
    assert stored["output_action"] == "append_row" and stored["mini_batch_size"] == 2
    assert (stored["max_retries"], stored["batch_timeout"]) == (1, 30.0)
    assert (stored["mini_batch_error_threshold"], stored["log_level"]) == (1, "warning")
    assert stored["monitor_seconds"] == 0.0
    [warning] = [line for line in own_lines(result.output) if "warning" in line]
    assert warning.startswith("mpiscore: warning: job/parallel.yml: ignored: ")
    for named in ("$schema, display_name (descriptive)", "inputs, outputs, input_data",
                  "compute, resources.instance_count (the allocation: ranks come from "
                  "the launcher", "environment_variables AZUREML_TOKEN (cannot reach",
                  "mpiexec -genv", "task.environment (the virtualenv",
                  "task.program_arguments --model_dir ${{inputs.score_model}} ("):
        assert named in warning, (named, warning)


def test_the_command_line_wins_over_the_yaml(job_dir, tmp_path) -> None:
    out = tmp_path / "lines.txt"
    result = invoke("score", "--config", job_dir / "parallel.yml", "--input", job_dir / "data",
                    "--input-mode", "files", "--output", out, "--mini-batch-size", 5,
                    "--", "--tag", "cli")
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines() == [f"cli:f{i}.txt:5" for i in range(FILES)]


def test_no_warning_when_nothing_is_ignored(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("type: parallel\nmini_batch_size: 10mb\n")
    values, ignored = read_job(path, option_kinds(score.params))
    assert values == {"mini_batch_size": "10MiB"} and ignored == ""


# -- the translation


@pytest.mark.parametrize(("size", "want"), [
    ("10mb", "10MiB"), ("100kb", "100KiB"), ("1GB", "1GiB"), ("10 mb", "10MiB"),
    ("10", 10), (32, 32),
])
def test_mini_batch_size_in_azure_units(size, want) -> None:
    # Azure (azure-ai-ml's Parallel node) multiplies kb/mb/gb by 1024: mpiscore's KiB/MiB/GiB
    options = translate({"type": "parallel", "mini_batch_size": size}, "p.yml").options
    assert options == {"mini_batch_size": want}


def test_every_mapped_setting() -> None:
    data = parallel("""
        type: parallel
        max_concurrency_per_instance: 4
        error_threshold: 7
        mini_batch_error_threshold: "5"
        logging_level: DEBUG
        partition_keys: [store, day]
        retry_settings: {max_retries: 2, timeout: 60}
        task:
          code: src/
          entry_script: sub/score.py
          program_arguments: >-
            --model_dir ./model --error_threshold=7 --allowed_failed_percent 10
            --progress_update_timeout 300 --copy_logs_to_parent True --x 'a b'
    """)
    assert translate(data, "p.yml").options == {
        "procs_per_rank": 4, "error_threshold": 7, "mini_batch_error_threshold": 5,
        "log_level": "debug", "partition_by": "store,day", "max_retries": 2,
        "batch_timeout": 60.0, "entry_script": str(Path("src/sub/score.py")),
        "allowed_failed_percent": 10.0, "progress_timeout": 300.0,
        "script_args": ["--model_dir", "./model", "--x", "a b"]}


def test_placeholders_are_dropped_with_their_option_name() -> None:
    data = {"type": "parallel", "task": {"entry_script": "s.py", "program_arguments":
            "--a 1 --data ${{inputs.x}} --out=${{outputs.y}} --b 2 ${{inputs.z}}"}}
    out = translate(data, "p.yml")
    assert out.options["script_args"] == ["--a", "1", "--b", "2"]
    assert out.options["entry_script"] == "s.py"
    assert ("task.program_arguments --data ${{inputs.x}} --out=${{outputs.y}} "
            "${{inputs.z}} (${{...}} cannot be resolved here") in out.ignored_text()


def test_unknown_and_bound_keys_are_named() -> None:
    data = {"type": "parallel", "mini_batch_size": "${{parent.inputs.size}}",
            "frobnicate": 1, "identity": {"type": "managed"},
            "retry_settings": {"max_retries": 1, "backoff": 2}}
    text = translate(data, "p.yml").ignored_text()
    assert "mini_batch_size (${{...}} cannot be resolved" in text
    assert "frobnicate, retry_settings.backoff (not a parallel job setting" in text
    assert "identity (Azure credentials" in text


def test_the_keys_it_writes_are_score_options() -> None:
    data = parallel(PARALLEL_YML)
    data.update(partition_keys=["k"], task={**data["task"], "program_arguments":
                "--allowed_failed_percent 1 --progress_update_timeout 2 --error_threshold 0"})
    assert set(translate(data, "p.yml").options) <= set(option_kinds(score.params))


# -- bad input


@pytest.mark.parametrize(("text", "message"), [
    ("type: parallel\nmini_batch_size: [\n", "p.yml: not a YAML file (line "),
    ("- a\n- b\n", "p.yml: not an Azure ML parallel job: expected a mapping"),
    ("type: command\ncommand: python x.py\n", "p.yml: type: command: not an Azure ML parallel "
                                              "job (type: parallel)"),
    ("type: pipeline\njobs:\n  score: {type: parallel}\n",
     "type: pipeline: not an Azure ML parallel job (type: parallel); its parallel jobs: score"),
    ("type: parallel\nmini_batch_size: 10tb\n", "p.yml: mini_batch_size: '10tb': expected a "
                                                "positive count (10) or a size"),
    ("type: parallel\nmini_batch_size: 0\n", "p.yml: mini_batch_size: 0: expected a positive"),
    ("type: parallel\nerror_threshold: many\n", "p.yml: error_threshold: 'many': expected an "
                                                "integer"),
    ("type: parallel\nmax_concurrency_per_instance: true\n",
     "max_concurrency_per_instance: True: expected an integer"),
    ("type: parallel\nretry_settings: 3\n", "p.yml: retry_settings: 3: expected a mapping"),
    ("type: parallel\nretry_settings: {timeout: soon}\n",
     "p.yml: retry_settings.timeout: 'soon': expected a number"),
    ("type: parallel\nlogging_level: LOUD\n", "p.yml: logging_level: 'LOUD': expected DEBUG, "
                                              "INFO, WARNING or ERROR"),
    ("type: parallel\ntask: {type: command}\n", "p.yml: task.type: 'command': expected "
                                                "run_function"),
    ("type: parallel\ntask: {entry_script: 3}\n", "p.yml: task.entry_script: 3: expected a "
                                                  "string"),
    ("type: parallel\ntask: {code: 'azureml:src:1', entry_script: s.py}\n",
     "p.yml: task.code: 'azureml:src:1': expected a local directory"),
    ("type: parallel\ntask: {program_arguments: \"--a 'b\"}\n",
     "p.yml: task.program_arguments: \"--a 'b\": expected arguments as a shell would split"),
    ("type: parallel\ntask: {program_arguments: --error_threshold x}\n",
     "p.yml: task.program_arguments --error_threshold: 'x': expected an integer"),
    ("type: parallel\npartition_keys: [1]\n", "p.yml: partition_keys: [1]: expected a list"),
    ("type: parallel\nerror_threshold: -1\ntask: {program_arguments: --error_threshold 10}\n",
     "p.yml: task.program_arguments --error_threshold: 10 and error_threshold: -1 set the "
     "same thing; keep one"),
    ("type: parallel\ntask: {program_arguments: --error_threshold 10}\nerror_threshold: -1\n",
     "p.yml: error_threshold: -1 and task.program_arguments --error_threshold: 10 set the "
     "same thing; keep one"),
    ("type: parallel\nretry_settings: {timeout: 0}\n",
     "p.yml: retry_settings.timeout: 0.0: expected a positive number of seconds"),
    ("type: parallel\nretry_settings: {max_retries: -1}\n",
     "p.yml: retry_settings.max_retries: -1: expected an integer >= 0"),
    ("type: parallel\nerror_threshold: -2\n",
     "p.yml: error_threshold: -2: expected an integer >= -1 (-1: any number)"),
    ("type: parallel\ntask: {program_arguments: --allowed_failed_percent 120}\n",
     "p.yml: task.program_arguments --allowed_failed_percent: 120.0: expected a percentage"),
])
def test_bad_yaml_files_are_one_line_exit_2(tmp_path, text, message) -> None:
    path = tmp_path / "p.yml"
    path.write_text(text)
    result = invoke("score", "--config", path, "--input", "x", "--output", "y")
    assert result.exit_code == 2, result.output
    [line] = own_lines(result.output)
    assert line.startswith("mpiscore: ConfigError: ") and message in line, line
    assert "Traceback" not in result.output


def test_missing_yaml_file(tmp_path) -> None:
    result = invoke("score", "--config", tmp_path / "absent.yaml")
    assert result.exit_code == 2
    [line] = own_lines(result.output)
    assert "absent.yaml: cannot read the job file" in line


def test_without_pyyaml_one_line_names_the_extra(tmp_path, monkeypatch) -> None:
    real = azure_yaml.importlib.import_module

    def no_yaml(name: str, *args: object):
        if name == "yaml":
            raise ModuleNotFoundError("No module named 'yaml'")
        return real(name, *args)

    monkeypatch.setattr(azure_yaml.importlib, "import_module", no_yaml)
    path = tmp_path / "p.yml"
    path.write_text("type: parallel\n")
    with pytest.raises(ConfigError, match=r"p\.yml: .*needs PyYAML: pip install "
                                          r"'mpiscore\[scripts\]'"):
        azure_yaml.load(path)
    result = invoke("score", "--config", path)
    assert result.exit_code == 2 and "pip install 'mpiscore[scripts]'" in result.output


def test_a_yaml_warning_comes_from_rank_0_only(tmp_path, monkeypatch) -> None:
    path = tmp_path / "p.yml"
    path.write_text("type: parallel\ncompute: azureml:x\n")
    monkeypatch.setenv("PMI_RANK", "1")
    result = CliRunner().invoke(main, ["score", "--config", str(path), "--input", "x",
                                       "--output", "y"], standalone_mode=False)
    assert "ignored" not in result.output
    monkeypatch.setenv("PMI_RANK", "0")
    result = invoke("score", "--config", path, "--input", "x", "--output", "y")
    assert "ignored: compute (the allocation" in result.output


def test_json_of_dry_run_stays_clean(job_dir, tmp_path) -> None:
    """The warning goes to stderr, so --dry-run --json's stdout stays JSON."""
    runner = CliRunner()
    result = runner.invoke(main, ["score", "--config", str(job_dir / "parallel.yml"),
                                  "--input", str(job_dir / "data"), "--input-mode", "files",
                                  "--output", str(tmp_path / "o.txt"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["batches"] == 3
    assert "ignored" in result.stderr


def test_the_documented_example_translates_as_documented() -> None:
    import re

    import yaml

    text = (Path(__file__).parents[2] / "docs" / "scripts.md").read_text()
    block = re.search(r"## Azure parallel job YAML.*?```yaml\n(.*?)```", text, re.S)
    assert block is not None
    out = translate(yaml.safe_load(block.group(1)), "parallel.yml")
    assert out.options["mini_batch_size"] == "10MiB"
    assert out.options["script_args"] == ["--threshold", "0.5"]
    assert out.options["output_action"] == "append_row"
    assert out.options["allowed_failed_percent"] == 10.0
    assert "--model_dir ${{inputs.score_model}}" in out.ignored_text()

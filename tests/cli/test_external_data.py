"""A model with external data through the command, in-process with real scoring
processes, run from another folder than the model's: scored as onnxruntime scores it,
inspected and dry-run; a missing weights file is one ModelError line; --resume with
changed weights is refused as with a changed model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from mpiscore.cli import main
from tests import builders

ROWS = 100


def invoke(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """``model/m.onnx`` with ``model/weights.bin``, data, and the working directory
    ``elsewhere``: the job names the model ``../model/m.onnx``."""
    (tmp_path / "model").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    model = builders.with_external_data(builders.mlp(tmp_path / "model" / "m.onnx"))
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(ROWS, seed=8))
    return {"model": model, "data": data, "out": tmp_path / "y.h5"}


def score_args(job: dict[str, Path], *more: object) -> tuple[object, ...]:
    return ("score", "--model", "../model/m.onnx", "--input", job["data"], "--output",
            job["out"], "--mini-batch-size", 10, "--intra-op-threads", 1, *more)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("mpiscore:")]


def test_scored_as_onnxruntime_scores_it_from_its_path(job: dict[str, Path]) -> None:
    result = invoke(*score_args(job, "--procs-per-rank", 2))
    assert result.exit_code == 0, result.output
    want = builders.reference(job["model"], features=builders.features(ROWS, seed=8))
    builders.assert_matches(builders.read_h5(job["out"]), want)


def test_the_output_names_the_weights_it_was_scored_with(job: dict[str, Path]) -> None:
    """Provenance covers the external data, in sha256sum's format: it checks them."""
    result = invoke(*score_args(job))
    assert result.exit_code == 0, result.output
    with h5py.File(job["out"]) as handle:
        said = handle.attrs["model_data_sha256"]
    assert said.split("  ")[1] == "weights.bin"
    checked = subprocess.run(["sha256sum", "--check", "-"], input=said + "\n", text=True,
                             cwd=job["model"].parent, capture_output=True)
    assert checked.returncode == 0 and "weights.bin: OK" in checked.stdout, checked


def test_inspected_and_dry_run_from_another_folder(job: dict[str, Path]) -> None:
    inspected = invoke("inspect", "../model/m.onnx")
    assert inspected.exit_code == 0, inspected.output
    assert "logits" in inspected.output
    weights = job["model"].parent / "weights.bin"
    assert "in weights.bin)" in inspected.output.splitlines()[0]
    as_json = json.loads(invoke("inspect", "--json", "../model/m.onnx").output)
    assert as_json["external_data"] == [{"location": "weights.bin",
                                         "size_bytes": weights.stat().st_size}]
    dry = invoke(*score_args(job, "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert "estimate for 1 rank" in dry.output and not job["out"].exists()


def test_a_missing_weights_file_is_one_model_error_line(job: dict[str, Path]) -> None:
    weights = job["model"].parent / "weights.bin"
    weights.unlink()
    result = invoke(*score_args(job))
    assert result.exit_code == 4, result.output
    assert error_lines(result.output) == [
        f"mpiscore: ModelError: ../model/m.onnx: external data file {weights} not found (the "
        "model keeps tensor 'w1' in 'weights.bin', relative to its folder); put the file back "
        "beside the model"]
    assert not job["out"].exists() and not Path(f"{job['out']}.partial").exists()
    inspected = invoke("inspect", "../model/m.onnx")
    assert inspected.exit_code == 4, inspected.output
    assert error_lines(inspected.output) == [error_lines(result.output)[0]]


def test_resume_with_changed_weights_is_refused(job: dict[str, Path]) -> None:
    failed = invoke(*score_args(job, "--max-retries", 0),
                    env={"MPISCORE_FAULTS": "raise-always:5"})
    assert failed.exit_code == 5, failed.output
    weights = job["model"].parent / "weights.bin"
    kept, graph = weights.read_bytes(), job["model"].read_bytes()
    builders.with_external_data(builders.mlp(job["model"], seed=5))
    assert job["model"].read_bytes() == graph and weights.read_bytes() != kept
    refused = invoke(*score_args(job, "--resume"))
    assert refused.exit_code == 2, refused.output
    [line] = error_lines(refused.output)
    assert "the model changed: its external data weights.bin, SHA-256 " in line, line
    weights.write_bytes(kept)
    resumed = invoke(*score_args(job, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    want = builders.reference(job["model"], features=builders.features(ROWS, seed=8))
    builders.assert_matches(builders.read_h5(job["out"]), want)

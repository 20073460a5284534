"""``--dry-run`` under mpiexec: every check of the job, a calibration, an estimate, and
nothing written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mpiscore.config import InputSpec, JobConfig, parse_batch_size
from mpiscore.dry_run import dry_run
from mpiscore.errors import ScoringError
from tests import builders
from tests.mpi.launch import error_lines, mpiscore

ROWS = 200_000


@pytest.fixture(scope="module")
def heavy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A job whose scoring takes a second or two, so that the estimate is about scoring
    and not about noise."""
    folder = tmp_path_factory.mktemp("dry")
    model = builders.mlp(folder / "wide.onnx", features=64, hidden=2048, classes=4)
    data = builders.write_h5(folder / "x.h5", chunks=4096,
                             features=builders.features(ROWS, 64, seed=3))
    return {"model": model, "data": data, "folder": folder}


def args(job: dict[str, Path], out: Path, *more: object) -> list[object]:
    return ["--model", job["model"], "--input", f"{job['data']}:/features", "--output", out,
            "--mini-batch-size", 8192, *more]


PAIRS = 3  # dry run and run, side by side: a shared machine's load can come between them


def test_dry_run_writes_nothing_and_estimates_within_a_factor_of_two(heavy, tmp_path) -> None:
    """One pair of the estimate and the real run within a factor of two: an estimate
    that is wrong misses in every pair; a load that came between the two, in one."""
    pairs = []
    for pair in range(PAIRS):
        out, before = tmp_path / f"y{pair}.h5", set(tmp_path.iterdir())
        dry = mpiscore(2, *args(heavy, out, "--dry-run", "--json"))
        assert dry.returncode == 0, dry.stderr
        report = json.loads(dry.stdout)
        assert (report["rows"], report["batches"]) == (ROWS, 25)
        for key in ("estimated_wall_seconds", "estimated_core_hours", "suggested_time"):
            assert key in report, key
        assert report["ranks"] == 2 and report["calibration"]["batches"] >= 1
        assert set(tmp_path.iterdir()) == before, "a dry run wrote something"
        run = mpiscore(2, *args(heavy, out))
        assert run.returncode == 0, run.stderr
        wall = json.loads(Path(f"{out}.run/summary.json").read_text())["wall_seconds"]
        pairs.append((report["estimated_wall_seconds"], wall))
        if 0.5 <= pairs[-1][0] / wall <= 2:  # the order of magnitude, not a timing test
            return
    pytest.fail(f"estimated against actual wall seconds, in {PAIRS} pairs: {pairs}")


def test_dry_run_text_names_plan_calibration_estimate_and_assumptions(heavy, tmp_path) -> None:
    dry = mpiscore(1, *args(heavy, tmp_path / "y.h5", "--dry-run", "--ranks", 8))
    assert dry.returncode == 0, dry.stderr
    text = dry.stdout
    for part in ("nothing was written", "left as it is", "plan: 1 file, 200,000 rows",
                 "25 batches",
                 "calibration:", "estimate for 8 ranks x 1 scoring process",
                 "suggested Slurm --time: ", "assumes: throughput grows linearly"):
        assert part in text, (part, text)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("fault", ["missing input", "existing output"])
def test_dry_run_fails_as_the_job_would(heavy, tmp_path, fault) -> None:
    out = tmp_path / "y.h5"
    job = args(heavy, out)
    if fault == "missing input":
        job[3] = f"{tmp_path / 'nope.h5'}:/features"
    else:
        out.write_bytes(b"not ours")
    real = mpiscore(2, *job)
    dry = mpiscore(2, *job, "--dry-run")
    assert dry.returncode == real.returncode != 0, (dry.stderr, real.stderr)
    assert error_lines(dry) == error_lines(real) and len(error_lines(dry)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if fault == "missing input"
                                                           else ["y.h5"])


def test_dry_run_of_an_entry_script_keeps_its_writes_out_of_the_job(tmp_path) -> None:
    data = builders.write_parquet(tmp_path / "d.parquet", builders.features(500, 4))
    script = tmp_path / "score.py"
    script.write_text(
        "import os\n"
        "from azureml_user.parallel_run import EntryScript\n"
        "def run(mini_batch):\n"
        "    out = EntryScript().output_dir\n"
        "    open(os.path.join(out, f'{len(mini_batch)}.txt'), 'w').close()\n"
        "    return []\n")
    out = tmp_path / "results"
    dry = mpiscore(2, "--entry-script", script, "--input", data, "--output", out,
                   "--output-action", "summary_only", "--mini-batch-size", 100, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "5 batches of <= 100 rows" in dry.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet", "score.py"]


def test_a_failing_script_s_dry_run_keeps_the_log_its_error_names(tmp_path) -> None:
    """In process (no mpiexec): the scratch directory of a failed dry run stays."""
    data = builders.write_parquet(tmp_path / "d.parquet", builders.features(50, 4))
    script = tmp_path / "boom.py"
    script.write_text("def run(mini_batch):\n    raise ValueError('boom')\n")
    config = JobConfig(None, (InputSpec(str(data)),), tmp_path / "results.parquet",
                       entry_script=script, batch_size=parse_batch_size("10"))
    with pytest.raises(ScoringError) as failed:
        dry_run(config)
    found = re.search(r"traceback in (\S+)\)", str(failed.value))
    assert found, failed.value
    log = Path(found.group(1))
    assert "ValueError: boom" in log.read_text()
    shutil.rmtree(log.parent)

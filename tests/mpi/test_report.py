"""``mpiscore report RUN_DIR`` on a real job at -n 2: the events every rank recorded, the
summary matching summary.json, valid pictures; and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpiscore.events import read_events
from mpiscore.run_report import build_report
from tests import builders
from tests.mpi.launch import mpiscore

ROWS = 2400


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("report")
    return {"model": builders.mlp(folder / "mlp.onnx"),
            "h5": builders.write_h5(folder / "x.h5", features=builders.features(ROWS, seed=3))}


def report(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpiscore", "report", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_report_of_a_real_run(data, tmp_path) -> None:
    out, run_dir = tmp_path / "y.h5", tmp_path / "y.h5.run"
    result = mpiscore(2, "--model", data["model"], "--input", data["h5"], "--output", out,
                      "--mini-batch-size", 50, "--procs-per-rank", 2, "--intra-op-threads", 1,
                      "--monitor-seconds", 0.1, "--max-retries", 1,
                      faults="sleep:0.04,raise:5")  # 48 batches, ~0.5 s; batch 5 retried
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    events = read_events(run_dir)
    assert events is not None and events.lanes == {0: 2, 1: 2}
    ok = [b for b in events.tries if b["out"] in ("ok", "retried")]
    assert sorted(b["id"] for b in ok) == list(range(48))
    assert sorted((b["id"], b["out"]) for b in events.tries if b["out"] != "ok") == \
        [(5, "failed"), (5, "retried")]
    assert events.samples and {s["rank"] for s in events.samples} == {0, 1}
    assert all(s["n"] == 2 and s["srss"] > 10 for s in events.samples)

    built = build_report(run_dir)
    assert built["rows"] == summary["rows_scored"] == ROWS
    assert built["wall_seconds"] == round(summary["wall_seconds"], 3)
    for line, stats in zip(built["per_rank"], summary["per_rank"], strict=True):
        assert line["rows"] == stats["rows"] and line["batches"] == stats["batches"]
        for stage in ("read", "score", "write"):  # recorded apart, by the rank's stats
            assert line[f"{stage}_seconds"] == pytest.approx(stats[f"{stage}_seconds"],
                                                             abs=2e-3)

    pictures = tmp_path / "pictures"
    shown = report(run_dir, "--out", pictures)
    assert shown.returncode == 0, shown.stderr
    assert f"{ROWS:,} rows in" in shown.stdout
    assert f"tracebacks in {run_dir / 'failed_batches.json'}" in shown.stdout
    assert f"wrote {pictures / 'timeline.png'}" in shown.stdout
    assert f"wrote {pictures / 'throughput.png'}" in shown.stdout
    from matplotlib.image import imread

    for name, least_height in (("timeline.png", 250), ("throughput.png", 600)):
        height, width, _ = imread(pictures / name).shape
        assert width == 1200 and height >= least_height, (name, width, height)
    assert report(run_dir).returncode == 0  # by default into the run directory
    assert (run_dir / "timeline.png").stat().st_size > 10_000


def test_report_on_what_is_not_a_run(tmp_path) -> None:
    for path, why in ((tmp_path / "missing", "no such directory"),
                      (tmp_path, "no summary.json, plan.json or events/")):
        result = report(path)
        assert result.returncode == 3, result
        assert result.stderr.strip() == f"mpiscore: InputError: {path}: not a run directory " \
            f"({why})" + ("" if why == "no such directory" else
                          ": give the directory a job wrote, e.g. OUTPUT.run")
        assert result.stdout == ""
    (tmp_path / "plan.json").write_text("{}")  # set up, but never scored
    result = report(tmp_path)
    assert result.returncode == 3 and result.stderr.count("\n") == 1
    assert "the run never started scoring" in result.stderr

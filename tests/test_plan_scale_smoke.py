"""benchmarks/plan_scale.py runs end to end on tiny sizes and prints its JSON (no timing
checks); apart from test_benchmarks_smoke.py only because that file had other owners."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_plan_scale() -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / "plan_scale.py"), "--batches",
                             "300", "--files", "40", "--ranks", "2", "--hdf5-items", "20"],
                            capture_output=True, text=True, timeout=300, cwd=BENCHMARKS)
    assert result.returncode == 0, result.stderr
    report, _ = json.JSONDecoder().raw_decode(result.stdout, result.stdout.index("{"))
    (row,) = report["results"]
    assert row["batches"] == 300 and row["status"] in ("stopped", "complete"), row
    assert row["spec_job_bytes"] > 0 and "other_scorer_peak_rss_mib" in row, row
    assert set(report["many_files"]["seconds"]) == {"after serial", "after parallel"}
    (items,) = report["file_input"]
    assert items["kind"] == "hdf5" and items["broadcast_bytes"] > 20 * 40, items

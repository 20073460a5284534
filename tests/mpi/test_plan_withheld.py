"""Ranks hold only their work: under mpiexec -n 3, no rank and no scoring process is
sent the plan's batches (issue 15 target 4), and the job still fills, finishes and
reports as it did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests import builders
from tests import scripts_fixtures as fx
from tests.mpi.launch import MPIEXEC, TIMEOUT_SECONDS

ROWS = 1003
PROBE = Path(__file__).with_name("plan_probe.py")


def run_probed(ranks: int, args: list[object], seen: Path, **environment: str) -> None:
    """``mpiscore ARGS`` under ``mpiexec -n RANKS`` through plan_probe.py, which records
    what each rank got (and, at its exit, loaded) in ``seen``; run from ``seen``'s
    folder."""
    assert MPIEXEC
    result = subprocess.run(
        [MPIEXEC, "-n", str(ranks), sys.executable, str(PROBE), *map(str, args)],
        capture_output=True, text=True, timeout=TIMEOUT_SECONDS, cwd=seen.parent,
        env={**os.environ, "PLAN_PROBE_DIR": str(seen), **environment,
             "PYTHONPATH": str(Path(__file__).parents[2])})
    assert result.returncode == 0, result.stderr


def loaded_libraries(seen: Path, ranks: int) -> list[dict[str, bool]]:
    """Which of NumPy, h5py and pyarrow each rank had imported when it left."""
    return [json.loads((seen / f"rank-{rank}-libraries.json").read_text())
            for rank in range(ranks)]


def test_three_ranks_never_see_the_batches(tmp_path: Path) -> None:
    x = builders.features(ROWS, 16, seed=5)
    data = tmp_path / "blobs.parquet"
    data.mkdir()
    for part, rows in enumerate(np.array_split(np.arange(ROWS), 3)):
        pq.write_table(pa.table({"id": rows, **{f"f{i}": x[rows, i] for i in range(16)}}),
                       data / f"part-{part}.parquet", row_group_size=100)
    model = builders.mlp(tmp_path / "mlp16.onnx", features=16)
    out, seen = tmp_path / "labels.parquet", tmp_path / "seen"
    seen.mkdir()
    run_probed(3, ["score", "--progress-seconds", 60, "--model", model, "--input", data,
                   "--columns", "f*", "--keep-columns", "id", "--output", out,
                   "--mini-batch-size", 100, "--error-threshold", 100,
                   "--intra-op-threads", 1], seen, MPISCORE_FAULTS="raise-always:2")
    records = [json.loads((seen / f"rank-{rank}.json").read_text()) for rank in range(3)]
    for record in records:  # rank 0 too sends its scoring processes the file table only
        assert not record["broadcast_holds_batches"], record
        assert not record["spec_holds_batches"], record
        assert record["batches"] == 12 and record["fingerprint"] == {}, record
        assert record["spec_job_bytes"] < 20_000, record
    table = pq.read_table(out).sort_by("id")
    assert table["id"].to_pylist() == list(range(ROWS))
    status = table["row_status"].to_numpy()
    assert status[200:300].tolist() == [1] * 100 and status.sum() == 100  # batch 2, filled
    summary = json.loads(Path(f"{out}.run/summary.json").read_text())
    assert summary["batches"] == 12 and summary["batches_failed"] == 1
    plan = json.loads(Path(f"{out}.run/plan.json").read_text())
    assert [b[0] for b in plan["batches"]] == list(range(12))
    failed = json.loads(Path(f"{out}.run/failed_batches.json").read_text())["failed"]
    assert [(f["batch_id"], f["rows"]) for f in failed] == [(2, [200, 300])]
    libraries = loaded_libraries(seen, 3)
    assert libraries[0]["pyarrow"]  # rank 0 checks the part files and commits
    assert not any(loaded for rank in (1, 2) for loaded in libraries[rank].values()), libraries


def test_an_hdf5_job_s_other_ranks_never_import_numpy_or_h5py(tmp_path: Path) -> None:
    """Only rank 0 finishes an HDF5 output (marks it complete, renames it); the other
    ranks pass the finish's barrier without a writer (OutputTarget.finisher), so they
    spend no CPU on the libraries (~85 ms each), at start or at the end."""
    data = builders.features(ROWS, seed=3)
    path = builders.write_h5(tmp_path / "x.h5", features=data)
    model = builders.mlp(tmp_path / "mlp.onnx")
    out, seen = tmp_path / "scores.h5", tmp_path / "seen"
    seen.mkdir()
    run_probed(2, ["score", "--model", model, "--input", path, "--output", out,
                   "--mini-batch-size", 100, "--intra-op-threads", 1], seen)
    libraries = loaded_libraries(seen, 2)
    assert libraries[0]["h5py"] and libraries[0]["numpy"], libraries
    assert libraries[1] == {"numpy": False, "h5py": False, "pyarrow": False}, libraries
    builders.assert_matches(builders.read_h5(out), builders.reference(model, features=data))


def test_file_input_sends_each_path_once(tmp_path: Path) -> None:
    """File input under mpiexec -n 2: the job every rank is broadcast, and the one each
    scoring process is sent, hold the paths in the plan's file table only (the
    source's file table is that same tuple), and every file is still scored once."""
    scripts, data = fx.write_scripts(tmp_path), fx.write_data(tmp_path)
    out, seen = tmp_path / "lines.txt", tmp_path / "seen"
    seen.mkdir()
    run_probed(2, ["score", "--entry-script", scripts["per_file"], "--input", data["files"],
                   "--input-mode", "files", "--output-action", "append_row", "--output", out,
                   "--mini-batch-size", fx.FILE_BATCH, "--progress-seconds", 60], seen)
    for rank in range(2):
        record = json.loads((seen / f"rank-{rank}.json").read_text())
        assert record["broadcast_own_paths"] == 0 and record["spec_own_paths"] == 0, record
    assert out.read_text().splitlines() == fx.file_lines()

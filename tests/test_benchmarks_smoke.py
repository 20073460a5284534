"""The benchmark scripts run end to end on tiny sizes and print their JSON (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: object) -> list[dict]:
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args)],
                            capture_output=True, text=True, timeout=300, cwd=BENCHMARKS)
    assert result.returncode == 0, result.stderr
    decoder, text, found = json.JSONDecoder(), result.stdout, []
    index = text.find("{")
    while index >= 0:
        document, end = decoder.raw_decode(text, index)
        found.append(document)
        index = text.find("{", end)
    return found


def test_example_throughput() -> None:
    (report,) = run_script("example_throughput.py", "--rows", 20000, "--repeat", 1)
    assert set(report["results"]) == {"plain_onnxruntime_loop", "mpiscore_n1", "mpiscore_n2"}
    assert all(r["rows_per_second"] > 0 for r in report["results"].values())


def test_overhead() -> None:
    reports = run_script("overhead.py", "--light-rows", 5000, "--heavy-rows", 500,
                         "--repeat", 1)
    assert [r["benchmark"] for r in reports] == ["overhead_light", "overhead_heavy"]
    assert all(len(r["results"]) == 4 for r in reports)


@pytest.mark.parametrize("ranks", [2, 3])
def test_dispatch(ranks: int) -> None:
    (report,) = run_script("dispatch.py", "--ranks", ranks, "--batches", 500)
    assert report["batches_per_second"] > 0
    assert sum(report["batches_per_rank"]) == 500 and report["batches_per_rank"][0] == 0


def test_peers() -> None:
    (report,) = run_script("peers.py", "--rows", 20000, "--heavy-rows", 5000, "--repeat", 1,
                           "--no-futures")
    n = report["cores"]
    assert set(report["models"]) == {"light", "heavy"} and report["outputs_match"]
    for model in report["models"].values():
        results = model["results"]
        assert {"plain_onnxruntime_loop", f"mpiscore_n{n}", f"mpiscore_n1_procs{n}",
                "multiprocessing_pool"} <= set(results)
        assert all(r["speed_vs_loop"] > 0 and r["speed_vs_pool"] > 0 for r in results.values())
        assert results[f"mpiscore_n{n}"]["stages_of_median_run"]["loop"] > 0


def test_memory() -> None:
    (report,) = run_script("memory.py", "--rows", 5000, 20000, "--batch-rows", 1000)
    assert [r["rows"] for r in report["results"]] == [5000, 20000]
    assert all(r["scorer_peak_rss_mib"] > 0 for r in report["results"])


def test_io() -> None:
    (report,) = run_script("io.py", "--rows", 20000, "--batch-rows", 3000)
    assert set(report["results"]) == {"hdf5_write", "hdf5_read", "parquet_write",
                                      "parquet_read"}


def test_parquet_output() -> None:
    (report,) = run_script("parquet_output.py", "--rows", 20000, "--repeat", 1,
                           "--mini-batch-size", 5000)
    assert set(report["results"]) == {"hdf5_output", "parquet_output"}
    assert report["parquet_files"] >= 4 and report["parquet_over_hdf5_wall"] > 0


def test_scaling() -> None:
    (report,) = run_script("scaling.py", "--rows-per-core", 5000, "--max-cores", 2,
                           "--repeat", 1)
    layouts = {(r["mode"], r["ranks"], r["procs_per_rank"]) for r in report["results"]}
    assert layouts == {(m, r, p) for m in ("strong", "weak") for r, p in [(1, 1), (1, 2), (2, 1)]}


def test_scripts() -> None:
    (report,) = run_script("scripts.py", "--rows", 5000, "--files", 60, "--repeat", 1,
                           "--mini-batch-size", 2000, "--files-per-batch", 16)
    assert set(report["results"]) == {f"{kind}_n{n}" for kind in ("script", "onnx", "files")
                                      for n in (1, 2)} | {"script_n2_blas_env"}
    assert all(r["items_per_second"] > 0 for r in report["results"].values())
    assert report["labels_match"] and report["probability_max_abs_diff"] < 1e-5
    assert report["file_lines_match"] and report["file_lines"] == 60


def test_coordinator() -> None:
    (report,) = run_script("coordinator.py", "--ranks", 4, 50, "--batches", 2000,
                           "--window", 3, "--seconds", 20)
    results = report["results"]["after"]
    assert [r["ranks"] for r in results] == [4, 50]
    assert all(r["finished"] and r["sustained_batches"] == 2000 for r in results)
    assert [r["first_assigned"] for r in results] == [12, 150]


def test_startup() -> None:
    (report,) = run_script("startup.py", "--ranks", 1, 2, "--repeat", 1,
                           "--batches-per-rank", 2)
    assert set(report["results"]) == {"1", "2"}
    assert all(r["current"]["launch_to_first_batch"] > 0 for r in report["results"].values())
    assert report["imports"]["current"]["rank"]["imports"] > 0


def test_overlap() -> None:
    reports = run_script("overlap.py", "--light-rows", 20000, "--heavy-rows", 2000,
                         "--repeat", 1)
    assert [r["benchmark"] for r in reports] == ["overlap_light", "overlap_heavy"]
    assert all(len(r["results"]) == 4 and r["read_check"]["mb"] > 0 for r in reports)


def test_waiting() -> None:
    (report,) = run_script("waiting.py", "--heavy-rows", 4000, "--short-rows", 2000,
                           "--short-batch-rows", 500, "--many", 3, "--dispatch-ranks", 2,
                           "--dispatch-batches", 300)
    assert set(report["jobs"]) == {"heavy_n2", "short_n2", "heavy_n3"}
    for job in report["jobs"].values():
        after = job["after"]
        assert after["scorer_cpu_seconds"] > 0 and after["worst_ratio"] > 0
        assert all(r["loop_cpu_seconds"] > 0 for r in after["per_rank"])
    assert report["dispatch_batches_per_second"]["after"] > 0


def test_run_rows() -> None:
    (report,) = run_script("run_rows.py", "--batch-rows", 1024, "--repeat", 1,
                           "--models", "light")
    light = report["models"]["light"]
    assert set(light["layouts"]["1_process"]["ms_per_batch"]) == {"whole", "4096", "1024",
                                                                   "256"}
    assert all(layout["fastest_speed_vs_whole"] >= 1 for layout in light["layouts"].values())
    assert light["mpiscore_keeps"] in (0, 256)  # below the batch's 1,024 rows, only 256 is tried


def test_gpu_harness_on_the_cpu() -> None:
    (report,) = run_script("gpu.py", "--provider", "CPUExecutionProvider", "--rows", 6000,
                           "--batch-rows", 2048, "--repeat", 1, "--ranks", 1)
    (size,) = report["batch_sizes"]
    assert set(size["results"]) == {"plain_loop", "mpiscore_n1"} and report["outputs_match"]
    assert size["results"]["mpiscore_n1"]["mpiscore"]["score_seconds"] > 0
    assert size["max_abs_diff_vs_loop"] < 1e-4

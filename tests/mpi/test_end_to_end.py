"""End to end under mpiexec -n 1/2/3: outputs against a plain onnxruntime reference."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests import builders
from tests.builders import assert_matches, read_h5
from tests.mpi.launch import mpiscore

ROWS = 1003  # deliberately not a multiple of any batch size used below


@pytest.fixture(scope="module")
def mlp_h5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("mlp")
    data = builders.features(ROWS)
    model = builders.mlp(folder / "mlp.onnx")
    return model, builders.write_h5(folder / "x.h5", chunks=64, features=data), data


@pytest.fixture(scope="module")
def h5_outputs(mlp_h5, tmp_path_factory) -> dict[int, Path]:
    """The same HDF5 job at 1, 2 and 3 ranks, with fixed thread settings."""
    model, data, _ = mlp_h5
    outputs = {}
    for ranks in (1, 2, 3):
        out = tmp_path_factory.mktemp(f"out{ranks}") / "scores.h5"
        result = mpiscore(ranks, "--model", model, "--input", f"{data}:/features",
                          "--output", out, "--mini-batch-size", 100, "--intra-op-threads", 1)
        assert result.returncode == 0, result.stderr
        outputs[ranks] = out
    return outputs


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_hdf5_matches_reference(mlp_h5, h5_outputs, ranks) -> None:
    model, _, data = mlp_h5
    assert_matches(read_h5(h5_outputs[ranks]), builders.reference(model, features=data))
    assert not Path(f"{h5_outputs[ranks]}.partial").exists()


def test_bitwise_identical_across_rank_counts(h5_outputs) -> None:
    one = read_h5(h5_outputs[1])
    for ranks in (2, 3):
        other = read_h5(h5_outputs[ranks])
        for name in one:
            assert one[name].tobytes() == other[name].tobytes(), (name, ranks)


def test_provenance_and_run_directory(mlp_h5, h5_outputs) -> None:
    import hashlib

    model = mlp_h5[0]
    out = h5_outputs[3]
    with h5py.File(out, "r") as handle:
        assert handle.attrs["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert "x.h5:/features" in handle.attrs["inputs"]
        plan = handle["_mpiscore/plan"][()]
    assert plan[:, 3].max() == ROWS and (plan[:, 3] - plan[:, 2]).sum() == ROWS
    run_dir = Path(f"{out}.run")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rows"] == ROWS
    assert sum(r["rows"] for r in summary["per_rank"]) == ROWS
    assert sum(r["batches"] for r in summary["per_rank"]) == len(plan)
    assert len(summary["per_rank"]) == 3
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == [
        "rank-00000.log", "rank-00001.log", "rank-00002.log"]
    assert json.loads((run_dir / "plan.json").read_text())["total_rows"] == ROWS


@pytest.mark.parametrize("ranks", [2, 3])
def test_parquet_directory_with_carried_ids(tmp_path, ranks) -> None:
    data = builders.features(ROWS, seed=3)
    ids = np.arange(ROWS) * 7 + 11
    folder = tmp_path / "in"
    folder.mkdir()
    cut = 400  # two files with several row groups each
    builders.write_parquet(folder / "a.parquet", data[:cut], ids[:cut], row_group_size=150)
    builders.write_parquet(folder / "b.parquet", data[cut:], ids[cut:], row_group_size=250)
    (folder / "_ignored.txt").write_text("not data")
    model = builders.mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "scores.parquet"
    result = mpiscore(ranks, "--model", model, "--input", folder, "--columns", "f*",
                      "--keep-columns", "id", "--output", out, "--mini-batch-size", 128)
    assert result.returncode == 0, result.stderr
    batches = json.loads((tmp_path / "scores.parquet.run" / "plan.json").read_text())["batches"]
    assert sorted(p.name for p in out.iterdir()) == [f"part-{b[0]:09d}.parquet" for b in batches]
    table = ds.dataset(out).to_table()
    assert table.column_names == ["id", "logits", "label", "row_status"]
    assert not table["row_status"].to_numpy().any()
    np.testing.assert_array_equal(table["id"].to_numpy(), ids)
    want = builders.reference(model, features=data)
    logits = np.stack(table["logits"].to_numpy(zero_copy_only=False))
    assert_matches({"logits": logits, "label": table["label"].to_numpy()}, want)
    info = json.loads(pq.read_metadata(out / "part-000000000.parquet").metadata[b"mpiscore"])
    assert info["status"] == "complete" and info["output_shapes"]["logits"] == [3]


def test_parquet_feature_columns_to_hdf5_with_ids(tmp_path) -> None:
    data = builders.features(ROWS, width=10, seed=4)
    path = builders.write_parquet(tmp_path / "x.parquet", data, np.arange(ROWS),
                                  row_group_size=300)
    model = builders.mlp(tmp_path / "mlp.onnx", features=3)
    out = tmp_path / "scores.h5"
    result = mpiscore(2, "--model", model, "--input", path, "--columns", "f2,f5,f7",
                      "--keep-columns", "id", "--output", out, "--mini-batch-size", "4KB")
    assert result.returncode == 0, result.stderr
    got = read_h5(out)
    np.testing.assert_array_equal(got.pop("id"), np.arange(ROWS))
    assert_matches(got, builders.reference(model, features=data[:, [2, 5, 7]]))


def test_multi_input_model(tmp_path) -> None:
    a, b = builders.features(ROWS, 4, seed=5), builders.features(ROWS, 3, seed=6)
    path = builders.write_h5(tmp_path / "x.h5", chunks=50, a=a, b=b)
    model = builders.two_inputs(tmp_path / "two.onnx")
    out = tmp_path / "scores.h5"
    result = mpiscore(3, "--model", model, "--input", path, "--map", "a=/a", "--map", "b=/b",
                      "--output", out, "--mini-batch-size", 64, "--rename", "y=score")
    assert result.returncode == 0, result.stderr
    want = builders.reference(model, a=a, b=b)
    assert_matches(read_h5(out), {"score": want["y"]})


def test_image_input_from_several_files(tmp_path) -> None:
    images = np.random.default_rng(7).normal(size=(ROWS, 3, 8, 8)).astype(np.float32)
    for i, (start, stop) in enumerate([(0, 300), (300, 301), (301, ROWS)]):
        builders.write_h5(tmp_path / f"part{i}.h5", chunks=32, image=images[start:stop])
    model = builders.image_net(tmp_path / "cnn.onnx")
    out = tmp_path / "emb.h5"
    result = mpiscore(2, "--model", model, "--input", f"{tmp_path}/part*.h5",
                      "--output", out, "--mini-batch-size", "64KiB")
    assert result.returncode == 0, result.stderr
    assert_matches(read_h5(out), builders.reference(model, image=images))


def test_image_input_from_parquet_list_column(tmp_path) -> None:
    images = np.random.default_rng(8).normal(size=(200, 3, 8, 8)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 3 * 8 * 8)
    pq.write_table(pa.table({"pixels": column}), tmp_path / "img.parquet", row_group_size=70)
    model = builders.image_net(tmp_path / "cnn.onnx")
    out = tmp_path / "emb.parquet"
    result = mpiscore(2, "--model", model, "--input", tmp_path / "img.parquet",
                      "--columns", "pixels", "--output", out, "--mini-batch-size", 48)
    assert result.returncode == 0, result.stderr
    got = np.stack(ds.dataset(out).to_table()["embedding"].to_numpy(zero_copy_only=False))
    assert_matches({"embedding": got}, builders.reference(model, image=images))


@pytest.mark.parametrize("fixed", [1, 4])
def test_fixed_batch_model(tmp_path, fixed) -> None:
    data = builders.features(203, seed=9)
    path = builders.write_h5(tmp_path / "x.h5", features=data)
    model = builders.mlp(tmp_path / "fixed.onnx", batch=fixed)
    out = tmp_path / "scores.h5"
    result = mpiscore(2, "--model", model, "--input", path, "--output", out,
                      "--mini-batch-size", 50)
    assert result.returncode == 0, result.stderr
    assert_matches(read_h5(out), builders.reference(model, features=data))


def test_run_rows_slices_each_batch_and_the_summary_says_so(mlp_h5, tmp_path) -> None:
    model, data, features = mlp_h5
    out = tmp_path / "scores.h5"
    result = mpiscore(2, "--model", model, "--input", f"{data}:/features", "--output", out,
                      "--mini-batch-size", 400, "--run-rows", 64, "--intra-op-threads", 1)
    assert result.returncode == 0, result.stderr
    got, want = read_h5(out), builders.reference(model, features=features)
    assert {name: got[name].tobytes() for name in want} == \
        {name: array.tobytes() for name, array in want.items()}
    summary = json.loads((out.parent / "scores.h5.run" / "summary.json").read_text())
    assert [r["run_rows"] for r in summary["per_rank"]] == [[64], [64]]

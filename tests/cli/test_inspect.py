"""``mpiscore inspect PATH [--json]`` on real files, and that it needs no MPI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import h5py
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mpiscore.cli import main
from mpiscore.config import DEVICE_PROVIDERS
from tests import builders, sklearn_models


def invoke(*args: object):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def as_json(*args: object) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def onnx_shape(value: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param or (d.dim_value or None) for d in value.type.tensor_type.shape.dim]


def test_model(tmp_path) -> None:
    path = builders.mlp(tmp_path / "m.onnx")
    proto = onnx.load(path)
    info = as_json(path)
    assert info["inputs"] == [{"name": i.name, "type": "tensor(float)", "dtype": "float32",
                               "shape": onnx_shape(i)} for i in proto.graph.input]
    assert [o["name"] for o in info["outputs"]] == [o.name for o in proto.graph.output]
    assert info["opset"] == {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    assert info["ir_version"] == proto.ir_version
    assert info["producer"] == proto.producer_name
    assert info["size_bytes"] == path.stat().st_size
    assert "CPUExecutionProvider" in info["execution_providers"]
    gpus = set(info["execution_providers"]) & set(DEVICE_PROVIDERS)  # none: the CPU wheel
    assert set(info["providers_not_loading"]) <= gpus
    text = invoke(path).output
    assert "inputs:" in text and "tensor(float)" in text and "CPUExecutionProvider" in text


def test_classifier_with_zipmap_and_symbolic_dims(tmp_path) -> None:
    path = sklearn_models.classifier(tmp_path / "c.onnx")
    proto = onnx.load(path)
    info = as_json(path)
    outputs = {o["name"]: o for o in info["outputs"]}
    assert outputs["output_probability"]["type"] == "seq(map(int64,tensor(float)))"
    assert "dtype" not in outputs["output_probability"]
    assert outputs["output_label"]["dtype"] == "int64"
    assert [i["shape"] for i in info["inputs"]] == [onnx_shape(i) for i in proto.graph.input]
    assert info["producer"] == proto.producer_name == "skl2onnx"
    assert info["opset"] == {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}


def test_hdf5(tmp_path) -> None:
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=np.zeros((100, 4), "float32"), chunks=(10, 4),
                              compression="gzip", compression_opts=4)
        handle.create_dataset("group/ids", data=np.arange(100))
    info = as_json(path)
    assert info["datasets"] == [
        {"path": "/features", "shape": [100, 4], "dtype": "float32", "chunks": [10, 4],
         "compression": "gzip", "compression_opts": 4},
        {"path": "/group/ids", "shape": [100], "dtype": "int64", "chunks": None,
         "compression": None, "compression_opts": None}]
    text = invoke(path).output
    assert "/features" in text and "gzip (4)" in text and "contiguous" in text


def test_parquet_directory_and_glob(tmp_path) -> None:
    folder = tmp_path / "d.parquet"
    folder.mkdir()
    table = pa.table({"id": np.arange(30), "f": pa.array(np.ones((30, 3), "float32").tolist(),
                                                         pa.list_(pa.float32(), 3))})
    pq.write_table(table.slice(0, 20), folder / "a.parquet", row_group_size=10)
    pq.write_table(table.slice(20), folder / "b.parquet")
    (folder / "_SUCCESS").write_text("")
    info = as_json(folder)
    assert info["rows"] == 30 and info["row_groups"] == 3 and len(info["files"]) == 2
    stored = pq.read_schema(folder / "a.parquet")
    assert info["schema"] == [{"name": "id", "type": "int64"},
                              {"name": "f", "type": str(stored.field("f").type)}]
    assert info["schema"][1]["type"].startswith("fixed_size_list<")
    assert as_json(f"{folder}/*.parquet")["rows"] == 30
    text = invoke(folder).output
    assert "30 rows, 3 row groups, 2 files" in text and "fixed_size_list" in text


@pytest.mark.parametrize("name", ["absent.onnx", "absent.h5", "absent.parquet"])
def test_missing_file_is_one_line_exit_3(tmp_path, name) -> None:
    result = invoke(tmp_path / name)
    assert result.exit_code == 3
    [line] = result.output.splitlines()
    assert line.startswith("mpiscore: InputError: ") and name in line


@pytest.mark.parametrize("name", ["bad.onnx", "bad.h5", "bad.parquet", "bad.txt"])
def test_unreadable_file_is_one_line_exit_3(tmp_path, name) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x08\x07 this is not what its name says")
    result = invoke(path)
    assert result.exit_code == 3, result.output
    [line] = result.output.splitlines()
    assert line.startswith("mpiscore: InputError: ") and name in line


def test_inspect_needs_no_mpi_and_is_quick(tmp_path) -> None:
    """The real entry point, as a user runs it: MPI is never imported."""
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(10))
    for path in (model, data):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "mpiscore",
                                 "inspect", str(path)], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        assert str(path) in result.stdout
        imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
        assert "h5py" in imported or "onnxruntime" in imported  # importtime did report
        assert not [name for name in imported if name.startswith("mpi4py")]
        assert time.perf_counter() - started < 3  # interpreter start included; ~0.3 s here

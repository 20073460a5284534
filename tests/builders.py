"""Small real ONNX models and data files for the tests, built on the spot."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def mlp(path: Path, features: int = 8, hidden: int = 16, classes: int = 3,
        batch: int | str = "N", seed: int = 0) -> Path:
    """features -> hidden -> classes MLP with ``logits`` and ``label`` outputs."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [batch])],
        [_const("w1", rng.normal(size=(features, hidden))), _const("b1", rng.normal(size=hidden)),
         _const("w2", rng.normal(size=(hidden, classes))), _const("b2", rng.normal(size=classes))])
    return _save(graph, path)


def data_width(path: Path, features: int = 4) -> Path:
    """``y = features[:, :k]``, k the batch's largest first feature: an output whose
    width (symbolic ``K``) differs from batch to batch."""
    nodes = [
        helper.make_node("Gather", ["features", "zero"], ["first"], axis=1),
        helper.make_node("ReduceMax", ["first"], ["top"], keepdims=1),
        helper.make_node("Cast", ["top"], ["k"], to=TensorProto.INT64),
        helper.make_node("Slice", ["features", "starts", "k", "axes"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "data_width",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])],
        [numpy_helper.from_array(np.array(0, np.int64), "zero"),
         numpy_helper.from_array(np.array([0], np.int64), "starts"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return _save(graph, path)


def two_inputs(path: Path) -> Path:
    """Inputs ``a`` [N,4] and ``b`` [N,3], concatenated and projected to ``y`` [N,2]."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
         helper.make_node("MatMul", ["ab", "w"], ["y"])],
        "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [_const("w", rng.normal(size=(7, 2)))])
    return _save(graph, path)


def image_net(path: Path, batch: int | str = "N") -> Path:
    """A tiny CNN: ``image`` [N,3,8,8] -> conv -> relu -> pool -> ``embedding`` [N,4]."""
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "k"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["embedding"])],
        "image_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, 4])],
        [_const("k", rng.normal(size=(4, 3, 3, 3)))])
    return _save(graph, path)


def with_external_data(model: Path, location: str | None = "weights.bin") -> Path:
    """``model`` saved again in place with every tensor (node attributes' too) in external
    data, as models over 2 GB must be: in the file ``location`` beside it (replaced:
    onnx appends to one that exists), or (None) one file per tensor."""
    proto = onnx.load(model)
    if location is not None:
        (model.parent / location).unlink(missing_ok=True)
    onnx.save_model(proto, model, save_as_external_data=True, location=location,
                    all_tensors_to_one_file=location is not None, size_threshold=0,
                    convert_attribute=True)
    return model


def features(rows: int, width: int = 8, seed: int = 0, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, width)).astype(dtype)


def write_h5(path: Path, chunks: int | None = None, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as handle:
        for name, data in datasets.items():
            shape = (min(chunks, len(data)), *data.shape[1:]) if chunks else None
            handle.create_dataset(name, data=data, chunks=shape)
    return path


def write_parquet(path: Path, data: np.ndarray, ids: np.ndarray | None = None,
                  row_group_size: int = 1000) -> Path:
    columns = {f"f{i}": data[:, i] for i in range(data.shape[1])}
    if ids is not None:
        columns = {"id": ids, **columns}
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def reference(model: Path, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Plain single-process onnxruntime, the whole data in one run (or row by row if fixed)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int):  # pad to whole fixed-size batches, run each, drop the padding
        rows = len(next(iter(inputs.values())))
        padded = {k: np.concatenate([v, np.zeros((-rows % fixed, *v.shape[1:]), v.dtype)])
                  for k, v in inputs.items()}
        pieces = [session.run(names, {k: v[i:i + fixed] for k, v in padded.items()})
                  for i in range(0, rows, fixed)]
        return {n: np.concatenate([p[j] for p in pieces])[:rows] for j, n in enumerate(names)}
    return dict(zip(names, session.run(names, inputs), strict=True))


# Outputs against the reference: one rule. ONNX Runtime's kernels may sum in another
# order for another batch size than the reference's one run, so floats agree to
# float32 rounding (rtol 1e-5); integers and strings exactly.
RTOL, ATOL = 1e-5, 1e-6


def assert_close(got: np.ndarray, want: np.ndarray, name: str = "") -> None:
    """One output column against the reference's."""
    if np.asarray(want).dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


def assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Every output, with the reference's names, shapes and dtypes, and close values."""
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        assert got[name].dtype == expected.dtype, name
        assert_close(got[name], expected, name)


def read_h5(path: Path) -> dict[str, np.ndarray]:
    """Output datasets of a complete file, after checking every row is marked scored."""
    with h5py.File(path, "r") as handle:
        assert handle.attrs["mpiscore_status"] == "complete"
        got = {name: handle[name][()] for name in handle if not name.startswith("_")}
    assert not got.pop("row_status").any()
    return got

"""Train a small MLP classifier on the blobs with NumPy and export it to ONNX.

Rebuilds ``examples/mlp_classifier.onnx`` (shipped in the repository); needs the
``onnx`` package (``pip install '.[test]'``). The hidden layer is random, the
output layer is fitted by least squares: a real classifier, trained in a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from blobs import CLASSES, FEATURES, train
from onnx import TensorProto, helper, numpy_helper


def export(weights: dict[str, np.ndarray], path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w1"], ["h0"]),
         helper.make_node("Add", ["h0", "b1"], ["h1"]),
         helper.make_node("Relu", ["h1"], ["h2"]),
         helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
         helper.make_node("Add", ["h3", "b2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
         helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)],
        "blobs_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [numpy_helper.from_array(w, n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


if __name__ == "__main__":
    export(train(), Path(__file__).with_name("mlp_classifier.onnx"))

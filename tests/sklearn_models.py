"""Real scikit-learn classifiers exported with skl2onnx, built at test time (never downloaded).

skl2onnx's defaults add a ZipMap: ``output_label`` and ``output_probability``,
a sequence of ``{class: probability}`` maps; ``zipmap=False`` gives ``label``
and a ``probabilities`` tensor instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.multioutput import MultiOutputClassifier

ROWS, FEATURES = 300, 6
STRING_CLASSES = np.array(["cat", "dog", "gnu/wild", "émeu des plaines"])
"""String labels: one with '/', one longer than the rest and non-ASCII (UTF-8 widths)."""


def training_data(rows: int = ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 features and integer classes 0-3 that depend on them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    classes = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] + x[:, 2] > 0.8)
    return x, classes


def classifier(path: Path, kind: str = "logistic", labels: str = "int",
               zipmap: bool = True) -> Path:
    """Fit ``kind`` ("logistic" or "forest") on ``training_data`` with integer or string
    ("str") labels and export it to ``path``."""
    x, classes = training_data()
    y = STRING_CLASSES[classes] if labels == "str" else classes
    model = LogisticRegression(max_iter=500) if kind == "logistic" else \
        RandomForestClassifier(n_estimators=8, max_depth=5, random_state=0)
    model.fit(x, y)
    options = None if zipmap else {"zipmap": False}
    onx = to_onnx(model, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path


def multi_output_classifier(path: Path, targets: int = 2) -> tuple[Path, np.ndarray]:
    """A MultiOutputClassifier of ``targets`` logistic regressions, exported to ``path``
    (its ``probabilities``: a sequence of one tensor per target), and its features."""
    x, classes = training_data()
    y = np.stack([(classes + t) % 3 for t in range(targets)], axis=1)
    model = MultiOutputClassifier(LogisticRegression(max_iter=500)).fit(x, y)
    onx = to_onnx(model, x[:1], options={"zipmap": False},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path, x


def reference(model: Path, x: np.ndarray) -> dict[str, object]:
    """Plain onnxruntime on the whole data: arrays, or the list of maps of a ZipMap."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))

"""Synthetic classification data shared by the example's model and data scripts: Gaussian blobs."""

from __future__ import annotations

import numpy as np

FEATURES, CLASSES = 16, 4


def centers(seed: int = 42) -> np.ndarray:
    """The class centres; fixed by the seed, so model and data agree."""
    return np.random.default_rng(seed).normal(scale=3.0, size=(CLASSES, FEATURES))


def blobs(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` float32 feature vectors and their int64 class labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=rows)
    features = centers()[labels] + rng.normal(size=(rows, FEATURES))
    return features.astype(np.float32), labels.astype(np.int64)


HIDDEN = 64


def train(seed: int = 0) -> dict[str, np.ndarray]:
    """A real classifier in a second: random ReLU features, least-squares read-out.
    The ONNX model (build_model.py) and the entry script's weights (scripts/) are both
    this one, so they score alike."""
    rng = np.random.default_rng(seed)
    x, y = blobs(20_000, seed=1)
    w1 = rng.normal(scale=1 / np.sqrt(FEATURES), size=(FEATURES, HIDDEN)).astype(np.float32)
    b1 = rng.normal(size=HIDDEN).astype(np.float32)
    hidden = np.maximum(x @ w1 + b1, 0)
    design = np.hstack([hidden, np.ones((len(x), 1), np.float32)])
    solution, *_ = np.linalg.lstsq(design, np.eye(CLASSES)[y], rcond=None)
    w2, b2 = solution[:-1].astype(np.float32), solution[-1].astype(np.float32)
    accuracy = ((hidden @ w2 + b2).argmax(1) == y).mean()
    print(f"training accuracy {accuracy:.3f}")
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}

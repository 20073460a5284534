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

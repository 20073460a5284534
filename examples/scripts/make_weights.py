"""Train the tabular example's model and save it as plain NumPy weights (no ONNX).

    python examples/scripts/make_weights.py [--out examples/data/model]

Writes ``OUT/weights.npz`` (``w1``, ``b1``, ``w2``, ``b2``): the 16 -> 64 -> 4 ReLU
MLP of ``examples/build_model.py``, trained the same way (a random hidden layer, the
output layer fitted by least squares on the blobs), so that the entry script
``score_tabular.py`` and the shipped ONNX model classify alike. Needs only NumPy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(EXAMPLES))  # blobs.py, shared with make_data.py

from blobs import CLASSES, FEATURES, blobs  # noqa: E402

HIDDEN = 64


def train(seed: int = 0) -> dict[str, np.ndarray]:
    """A real classifier in a second: random ReLU features, least-squares read-out."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES / "data" / "model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "weights.npz", **train())
    print(f"wrote {args.out / 'weights.npz'}")


if __name__ == "__main__":
    main()

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

from blobs import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES / "data" / "model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "weights.npz", **train())
    print(f"wrote {args.out / 'weights.npz'}")


if __name__ == "__main__":
    main()

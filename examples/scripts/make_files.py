"""Write the file example's input: a folder of small images as ``.npy`` files, and the
"model" that classifies them (one template per class).

    python examples/scripts/make_files.py [--files 2000] [--out examples/data]

Writes ``OUT/images/shard-<k>/<index>-<class>.npy`` (8 x 8 float32 images of a
horizontal bar, a vertical bar, a diagonal or a ring, with noise; 500 files per
shard folder, so a recursive glob ``images/**/*.npy`` finds them) and
``OUT/image_model/templates.npz`` (the clean shapes and their class names). The
true class is in each file's name, so the output can be checked. Needs only NumPy.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

SIZE = 8
PER_SHARD = 500
DATA = Path(__file__).resolve().parent.parent / "data"


def templates() -> dict[str, np.ndarray]:
    """The clean image of each class."""
    shapes = {name: np.zeros((SIZE, SIZE), np.float32)
              for name in ("hbar", "vbar", "diagonal", "ring")}
    shapes["hbar"][3:5, :] = 1
    shapes["vbar"][:, 3:5] = 1
    np.fill_diagonal(shapes["diagonal"], 1)
    shapes["ring"][1, 1:-1] = shapes["ring"][-2, 1:-1] = 1
    shapes["ring"][1:-1, 1] = shapes["ring"][1:-1, -2] = 1
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    shapes = templates()
    names = list(shapes)
    images = args.out / "images"
    shutil.rmtree(images, ignore_errors=True)  # a smaller set must not keep older files
    rng = np.random.default_rng(3)
    for index in range(args.files):
        label = names[rng.integers(len(names))]
        image = shapes[label] + rng.normal(scale=0.4, size=(SIZE, SIZE)).astype(np.float32)
        folder = images / f"shard-{index // PER_SHARD}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{index:06d}-{label}.npy", image.astype(np.float32))
    model = args.out / "image_model"
    model.mkdir(parents=True, exist_ok=True)
    np.savez(model / "templates.npz", templates=np.stack(list(shapes.values())),
             names=np.array(names))
    print(f"wrote {args.files} images to {images}/ and the templates to {model}/")


if __name__ == "__main__":
    main()

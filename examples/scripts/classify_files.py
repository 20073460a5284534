"""A file-input entry script in Azure ML's parallel-run style: ``run()`` gets a list of
file paths and returns one line per file (``--output-action append_row``).

    python examples/scripts/make_files.py
    mpiexec -n 2 mpiscore score --entry-script examples/scripts/classify_files.py \
        --input 'examples/data/images/**/*.npy' --input-mode files --mini-batch-size 32 \
        --output examples/data/labels.txt --output-action append_row \
        -- --model_dir examples/data/image_model

The classifier is template matching in NumPy: each 8 x 8 image is compared with one
clean image per class (cosine similarity), the best match wins. Each returned line is
``<file name> <predicted class> <similarity>``; mpiscore writes them to ``labels.txt``
in input order (files sorted by path), one line per file.
"""

import argparse
import os

import numpy as np
from azureml_user.parallel_run import EntryScript

model: dict[str, np.ndarray] = {}


def init() -> None:
    global logger
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True, help="folder holding templates.npz")
    args, _ = parser.parse_known_args()
    with np.load(os.path.join(args.model_dir, "templates.npz")) as saved:
        flat = saved["templates"].reshape(len(saved["templates"]), -1)
        model["templates"] = flat / np.linalg.norm(flat, axis=1, keepdims=True)
        model["names"] = saved["names"]
    logger = EntryScript().logger
    logger.info("classes: %s", ", ".join(model["names"]))


def run(mini_batch: list[str]) -> list[str]:
    logger.info("classifying %d files", len(mini_batch))
    images = np.stack([np.load(path).reshape(-1) for path in mini_batch])
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    similarity = images @ model["templates"].T
    best = similarity.argmax(axis=1)
    return [f"{os.path.basename(path)} {model['names'][k]} {similarity[i, k]:.4f}"
            for i, (path, k) in enumerate(zip(mini_batch, best, strict=True))]

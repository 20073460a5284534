"""A tabular entry script in Azure ML's parallel-run style, runnable unchanged there and
under ``mpiscore score --entry-script``: a NumPy MLP (no ONNX) scoring the blobs.

    python examples/make_data.py && python examples/scripts/make_weights.py
    mpiexec -n 2 mpiscore score --entry-script examples/scripts/score_tabular.py \
        --input examples/data/blobs.parquet --output examples/data/scores.parquet \
        --mini-batch-size 10MB --overwrite -- --model_dir examples/data/model

``init()`` runs once per scoring process: it reads ``--model_dir`` from the words
after ``--`` (``parse_known_args``, so other arguments do not trouble it) and loads
the weights. ``run()`` gets each mini-batch as a pandas DataFrame of the Parquet
columns as they are (``id``, ``f0``..``f15``, ``label``) and returns one row per
input row: the id, the predicted class and its probability. mpiscore writes them,
in input order, as the columns ``id``, ``label`` and ``probability`` of the output.
"""

import argparse
import os

import numpy as np
import pandas as pd
from azureml_user.parallel_run import EntryScript

weights: dict[str, np.ndarray] = {}
features: list[str] = []


def init() -> None:
    global logger
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True, help="folder holding weights.npz")
    args, _ = parser.parse_known_args()
    with np.load(os.path.join(args.model_dir, "weights.npz")) as saved:
        weights.update({name: saved[name] for name in saved.files})
    features[:] = [f"f{i}" for i in range(weights["w1"].shape[0])]
    logger = EntryScript().logger
    logger.info("loaded %s: %d features -> %d hidden -> %d classes", args.model_dir,
                len(features), weights["w1"].shape[1], weights["w2"].shape[1])


def run(mini_batch: pd.DataFrame) -> pd.DataFrame:
    logger.info("scoring %d rows", len(mini_batch))
    x = mini_batch[features].to_numpy(np.float32)
    hidden = np.maximum(x @ weights["w1"] + weights["b1"], 0)
    logits = hidden @ weights["w2"] + weights["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return pd.DataFrame({"id": mini_batch["id"].to_numpy(),
                         "label": probabilities.argmax(axis=1),
                         "probability": probabilities.max(axis=1)})

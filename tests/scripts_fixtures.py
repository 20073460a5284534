"""Entry scripts and data for the entry-script tests (tests/mpi/test_scripts.py).

Each script is a small Azure-ML-style ``init()``/``run(mini_batch)`` file written
on the spot; the data are small Parquet, HDF5 and plain files whose expected
results the tests compute here without mpiscore.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests import builders

ROWS = 300  # Parquet rows (row groups of 100): 6 batches of 50
BATCH = 50
FILES = 13  # plain input files: 5 batches of 3 (the last one file)
FILE_BATCH = 3
GROUPS = [7, 50, 1, 23, 60, 9, 100, 50]  # --partition-by: contiguous group sizes (300 rows)

SCRIPTS: dict[str, str] = {
    # tabular, four kinds of results; --scale after -- through argparse
    "frame.py": """
        import argparse
        import pandas as pd

        def init():
            global scale
            parser = argparse.ArgumentParser()
            parser.add_argument("--scale", type=float, default=1.0)
            args, _ = parser.parse_known_args()
            scale = args.scale

        def run(mini_batch):
            return pd.DataFrame({"y": mini_batch["f0"].to_numpy() * scale,
                                 "n": mini_batch["id"].to_numpy() + 1})
        """,
    "array.py": """
        import numpy as np

        def run(mini_batch):
            return np.stack([mini_batch["f0"].to_numpy(), mini_batch["f1"].to_numpy()], axis=1)
        """,
    "dict.py": """
        def run(mini_batch):
            return {"a": mini_batch["f0"].to_numpy() * 2, "b": mini_batch["id"].to_numpy() % 7}
        """,
    "list.py": """
        def run(mini_batch):
            return [f"row{i}" for i in mini_batch["id"]]
        """,
    # HDF5 input arrives as an array; --batch-format arrow and numpy
    "h5_array.py": """
        import numpy as np

        def run(mini_batch):
            assert isinstance(mini_batch, np.ndarray), type(mini_batch)
            return mini_batch.sum(axis=1)
        """,
    "arrow.py": """
        import pyarrow as pa
        import pyarrow.compute as pc

        def run(mini_batch):
            assert isinstance(mini_batch, pa.Table), type(mini_batch)
            return pa.table({"twice": pc.multiply(mini_batch["f0"], 2)})
        """,
    "numpy.py": """
        def run(mini_batch):
            assert isinstance(mini_batch, dict), type(mini_batch)
            return {"sum": mini_batch["f0"] + mini_batch["f1"]}
        """,
    # Azure's own example shape: EntryScript().logger, parse_known_args, print
    "azure.py": """
        import argparse
        import os

        import numpy as np
        import pandas as pd
        from azureml_user.parallel_run import EntryScript

        def init():
            global weights, logger
            parser = argparse.ArgumentParser()
            parser.add_argument("--model_dir")
            args, _ = parser.parse_known_args()
            weights = np.load(os.path.join(args.model_dir, "weights.npy"))
            logger = EntryScript().logger
            logger.info("loaded %d weights from %s", len(weights), args.model_dir)

        def run(mini_batch):
            logger.info("scoring %d items", len(mini_batch))
            print("printed by the script")
            x = mini_batch[["f0", "f1"]].to_numpy()
            return pd.DataFrame({"score": x @ weights})
        """,
    # the launch's environment reaches the script
    "environ.py": """
        import os

        def init():
            global token
            token = os.environ["MPISCORE_TEST_TOKEN"]

        def run(mini_batch):
            return [f"{token}:{i}" for i in mini_batch["id"]]
        """,
    # the threads its numeric libraries were given (scorers._script)
    "threads.py": """
        import os

        from threadpoolctl import threadpool_info

        def run(mini_batch):
            blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            line = f"{blas}:{os.environ['OMP_NUM_THREADS']}:{os.environ['OPENBLAS_NUM_THREADS']}"
            return [line for _ in mini_batch["id"]]
        """,
    # file input: a line per file (append_row), or files of its own (summary_only)
    "per_file.py": """
        import argparse
        import os
        import time

        from azureml_user.parallel_run import EntryScript

        def init():
            global args
            parser = argparse.ArgumentParser()
            parser.add_argument("--sleep", type=float, default=0.0)
            parser.add_argument("--short", default="")  # drop the line of this file
            args, _ = parser.parse_known_args()

        def run(mini_batch):
            time.sleep(args.sleep)
            lines = []
            for path in mini_batch:
                if os.path.basename(path) == args.short:
                    continue
                with open(path) as handle:
                    lines.append(f"{os.path.basename(path)} {handle.read().strip()}")
            return lines
        """,
    "summary.py": """
        import os

        from azureml_user.parallel_run import EntryScript

        def run(mini_batch):
            out = EntryScript().output_dir
            for path in mini_batch:
                with open(path) as handle:
                    text = handle.read()
                with open(os.path.join(out, os.path.basename(path) + ".out"), "w") as handle:
                    handle.write(text.upper())
            return []
        """,
    # failures: run() raising on a batch holding id --bad, exiting the process once
    "failing.py": """
        import argparse

        def init():
            global bad
            parser = argparse.ArgumentParser()
            parser.add_argument("--bad", type=int, action="append", default=[])
            bad = set(parser.parse_known_args()[0].bad)

        def run(mini_batch):
            hit = bad.intersection(mini_batch["id"])
            if hit:
                raise ValueError(f"cannot score id {min(hit)}")
            return {"y": mini_batch["f0"].to_numpy()}
        """,
    "crash.py": """
        import argparse
        import os
        import time

        def init():
            global args
            parser = argparse.ArgumentParser()
            parser.add_argument("--marker")
            parser.add_argument("--sleep", type=float, default=0.0)
            args, _ = parser.parse_known_args()

        def run(mini_batch):
            time.sleep(args.sleep)
            if args.marker and 120 in set(mini_batch["id"]) and not os.path.exists(args.marker):
                open(args.marker, "w").close()
                os._exit(3)  # the first try only: the retry finds the marker
            return {"y": mini_batch["f0"].to_numpy() * 3, "id2": mini_batch["id"].to_numpy()}
        """,
    # --partition-by: what run() saw of each row's group
    "groups.py": """
        import numpy as np
        import pandas as pd

        def run(mini_batch):
            counts = mini_batch["g"].map(mini_batch["g"].value_counts())
            return pd.DataFrame({"seen": counts.to_numpy(np.int64),
                                 "keys": np.full(len(mini_batch), mini_batch["g"].nunique())})
        """,
    # bad scripts
    "no_run.py": """
        def init():
            pass
        """,
    "init_raises.py": """
        def init():
            weights = {"w": 1}
            return weights["missing"]

        def run(mini_batch):
            return mini_batch
        """,
    "exit_in_init.py": """
        import os

        def init():
            print("leaving")
            os._exit(7)

        def run(mini_batch):
            return mini_batch
        """,
    "returns_none.py": """
        def run(mini_batch):
            len(mini_batch)
        """,
    "wrong_length.py": """
        def run(mini_batch):
            return mini_batch["f0"].to_numpy()[:-1]
        """,
    "short_later.py": """
        def run(mini_batch):
            values = mini_batch["f0"].to_numpy()
            return values[:-1] if 100 in set(mini_batch["id"]) else values
        """,
    "wrong_type.py": """
        def run(mini_batch):
            return 42
        """,
    "schema_changes.py": """
        def run(mini_batch):
            name = "y" if mini_batch["id"].iloc[0] == 0 else "z"
            return {name: mini_batch["f0"].to_numpy()}
        """,
}

NOT_PYTHON = "def run(mini_batch:\n    return [\n"


def write_scripts(folder: Path) -> dict[str, Path]:
    """Every script of SCRIPTS, and ``not_python.py``, in ``folder``; their paths by stem."""
    paths = {}
    for name, text in SCRIPTS.items():
        path = folder / name
        path.write_text(textwrap.dedent(text).lstrip())
        paths[path.stem] = path
    paths["not_python"] = folder / "not_python.py"
    paths["not_python"].write_text(NOT_PYTHON)
    return paths


def table(rows: int = ROWS) -> pa.Table:
    """``id``, ``f0``, ``f1`` (float64) and ``g``, a key in contiguous groups of GROUPS."""
    x = builders.features(rows, 2, seed=7, dtype="float64")
    groups = np.repeat(np.arange(len(GROUPS)) * 10 + 3, GROUPS)[:rows]
    return pa.table({"id": np.arange(rows), "f0": x[:, 0], "f1": x[:, 1], "g": groups})


def write_data(folder: Path) -> dict[str, Path]:
    """The Parquet input (row groups of 100), a hive-partitioned copy keyed on ``g``,
    the Azure script's model directory and FILES plain files (in two directories)."""
    data = table()
    parquet = folder / "d.parquet"
    pq.write_table(data, parquet, row_group_size=100)
    hive = folder / "hive"
    pq.write_to_dataset(data.drop_columns(["g"]).append_column("g", data.column("g")),
                        hive, partition_cols=["g"])
    builders.write_h5(folder / "x.h5", features=h5_features())
    model = folder / "model"
    model.mkdir()
    np.save(model / "weights.npy", np.array([0.5, -2.0]))
    files = folder / "files"
    for index in range(FILES):
        sub = files / ("a" if index < 6 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"item{index:02d}.txt").write_text(f"content {index}\n")
    return {"parquet": parquet, "hive": hive, "model": model, "files": files,
            "h5": folder / "x.h5"}


def h5_features() -> np.ndarray:
    return builders.features(ROWS, 4, seed=8)


def file_lines(skip: str = "") -> list[str]:
    """The lines per_file.py writes for every input file, in input order."""
    return [f"item{i:02d}.txt content {i}" for i in range(FILES) if f"item{i:02d}.txt" != skip]

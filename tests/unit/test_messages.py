"""Message contents: say what changed in words, cut lists say so, nearest names first."""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pytest

from mpiscore.config import BatchSize, InputSpec, JobConfig
from mpiscore.errors import ConfigError, InputError, ModelError
from mpiscore.io import hdf5, parquet
from mpiscore.io.fields import Field, nearest_first
from mpiscore.io.registry import detect_format
from mpiscore.journal import FINGERPRINT, check_resumable, fingerprint, stamped
from mpiscore.model import TensorSpec, _row_shape
from mpiscore.plan import SourceFile, make_plan
from mpiscore.report import plural, write_json
from mpiscore.scoring.prepare import small_batches


def stamp(files: list[Path], batch_rows: int = 100, fields=(("y", "<f4", (2,)),),
          output_format: str = "hdf5") -> dict:
    return fingerprint("a" * 64, stamped([SourceFile(str(f), 10) for f in files]),
                       [[0, 0, 0, 10]], batch_rows,
                       "o.h5", output_format, list(fields))


def refusal(run_dir: Path, before: dict, after: dict) -> str:
    write_json(run_dir / FINGERPRINT, before)
    with pytest.raises(ConfigError) as caught:
        check_resumable(run_dir, after)
    message = str(caught.value)
    assert "{" not in message and "sha256" not in message, message  # no dicts, no hash keys
    assert "--overwrite instead of --resume (overwrite=True, resume=False)" in message
    return message


def test_resume_refusal_says_what_changed_in_words(tmp_path: Path) -> None:
    data = tmp_path / "x.h5"
    data.write_bytes(b"x" * 1024)
    os.utime(data, ns=(0, 1_796_119_201 * 10**9))
    before = stamp([data])
    assert "the mini-batch size changed: 100 rows per batch then, 200 now" in refusal(
        tmp_path, before, stamp([data], batch_rows=200))
    data.write_bytes(b"x" * 2048)
    os.utime(data, ns=(0, 1_796_119_262 * 10**9))
    message = refusal(tmp_path, before, stamp([data]))
    then, now = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
                 for t in (1_796_119_201, 1_796_119_262))
    assert (f"input {data} changed: 1,024 bytes then, 2,048 now; modified {then} then, "
            f"{now} now") in message
    other = tmp_path / "z.h5"
    other.write_bytes(b"")
    assert f"the input files changed: 1 file then, 2 now (added {other})" in refusal(
        tmp_path, stamp([data]), stamp([data, other]))
    message = refusal(tmp_path, stamp([data]),
                      stamp([data], fields=[("y", "<f4", (2,)), ("label", "<i8", ())]))
    assert "the output columns changed: y (float32 x 2) then, y (float32 x 2), label (int64) " \
        "now" in message
    assert "the output format changed: hdf5 then, parquet now" in refusal(
        tmp_path, stamp([data]), stamp([data], output_format="parquet"))
    changed_model = {**stamp([data]), "model_sha256": "b" * 64}
    assert "the model changed: SHA-256 aaaaaaaaaaaa... then, bbbbbbbbbbbb... now" in refusal(
        tmp_path, stamp([data]), changed_model)


def test_nearest_names_first_and_cut_lists_say_so() -> None:
    names = [f"col{i}" for i in range(20)] + ["feature"]
    text = nearest_first("featur", names, 5)
    assert text.startswith("feature, ") and text.endswith("... and 16 more")
    assert nearest_first("x", ["a", "b"]) == "a, b"
    assert nearest_first("x", []) == "none"


def test_wrong_dataset_lists_the_datasets_there(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        for name in ("labels", "features", "weights"):
            f[name] = np.zeros((4, 2), "f4")
    with pytest.raises(InputError, match=re.escape(
            f"{path}:/featurs: no such dataset; the file holds /features, /labels, /weights")):
        hdf5.describe([hdf5.Hdf5Source(str(path), (("x", "/featurs"),))])


def test_wrong_column_lists_columns_nearest_first_and_cut() -> None:
    schema = pa.schema([(f"c{i}", pa.float32()) for i in range(30)] + [("score", pa.float32())])
    with pytest.raises(InputError, match=r"no column 'scores'; columns: score, .* and 19 more$"):
        parquet._column("x.parquet", schema, "scores")
    with pytest.raises(InputError, match=r"no column matches 'scor\?x'; columns: score, "):
        parquet.match_columns("x.parquet", schema, ["scor?x"])


def test_tensor_shapes_say_2d_not_rank() -> None:
    spec = TensorSpec("x", "<f4", (None, 3, 8, 8))
    with pytest.raises(ModelError) as caught:
        _row_shape("x.h5:/f -> m.onnx input 'x'", spec, Field("x", "<f4", (5,), "x.h5:/f"))
    assert "(2-D with the batch), model wants ('N', 3, 8, 8) (4-D)" in str(caught.value)
    assert "rank" not in str(caught.value)


def test_format_error_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"pass --output-format hdf5 or parquet"):
        detect_format("y.txt", "auto", "--output")


def test_small_batches_warning() -> None:
    files = [SourceFile("x.h5", 2_000_000)]
    config = JobConfig(model=Path("m.onnx"), inputs=(InputSpec("x.h5"),), output=Path("y.h5"),
                       batch_size=BatchSize(rows=1))
    assert small_batches(config, make_plan(files, 2000), 64) is None  # 125 KiB: fine
    warning = small_batches(config, make_plan([SourceFile("x.h5", 5000)], 1), 64)
    assert warning is not None
    assert warning.startswith("--mini-batch-size 1: batches of 1 row (64 bytes of input) make "
                              "5,000 batches, each with a fixed cost (~1 ms")
    assert "~5s in all; pass --mini-batch-size 4MiB (the default) or more" in warning
    few = make_plan([SourceFile("x.h5", 500)], 1)  # small input: small batches cost little
    assert small_batches(config, few, 64) is None
    default = replace(config, batch_size=BatchSize(nbytes=4 << 20))
    assert small_batches(default, make_plan(files, 65536), 64) is None


def test_plural() -> None:
    assert plural(1, "scoring process", "scoring processes") == "1 scoring process"
    assert plural(2, "scoring process", "scoring processes") == "2 scoring processes"
    assert plural(1200, "row") == "1,200 rows"

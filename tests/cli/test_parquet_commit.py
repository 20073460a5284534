"""A Parquet job killed as it commits, between removing its staging area and renaming
OUTPUT.partial to OUTPUT, is finished by --resume (in process)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.dataset as ds
from click.testing import CliRunner

from mpiscore.cli import main
from tests import builders


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_resume_finishes_a_commit_cut_between_its_two_steps(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(60))
    out = tmp_path / "y.parquet"
    args = ["score", "--model", model, "--input", data, "--output", out,
            "--mini-batch-size", 20]
    assert invoke(*args).exit_code == 0
    whole = ds.dataset(out).to_table()
    partial = tmp_path / "y.parquet.partial"
    shutil.move(out, partial)  # every part file written, _staging gone: the crash's state
    assert not (partial / "_staging").exists()
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert not partial.exists() and ds.dataset(out).to_table().equals(whole)

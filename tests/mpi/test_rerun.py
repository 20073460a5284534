"""A job run again on its own complete output is done already (exit 0), with or without
--resume; another job's complete output still needs --overwrite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import builders
from tests.mpi.launch import error_lines, mpiscore


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[object], Path]:
    folder = tmp_path_factory.mktemp("rerun")
    model = builders.mlp(folder / "mlp.onnx")
    data = builders.write_h5(folder / "x.h5", features=builders.features(500, seed=3))
    out = folder / "y.h5"
    args: list[object] = ["--model", model, "--input", data, "--output", out,
                          "--mini-batch-size", 100]
    result = mpiscore(2, *args)
    assert result.returncode == 0, result.stderr
    return args, out


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_same_job_again_is_already_complete(done, extra) -> None:
    args, out = done
    before = out.stat().st_mtime_ns, (out.parent / "y.h5.run" / "summary.json").read_bytes()
    result = mpiscore(2, *args, *extra)
    assert result.returncode == 0, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and "already complete" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    after = out.stat().st_mtime_ns, (out.parent / "y.h5.run" / "summary.json").read_bytes()
    assert after == before  # nothing rewritten


def test_another_job_on_a_complete_output_still_needs_overwrite(done) -> None:
    args, _ = done
    result = mpiscore(2, *args[:-1], 50)  # another plan
    assert result.returncode == 6, result.stderr
    assert "output exists" in result.stderr

"""An entry script's shutdown() that raises or never returns, in process with real
scoring processes: the rows are written and the output complete, but the job ends
with one ModelError line (exit 4), not a silent exit 0."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from mpiscore.cli import main
from mpiscore.rank import pool
from tests import builders

ROWS = 20


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("mpiscore:")]


def script_job(tmp_path: Path, shutdown: str) -> tuple[list[object], Path]:
    script = tmp_path / "s.py"
    script.write_text("import time\n\ndef run(mini_batch):\n    return mini_batch.sum(axis=1)\n"
                      f"\ndef shutdown():\n    {shutdown}\n")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(ROWS))
    out = tmp_path / "y.h5"
    return ["score", "--entry-script", script, "--input", data, "--output", out,
            "--mini-batch-size", 10, "--batch-format", "numpy"], out


def assert_complete(out: Path) -> None:
    with h5py.File(out) as handle:
        assert handle.attrs["mpiscore_status"] == "complete"
        assert len(handle["result"]) == ROWS


def test_a_shutdown_that_raises_ends_the_job_with_its_line(tmp_path: Path) -> None:
    args, out = script_job(tmp_path, "raise RuntimeError('summary not written')")
    result = invoke(*args)
    assert result.exit_code == 4, result.output
    [line] = error_lines(result.output)
    assert "s.py, line 7, in shutdown: RuntimeError: summary not written" in line, line
    assert f"every batch was scored and {out} is complete" in line, line
    assert_complete(out)


def test_a_shutdown_that_never_returns_is_killed_and_said(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(pool, "SHUTDOWN_TIMEOUT_SECONDS", 2.0)
    args, out = script_job(tmp_path, "time.sleep(3600)")
    result = invoke(*args)
    assert result.exit_code == 4, result.output
    [line] = error_lines(result.output)
    assert "the entry script's shutdown() did not return in 2s; its process was killed" \
        in line, line
    assert_complete(out)


def test_an_init_that_never_returns_is_named_when_the_start_times_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second scoring process's init() hangs (the first, which prepared, returned)."""
    monkeypatch.setattr(pool, "START_TIMEOUT_SECONDS", 3.0)
    flag = tmp_path / "started"
    script = tmp_path / "s.py"
    script.write_text(f"import os, time\n\ndef init():\n    if os.path.exists({str(flag)!r}):"
                      f"\n        time.sleep(3600)\n    open({str(flag)!r}, 'w').close()\n\n"
                      "def run(mini_batch):\n    return mini_batch.sum(axis=1)\n")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(ROWS))
    result = invoke("score", "--entry-script", script, "--input", data, "--output",
                    tmp_path / "y.h5", "--batch-format", "numpy", "--procs-per-rank", 2)
    assert result.exit_code == 7, result.output
    [line] = error_lines(result.output)
    assert f"scoring processes did not start in 3s: the entry script {script}'s init() did " \
           "not return" in line, line


def test_an_init_that_ends_its_process_is_the_script_s_error_and_leaves_no_lock(
        tmp_path: Path) -> None:
    """os._exit in init(): no Python error to catch, but an exit code is the script's
    (exit 4, not the node's 7), and the lock its process took is released."""
    script = tmp_path / "s.py"
    script.write_text("import os\n\ndef init():\n    os._exit(1)\n\ndef run(mini_batch):\n"
                      "    return mini_batch.sum(axis=1)\n")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(ROWS))
    out = tmp_path / "y.h5"
    result = invoke("score", "--entry-script", script, "--input", data, "--output", out,
                    "--batch-format", "numpy")
    assert result.exit_code == 4, result.output
    [line] = error_lines(result.output)
    assert "the scoring process exited with code 1 while the entry script was loaded" \
        in line, line
    assert not Path(f"{out}.lock").exists() and not (Path(f"{out}.run") / "lock").exists()

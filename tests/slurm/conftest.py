"""A throw-away single-node Slurm for the tests in this folder (cluster.sh), started once
per session and stopped at its end; the tests skip, saying why, where it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CLUSTER = Path(__file__).with_name("cluster.sh")
START_TIMEOUT_SECONDS = 300  # apt-get install on a fresh machine included
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


@dataclass(frozen=True)
class Slurm:
    """A running cluster: its config, and the environment its clients and jobs need."""

    conf: Path

    def gpus(self) -> int:
        """The node's fake GPUs (cluster.sh); skips the test, saying why, if it has none."""
        said = (self.conf.parent / "gpus").read_text().strip()
        if not said.isdigit() or int(said) == 0:
            pytest.skip(f"Slurm GPU tests: the test node has no GPUs: {said or 'no reason'}")
        return int(said)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "MPISCORE": str(BIN / "mpiscore")}

    def run(self, *command: object, timeout: float = 30, **env: object
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(c) for c in command], capture_output=True, text=True,
                              timeout=timeout, env={**self.env, **{k: str(v) for k, v in
                                                                   env.items()}})

    def submit(self, script: Path, *options: object, cwd: Path, **env: object) -> int:
        """``sbatch --parsable OPTIONS SCRIPT`` in ``cwd`` with ``env`` exported; the job id."""
        result = subprocess.run(
            ["sbatch", "--parsable", "--export=ALL", *map(str, options), str(script)],
            capture_output=True, text=True, timeout=30, cwd=cwd,
            env={**self.env, **{k: str(v) for k, v in env.items()}})
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, ...)."""
        result = self.run("scontrol", "show", "job", "-o", job_id)
        assert result.returncode == 0, result.stderr
        return dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)

    def wait(self, job_id: int, timeout: float, states: set[str] = TERMINAL
             ) -> dict[str, str]:
        """Poll until the job is in one of ``states``; its fields. A hang fails the test."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info["JobState"] in states:
                return info
            if time.monotonic() > deadline:
                self.run("scancel", job_id)
                pytest.fail(f"job {job_id} still {info['JobState']} after {timeout:.0f}s")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    if sys.platform != "linux":
        pytest.skip("Slurm tests: Linux only")
    folder = tmp_path_factory.mktemp("slurm")
    try:
        started = subprocess.run(["bash", str(CLUSTER), "start", str(folder)],
                                 capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], timeout=60)
        pytest.skip(f"Slurm tests: cluster.sh did not start Slurm in {START_TIMEOUT_SECONDS}s")
    if started.returncode != 0:
        reason = started.stderr.strip().splitlines()[-1:] or ["no reason given"]
        pytest.skip(f"Slurm tests: no Slurm here: {reason[0]}")
    try:
        yield Slurm(Path(started.stdout.strip()))
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], timeout=60)

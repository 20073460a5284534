"""A randomized fault campaign: kill or signal a random process at a random moment, or
let a file-size limit or a full disk hit a random write, then ``--resume`` (at a
random rank count) until the job completes; the output must then be bitwise
identical to a clean run, or the job must have refused to finish with a clear
message. Never a complete-looking wrong output.

Short in CI (tests/mpi/test_campaign.py); long on demand::

    python -m tests.mpi.campaign --runs 200 --seed 1 > campaign.json

Each run: a 30-batch job (HDF5 or Parquet output, 1-3 ranks, 1-2 scoring processes
per rank); one fault, chosen at random:

    kill-rank     SIGKILL of a random rank           kill-scorer  SIGKILL of a scoring process
    kill-mpiexec  SIGKILL of mpiexec                 signal       SIGTERM/SIGINT/SIGHUP to a rank
    fsize-rank0   file-size limit on rank 0 (journal, summary)
    fsize-scorer  file-size limit on a scoring process (output writes)
    full-disk     the output on a real, nearly full tmpfs (needs root to mount)

then resumes, each resume itself faulted with probability 1/3, until exit 0 (at
most 8 attempts). Outcomes: ``identical`` (completed, bitwise equal), ``refused``
(never completed, every attempt ended with one clear mpiscore line), ``wrong``
(a complete output that differs: must never happen), ``unclear`` (an attempt
ended with a Python traceback or a silent non-zero exit).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pyarrow.dataset as ds

from tests import builders
from tests.mpi.launch import kill, mpiscore, rank_pids, start

ROWS, BATCH = 1200, 40
FAULTS = ("kill-rank", "kill-scorer", "kill-mpiexec", "signal", "fsize-rank0", "fsize-scorer",
          "full-disk")
ATTEMPT_TIMEOUT = 90
# What an attempt may end with: done, input/output errors, stopped, killed by a fault
CLEAN_EXITS = {0, 3, 6, 75}


@dataclass
class Attempt:
    fault: str | None
    exit_code: int
    lines: list[str]
    traceback: bool
    stderr_tail: list[str] = field(default_factory=list)  # when not clean: what it printed


@dataclass
class Run:
    number: int
    output_format: str
    fault: str
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = ""


class Campaign:
    """The data, the clean outputs, and a scratch directory for one campaign."""

    def __init__(self, folder: Path, rng: random.Random) -> None:
        self.folder, self.rng = folder, rng
        x = builders.features(ROWS, seed=5)
        self.model = builders.mlp(folder / "mlp.onnx")
        self.h5 = builders.write_h5(folder / "x.h5", features=x)
        self.disk = _small_disk(folder / "disk")
        self.clean = {fmt: self._clean(fmt) for fmt in ("h5", "parquet")}

    def _clean(self, fmt: str) -> dict[str, bytes]:
        out = self.folder / f"clean.{fmt}"
        done = mpiscore(2, *self.args(out, 1), timeout=ATTEMPT_TIMEOUT)
        assert done.returncode == 0, done.stderr
        return read_output(out)

    def args(self, out: Path, procs: int, *extra: str) -> list[object]:
        return ["--model", self.model, "--input", self.h5, "--output", out,
                "--mini-batch-size", BATCH, "--intra-op-threads", 1,
                "--procs-per-rank", procs, "--stop-grace", 5, *extra]

    def run(self, number: int) -> Run:
        fmt = self.rng.choice(("h5", "parquet"))
        faults = [f for f in FAULTS if f != "full-disk" or self.disk is not None]
        run = Run(number, fmt, self.rng.choice(faults))
        where = self.disk if run.fault == "full-disk" else self.folder
        assert where is not None
        out = where / f"run{number}.{fmt}"
        run_dir = self.folder / f"run{number}.run"
        filler = self._fill(where) if run.fault == "full-disk" else None
        resume = False
        for attempt_number in range(8):
            fault = run.fault if attempt_number == 0 else (
                self.rng.choice([f for f in faults if f != "full-disk"])
                if self.rng.random() < 1 / 3 else None)
            attempt = self._attempt(out, run_dir, fault, resume)
            run.attempts.append(attempt)
            if filler is not None and attempt_number == 0:
                filler.unlink()  # space again for the resume
            if attempt.exit_code == 0:
                break
            resume = not _nothing_to_resume(attempt.lines)
        run.outcome = self._judge(run, out)
        for path in (out, Path(f"{out}.partial"), run_dir, Path(f"{out}.lock")):
            _remove(path)
        return run

    def _attempt(self, out: Path, run_dir: Path, fault: str | None, resume: bool) -> Attempt:
        extra = ["--run-dir", str(run_dir), *(["--resume"] if resume else ["--overwrite"])]
        ranks, procs = self.rng.randint(1, 3), self.rng.randint(1, 2)
        process = start(ranks, *self.args(out, procs, *extra), faults="sleep:0.03")
        if fault not in (None, "full-disk"):
            time.sleep(self.rng.uniform(0.2, 2.5))
            _inject(fault, process, out, run_dir, self.rng)
        try:
            _, stderr = process.communicate(timeout=ATTEMPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            stderr = kill(process) + "\ncampaign: attempt HUNG and was killed"
        _reap_orphans(out)
        lines = [line for line in stderr.splitlines() if line.startswith("mpiscore:")]
        traceback = "Traceback" in stderr
        tail = stderr.splitlines()[-25:] if traceback or not (lines or process.returncode == 0) \
            else []
        return Attempt(fault, process.returncode, lines, traceback, tail)

    def _fill(self, disk: Path) -> Path:
        filler = disk / "filler"
        free = shutil.disk_usage(disk).free
        filler.write_bytes(b"\0" * max(0, free - self.rng.randint(8, 40) * 1024))
        return filler

    def _judge(self, run: Run, out: Path) -> str:
        if out.exists():
            return "identical" if read_output(out) == self.clean[run.output_format] else "wrong"
        clear = all(a.exit_code == 0 or a.lines or a.fault in _KILLS for a in run.attempts)
        return "refused" if clear else "unclear"


_KILLS = {"kill-rank", "kill-scorer", "kill-mpiexec"}


def _inject(fault: str, process: subprocess.Popen, out: Path, run_dir: Path,
            rng: random.Random) -> None:
    ranks, scorers = _processes(out)
    if fault == "kill-mpiexec":
        _signal(process.pid, signal.SIGKILL)
    elif fault == "kill-rank" and ranks:
        _signal(rng.choice(list(ranks.values())), signal.SIGKILL)
    elif fault == "kill-scorer" and scorers:
        _signal(rng.choice(scorers), signal.SIGKILL)
    elif fault == "signal" and ranks:
        chosen = rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
        targets = list(ranks.values()) if rng.random() < 0.5 else [rng.choice(list(ranks.values()))]
        for pid in targets:
            _signal(pid, chosen)
    elif fault == "fsize-rank0" and 0 in ranks:
        journal = run_dir / "journal.txt"
        size = journal.stat().st_size if journal.exists() else 0
        _limit(ranks[0], size + rng.randint(0, 40))
    elif fault == "fsize-scorer" and scorers:
        _limit(rng.choice(scorers), rng.randint(0, ROWS * 20))


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _limit(pid: int, size: int) -> None:
    with contextlib.suppress(OSError):  # the process is gone
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, size))


def _processes(out: Path) -> tuple[dict[int, int], list[int]]:
    """The job's rank processes by rank, and its scoring processes."""
    ranks, children = rank_pids(out), []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent in ranks.values():
            children.append(int(entry.name))
    return ranks, children


def _reap_orphans(out: Path) -> None:
    """Ranks left running after mpiexec was killed: wait for them, then kill them."""
    deadline = time.monotonic() + 30
    while _processes(out)[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _processes(out)[0].values():
        _signal(pid, signal.SIGKILL)


def _nothing_to_resume(lines: list[str]) -> bool:
    return any("nothing to resume" in line or "not found" in line for line in lines)


def read_output(out: Path) -> dict[str, bytes]:
    """Every output column's bytes (HDF5 complete-marked, or the Parquet dataset)."""
    if out.suffix == ".h5":
        with h5py.File(out, "r") as handle:
            if handle.attrs.get("mpiscore_status") != "complete":
                return {"status": b"incomplete"}
            return {name: handle[name][()].tobytes() for name in ("logits", "label", "row_status")}
    table = ds.dataset(out).to_table()
    return {"logits": table["logits"].combine_chunks().flatten().to_numpy().tobytes(),
            "label": table["label"].to_numpy().tobytes(),
            "row_status": table["row_status"].to_numpy().tobytes()}


def _small_disk(mount: Path) -> Path | None:
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    return mount if done.returncode == 0 else None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def campaign(runs: int, seed: int) -> dict:
    """Run the campaign; its outcomes and every run's attempts."""
    started = time.monotonic()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="mpiscore-campaign-") as scratch:
        setup = Campaign(Path(scratch), rng)
        try:
            results = [setup.run(number) for number in range(runs)]
        finally:
            if setup.disk is not None:
                subprocess.run(["umount", "-l", str(setup.disk)], check=False, timeout=30)
    return {"runs": runs, "seed": seed, "seconds": round(time.monotonic() - started, 1),
            "full_disk": setup.disk is not None,
            "outcomes": dict(Counter(r.outcome for r in results)),
            "faults": dict(Counter(r.fault for r in results)),
            "attempts": sum(len(r.attempts) for r in results),
            "exit_codes": dict(Counter(str(a.exit_code) for r in results for a in r.attempts)),
            "attempts_with_traceback": sum(a.traceback for r in results for a in r.attempts),
            "details": [{"run": r.number, "format": r.output_format, "fault": r.fault,
                         "outcome": r.outcome,
                         "attempts": [vars(a) for a in r.attempts]} for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(campaign(args.runs, args.seed), indent=2))


if __name__ == "__main__":
    main()

"""``mpiscore slurm``: a ready-to-submit batch script for one scoring job.

The script is ``templates/long.sbatch`` (also ``slurm/long.sbatch``) with its
header and settings written from the job's options: the ``#SBATCH`` lines, the
fixed ``mpiscore score`` command line, and the signal lead time. Everything after
the settings (signal to the tasks, drain, requeue unless cancelled, restart cap,
``--resume``) is the template's own, shared with the example script.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError
from .tuning import DEFAULT_STARTUP_SECONDS, FINISH_SECONDS

TEMPLATE = "long.sbatch"
SETTINGS_END = "# ---- end of settings:"
LAUNCHERS = ("srun", "mpiexec")
MAX_SIGNAL_SECONDS = 65535  # the most Slurm's --signal=SIG@TIME takes
TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


@dataclass(frozen=True)
class SlurmJob:
    """One scoring job as a Slurm batch job.

    ``score_args``: the ``mpiscore score`` options as on its command line, without
    ``--output``, ``--run-dir``, ``--stop-grace``, ``--procs-per-rank`` and
    ``--intra-op-threads`` (fields here, since the script's resources depend on them)
    and without the entry script's words (``script_args``: the script passes them
    last, after ``--``, so that every option, ``--resume`` too, is mpiscore's).
    ``intra_op_threads=None``: ``cpus_per_task`` divided by ``procs_per_rank``.
    """

    score_args: tuple[str, ...]
    output: Path
    run_dir: Path | None = None
    stop_grace: float = 30.0
    procs_per_rank: str = "1"
    intra_op_threads: str | None = None
    overwrite: bool = False
    nodes: int = 1
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    launcher: str = "srun"
    mpi: str | None = None  # srun's --mpi plugin: pmi2 unless given
    max_restarts: int = 10
    workdir: Path = field(default_factory=Path.cwd)
    mpiscore: str = field(default_factory=lambda: default_mpiscore())
    script_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher {self.launcher}: use srun or mpiexec")
        if self.mpi is not None and self.launcher == "mpiexec":
            raise ConfigError("--mpi and --launcher mpiexec exclude each other: --mpi picks "
                              "srun's MPI plugin")
        for name in ("nodes", "ntasks_per_node", "cpus_per_task", "gpus_per_node"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_restarts < 0:
            raise ConfigError("--max-restarts must be at least 0")
        if not self.stop_grace >= 0:
            raise ConfigError("--stop-grace must be >= 0")

    @property
    def tasks_per_node(self) -> int:
        """Ranks per node: as asked, else one per GPU, else one."""
        return self.ntasks_per_node or self.gpus_per_node or 1

    def threads(self) -> str | None:
        """``--intra-op-threads``: as given, else the task's CPUs per scoring process."""
        if self.intra_op_threads not in (None, "auto"):
            return self.intra_op_threads
        if self.cpus_per_task is None or not self.procs_per_rank.isdigit():
            return None  # mpiscore picks from the allocation at run time
        procs = int(self.procs_per_rank)
        if procs > self.cpus_per_task:
            raise ConfigError(f"--procs-per-rank {procs} on --cpus-per-task "
                              f"{self.cpus_per_task}: more scoring processes than CPUs; ask "
                              "for more CPUs or fewer processes")
        return str(self.cpus_per_task // procs)

    def lead_seconds(self) -> int:
        """Seconds before the limit for the stop signal: the drain (``--stop-grace``), the
        start-up (a signal during start-up waits for it) and finishing the output."""
        return math.ceil(self.stop_grace + startup_seconds(self.resolved_run_dir)
                         + FINISH_SECONDS)

    @property
    def resolved_run_dir(self) -> Path:
        run_dir = self.run_dir or self.output.with_name(self.output.name + ".run")
        return run_dir if run_dir.is_absolute() else self.workdir / run_dir


def default_mpiscore() -> str:
    """This installation's ``mpiscore`` (a venv's needs no activation), else the name."""
    beside = Path(sys.executable).with_name("mpiscore")
    if beside.exists():
        return str(beside)
    return shutil.which("mpiscore") or "mpiscore"


def walltime_seconds(text: str) -> int:
    """Slurm's ``--time`` formats in seconds (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]])."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(f"--time {text}: use {TIME_FORMATS}")
    days, *rest = match.groups()
    values = [int(v) for v in rest if v is not None]
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = [*values, 0, 0][:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(values) == 3:  # HH:MM:SS
        return (values[0] * 60 + values[1]) * 60 + values[2]
    return values[0] * 60 + (values[1] if len(values) == 2 else 0)  # minutes[:seconds]


def startup_seconds(run_dir: Path) -> float:
    """The longest start-up an earlier run of the job measured (its history, else its
    summary), or a default where none did."""
    measured: list[float] = []
    try:
        lines = (run_dir / "history.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    with contextlib.suppress(OSError):
        lines = lines or [(run_dir / "summary.json").read_text()]
    for line in lines:
        try:
            value = json.loads(line).get("setup_seconds")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)):
            measured.append(float(value))
    return max(measured) if measured else DEFAULT_STARTUP_SECONDS


def template() -> str:
    return (resources.files(__package__) / "templates" / TEMPLATE).read_text()


def render_script(job: SlurmJob) -> str:
    """The batch script (``#!/bin/bash`` first) that runs ``job`` to completion across
    walltime stops and requeues, and stops for good on ``scancel``."""
    body = template().split(SETTINGS_END, 1)[1].split("\n", 1)[1]
    return "\n".join([*_header(job), "", "set -uo pipefail", "", *_settings(job),
                      SETTINGS_END + " the lines below are slurm/long.sbatch's ----", body])


def _header(job: SlurmJob) -> list[str]:
    lead = job.lead_seconds()
    if lead > MAX_SIGNAL_SECONDS:
        raise ConfigError(f"--stop-grace {job.stop_grace:g}: the stop signal would come {lead}s "
                          f"before the limit (--stop-grace + start-up + {FINISH_SECONDS}s), "
                          f"more than Slurm's --signal allows ({MAX_SIGNAL_SECONDS}s); "
                          "ask for a shorter --stop-grace")
    if job.time is not None and walltime_seconds(job.time) <= lead + startup_seconds(
            job.resolved_run_dir):
        raise ConfigError(f"--time {job.time}: too short for a job that is signalled {lead}s "
                          f"before its limit (--stop-grace {job.stop_grace:g} + start-up + "
                          f"{FINISH_SECONDS}s) and needs time to start; ask for more "
                          "time or a shorter --stop-grace")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", job.output.name) or "job"
    lines = ["#!/bin/bash",
             f"# Written by `mpiscore slurm` (mpiscore {__version__}); submit with sbatch.",
             "# Stops cleanly before the walltime limit (a signal to the tasks), requeues",
             "# itself and resumes; a scancel stops it for good. How: slurm/long.sbatch.",
             "# --overwrite (if given) applies to the job's first run only.",
             f"#SBATCH --job-name=mpiscore-{name}",
             f"#SBATCH --nodes={job.nodes}",
             f"#SBATCH --ntasks-per-node={job.tasks_per_node}"]
    optional = {"cpus-per-task": job.cpus_per_task, "gpus-per-node": job.gpus_per_node,
                "time": job.time, "partition": job.partition, "account": job.account}
    lines += [f"#SBATCH --{key}={value}" for key, value in optional.items() if value is not None]
    return [*lines, f"# TERM to the tasks {lead}s before the limit (--stop-grace, start-up, "
            "finishing): drain, exit 75", f"#SBATCH --signal=TERM@{lead}", "#SBATCH --requeue",
            "#SBATCH --open-mode=append", "#SBATCH --output=mpiscore-%j.out"]


def _settings(job: SlurmJob) -> list[str]:
    threads = job.threads()
    run_dir = [] if job.run_dir is None else ["--run-dir", str(job.run_dir)]
    args = [*run_dir, *job.score_args, "--procs-per-rank", job.procs_per_rank,
            "--stop-grace", f"{job.stop_grace:g}"]
    if threads is not None:
        args += ["--intra-op-threads", threads]
    bin_dir = Path(job.mpiscore).parent
    lines = [f"cd {_quote(job.workdir)} || exit 2   # where the job was written: relative "
             "paths as given",
             f"OUTPUT={_quote(job.output)}",
             f"RUN_DIR={_quote(job.run_dir)}" if job.run_dir else 'RUN_DIR="$OUTPUT.run"',
             f"MAX_RESTARTS={job.max_restarts}",
             f"MPISCORE={_quote(job.mpiscore)}",
             f"LAUNCHER={job.launcher}",
             f"MPI_PLUGIN={_quote(job.mpi or 'pmi2')}"]
    if bin_dir != Path("."):
        lines.append(f"PATH={_quote(bin_dir)}:$PATH   # its mpiexec, if it has one")
    lines.append('score=(--output "$OUTPUT"')
    for i, arg in enumerate(args):  # an option and its value on one line
        if i == 0 or arg.startswith("--"):
            lines.append(f"       {_quote(arg)}")
        else:
            lines[-1] += f" {_quote(arg)}"
    lines[-1] += ")"
    lines.append("fresh=(--overwrite)" if job.overwrite else "fresh=()")
    lines.append(f"script_args=({' '.join(map(_quote, job.script_args))})"
                 + ("   # the entry script's, after -- and every mpiscore option"
                    if job.script_args else ""))
    return lines


def _quote(value: object) -> str:
    return shlex.quote(str(value))


def command_line(params: Iterable[Any], values: Mapping[str, Any],
                 given: Iterable[str]) -> tuple[str, ...]:
    """The options ``given`` (by name) of click ``params`` with their ``values``, as a
    command line: what the user typed, normalised, so the script runs that job. Only
    options: an entry script's words (an argument) travel as ``SlurmJob.script_args``."""
    wanted = set(given)
    argv: list[str] = []
    for param in params:
        if param.name not in wanted or getattr(param, "param_type_name", "") != "option":
            continue
        value = values[param.name]
        if getattr(param, "is_flag", False):
            if param.secondary_opts:
                argv.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                argv.append(param.opts[0])
            continue
        for item in value if getattr(param, "multiple", False) else (value,):
            argv += [param.opts[0], str(item)]
    return tuple(argv)


DRY_RUN_OPTIONS = {"dry_run": "--dry-run", "ranks": "--ranks", "as_json": "--json"}


def refuse_run_options(values: Mapping[str, Any]) -> None:
    """Refuse the ``score`` options (by name, with their values) that have no place in the
    script: the script decides ``--resume`` per run, and a ``--dry-run`` job scores nothing."""
    given = {name for name, value in values.items() if value is not None and value is not False}
    if "resume" in given:
        raise ConfigError("--resume: the script adds it itself to every run that finds "
                          "OUTPUT.partial (the first run too, unless --overwrite); leave it out")
    for name, option in DRY_RUN_OPTIONS.items():
        if name in given:
            what = "" if name == "dry_run" else " (a --dry-run option)"
            raise ConfigError(f"{option}{what}: a batch job of --dry-run would only estimate, "
                              "scoring nothing; run `mpiscore score --dry-run ...` for the "
                              "estimate (without --submit, `mpiscore slurm` only prints "
                              "the script)")


def submit(script: str) -> str:
    """``sbatch --parsable`` the script (on stdin); the job id."""
    try:
        done = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True,
                              text=True, timeout=120)
    except FileNotFoundError:
        raise ConfigError("--submit: sbatch not found; is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise ConfigError("--submit: sbatch did not answer in 120s") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise ConfigError(f"--submit: sbatch refused the script: {reason[0]}")
    return done.stdout.strip().split(";")[0]

"""Where a rank runs: its cores from the launcher, Slurm and the cgroup cpuset, its GPU,
how its cores are shared among its scoring processes, and whether the launcher wired
the ranks into one MPI world.

Probing the machine and the batch system is not configuration (config.py holds the
user's options, identical on every rank); this module reads what the launcher and
Slurm say about the allocation, and turns the options into each rank's layout. Nothing
else probes the machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .config import JobConfig, ScorerSettings
from .errors import ConfigError
from .tuning import SCORING_DEPTH, SYNC_GROUP


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def cores_per_rank(ranks_on_node: int) -> int:
    """Cores one rank may use without oversubscribing its node's share of the job.

    Under Slurm, ``SLURM_CPUS_ON_NODE`` is what the job holds on this node and
    ``SLURM_CPUS_PER_TASK`` (when given) what each task may use. A rank whose CPU
    affinity covers the job's whole share of the node was not bound by its
    launcher (a cgroup cpuset, or task/none's every CPU): that share is divided
    among the ranks of the node. A rank bound to fewer CPUs (``srun
    --cpu-bind``, ``mpiexec -bind-to``) uses those. Outside Slurm, an unbound
    rank gets an equal share of the node's cores.
    """
    usable = len(os.sched_getaffinity(0))
    on_node, per_task = _env_int("SLURM_CPUS_ON_NODE"), _env_int("SLURM_CPUS_PER_TASK")
    if on_node is None:
        if usable < (os.cpu_count() or usable):
            return usable
        return max(1, usable // ranks_on_node)
    if usable >= on_node:  # not bound: the node's share is every rank's
        usable = max(1, min(usable, on_node) // ranks_on_node)
    return min(usable, per_task) if per_task else usable


def gpus_per_node(devices: Path = Path("/dev")) -> int:
    """GPUs visible to this process: MPISCORE_GPUS_PER_NODE, else CUDA_VISIBLE_DEVICES
    (Slurm sets it for a job given GPUs), else the node's NVIDIA devices (``mpiexec`` on a
    workstation of several GPUs: rank i takes GPU i, not all of them GPU 0)."""
    explicit = os.environ.get("MPISCORE_GPUS_PER_NODE")
    if explicit:
        return max(1, int(explicit))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return max(1, len([d for d in devices.glob("nvidia*") if d.name[6:].isdigit()]))
    return max(1, len([d for d in visible.split(",") if d.strip()]))


def visible_gpu(device_id: int, devices: Path = Path("/dev")) -> str | None:
    """The GPU that device ``device_id`` is, as CUDA_VISIBLE_DEVICES names it (Slurm's
    GPU allocation sets it for each task) or, without it, as the node numbers them; None
    where this process sees none."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return str(device_id) if (devices / f"nvidia{device_id}").exists() else None
    visible = [d.strip() for d in listed.split(",") if d.strip()]
    return visible[device_id] if device_id < len(visible) else None


class Layout(NamedTuple):
    """A rank's scoring processes and the ONNX Runtime threads of each."""

    procs: int
    threads: int


def layout(config: JobConfig, ranks_on_node: int) -> Layout:
    """How a rank of ``ranks_on_node`` shares its cores among its scoring processes.

    The rank's cores are shared out without oversubscription: ``auto``
    processes means one per core (or per ``--intra-op-threads`` cores), one in all
    where a provider runs on the rank's GPU (sessions sharing a GPU take turns on it,
    each holding its own memory there), and unset threads means the rank's cores
    divided by its processes.
    """
    cores = cores_per_rank(ranks_on_node)
    threads = config.session.intra_op_threads
    auto = 1 if config.session.on_device else max(1, cores // (threads or 1))
    procs = config.procs_per_rank or auto
    return Layout(procs, threads or max(1, cores // procs))


def scorer_settings(config: JobConfig, local_rank: int, ranks_on_node: int, rank: int = 0
                    ) -> ScorerSettings:
    """The session settings of a rank's scoring processes: threads from the layout,
    and a GPU of the node's by local rank."""
    return ScorerSettings(config.session, layout(config, ranks_on_node).threads,
                          local_rank % gpus_per_node(), rank, config.script_settings())


def window_for(config: JobConfig, procs: int) -> int:
    """Batches a rank keeps assigned: per scoring process those it holds (SCORING_DEPTH:
    one being scored, the next in its pipe) and those written and waiting for their
    group's flush to storage (SYNC_GROUP, the one being written included), plus one
    queued at the rank; ``--window`` overrides it."""
    return config.window or (SCORING_DEPTH + SYNC_GROUP) * procs + 1


def unwired_copies(world_size: int) -> str | None:
    """Why this process must not score alone, or None.

    ``srun`` without an MPI plugin that suits the MPI library (``MpiDefault=none``,
    or ``--mpi=pmix`` for MPICH) starts every task as a 1-rank MPI world of its
    own: N copies that would race on one output. The step's task count
    (``SLURM_STEP_NUM_TASKS``) tells them apart from one rank of a real world.
    """
    tasks = _env_int("SLURM_STEP_NUM_TASKS")
    if world_size != 1 or tasks is None or tasks < 2:
        return None
    return (f"srun started {tasks} separate copies of mpiscore, each an MPI job of 1 rank "
            "(Slurm's MPI plugin did not connect them, so they would race on one output); "
            "launch with srun --mpi=pmi2 (MPICH, Intel MPI) or --mpi=pmix (Open MPI), as "
            "`srun --mpi=list` offers, or with mpiexec -n $SLURM_NTASKS inside the "
            "allocation")


def check_world(world_size: int) -> None:
    """Stop unwired copies (see :func:`unwired_copies`) before they touch anything: the
    step's first task raises the ConfigError (exit 2) with the fix, in one line; the
    other copies leave with the same code silently, so it is printed once per job."""
    message = unwired_copies(world_size)
    if message is None:
        return
    if os.environ.get("SLURM_PROCID", "0") != "0":
        raise SystemExit(ConfigError.exit_code)
    raise ConfigError(message)


SLURM_IDS = (("job_id", "SLURM_JOB_ID"), ("array_job_id", "SLURM_ARRAY_JOB_ID"),
             ("array_task_id", "SLURM_ARRAY_TASK_ID"), ("restart_count", "SLURM_RESTART_COUNT"))


def slurm_ids() -> dict[str, str | int] | None:
    """The Slurm job this process runs in (job id, array job and task ids, restart count:
    0 on a job's first run), for the run directory's records; None outside Slurm."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    ids: dict[str, str | int] = {key: os.environ[name] for key, name in SLURM_IDS
                                 if os.environ.get(name)}
    ids["restart_count"] = int(str(ids.get("restart_count", "0")).strip() or 0)
    return ids


def describe_slurm(ids: dict[str, str | int]) -> str:
    """``Slurm job 123 (array 120_3), run 2 (restart 1)``."""
    array = (f" (array {ids['array_job_id']}_{ids['array_task_id']})"
             if "array_task_id" in ids else "")
    restarts = int(ids.get("restart_count", 0))
    again = f", run {restarts + 1} (restart {restarts})" if restarts else ""
    return f"Slurm job {ids['job_id']}{array}{again}"

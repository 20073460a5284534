"""Cores per rank from the launcher's binding, Slurm's allocation and the cpuset; how a
rank shares them among its scoring processes, its GPU and its window; the N-singletons
mistake of a plain srun."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpiscore.config import InputSpec, JobConfig, SessionConfig
from mpiscore.placement import (
    cores_per_rank,
    gpus_per_node,
    layout,
    scorer_settings,
    unwired_copies,
    visible_gpu,
    window_for,
)

SLURM = ("SLURM_CPUS_ON_NODE", "SLURM_CPUS_PER_TASK", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID")


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Set the CPUs this process may use, the node's, and Slurm's variables."""

    def set_up(usable: int, cpus: int, **slurm: int) -> None:
        for name in SLURM:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(usable)))
        monkeypatch.setattr(os, "cpu_count", lambda: cpus)
        for name, value in slurm.items():
            monkeypatch.setenv(f"SLURM_{name.upper()}", str(value))

    return set_up


def test_outside_slurm_unbound_ranks_share_and_bound_ranks_keep_theirs(machine) -> None:
    machine(8, 8)
    assert cores_per_rank(2) == 4
    machine(3, 16)
    assert cores_per_rank(4) == 3


def test_cpus_per_task_caps_an_unbound_rank(machine) -> None:
    """task/none: every rank sees all 16 CPUs, the job holds 1 of them (-n 1 -c 1)."""
    machine(16, 16, cpus_on_node=1, cpus_per_task=1)
    assert cores_per_rank(1) == 1
    machine(16, 16, cpus_on_node=8, cpus_per_task=4)
    assert cores_per_rank(2) == 4


def test_a_cpuset_shared_by_the_ranks_of_a_node_is_divided(machine) -> None:
    """task/cgroup without binding: each of 4 ranks sees the job's 8 CPUs of 64."""
    machine(8, 64, cpus_on_node=8)
    assert cores_per_rank(4) == 2
    machine(8, 64, cpus_on_node=8, cpus_per_task=2)
    assert cores_per_rank(4) == 2
    machine(8, 64, cpus_on_node=8)
    assert cores_per_rank(1) == 8


def test_a_rank_bound_by_srun_uses_its_binding(machine) -> None:
    machine(2, 64, cpus_on_node=8, cpus_per_task=2)  # --cpu-bind=cores
    assert cores_per_rank(4) == 2


def job(**changes: object) -> JobConfig:
    return JobConfig(Path("m.onnx"), (InputSpec("x.h5"),), Path("o.h5"),
                     **changes)  # type: ignore[arg-type]


def test_unbound_ranks_share_the_node(machine) -> None:
    machine(8, 8)
    assert layout(job(procs_per_rank=None), 2) == (4, 1)  # 4 cores each: 4 procs x 1 thread
    assert layout(job(procs_per_rank=1), 2) == (1, 4)
    assert layout(job(procs_per_rank=2), 1) == (2, 4)
    auto = job(procs_per_rank=None, session=SessionConfig(intra_op_threads=2))
    assert layout(auto, 2) == (2, 2)
    gpu = SessionConfig(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert layout(job(procs_per_rank=None, session=gpu), 2) == (1, 4)  # one session a GPU
    assert layout(job(procs_per_rank=3, session=gpu), 2) == (3, 1)  # as asked


def test_bound_rank_uses_its_binding(machine) -> None:
    machine(3, 16)  # the launcher bound this rank to 3 of 16 cores
    assert layout(job(procs_per_rank=None), 4) == (3, 1)
    assert layout(job(procs_per_rank=1), 4) == (1, 3)


def test_layout_never_gives_zero(machine) -> None:
    machine(2, 2)
    assert layout(job(procs_per_rank=None), 8) == (1, 1)
    assert layout(job(procs_per_rank=4), 1) == (4, 1)


def test_window_defaults_to_six_per_process_plus_one() -> None:
    """2 scoring, up to 4 written and waiting for their group's flush, per process."""
    assert window_for(job(), 1) == 7
    assert window_for(job(), 4) == 25
    assert window_for(job(window=2), 4) == 2


def test_a_rank_takes_a_gpu_of_its_node_by_local_rank(
        machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(8, 8)
    monkeypatch.delenv("MPISCORE_GPUS_PER_NODE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpus_per_node() == 2
    settings = scorer_settings(job(procs_per_rank=2), 3, 4)
    assert (settings.device_id, settings.intra_op_threads) == (1, 1)
    monkeypatch.setenv("MPISCORE_GPUS_PER_NODE", "4")
    assert scorer_settings(job(), 3, 4).device_id == 3


def test_without_cuda_visible_devices_the_node_s_gpus_are_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MPISCORE_GPUS_PER_NODE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (tmp_path / name).touch()  # as the NVIDIA driver makes them in /dev
    assert gpus_per_node(tmp_path) == 3
    assert gpus_per_node(tmp_path / "none") == 1  # no GPU: device 0, as before
    assert (visible_gpu(2, tmp_path), visible_gpu(3, tmp_path)) == ("2", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # Slurm's binding wins
    assert gpus_per_node(tmp_path) == 1


def test_plain_srun_singletons_are_named(machine) -> None:
    machine(2, 2, step_num_tasks=2)
    message = unwired_copies(1)
    assert message is not None and "--mpi=pmi2" in message and "srun --mpi=list" in message
    assert unwired_copies(2) is None  # a real world of 2 ranks


def test_one_task_or_no_slurm_is_fine(machine) -> None:
    machine(2, 2)
    assert unwired_copies(1) is None
    machine(2, 2, step_num_tasks=1)
    assert unwired_copies(1) is None

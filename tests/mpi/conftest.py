"""Fixtures of the MPI tests: background jobs that never outlive their test."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.mpi import launch


@pytest.fixture
def jobs() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``jobs(ranks, *args, faults=None)`` starts a job in the background (launch.start);
    whatever is left of it when the test ends, passed or failed, is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(ranks: int, *args: object, faults: str | None = None) -> subprocess.Popen[str]:
        started.append(launch.start(ranks, *args, faults=faults))
        return started[-1]

    yield start
    for process in started:
        launch.kill(process)

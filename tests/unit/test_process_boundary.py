"""Scoring processes never load mpi4py nor anything of mpiscore.rank (the rank's side
of the boundary; tests/cli/test_cli.py checks the other side: ranks never load
onnxruntime).

A real job runs in this process with two real scoring processes, each started
with an import watch put before their own command: every module a scoring
process imports for the first time is offered to the watch, which notes the
ones that matter in a file. Noting onnxruntime proves the watch ran there.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import mpiscore
from mpiscore.plan import SourceFile
from mpiscore.rank import process
from tests import builders

WATCH = """
import os, sys
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in ("mpi4py", "onnxruntime") or name.startswith(("mpi4py.", "mpiscore.rank")):
            with open({log!r}, "a") as log:
                log.write(f"{{os.getpid()}} {{name}}\\n")
sys.meta_path.insert(0, Watch())
"""


def test_scoring_processes_never_load_mpi4py_or_rank_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "imports.txt"
    monkeypatch.setattr(process, "_CHILD", f"exec({WATCH.format(log=str(log))!r}); "
                        f"{process._CHILD}")
    model = builders.mlp(tmp_path / "m.onnx")
    path = builders.write_h5(tmp_path / "x.h5", features=builders.features(40))
    out = tmp_path / "y.h5"
    mpiscore.run(mpiscore.JobConfig(model=model, inputs=(mpiscore.InputSpec(str(path)),),
                                    output=out, batch_size=mpiscore.BatchSize(rows=10),
                                    procs_per_rank=2))
    assert out.exists()
    imported: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        pid, name = line.split()
        imported.setdefault(pid, set()).add(name)
    assert list(imported.values()) == [{"onnxruntime"}] * 2, imported


def test_scoring_processes_find_the_package_from_anywhere() -> None:
    """Started with ``-S`` (no site, so no editable-install hook), a scoring process
    finds mpiscore by the path its rank adds: the directory holding the package."""
    assert (Path(process._PACKAGE_ROOT) / "mpiscore" / "__init__.py").is_file()


@pytest.mark.parametrize("output", ["y.h5", "y.parquet"])
def test_a_rank_holds_a_job_without_numpy_h5py_or_pyarrow(tmp_path: Path, output: str) -> None:
    """What a rank imports to start (the CLI and the API) and to hold the job rank 0
    broadcasts: none of the data libraries, which only scoring processes (and a rank
    finishing the output) need; each costs every rank tens of milliseconds of start-up."""
    import pickle
    import subprocess
    import sys

    from tests.unit.test_scorer import scoring_process_parts

    job = scoring_process_parts(tmp_path)[2]
    job = pickle.loads(pickle.dumps(job))
    if output.endswith(".parquet"):  # a Parquet input's resolved columns, too
        data = builders.write_parquet(tmp_path / "x.parquet", builders.features(20))
        config = mpiscore.JobConfig(model=job.config.model, inputs=(mpiscore.InputSpec(
            str(data)),), output=tmp_path / output, columns=("f*",))
        from mpiscore.io.registry import resolve_input

        job = type(job)(**{**vars(job), "config": config, "source": resolve_input(
            config, [mpiscore.model.TensorSpec("features", "float32", (None, 8))]),
            "plan": replace(job.plan, files=(SourceFile(str(data), 20),))})
    code = ("import pickle, sys; import mpiscore.cli, mpiscore.api, mpiscore.rank.pool; "
            "pickle.loads(sys.stdin.buffer.read()); "
            "print(sorted({'numpy', 'h5py', 'pyarrow', 'onnxruntime'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(job),
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "[]"


def _as_a_rank(body: str, variable: str, launch: str | None) -> tuple[str, str]:
    """In a fresh interpreter launched with ``variable`` as ``launch`` (None: unset): what
    the command does as a rank starts (rank_environment), then ``body``, which leaves
    what it found in ``found``, then a scoring process started. Returns ``found`` (its
    repr) and the scoring process's ``variable`` (the list of its NAME=VALUE entries)."""
    import os
    import subprocess
    import sys

    code = ("from mpiscore.rank import process; process.rank_environment(); "
            f"{body}; "
            "child = process.ScorerProcess(); "
            "environ = open(f'/proc/{child.process.pid}/environ', 'rb').read().split(b'\\0'); "
            "child.kill(); "
            "print(repr(found)); "
            f"print([e.decode() for e in environ if e.startswith(b'{variable}=')])")
    environment = {k: v for k, v in os.environ.items() if k != variable}
    if launch is not None:
        environment[variable] = launch
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=environment, check=True)
    found, child = done.stdout.strip().splitlines()
    return found, child


@pytest.mark.parametrize("launch", [None, "3"])
def test_the_command_s_rank_starts_no_blas_threads_and_its_scoring_processes_keep_the_launch_s(
        launch: str | None) -> None:
    """As the command starts a rank: NumPy loaded after it has one BLAS thread; a scoring
    process started then gets OPENBLAS_NUM_THREADS as launched."""
    found = _as_a_rank("import numpy; from threadpoolctl import threadpool_info; "
                       "found = [i['num_threads'] for i in threadpool_info() "
                       "if i['user_api'] == 'blas']", "OPENBLAS_NUM_THREADS", launch)
    expected = [] if launch is None else [f"OPENBLAS_NUM_THREADS={launch}"]
    assert found == ("[1]", str(expected))


_MEMORY_FUNCTIONS = ("mmap", "munmap", "mremap", "madvise", "shmat", "brk", "sbrk")


@pytest.mark.parametrize(("launch", "patched"), [
    (None, []),
    ("no", []),
    ("yes", list(_MEMORY_FUNCTIONS)),  # the launch's choice stands: this case shows UCX would
])
def test_the_command_s_rank_loads_mpi_without_ucx_patching_the_c_library(
        launch: str | None, patched: list[str]) -> None:
    """As the command starts a rank, then loads MPI (the mpich wheel's, built with UCX):
    UCX leaves the C library's memory functions as they were (their first bytes
    unchanged) unless the launch asked for its memory events, and a scoring process
    started then gets UCX_MEM_EVENTS as launched. Skipped with an MPI that loads no UCX
    (a site's, built without it)."""
    found, child = _as_a_rank(
        "import ctypes; libc = ctypes.CDLL(None); "
        "head = lambda name: ctypes.string_at(ctypes.cast(getattr(libc, name), "
        "ctypes.c_void_p).value, 16); "
        f"names = {_MEMORY_FUNCTIONS!r}; before = [head(n) for n in names]; "
        "from mpi4py import MPI; "
        "found = ('libucs' in open('/proc/self/maps').read(), "
        "[n for n, b in zip(names, before) if head(n) != b])", "UCX_MEM_EVENTS", launch)
    if found.startswith("(False"):
        pytest.skip("this MPI loads no UCX")
    expected = [] if launch is None else [f"UCX_MEM_EVENTS={launch}"]
    assert (found, child) == (repr((True, patched)), str(expected))


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))  # what OpenBLAS may use, and caps its pool at


@pytest.mark.parametrize(("launch", "expected"), [
    ({}, "[1] None"),
    ({"OPENBLAS_NUM_THREADS": ""}, "[1] ''"),  # empty: OpenBLAS reads it as unset
    ({"OPENBLAS_NUM_THREADS": "3"}, f"[{min(3, _cores())}] '3'"),
    ({"OMP_NUM_THREADS": "2"}, f"[{min(2, _cores())}] None"),  # OpenBLAS reads OMP's too
])
def test_a_scoring_process_loads_numpy_with_one_blas_thread_unless_the_launch_sized_it(
        launch: dict[str, str], expected: str) -> None:
    """scoring/start.py, in a fresh interpreter: OpenBLAS loads with one thread (not one
    per core: the first case cannot fail on a 1-core machine) and the launch's
    environment is as it was; a launch that sized OpenBLAS, by its own variable or
    OpenMP's, keeps its size."""
    import os
    import subprocess
    import sys

    code = ("import os; from mpiscore.scoring.start import loaded_main; loaded_main(); "
            "from threadpoolctl import threadpool_info; "
            "print([i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'], "
            "repr(os.environ.get('OPENBLAS_NUM_THREADS')))")
    sized_by = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
    environment = {k: v for k, v in os.environ.items() if k not in sized_by} | launch
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=environment, check=True)
    assert done.stdout.strip() == expected, done.stderr

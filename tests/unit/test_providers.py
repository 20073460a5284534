"""scoring/scorers/providers.py: a session holds every provider asked for, or the job
stops with one line saying which, where and why (onnxruntime itself falls back to the
CPU with a warning, and the job would end with exit 0 on a GPU allocation it never used).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import onnxruntime as ort
import pytest

from mpiscore.config import DEVICE_PROVIDERS, ScorerSettings, SessionConfig
from mpiscore.errors import ConfigError
from mpiscore.scoring.scorers.onnx import open_session
from mpiscore.scoring.scorers.providers import (
    check_started,
    library_problems,
    load_error,
    not_started,
)
from tests import builders

OFFERED = ort.get_available_providers()
OTHERS = [p for p in OFFERED if p != "CPUExecutionProvider" and p not in DEVICE_PROVIDERS]
CUDA_LIBRARY = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"


def asking(*providers: str, rank: int = 0, device_id: int = 0) -> ScorerSettings:
    return ScorerSettings(SessionConfig(providers=providers), 1, device_id, rank)


@pytest.mark.skipif(not OTHERS, reason="this onnxruntime offers no other host provider")
def test_a_session_without_a_provider_asked_for_stops_the_job(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "mlp.onnx").read_bytes()
    other = OTHERS[0]
    settings = asking(other, "CPUExecutionProvider", rank=3)
    dropped = ort.InferenceSession(model, providers=["CPUExecutionProvider"])  # as a fallback
    with pytest.raises(ConfigError, match=rf"^--providers: {other} did not start on rank 3: "
                       rf".*or leave {other} out of --providers to score on the CPU$"):
        check_started(dropped, settings)
    check_started(open_session(model, "mlp.onnx", settings), settings)  # it did start


def test_the_cpu_provider_alone_always_starts(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "mlp.onnx").read_bytes()
    session = open_session(model, "mlp.onnx", asking("CPUExecutionProvider"))
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_a_gpu_provider_that_did_not_start_names_rank_gpu_and_what_to_install() -> None:
    line = not_started("CUDAExecutionProvider", asking("CUDAExecutionProvider", rank=5,
                                                       device_id=1))
    assert line.startswith("--providers: CUDAExecutionProvider did not start on rank 5, GPU 1: ")
    assert "pip install 'onnxruntime-gpu[cuda,cudnn]'" in line and "\n" not in line
    if "CUDAExecutionProvider" not in ort.get_available_providers():  # the CPU wheel
        assert "this onnxruntime has no libonnxruntime_providers_cuda.so" in line


@pytest.mark.skipif("CUDAExecutionProvider" not in OFFERED or not CUDA_LIBRARY.exists()
                    or load_error(CUDA_LIBRARY) is None,
                    reason="needs onnxruntime-gpu on a machine without the CUDA it needs")
def test_onnxruntime_gpu_without_cuda_stops_the_session_with_the_missing_library(
        tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "mlp.onnx").read_bytes()
    settings = asking("CUDAExecutionProvider", "CPUExecutionProvider", rank=2)
    with pytest.raises(ConfigError) as stopped:
        open_session(model, "mlp.onnx", settings)
    assert str(stopped.value).startswith(
        f"--providers: CUDAExecutionProvider did not start on rank 2, GPU 0: "
        f"{load_error(CUDA_LIBRARY)}; onnxruntime-gpu needs CUDA and cuDNN")


def test_a_library_whose_dependency_is_missing_says_which(tmp_path: Path) -> None:
    """What onnxruntime-gpu meets without CUDA: its provider library needs libcublasLt."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the libraries")
    (tmp_path / "a.c").write_text("int needed(void) { return 1; }\n")
    (tmp_path / "b.c").write_text("int needed(void);\nint provider(void) { return needed(); }\n")
    build = [compiler, "-shared", "-fPIC", "-o"]
    subprocess.run([*build, tmp_path / "libneeded.so", tmp_path / "a.c"], check=True)
    subprocess.run([*build, tmp_path / "libprovider.so", tmp_path / "b.c",
                    f"-L{tmp_path}", "-lneeded"], check=True)
    (tmp_path / "libneeded.so").unlink()
    assert load_error(tmp_path / "libprovider.so") == (
        "libneeded.so: cannot open shared object file: No such file or directory")


def test_a_library_that_loads_has_no_load_error(tmp_path: Path) -> None:
    shared = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_shared.so"
    assert load_error(shared) is None
    (tmp_path / "libjunk.so").write_bytes(b"not a library")
    assert "libjunk.so" in (load_error(tmp_path / "libjunk.so") or "")


def test_a_gpu_provider_without_its_library_is_a_problem_the_cpu_never_is() -> None:
    assert library_problems(["CPUExecutionProvider"]) == {}
    if not CUDA_LIBRARY.exists():  # the CPU wheel: what inspect shows for it
        assert library_problems(["CUDAExecutionProvider", "CPUExecutionProvider"]) == {
            "CUDAExecutionProvider": "this onnxruntime has no libonnxruntime_providers_cuda.so"}

"""Execution providers: the ones asked for, a GPU provider's libraries, and whether each started.

ONNX Runtime treats ``--providers`` as wishes: a provider it offers but cannot start
(onnxruntime-gpu without the CUDA or cuDNN it was built for, or on a node without a
GPU) is dropped with a warning on stderr, and the session runs on the CPU. On a GPU
allocation that is a job that ends with exit 0, many times slower, holding GPUs it
never used. So a session must hold every provider asked for, or the scoring process
stops with one line that says which provider, on which rank and GPU, and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
from pathlib import Path

import onnxruntime as ort

from ...config import DEVICE_PROVIDERS, ScorerSettings
from ...errors import ConfigError

_CUDA_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}

ProviderList = list[str | tuple[str, dict[str, str]]]


def session_providers(settings: ScorerSettings) -> ProviderList:
    """The providers a session is asked for, device providers with the rank's GPU; the
    CUDA libraries are loaded first where a CUDA provider is among them."""
    asked = settings.session.providers
    available = ort.get_available_providers()
    missing = [p for p in asked if p not in available]
    if missing:
        raise ConfigError(f"--providers: {', '.join(missing)} not in this onnxruntime "
                          f"(available: {', '.join(available)})")
    if _CUDA_PROVIDERS & set(asked):
        preload_cuda_libraries()
    return [(p, {"device_id": str(settings.device_id)}) if p in DEVICE_PROVIDERS else p
            for p in asked]


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN where pip put them. onnxruntime-gpu finds them on the loader's
    path only, and pip's nvidia-* packages (``onnxruntime-gpu[cuda,cudnn]``, PyTorch's)
    are not on it; ``ort.preload_dlls`` (onnxruntime 1.21 and later) loads them. It
    prints what it could not load on stdout: :func:`check_started` says it instead, in
    one line, if the provider then does not start."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            preload()


def check_started(session: ort.InferenceSession, settings: ScorerSettings) -> None:
    """Stop unless ``session`` holds every provider asked for (see the module's doc)."""
    started = session.get_providers()
    for provider in settings.session.providers:
        if provider not in started:
            raise ConfigError(not_started(provider, settings))


def not_started(provider: str, settings: ScorerSettings) -> str:
    """The line for a provider that onnxruntime offers but did not start."""
    where = f"rank {settings.rank}" + (f", GPU {settings.device_id}"
                                       if provider in DEVICE_PROVIDERS else "")
    needs = _what_it_needs(provider)
    return (f"--providers: {provider} did not start on {where}: {why_not_started(provider)}; "
            f"{needs}or leave {provider} out of --providers to score on the CPU")


def why_not_started(provider: str) -> str:
    """What keeps ``provider`` from starting, as far as this process can tell: the
    library its provider library could not load, else no device it could use."""
    if provider not in DEVICE_PROVIDERS:
        return "onnxruntime dropped it as the session started"
    return library_problem(provider) or ("its libraries load, so no GPU was usable (check "
                                         "nvidia-smi, and that the job asked Slurm for GPUs)")


def library_problems(offered: list[str]) -> dict[str, str]:
    """Each device provider among ``offered`` whose libraries cannot load here, and why
    (``mpiscore inspect`` shows them before a job is submitted)."""
    if _CUDA_PROVIDERS & set(offered):
        preload_cuda_libraries()
    return {provider: problem for provider in offered
            if provider in DEVICE_PROVIDERS and (problem := library_problem(provider))}


def library_problem(provider: str) -> str | None:
    """Why a device provider's library does not load here, or None when it does."""
    name = provider.removesuffix("ExecutionProvider").lower()  # as onnxruntime's wheels
    library = Path(ort.__file__).parent / "capi" / f"libonnxruntime_providers_{name}.so"
    if not library.exists():
        return f"this onnxruntime has no {library.name}"
    return load_error(library)


def load_error(library: Path) -> str | None:
    """Why the dynamic loader cannot load ``library`` (a library it needs is missing, or
    is not for this machine), or None when it loads."""
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def _what_it_needs(provider: str) -> str:
    """Which CUDA this onnxruntime was built for, for a CUDA provider ('' otherwise)."""
    if provider not in _CUDA_PROVIDERS:
        return ""
    from onnxruntime.capi import build_and_package_info as build

    cuda = getattr(build, "cuda_version", "")
    built = f" (this one is built for CUDA {cuda})" if cuda else ""
    libraries = "CUDA, cuDNN and TensorRT" if provider == "TensorrtExecutionProvider" \
        else "CUDA and cuDNN"
    return (f"onnxruntime-gpu needs {libraries}{built}: install them (pip install "
            "'onnxruntime-gpu[cuda,cudnn]', or load the site's CUDA module), ")

"""mpiscore: score an ONNX model over HDF5/Parquet data on a cluster with MPI.

    from mpiscore import JobConfig, InputSpec, run
    report = run(JobConfig(model=Path("m.onnx"), inputs=(InputSpec("x.h5", "/features"),),
                           output=Path("scores.h5")), comm=MPI.COMM_WORLD)

``run`` is imported on first use: importing the package stays light, so scoring
processes can be started before onnxruntime and h5py are loaded.
"""

from typing import Any

__version__ = "0.1.0"

from .config import BatchSize, InputSpec, JobConfig, SessionConfig
from .errors import (
    ConfigError,
    InputError,
    Interrupted,
    ModelError,
    MpiscoreError,
    OutputError,
    ScoringError,
)
from .report import RankStats, RunReport

__all__ = ["run", "JobConfig", "InputSpec", "BatchSize", "SessionConfig", "RunReport",
           "RankStats", "MpiscoreError", "ConfigError", "InputError", "ModelError",
           "ScoringError", "OutputError", "Interrupted", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from .api import run

        return run
    raise AttributeError(f"module 'mpiscore' has no attribute {name!r}")

"""mpiscore: score an ONNX model over HDF5/Parquet data on a cluster with MPI.

    from mpiscore import JobConfig, InputSpec, run
    report = run(JobConfig(model=Path("m.onnx"), inputs=(InputSpec("x.h5", "/features"),),
                           output=Path("scores.h5")), comm=MPI.COMM_WORLD)
"""

__version__ = "0.1.0"

from .api import run
from .config import BatchSize, InputSpec, JobConfig, SessionConfig
from .errors import ConfigError, InputError, ModelError, MpiscoreError, OutputError, ScoringError
from .report import RankStats, RunReport

__all__ = ["run", "JobConfig", "InputSpec", "BatchSize", "SessionConfig", "RunReport",
           "RankStats", "MpiscoreError", "ConfigError", "InputError", "ModelError",
           "ScoringError", "OutputError", "Interrupted", "__version__"]

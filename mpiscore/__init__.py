"""mpiscore: score an ONNX model over HDF5/Parquet data on a cluster with MPI.

    from mpiscore import JobConfig, InputSpec, run
    report = run(JobConfig(model=Path("m.onnx"), inputs=(InputSpec("x.h5", "/features"),),
                           output=Path("scores.h5")), comm=MPI.COMM_WORLD)

Every name is imported on first use: importing the package stays light, so
scoring processes can be started before anything heavy is loaded.
"""

import importlib

__version__ = "0.1.0"

# Public name -> module. Imported on first use, so that importing the package
# (which ``python -m mpiscore`` and every scoring process do first) costs
# nothing before the first scoring process is started.
_EXPORTS = {
    "run": "api", "JobConfig": "config", "InputSpec": "config", "BatchSize": "config",
    "SessionConfig": "config", "RunReport": "report", "RankStats": "report",
    **dict.fromkeys(["MpiscoreError", "ConfigError", "InputError", "ModelError",
                     "ScoringError", "ScoringProcessError", "OutputError", "Interrupted"],
                    "errors"),
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'mpiscore' has no attribute {name!r}")

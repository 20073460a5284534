"""Frozen configuration of a scoring job, and all validation of user options.

CLI flags and job files become one :class:`JobConfig`, built on every rank from the
same arguments and passed down explicitly; nothing else in mpiscore keeps settings.
Pure data: what the machine offers (cores, GPUs) and what each rank makes of it is
placement.py's, which formats exist is io/registry.py's. ``MPISCORE_FAULTS`` is
read here; what describes the machine (``MPISCORE_GPUS_PER_NODE``, the launcher's
and Slurm's variables) in placement.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

Format = Literal["auto", "hdf5", "parquet"]
CastPolicy = Literal["safe", "same_kind", "unsafe"]
InputMode = Literal["auto", "tabular", "files"]
BatchFormat = Literal["pandas", "numpy", "arrow"]
OutputAction = Literal["rows", "append_row", "summary_only"]

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@dataclass(frozen=True)
class BatchSize:
    """Mini-batch size, either in rows or in input bytes (rows are derived later)."""

    rows: int | None = None
    nbytes: int | None = None

    def rows_for(self, row_nbytes: int) -> int:
        """Rows per mini-batch for inputs whose rows take ``row_nbytes`` bytes."""
        if self.rows is not None:
            return self.rows
        assert self.nbytes is not None
        return max(1, self.nbytes // max(1, row_nbytes))


def parse_batch_size(text: str) -> BatchSize:
    """Parse ``4096`` (rows) or ``64MB`` / ``1GiB`` (bytes of input per batch)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(
            f"--mini-batch-size {text!r}: expected rows (e.g. 4096) or bytes (e.g. 64MB, 1GiB)")
    value = int(match.group(1))
    if value <= 0:
        raise ConfigError(f"--mini-batch-size {text!r}: must be positive")
    if match.group(2):
        return BatchSize(nbytes=value * _SIZE_UNITS[unit])
    return BatchSize(rows=value)


@dataclass(frozen=True)
class InputSpec:
    """One ``--input`` argument: a path, glob or directory, and an optional HDF5 dataset."""

    pattern: str
    dataset: str | None = None


def parse_input_spec(text: str) -> InputSpec:
    """Split ``data/*.h5:/group/features`` into the glob and the dataset path."""
    head, sep, tail = text.rpartition(":/")
    if sep and head:
        return InputSpec(pattern=head, dataset="/" + tail)
    return InputSpec(pattern=text)


def parse_pairs(values: tuple[str, ...], option: str) -> tuple[tuple[str, str], ...]:
    """Parse repeated ``name=value`` options such as ``--map`` and ``--rename``."""
    pairs = []
    for value in values:
        name, sep, target = (part.strip() for part in value.partition("="))
        if not sep or not name or not target:
            raise ConfigError(f"{option} {value!r}: expected NAME=VALUE")
        pairs.append((name, target))
    names = [name for name, _ in pairs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"{option}: {', '.join(duplicated)} given more than once")
    return tuple(pairs)


def split_names(text: str | None) -> tuple[str, ...]:
    """Split a comma-separated list of column names, dropping blanks."""
    if not text:
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


# Execution providers that run on a device (a GPU): each session is given its rank's GPU
# (placement.scorer_settings), and ``--procs-per-rank auto`` means one session per rank.
DEVICE_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider",
                    "ROCMExecutionProvider", "MIGraphXExecutionProvider")


@dataclass(frozen=True)
class SessionConfig:
    """ONNX Runtime settings of each scoring session.

    ``intra_op_threads=None`` means "the rank's cores divided by its scoring
    processes" (placement.layout); output is bitwise reproducible only for
    equal thread settings.
    """

    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    allow_spinning: bool = False
    cast: CastPolicy = "safe"
    run_rows: int | None = None  # rows per session run; None: measured (run_rows.py)

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"--graph-optimization {self.graph_optimization!r}: "
                f"choose one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ConfigError("--intra-op-threads must be at least 1")
        if self.inter_op_threads < 1:
            raise ConfigError("--inter-op-threads must be at least 1")
        if self.run_rows is not None and self.run_rows < 1:
            raise ConfigError("--run-rows must be at least 1 (or auto)")
        if not self.providers:
            raise ConfigError("--providers: give at least one execution provider")

    @property
    def on_device(self) -> bool:
        """Whether a provider asked for runs on a GPU."""
        return any(p in DEVICE_PROVIDERS for p in self.providers)


@dataclass(frozen=True)
class ScriptSettings:
    """What an entry script's scoring process needs besides the script's source.

    ``args``: the words after ``--`` (the script's ``sys.argv[1:]``);
    ``mapped``: ``--map`` was given, so HDF5 arrays arrive as a dict even when one;
    ``output_dir``/``log_dir``: what ``EntryScript()`` names (summary_only's
    ``--output`` directory, else the run directory; ``RUN_DIR/logs``);
    ``csv``: append_row to a ``.csv`` file, so DataFrame rows become CSV lines.
    """

    path: str
    args: tuple[str, ...] = ()
    batch_format: BatchFormat = "pandas"
    output_action: OutputAction = "rows"
    mapped: bool = False
    output_dir: str = ""
    log_dir: str = ""
    csv: bool = False


@dataclass(frozen=True)
class ScorerSettings:
    """What a scoring session needs besides the model: the user's session options and
    what placement.scorer_settings resolved for one rank (threads, GPU).

    Pure data that crosses the pipe to every scoring process, so it lives with the
    other job data here rather than in placement.py, which probes the machine."""

    session: SessionConfig
    intra_op_threads: int
    device_id: int = 0
    rank: int = 0  # of the world, for log names
    script: ScriptSettings | None = None  # an entry-script job's (None: an ONNX model's)


# Names mpiscore keeps for itself in an output (the HDF5 file's plan, _mpiscore/plan)
RESERVED_PREFIX = "_mpiscore"


@dataclass(frozen=True)
class JobConfig:
    """Everything that defines a scoring job; identical on every rank.

    The scorer is an ONNX ``model`` or an ``entry_script`` (exactly one); the
    script's options (``script_args`` after ``--``, ``batch_format``,
    ``output_action``) apply to scripts only.
    """

    model: Path | None = None
    inputs: tuple[InputSpec, ...] = ()
    output: Path = Path()
    input_format: Format = "auto"
    output_format: Format = "auto"
    mapping: tuple[tuple[str, str], ...] = ()
    columns: tuple[str, ...] = ()
    keep_columns: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    batch_size: BatchSize = field(default_factory=lambda: BatchSize(nbytes=4 * 2**20))
    run_dir: Path | None = None
    overwrite: bool = False
    session: SessionConfig = field(default_factory=SessionConfig)
    procs_per_rank: int | None = 1  # None: auto, one per core the rank may use
    window: int | None = None
    progress_seconds: float = 10.0
    max_retries: int = 3
    error_threshold: int = 0
    allowed_failed_percent: float | None = None
    batch_timeout: float | None = None
    stop_grace: float = 30.0
    progress_timeout: float | None = None  # rank/watchdog.py; off by default
    progress: Literal["auto", "bar", "lines"] = "auto"  # progress.py
    quiet: bool = False  # rank 0's stderr: warnings and errors only
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    monitor_seconds: float = 10.0  # a resource sample per rank (rank/recorder.py); 0: none
    on_nan: Literal["error", "pass"] = "error"
    resume: bool = False
    faults: str = field(default_factory=lambda: os.environ.get("MPISCORE_FAULTS", ""))
    entry_script: Path | None = None
    script_args: tuple[str, ...] = ()
    input_mode: InputMode = "auto"
    batch_format: BatchFormat = "pandas"
    output_action: OutputAction = "rows"
    partition_by: tuple[str, ...] = ()
    mini_batch_error_threshold: int = -1  # batches; error_threshold counts items

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("no --input given")
        self._check_scorer()
        if self.procs_per_rank is not None and self.procs_per_rank < 1:
            raise ConfigError("--procs-per-rank must be at least 1")
        if self.window is not None and self.window < 1:
            raise ConfigError("--window must be at least 1")
        if self.max_retries < 0 or self.error_threshold < -1:
            raise ConfigError("--max-retries must be >= 0 and --error-threshold >= -1")
        if self.batch_timeout is not None and self.batch_timeout <= 0:
            raise ConfigError("--batch-timeout must be positive")
        if self.progress_timeout is not None and self.progress_timeout <= 0:
            raise ConfigError("--progress-timeout must be positive")
        if not self.monitor_seconds >= 0:
            raise ConfigError("--monitor-seconds must be >= 0 (0: no resource samples)")
        if not self.progress_seconds > 0 or not self.stop_grace >= 0:
            raise ConfigError("--progress-seconds must be positive and --stop-grace >= 0")
        if self.allowed_failed_percent is not None and \
                not 0 <= self.allowed_failed_percent <= 100:
            raise ConfigError("--allowed-failed-percent must be between 0 and 100")
        self._check_names()
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        if self.columns and self.mapping:
            raise ConfigError("--columns and --map exclude each other: use --map NAME=col1,col2")

    def _check_names(self) -> None:
        """Names given to outputs become HDF5 datasets and Parquet columns beside
        mpiscore's own: a '/' would make an HDF5 group, and '.' names the file's root."""
        for output, name in self.rename:
            if "/" in name or name in (".", "..") or name.startswith(RESERVED_PREFIX):
                raise ConfigError(f"--rename {output}={name}: an output's name holds no '/', "
                                  f"is not '.' or '..' and does not start with "
                                  f"{RESERVED_PREFIX} (mpiscore's own); choose another")

    def _check_scorer(self) -> None:
        if (self.model is None) == (self.entry_script is None):
            raise ConfigError("give either --model MODEL.onnx or --entry-script SCRIPT.py"
                              + (", not both" if self.model is not None else ""))
        if self.entry_script is None:
            script_only = [option for option, given in (
                ("arguments after --", bool(self.script_args)),
                ("--batch-format", self.batch_format != "pandas"),
                ("--output-action", self.output_action != "rows")) if given]
            if script_only:
                words = " ".join(self.script_args[:3]) + " ..." * (len(self.script_args) > 3)
                stray = f" (here {words}: if the shell expanded an unquoted glob, quote it: " \
                    "--columns 'f*')" if self.script_args else ""
                raise ConfigError(f"{', '.join(script_only)}: for --entry-script jobs only"
                                  + stray)
        if self.mini_batch_error_threshold < -1:
            raise ConfigError("--mini-batch-error-threshold must be >= -1")
        if self.output_action == "append_row" and \
                self.output.suffix.lower() in (".h5", ".hdf5", ".hdf", ".he5", ".parquet", ".pq"):
            raise ConfigError(f"--output-action append_row writes lines of text, not "
                              f"{self.output.suffix} data: name a text file such as "
                              f"{self.output.with_suffix('.txt').name} or .csv")

    @property
    def scorer_kind(self) -> str:
        """What scores the batches: "onnx" (a model) or "script" (an entry script)."""
        return "onnx" if self.entry_script is None else "script"

    @property
    def scorer_file(self) -> Path:
        """The model or the entry script, whichever the job has."""
        path = self.model if self.entry_script is None else self.entry_script
        assert path is not None
        return path

    def script_settings(self) -> ScriptSettings | None:
        """What an entry script's scoring processes need (None for an ONNX model)."""
        if self.entry_script is None:
            return None
        run_dir = self.resolved_run_dir.absolute()
        return ScriptSettings(
            str(self.entry_script.absolute()), self.script_args, self.batch_format,
            self.output_action, bool(self.mapping),
            str(self.output.absolute() if self.output_action == "summary_only" else run_dir),
            str(run_dir / "logs"), self.output.suffix.lower() == ".csv")

    @property
    def resolved_run_dir(self) -> Path:
        """The run directory: ``--run-dir``, or ``<output>.run`` beside the output."""
        return self.run_dir or self.output.with_name(self.output.name + ".run")


def auto_number(value: object, option: str) -> int | None:
    """``auto`` -> None (decided per node), else the number."""
    if value == "auto":
        return None
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"{option} {value!r}: expected a number or auto") from None


def batch_size_text(size: BatchSize) -> int | str:
    """A BatchSize as ``--mini-batch-size`` takes it: rows, or bytes in the largest unit
    that divides them (``4MiB``)."""
    if size.rows is not None:
        return size.rows
    assert size.nbytes is not None
    for unit in ("GiB", "MiB", "KiB", "GB", "MB", "KB"):
        if size.nbytes % _SIZE_UNITS[unit.upper()] == 0:
            return f"{size.nbytes // _SIZE_UNITS[unit.upper()]}{unit}"
    return f"{size.nbytes}B"


def _pairs(option: str) -> Callable[[list[str]], tuple[tuple[str, str], ...]]:
    return lambda values: parse_pairs(tuple(values), option)


# option key (the option's name with ``_``) -> (JobConfig field, how to convert the value)
_JOB_OPTIONS: dict[str, tuple[str, Callable[[Any], object]]] = {
    "model": ("model", Path), "output": ("output", Path),
    "input": ("inputs", lambda values: tuple(parse_input_spec(v) for v in values)),
    "input_format": ("input_format", str), "output_format": ("output_format", str),
    "map": ("mapping", _pairs("--map")), "columns": ("columns", split_names),
    "keep_columns": ("keep_columns", split_names), "rename": ("rename", _pairs("--rename")),
    "mini_batch_size": ("batch_size", lambda v: parse_batch_size(str(v))),
    "run_dir": ("run_dir", Path), "overwrite": ("overwrite", bool),
    "procs_per_rank": ("procs_per_rank", lambda v: auto_number(v, "--procs-per-rank")),
    "window": ("window", int), "max_retries": ("max_retries", int),
    "batch_timeout": ("batch_timeout", float), "error_threshold": ("error_threshold", int),
    "allowed_failed_percent": ("allowed_failed_percent", float), "on_nan": ("on_nan", str),
    "resume": ("resume", bool), "stop_grace": ("stop_grace", float),
    "progress_seconds": ("progress_seconds", float),
    "progress_timeout": ("progress_timeout", float),
    "progress": ("progress", str), "quiet": ("quiet", bool), "log_level": ("log_level", str),
    "monitor_seconds": ("monitor_seconds", float),
    "entry_script": ("entry_script", Path),
    "script_args": ("script_args", lambda values: tuple(str(v) for v in values)),
    "input_mode": ("input_mode", str), "batch_format": ("batch_format", str),
    "output_action": ("output_action", str), "partition_by": ("partition_by", split_names),
    "mini_batch_error_threshold": ("mini_batch_error_threshold", int),
}
_SESSION_OPTIONS: dict[str, tuple[str, Callable[[Any], object]]] = {
    "intra_op_threads": ("intra_op_threads",
                         lambda v: auto_number(v, "--intra-op-threads")),
    "inter_op_threads": ("inter_op_threads", int),
    "graph_optimization": ("graph_optimization", str),
    "providers": ("providers", split_names), "spin": ("allow_spinning", bool),
    "cast": ("cast", str),
    "run_rows": ("run_rows", lambda v: auto_number(v, "--run-rows")),
}
OPTION_KEYS = (*_JOB_OPTIONS, *_SESSION_OPTIONS)


def config_from_options(options: dict[str, object]) -> JobConfig:
    """A JobConfig from ``mpiscore score`` option values, as the command line or a job
    file gives them (keys: the option names with ``_``, e.g. ``input``, ``map``,
    ``mini_batch_size``); absent or None values take JobConfig's defaults."""
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}")
    for required in ("input", "output"):
        if options.get(required) in (None, (), []):
            raise ConfigError(f"no --{required} given")
    job = {name: convert(options[key]) for key, (name, convert) in _JOB_OPTIONS.items()
           if options.get(key) is not None}
    session = {name: convert(options[key]) for key, (name, convert) in _SESSION_OPTIONS.items()
               if options.get(key) is not None}
    return JobConfig(**job, session=SessionConfig(**session))  # type: ignore[arg-type]


def options_of(config: JobConfig) -> dict[str, object]:
    """The option values that make ``config`` (the inverse of :func:`config_from_options`;
    None for options left unset)."""
    session = config.session
    return {
        "model": None if config.model is None else str(config.model),
        "entry_script": None if config.entry_script is None else str(config.entry_script),
        "script_args": list(config.script_args), "input_mode": config.input_mode,
        "batch_format": config.batch_format, "output_action": config.output_action,
        "partition_by": ",".join(config.partition_by) or None,
        "mini_batch_error_threshold": config.mini_batch_error_threshold,
        "input": [f"{s.pattern}:{s.dataset}" if s.dataset else s.pattern
                  for s in config.inputs],
        "output": str(config.output), "input_format": config.input_format,
        "output_format": config.output_format,
        "map": [f"{name}={source}" for name, source in config.mapping],
        "columns": ",".join(config.columns) or None,
        "keep_columns": ",".join(config.keep_columns) or None,
        "rename": [f"{name}={new}" for name, new in config.rename],
        "mini_batch_size": batch_size_text(config.batch_size),
        "run_dir": None if config.run_dir is None else str(config.run_dir),
        "overwrite": config.overwrite,
        "intra_op_threads": session.intra_op_threads or "auto",
        "inter_op_threads": session.inter_op_threads,
        "graph_optimization": session.graph_optimization,
        "providers": ",".join(session.providers), "spin": session.allow_spinning,
        "cast": session.cast, "run_rows": session.run_rows or "auto",
        "procs_per_rank": config.procs_per_rank or "auto",
        "window": config.window, "max_retries": config.max_retries,
        "batch_timeout": config.batch_timeout, "error_threshold": config.error_threshold,
        "allowed_failed_percent": config.allowed_failed_percent, "on_nan": config.on_nan,
        "resume": config.resume, "stop_grace": config.stop_grace,
        "progress_seconds": config.progress_seconds,
        "progress_timeout": config.progress_timeout,
        "progress": config.progress, "quiet": config.quiet, "log_level": config.log_level,
        "monitor_seconds": config.monitor_seconds,
    }

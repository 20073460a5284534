"""Job files: ``mpiscore score --config job.toml``, and the run directory's ``config.toml``.

A job file is flat TOML whose keys are the ``score`` options' names with ``_``
for ``-`` (``mini_batch_size = 4096``, ``input = ["a.h5:/x"]``). Relative
paths in it (``model``, ``input``, ``output``, ``run_dir``) are relative to the
file's directory, so a job file and its data can move together. Every job
writes its effective configuration to ``RUN_DIR/config.toml`` with absolute
paths, so ``mpiscore score --config RUN_DIR/config.toml --resume`` resumes it
exactly; ``overwrite`` and ``resume`` say how one run treats what is on disk,
not what the job is, and are never stored. A ``.yml``/``.yaml`` job file is an
Azure ML parallel job, translated by azure_yaml.py.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import azure_yaml
from .config import JobConfig, options_of, parse_input_spec
from .errors import ConfigError

CONFIG_FILE = "config.toml"
PATH_KEYS = ("model", "entry_script", "output", "run_dir")
NOT_STORED = ("overwrite", "resume")


@dataclass(frozen=True)
class OptionKind:
    """What a job file's key must hold: the click parameter it sets, and its type."""

    param: str  # the click parameter's name (``inputs`` for ``--input``)
    kind: str  # text, int, float, bool, choice, list, path
    choices: tuple[str, ...] = ()
    pairs: bool = False  # a list of NAME=VALUE (--map, --rename): a TOML table will do


NOT_JOB_OPTIONS = ("config", "dry_run", "ranks", "as_json")  # how to run the command, not the job


def option_kinds(params: Iterable[click.Parameter]) -> dict[str, OptionKind]:
    """The job-file keys of a click command's options (all but ``--config``)."""
    kinds = {}
    for param in params:
        if isinstance(param, click.Argument) and param.name:  # the words after --
            kinds[param.name] = OptionKind(param.name, "list", ())
            continue
        if not isinstance(param, click.Option) or param.name in (None, *NOT_JOB_OPTIONS):
            continue
        key = max(param.opts, key=len).lstrip("-").replace("-", "_")
        if param.multiple:
            kind = "list"
        elif param.is_flag:
            kind = "bool"
        elif isinstance(param.type, click.Choice):
            kind = "choice"
        elif isinstance(param.type, click.Path):
            kind = "path"
        elif isinstance(param.type, click.types.IntParamType):
            kind = "int"
        elif isinstance(param.type, click.types.FloatParamType):
            kind = "float"
        else:
            kind = "text"
        choices = tuple(str(c) for c in getattr(param.type, "choices", ()))
        pairs = param.multiple and "=" in (param.metavar or "")
        kinds[key] = OptionKind(param.name, kind, choices, pairs)
    return kinds


def read_job_file(path: Path, kinds: dict[str, OptionKind]) -> dict[str, Any]:
    """The job file's values by click parameter name (for click's ``default_map``),
    checked against ``kinds``; relative paths made relative to the file's directory.
    Raises ConfigError naming the file and the key."""
    return read_job(path, kinds)[0]


def read_job(path: Path, kinds: dict[str, OptionKind]) -> tuple[dict[str, Any], str]:
    """:func:`read_job_file`'s values, and a line naming what the file held that was
    left out ("" for TOML, which must hold options only). A ``.yml``/``.yaml`` file is
    an Azure ML parallel job (azure_yaml.py)."""
    if path.suffix.lower() in azure_yaml.YAML_SUFFIXES:
        translation = azure_yaml.translate(azure_yaml.load(path), path)
        return _values(path, translation.options, kinds), translation.ignored_text()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the job file: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a TOML file: {exc}") from exc
    return _values(path, data, kinds), ""


def _values(path: Path, data: dict[str, Any], kinds: dict[str, OptionKind]) -> dict[str, Any]:
    base = path.parent
    values = {}
    for key, value in data.items():
        if key not in kinds:
            near = difflib.get_close_matches(key, list(kinds), n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]!r}?)" if near else \
                f"; keys are the score options with _ for -: {', '.join(sorted(kinds))}"
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        option = kinds[key]
        value = _checked(path, key, value, option)
        if key == "input":
            value = [_relative_input(base, v) for v in value]
        elif option.kind == "path":
            value = str(base / value)
        values[option.param] = value
    return values


_EXPECTED = {"text": "a string or a number", "int": "an integer", "float": "a number",
             "bool": "true or false", "choice": "a string", "path": "a path (string)",
             "list": "a list of strings"}


def _checked(path: Path, key: str, value: Any, option: OptionKind) -> Any:
    kind = option.kind
    if option.pairs and isinstance(value, dict) and \
            all(isinstance(v, str) for v in value.values()):  # map = {features = "/x"}
        return [f"{name}={v}" for name, v in value.items()]
    ok = {
        "text": isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "choice": isinstance(value, str), "path": isinstance(value, str),
        "list": isinstance(value, str) or (isinstance(value, list)
                                           and all(isinstance(v, str) for v in value)),
    }[kind]
    if not ok:
        pairs = " or a table of strings" if option.pairs else ""
        raise ConfigError(f"{path}: {key} = {_shown(value, key)}: expected "
                          f"{_EXPECTED[kind]}{pairs}")
    if kind == "choice" and value not in option.choices:
        raise ConfigError(f"{path}: {key} = {json.dumps(value)}: choose one of "
                          f"{', '.join(option.choices)}")
    if kind == "list":
        return [value] if isinstance(value, str) else value
    if kind == "text":  # columns = ["f0", "f1"] as --columns f0,f1
        return ",".join(value) if isinstance(value, list) else str(value)
    return value


def _shown(value: Any, key: str) -> str:
    """A value as the file wrote it, or what it is where it has no flat TOML form (a
    table, a date)."""
    try:
        return _toml_value(value, key)
    except TypeError:
        return "a table" if isinstance(value, dict) else f"a TOML {type(value).__name__}"


def _relative_input(base: Path, text: str) -> str:
    spec = parse_input_spec(text)
    pattern = str(base / spec.pattern)
    return f"{pattern}:{spec.dataset}" if spec.dataset else pattern


def effective_options(config: JobConfig) -> dict[str, Any]:
    """What ``RUN_DIR/config.toml`` holds: the job's options with absolute paths
    (the run directory included), unset ones and overwrite/resume left out."""
    options = options_of(config)
    for key in PATH_KEYS:
        if options.get(key) is not None:
            options[key] = os.path.abspath(str(options[key]))
    options["run_dir"] = os.path.abspath(config.resolved_run_dir)
    options["input"] = [_relative_input(Path.cwd(), str(v)) for v in config_inputs(config)]
    return {key: value for key, value in options.items()
            if key not in NOT_STORED and value is not None and value != []}


def config_inputs(config: JobConfig) -> list[str]:
    """The ``--input`` values of a config."""
    return [f"{s.pattern}:{s.dataset}" if s.dataset else s.pattern for s in config.inputs]


def dump_toml(values: dict[str, Any], header: str = "") -> str:
    """Flat TOML for strings, numbers, booleans and lists of strings."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key} = {_toml_value(value, key)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else \
            ("nan" if math.isnan(value) else "inf" if value > 0 else "-inf")
    if isinstance(value, str):
        # JSON's escapes are TOML basic-string escapes; TOML also escapes DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    raise TypeError(f"{key}: cannot write {type(value).__name__} to TOML")


def write_config(run_dir: Path, config: JobConfig) -> None:
    """Write ``RUN_DIR/config.toml`` atomically (a reader never sees half of it)."""
    text = dump_toml(effective_options(config),
                     "The effective configuration of the job in this run directory.\n"
                     f"Rerun or resume it: mpiscore score --config {run_dir / CONFIG_FILE} "
                     "--resume")
    partial = run_dir / (CONFIG_FILE + ".tmp")
    try:
        partial.write_text(text)
        partial.replace(run_dir / CONFIG_FILE)
    except OSError:
        partial.unlink(missing_ok=True)
        raise

"""Azure ML v2 parallel job YAML (``type: parallel``) as a job file: its settings
translated to ``mpiscore score`` options, and what had to be left out, with why.

``mpiscore score --config parallel.yml`` reads the settings an HPC run can honour
(mini-batch size, error budget, retries, timeout, processes, entry script and its
arguments, ``append_row_to``); inputs and outputs come from the command line, and
what has no meaning here (compute, identity, Azure's own program arguments, the
environment) is named in one warning line instead of being silently dropped.
:func:`translate` is pure (a parsed YAML mapping in, options out); :func:`load`
reads the file, with PyYAML imported only then (the ``scripts`` extra).
"""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

YAML_SUFFIXES = (".yml", ".yaml")
YAML_MISSING = "reading an Azure ML parallel job YAML needs PyYAML: pip install 'mpiscore[scripts]'"

# Azure's own parser (azure-ai-ml's Parallel node): ^\d+([kKmMgG][bB])*$, and kb = 1024 bytes
_AZURE_SIZE = re.compile(r"\s*(\d+)\s*([kKmMgG][bB])?\s*")
_BINARY_UNITS = {"kb": "KiB", "mb": "MiB", "gb": "GiB"}
_PLACEHOLDER = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "warn": "warning",
           "error": "error", "critical": "error"}

LAUNCHER = "the allocation: ranks come from the launcher, mpiexec -n or srun"
ENVIRONMENT = ("cannot reach the already started scoring processes: export them before "
               "mpiexec/srun, or mpiexec -genv NAME VALUE, Open MPI's -x NAME")
PLACEHOLDERS = "${{...}} cannot be resolved here: give all the script's arguments after --"
_IGNORED_TOP = {
    **dict.fromkeys(("$schema", "name", "display_name", "description", "tags", "properties",
                     "experiment_name", "version", "is_deterministic", "id", "status"),
                    "descriptive"),
    **dict.fromkeys(("inputs", "outputs", "input_data"),
                    "give --input and --output on the command line"),
    "compute": LAUNCHER,
    "identity": "Azure credentials: nothing to authenticate here",
    "services": "Azure services: none here",
}
# v2's predefined arguments inside program_arguments: option key and type, or why not
_AZURE_ARGUMENTS: dict[str, tuple[str, type] | str] = {
    "--error_threshold": ("error_threshold", int),
    "--allowed_failed_percent": ("allowed_failed_percent", float),
    "--progress_update_timeout": ("progress_timeout", float),
    "--resource_monitor_interval": ("monitor_seconds", float),
    "--task_overhead_timeout": "Azure's own: a slow read counts in --batch-timeout",
    "--first_task_creation_timeout": "Azure's own: start-up failures are errors of their own",
    "--copy_logs_to_parent": "Azure's own: logs are in RUN_DIR/logs",
    "--push_metrics_to_parent": "Azure's own: no workspace metrics",
    "--metrics_name_prefix": "Azure's own: no workspace metrics",
}


# what each option's value must be, as the key that sets it is told
_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "error_threshold": (lambda v: v >= -1, "an integer >= -1 (-1: any number)"),
    "mini_batch_error_threshold": (lambda v: v >= -1, "an integer >= -1 (-1: any number)"),
    "max_retries": (lambda v: v >= 0, "an integer >= 0"),
    "procs_per_rank": (lambda v: v >= 1, "an integer >= 1"),
    "batch_timeout": (lambda v: v > 0, "a positive number of seconds"),
    "progress_timeout": (lambda v: v > 0, "a positive number of seconds"),
    "monitor_seconds": (lambda v: v >= 0, "a number of seconds >= 0"),
    "allowed_failed_percent": (lambda v: 0 <= v <= 100, "a percentage from 0 to 100"),
}


@dataclass
class Translation:
    """Options as a job file gives them (keys: option names with ``_``), and the
    keys left out, grouped by why."""

    options: dict[str, Any] = field(default_factory=dict)
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys
    keys: dict[str, str] = field(default_factory=dict)  # option -> the key that set it

    def set(self, check: _Checker, option: str, key: str, value: Any) -> None:
        """``option`` from ``key``: in its bounds (said by the key, not by the option it
        becomes), and given once: two keys that disagree (``error_threshold`` and
        ``program_arguments --error_threshold``) are refused, not settled by their order."""
        bound = _BOUNDS.get(option)
        if bound is not None and not bound[0](value):
            raise check.fail(key, value, bound[1])
        before = self.keys.setdefault(option, key)
        if before != key and self.options[option] != value:
            raise ConfigError(f"{check.source}: {key}: {value!r} and {before}: "
                              f"{self.options[option]!r} set the same thing; keep one")
        self.options[option] = value

    def ignore(self, key: str, reason: str) -> None:
        self.ignored.setdefault(reason, []).append(key)

    def ignored_text(self) -> str:
        """One line: ``ignored: a, b (why); c (why)``; empty when nothing was."""
        if not self.ignored:
            return ""
        return "ignored: " + "; ".join(f"{', '.join(keys)} ({reason})"
                                       for reason, keys in self.ignored.items())


def load(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``; ConfigError for a missing PyYAML, an unreadable
    file, bad YAML or a document that is not a mapping."""
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        raise ConfigError(f"{path}: {YAML_MISSING}") from None
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the job file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a YAML file: {exc}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{path}: not a YAML file{line}: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not an Azure ML parallel job: expected a mapping with "
                          f"type: parallel, found {type(data).__name__}")
    return data


def translate(data: dict[str, Any], source: str | Path) -> Translation:
    """``mpiscore score`` options from a parsed ``type: parallel`` job. Paths are
    relative to the YAML file (``task.code`` joined with ``task.entry_script``), as
    job files' are. Raises ConfigError naming ``source`` and the key."""
    kind = data.get("type")
    if kind != "parallel":
        jobs = [name for name, job in (data.get("jobs") or {}).items()
                if isinstance(job, dict) and job.get("type") == "parallel"] \
            if isinstance(data.get("jobs"), dict) else []
        hint = f"; its parallel jobs: {', '.join(jobs)} (put one in a file of its own)" \
            if jobs else ""
        raise ConfigError(f"{source}: type: {kind if kind is not None else '(none)'}: not an "
                          f"Azure ML parallel job (type: parallel){hint}")
    out = Translation()
    check = _Checker(str(source))
    for key, value in data.items():
        if key == "type":
            continue
        handler = _TOP.get(key)
        if handler is not None:
            handler(check, out, key, value, data)
        else:
            out.ignore(key, _IGNORED_TOP.get(key, "not a parallel job setting mpiscore knows"))
    return out


class _Checker:
    """Type checks with one-line errors naming the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {value!r}: expected {expected}")

    def integer(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or \
                (isinstance(value, str) and not re.fullmatch(r"\s*-?\d+\s*", value)):
            raise self.fail(key, value, "an integer")
        return int(value)

    def number(self, key: str, value: Any) -> float:
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            return float(value)
        except ValueError:
            raise self.fail(key, value, "a number") from None

    def mapping(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, value, "a mapping")
        return value

    def text(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, value, "a string")
        return value


def _bound(value: Any) -> bool:
    """A ``${{...}}`` binding, resolved by Azure's pipeline, not here."""
    return isinstance(value, str) and _PLACEHOLDER.search(value) is not None


def _mini_batch_size(check: _Checker, out: Translation, key: str, value: Any,
                     data: dict[str, Any]) -> None:
    if _bound(value):
        return out.ignore(key, PLACEHOLDERS)
    match = _AZURE_SIZE.fullmatch(str(value)) if isinstance(value, (int, str)) \
        and not isinstance(value, bool) else None
    if match is None or int(match.group(1)) <= 0:
        raise check.fail(key, value, "a positive count (10) or a size (100kb, 10mb, 1gb)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    out.options["mini_batch_size"] = f"{number}{_BINARY_UNITS[unit]}" if unit else int(number)


def _simple(option: str, convert: str) -> Any:
    def handle(check: _Checker, out: Translation, key: str, value: Any,
               data: dict[str, Any]) -> None:
        if _bound(value):
            return out.ignore(key, PLACEHOLDERS)
        out.set(check, option, key, getattr(check, convert)(key, value))
    return handle


def _logging_level(check: _Checker, out: Translation, key: str, value: Any,
                   data: dict[str, Any]) -> None:
    level = _LEVELS.get(check.text(key, value).strip().lower())
    if level is None:
        raise check.fail(key, value, "DEBUG, INFO, WARNING or ERROR")
    out.options["log_level"] = level


def _retry_settings(check: _Checker, out: Translation, key: str, value: Any,
                    data: dict[str, Any]) -> None:
    settings = {"max_retries": _simple("max_retries", "integer"),
                "timeout": _simple("batch_timeout", "number")}
    for name, setting in check.mapping(key, value).items():
        if name in settings:
            settings[name](check, out, f"{key}.{name}", setting, data)
        else:
            out.ignore(f"{key}.{name}", "not a parallel job setting mpiscore knows")


def _resources(check: _Checker, out: Translation, key: str, value: Any,
               data: dict[str, Any]) -> None:
    for name in check.mapping(key, value):
        out.ignore(f"{key}.{name}", LAUNCHER)


def _environment_variables(check: _Checker, out: Translation, key: str, value: Any,
                           data: dict[str, Any]) -> None:
    names = list(check.mapping(key, value))
    if names:
        out.ignore(f"{key} {' '.join(map(str, names))}", ENVIRONMENT)


def _partition_keys(check: _Checker, out: Translation, key: str, value: Any,
                    data: dict[str, Any]) -> None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise check.fail(key, value, "a list of column names")
    out.options["partition_by"] = ",".join(value)


def _task(check: _Checker, out: Translation, key: str, value: Any,
          data: dict[str, Any]) -> None:
    task = check.mapping(key, value)
    kind = task.get("type", "run_function")
    if kind != "run_function":
        raise check.fail(f"{key}.type", kind, "run_function (the only kind of parallel task)")
    code = check.text(f"{key}.code", task.get("code", "."))
    for name, setting in task.items():
        where = f"{key}.{name}"
        if name in ("type", "code"):
            continue
        if name == "entry_script":
            if code.startswith("azureml:") or "://" in code:
                raise check.fail(f"{key}.code", code, "a local directory (the entry script's)")
            out.options["entry_script"] = str(Path(code) / check.text(where, setting))
        elif name == "program_arguments":
            _program_arguments(check, out, where, setting, data)
        elif name == "append_row_to":
            check.text(where, setting)
            out.options["output_action"] = "append_row"  # the file itself is --output
        elif name == "environment":
            out.ignore(where, "the virtualenv or container you launch")
        elif name == "model":
            out.ignore(where, "pass the model's path after --")
        else:
            out.ignore(where, "not a parallel job setting mpiscore knows")


def _program_arguments(check: _Checker, out: Translation, key: str, value: Any,
                       data: dict[str, Any]) -> None:
    """The script's words after ``--``, less Azure's predefined arguments (mapped to
    options, or ignored) and words whose ``${{...}}`` cannot be resolved (with the
    option name before them)."""
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        value = " ".join(shlex.quote(str(v)) for v in value)
    try:
        words = shlex.split(check.text(key, value))
    except ValueError as exc:
        raise check.fail(key, value, f"arguments as a shell would split them ({exc})") from None
    script: list[str] = []
    dropped: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        name, eq, inline = word.partition("=")
        if name in _AZURE_ARGUMENTS:
            has_value = bool(eq) or (index + 1 < len(words)
                                     and not words[index + 1].startswith("--"))
            setting = inline if eq else words[index + 1] if has_value else ""
            index += 1 if eq or not has_value else 2
            target = _AZURE_ARGUMENTS[name]
            if isinstance(target, str):
                out.ignore(f"{key} {name}", target)
            elif _bound(setting):
                out.ignore(f"{key} {name} {setting}", PLACEHOLDERS)
            else:
                option, kind = target
                convert = check.integer if kind is int else check.number
                out.set(check, option, f"{key} {name}", convert(f"{key} {name}", setting))
            continue
        if _bound(word):
            if script and script[-1].startswith("-") and "=" not in script[-1]:
                dropped.append(script.pop())
            dropped.append(word)
        else:
            script.append(word)
        index += 1
    if dropped:
        out.ignore(f"{key} {' '.join(dropped)}", PLACEHOLDERS)
    if script:
        out.options["script_args"] = script


_TOP = {
    "mini_batch_size": _mini_batch_size,
    "max_concurrency_per_instance": _simple("procs_per_rank", "integer"),
    "error_threshold": _simple("error_threshold", "integer"),
    "mini_batch_error_threshold": _simple("mini_batch_error_threshold", "integer"),
    "logging_level": _logging_level,
    "retry_settings": _retry_settings,
    "resources": _resources,
    "environment_variables": _environment_variables,
    "partition_keys": _partition_keys,
    "task": _task,
}

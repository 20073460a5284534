"""The run directory's durable record of progress, and the checks that make resuming safe.

``journal.txt`` gets one self-checking record per batch, appended by the
coordinator only after the scoring process has written and flushed that
batch's output; a killed job therefore never claims a row it did not write,
and a record torn by a kill or a full disk is dropped, never trusted. ``fingerprint.json``
records what the output was made from (model hash, input files with sizes
and modification times, the plan, the output layout); ``--resume`` refuses to
continue when any of it changed, and says what.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InputError, storage_error
from .events import EVENTS_DIR
from .report import HISTORY, read_json_object

if TYPE_CHECKING:
    from .plan import Plan, SourceFile

JOURNAL = "journal.txt"
FINGERPRINT = "fingerprint.json"
MAGIC = "mpiscore-journal 2"
HASH_CHUNK = 65536  # batches turned into JSON at a time for the plan's hash


def fingerprint(model_sha256: str, files: Sequence[SourceFile],
                plan_rows: Plan | list[list[int]], batch_rows: int, output: str,
                output_format: str, fields: list[tuple[str, str, tuple[int, ...]]],
                model_data: Mapping[str, str] | None = None,
                scoring: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the output depends on, in a form that compares with ``==`` after a JSON trip.

    ``files`` are :func:`stamped`; their paths are recorded absolute: the same
    files, however spelled. ``plan_rows``: the plan, or its batches as
    ``[[batch_id, file_index, start, stop], ...]``; its hash is that of this list's
    JSON, taken in pieces, so a million batches never stand as one list.
    ``model_data``: the SHA-256 of each external data file of the model, by its
    location; recorded only for a model that has some, so the fingerprint of any
    other is as before (and its run directories resume). ``scoring``: what else
    decides the rows (SCORING_KEYS: what feeds each model input, ``--on-nan``, an
    entry script's arguments and batch format)."""
    chunks: Iterable[list[list[int]]]
    if isinstance(plan_rows, list):
        chunks, batches = [plan_rows], len(plan_rows)
    else:
        plan = plan_rows
        chunks = (plan.batch_rows_json(first, first + HASH_CHUNK)
                  for first in range(0, plan.batch_count, HASH_CHUNK))
        batches = plan.batch_count
    digest = hashlib.sha256(b"[")
    for index, chunk in enumerate(chunks):
        if chunk:
            digest.update(((", " if index else "") + json.dumps(chunk)[1:-1]).encode())
    digest.update(b"]")
    data = {"model_data": dict(model_data)} if model_data else {}
    return {
        "model_sha256": model_sha256, **data,
        **({"scoring": dict(scoring)} if scoring is not None else {}),
        "inputs": [_input_stamp(f) for f in files],
        "plan": {"batch_rows": batch_rows, "batches": batches, "sha256": digest.hexdigest()},
        "output": {"path": output, "format": output_format,
                   "fields": [[name, dtype, list(shape)] for name, dtype, shape in fields]},
    }


SCORING_KEYS = {"feeds": "the data feeding the model", "on_nan": "--on-nan",
                "script_args": "the entry script's arguments (after --)",
                "batch_format": "--batch-format"}


def as_recorded(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``current`` as a run directory of an earlier mpiscore would have it: without
    its inputs' link ``target`` where those had none, without ``scoring`` where it had
    none. Compared so, such a run directory still resumes (or is complete)."""
    if "scoring" not in recorded:
        current = {k: v for k, v in current.items() if k != "scoring"}
    inputs = recorded.get("inputs")
    if not isinstance(inputs, list) or any("target" in f for f in inputs if isinstance(f, dict)):
        return current
    return {**current, "inputs": [{k: v for k, v in f.items() if k != "target"}
                                  for f in current["inputs"]]}


def _input_stamp(file: SourceFile) -> dict[str, Any]:
    """An input file in the fingerprint: its absolute path, size and modification time,
    and, for a symbolic link (or a path through one), the file it reaches: a link
    pointed elsewhere, at a file of the same size and time (``touch -r``), would
    otherwise resume into an output of both. Recorded only where it differs from the
    path, so the fingerprint of any other input is as before (and resumes)."""
    path = os.path.abspath(file.path)
    target = os.path.realpath(path)
    return {"path": path, "bytes": file.size, "mtime_ns": file.mtime_ns,
            **({"target": target} if target != path else {})}


def stamped(files: Sequence[SourceFile]) -> list[SourceFile]:
    """``files`` with their size and modification time, stat-ed many at a time (rank 0,
    planning): the stamp the fingerprint records and each scoring process checks."""
    from .io.threads import map_in_order

    def stamp(source: SourceFile) -> SourceFile:
        try:
            info = os.stat(source.path)
        except OSError as exc:
            raise InputError(f"{source.path}: cannot stat the input file "
                             f"({exc.strerror})") from exc
        return replace(source, size=info.st_size, mtime_ns=info.st_mtime_ns)

    return map_in_order(stamp, files)


def changed_input(files: Sequence[SourceFile], index: int | None = None) -> str | None:
    """What changed about the input files (or only file ``index``) since the job
    stamped them (:func:`stamped`), in words, or None. Size and modification time are
    checked: an input rewritten in place with both kept (``cp -p``, ``touch -r``)
    goes unseen."""
    for source in files if index is None else [files[index]]:
        path = os.path.abspath(source.path)
        try:
            info = os.stat(source.path)
        except OSError as exc:
            return f"{path}: input file gone while the job ran ({exc.strerror})"
        if (info.st_size, info.st_mtime_ns) != (source.size, source.mtime_ns):
            what = "size" if info.st_size != source.size else "modification time"
            return (f"{path}: input file changed while the job ran ({what} "
                    "differs); its rows may mix old and new data, so the output stays "
                    "partial; score it again with --overwrite (overwrite=True)")
    return None


def journal_token(stamp: dict[str, Any]) -> str:
    """A short digest of the fingerprint: the journal's records are bound to it, so a
    journal from another job's plan or inputs verifies nothing."""
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


# What a run directory of mpiscore's holds (rank/run_dir.py, report.py, events.py,
# rank/status.py, lock.py, jobfile.py; mpiscore report's plots), temporary files aside.
RUN_DIR_NAMES = frozenset({"lock", "logs", EVENTS_DIR, "config.toml", "plan.json",
                           "status.json", "summary.json", HISTORY, JOURNAL, FINGERPRINT,
                           "failed_batches.json", "timeline.png", "throughput.png"})


def check_run_dir_is_this_jobs(run_dir: Path, output: str) -> None:
    """A fresh run (not --resume, not --overwrite) takes a run directory that is new, a
    run's of this very output (a rerun), or one of mpiscore's own that records no job
    (one that stopped before its plan): never one that holds another job's records,
    which it would replace (a second job given the same --run-dir, and the first's
    --resume refused ever after), nor a folder of the user's."""
    if not run_dir.is_dir():
        return
    summary = run_dir / "summary.json"
    foreign = sorted(path.name for path in run_dir.iterdir()
                     if path.name not in RUN_DIR_NAMES and not path.name.endswith(".tmp"))
    if summary.exists() and "status" not in (read_json_object(summary) or {}):
        foreign.append(summary.name)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise ConfigError(f"--run-dir {run_dir}: holds files mpiscore did not write ({shown}); "
                          "give the job a new or empty run directory")
    recorded = (read_json_object(run_dir / FINGERPRINT) or {}).get("output")
    other = recorded.get("path", output) if isinstance(recorded, dict) else output
    if other != output:
        raise ConfigError(f"--run-dir {run_dir}: holds the records of the job that writes "
                          f"{other}; give each job its own --run-dir (or pass --overwrite to "
                          "replace those records)")


def check_resumable(run_dir: Path, current: dict[str, Any]) -> None:
    """Refuse to resume unless the recorded fingerprint matches ``current``; say what
    differs, in words."""
    path = run_dir / FINGERPRINT
    if not path.exists():
        raise ConfigError(f"--resume: {path} not found: the interrupted run stopped before "
                          "it recorded its job (or --run-dir is not the one it used), so there "
                          "is nothing to resume; rerun with --overwrite (overwrite=True) to "
                          "start over")
    recorded = json.loads(path.read_text())
    changes = _difference(recorded, as_recorded(recorded, current))
    if changes:
        raise ConfigError(f"--resume refused: since the interrupted run, {'; '.join(changes)}; "
                          "to start over, use --overwrite instead of --resume "
                          "(overwrite=True, resume=False)")


def _difference(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one phrase per change ("... then, ... now")."""
    changes = []
    if before.get("model_sha256") != after["model_sha256"]:
        scorer = "the entry script" if "script_args" in (after.get("scoring") or {}) \
            else "the model"
        changes.append(f"{scorer} changed: SHA-256 {str(before.get('model_sha256'))[:12]}... "
                       f"then, {after['model_sha256'][:12]}... now")
    changes += _data_changes(before.get("model_data") or {}, after.get("model_data") or {})
    changes += _scoring_changes(before.get("scoring") or {}, after.get("scoring") or {})
    changes += _input_changes(before.get("inputs") or [], after["inputs"])
    old, new = before.get("plan") or {}, after["plan"]
    if old.get("batch_rows") != new["batch_rows"]:
        changes.append(f"the mini-batch size changed: {old.get('batch_rows')} rows per batch "
                       f"then, {new['batch_rows']} now")
    elif old.get("batches") != new["batches"]:
        changes.append(f"the batch plan changed: {old.get('batches')} batches then, "
                       f"{new['batches']} now (the inputs' rows, chunks or row groups changed)")
    elif old != new:
        changes.append(f"the batch plan changed: the same {new['batches']} batches, cut at "
                       "other rows (the inputs' chunks or row groups changed)")
    old, new = before.get("output") or {}, after["output"]
    for key, what in (("path", "the output"), ("format", "the output format")):
        if old.get(key) != new[key]:
            changes.append(f"{what} changed: {old.get(key)} then, {new[key]} now")
    if old.get("fields") != new["fields"]:
        changes.append(f"the output columns changed: {_fields(old.get('fields') or [])} then, "
                       f"{_fields(new['fields'])} now")
    return changes


def _data_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The model's external data files that differ, by location ("none": no such file)."""
    def shown(digest: str | None) -> str:
        return f"SHA-256 {digest[:12]}..." if digest else "none"

    return [f"the model changed: its external data {name}, {shown(before.get(name))} then, "
            f"{shown(after.get(name))} now"
            for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]


def _scoring_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``the data feeding the model changed: X=f0,f1 then, X=f1,f0 now``, for each key."""
    def shown(key: str, value: Any) -> str:
        if not isinstance(value, list):
            return str(value)
        if key == "script_args":
            return repr(shlex.join(value)) if value else "none"
        if all(isinstance(v, list) for v in value):  # HDF5: [reads, files] runs
            value = [f"{reads} ({count} file{'s' * (count != 1)})" for reads, count in value]
        return _cut([str(v) for v in value]) if value else "none"

    return [f"{what} changed: {shown(key, before.get(key))} then, "
            f"{shown(key, after.get(key))} now"
            for key, what in SCORING_KEYS.items() if before.get(key) != after.get(key)]


def _input_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    paths = [f["path"] for f in after]
    if [f["path"] for f in before] != paths:
        gone = [f["path"] for f in before if f["path"] not in paths]
        added = [p for p in paths if p not in {f["path"] for f in before}]
        detail = "; ".join([*([f"dropped {_cut(gone)}"] if gone else []),
                            *([f"added {_cut(added)}"] if added else [])]) or "in another order"
        return [f"the input files changed: {len(before)} file{'s' * (len(before) != 1)} then, "
                f"{len(after)} now ({detail})"]
    changed = [f"input {new['path']} changed: {_stamp_change(old, new)}"
               for old, new in zip(before, after, strict=True) if old != new]
    return changed[:3] + ([f"... and {len(changed) - 3} more input files"]
                          if len(changed) > 3 else [])


def _stamp_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    if old.get("target") != new.get("target"):
        parts.append(f"it led to {old.get('target') or 'itself'} then, "
                     f"{new.get('target') or 'itself'} now")
    if old["bytes"] != new["bytes"]:
        parts.append(f"{old['bytes']:,} bytes then, {new['bytes']:,} now")
    if old["mtime_ns"] != new["mtime_ns"]:
        then, now = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["mtime_ns"] / 1e9))
                     for s in (old, new))
        if then == now:
            then, now = (f"{then}.{s['mtime_ns'] % 10**9:09d}" for s in (old, new))
        parts.append(f"modified {then} then, {now} now")
    return "; ".join(parts)


def _fields(fields: list[list[Any]]) -> str:
    """``label (int64), logits (float32 x 2)``: output columns in words."""
    import numpy as np  # the rank has it loaded by now (outputs, readers)

    def one(name: str, dtype: str, shape: list[int]) -> str:
        kind = np.dtype(dtype).name if dtype[1:2] != "S" else "string"
        return f"{name} ({' x '.join([kind, *map(str, shape)])})"

    return _cut([one(*field) for field in fields]) or "none"


def _cut(items: list[str], shown: int = 5) -> str:
    text = ", ".join(items[:shown])
    return f"{text} ... and {len(items) - shown} more" if len(items) > shown else text


def completed(run_dir: Path, token: str, batches: int) -> set[int]:
    """Batch ids the journal records as written; a record that does not verify, and
    everything after it, is not trusted."""
    return JournalFile(run_dir / JOURNAL, token, batches).read()[0]


class JournalFile:
    """``journal.txt``: a header naming the plan, then one self-checking record per batch.

    ::

        mpiscore-journal 2 <token>
        <batch_id> <crc32 of "<token> <batch_id>", 8 hex digits>

    A record cut short by a kill, a full disk or a file-size limit lacks its
    newline or its checksum; a record from another job's plan has the wrong
    checksum; a batch id outside the plan is refused. Reading stops at the first
    record that does not verify, and appending starts there (the file is cut
    back), so a torn record can never merge with the next one into a valid id.
    """

    def __init__(self, path: Path, token: str, batches: int) -> None:
        self.path, self.token, self.batches = path, token, batches

    @property
    def header(self) -> bytes:
        return f"{MAGIC} {self.token}\n".encode()

    def record(self, batch_id: int) -> bytes:
        check = zlib.crc32(f"{self.token} {batch_id}".encode())
        return f"{batch_id} {check:08x}\n".encode()

    def read(self) -> tuple[set[int], int]:
        """The verified batch ids, and the length of the file's verified part (0 when
        the header is missing or names another plan: nothing in it is trusted)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return set(), 0
        except OSError as exc:
            raise storage_error(self.path, exc, "cannot read the journal") from exc
        if not data.startswith(self.header):
            return set(), 0
        done: set[int] = set()
        good = len(self.header)
        while (end := data.find(b"\n", good)) >= 0:
            batch_id = self._verify(data[good:end + 1])
            if batch_id is None:
                break
            done.add(batch_id)
            good = end + 1
        return done, good

    def _verify(self, line: bytes) -> int | None:
        head, _, _ = line.partition(b" ")
        if not head.isdigit() or not 0 <= int(head) < self.batches:
            return None
        batch_id = int(head)
        return batch_id if line == self.record(batch_id) else None


class Journal:
    """Appends verified records, one ``write`` each, to a journal cut back to its last
    good record (or started afresh)."""

    def __init__(self, run_dir: Path, token: str, batches: int, fresh: bool) -> None:
        self.file = JournalFile(run_dir / JOURNAL, token, batches)
        good = 0 if fresh else self.file.read()[1]
        try:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if good == 0 else 0)
            self.fd = os.open(self.file.path, flags, 0o644)
            if good:
                os.ftruncate(self.fd, good)
            else:
                self._write(self.file.header)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as exc:
            raise storage_error(self.file.path, exc, "cannot write the journal") from exc

    def record(self, *batch_ids: int) -> None:
        """Record these batches, one ``write`` for all (a report's bundle): each record
        is still verified alone, so a torn write loses only its torn tail."""
        try:
            self._write(b"".join(map(self.file.record, batch_ids)))
        except OSError as exc:
            which = f"batch {batch_ids[0]}" if len(batch_ids) == 1 else \
                f"batches {', '.join(map(str, batch_ids))}"
            raise storage_error(self.file.path, exc,
                                f"cannot record {which} in the journal") from exc

    def _write(self, data: bytes) -> None:
        """Write all of ``data``; after a short write (a disk or a limit just filled up)
        the next write raises the storage's own error, leaving a torn record for
        the next resume to drop."""
        while data:
            written = os.write(self.fd, data)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[written:]

    def close(self) -> None:
        """Flush to storage and close; raises a StorageError when that fails."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise storage_error(self.file.path, exc, "cannot flush the journal") from exc
        finally:
            os.close(self.fd)

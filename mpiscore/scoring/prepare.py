"""Turn a JobConfig into a checked, ready-to-run Job (once, before any scoring).

Everything that can be wrong with the inputs, the model or the output is
found here and reported once: files and datasets are opened, the model is
bound to the data, one tiny probe batch is scored to learn the output shapes,
and the output is created. Runs in rank 0's first scoring process, which
loads the model anyway and keeps its scorer for scoring (so no rank loads
onnxruntime); rank 0 broadcasts the resulting Job to every rank.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .. import __version__
from ..config import JobConfig
from ..errors import AlreadyComplete, AmbiguousRows, InputError, OutputError, ScoringError
from ..estimate import DryRun
from ..io.fields import ROW_STATUS, Field
from ..io.registry import (
    InputSource,
    OutputTarget,
    describe,
    input_feeds,
    input_names,
    open_reader,
    plan_batches,
    resolve_input,
)
from ..job import Job
from ..journal import (
    FINGERPRINT,
    as_recorded,
    check_resumable,
    check_run_dir_is_this_jobs,
    completed,
    fingerprint,
    journal_token,
    stamped,
)
from ..lock import JobLock, LockOwner, acquire, check_free, lock_paths
from ..model import (
    InputBinding,
    bind_inputs,
    check_same_data,
    data_digests,
    data_stamps,
    model_digest,
    output_fields,
)
from ..plan import Batch, Plan
from ..report import read_json_object, size_text
from .calibrate import calibrate
from .pipeline import Loaded, scorer_feeds
from .scorers import Scorer


def prepare(config: JobConfig, model_bytes: bytes, open_scorer: Callable[[], Scorer],
            owner: LockOwner) -> tuple[Job, set[int], Scorer]:
    """Check everything, plan the batches and create (or, to resume, reopen) the output.

    ``open_scorer`` opens the scorer of ``model_bytes`` (of whatever kind); it is
    called once the job's locks are taken for ``owner`` (rank 0), who holds them
    from then on, because nothing on disk may be touched before (an entry
    script's init() may write, and its log goes to the run directory). Returns
    the job, the batches already written by an interrupted run (empty unless
    ``--resume``) and the scorer, kept for scoring.
    """
    lock = acquire(lock_paths(config.output, config.resolved_run_dir), owner)
    try:
        scorer = open_scorer()
        job, done = _prepare(config, model_bytes, scorer, lock)
    except BaseException:
        lock.release()
        raise
    return job, done, scorer


@dataclass(frozen=True)
class Checked:
    """A job that passed every check, before anything is written: what preparing it
    (the job) and a dry run (its estimate) both start from."""

    source: InputSource
    plan: Plan
    bindings: tuple[InputBinding, ...]
    outputs: list[Field]  # the model's (or script's), then ROW_STATUS
    output_sources: tuple[str, ...]  # the scorer's key feeding each model output
    kept: list[Field]
    target: OutputTarget
    sha256: str
    attrs: dict[str, Any]
    stamp: dict[str, Any]
    row_nbytes: int
    raw: bool  # an entry script: it takes the columns as read

    def warnings(self, config: JobConfig) -> tuple[str, ...]:
        return tuple(filter(None, [small_batches(config, self.plan, self.row_nbytes)]))


def _prepare(config: JobConfig, model_bytes: bytes, scorer: Scorer,
             lock: JobLock) -> tuple[Job, set[int]]:
    OutputTarget.of(config).settle()  # with the lock held: never in a dry run
    checked = check_job(config, model_bytes, scorer)
    target, plan, outputs, kept = checked.target, checked.plan, checked.outputs, checked.kept
    if config.resume:
        offsets = target.reopen(outputs, kept)
        done = target.written(completed(config.resolved_run_dir, journal_token(checked.stamp),
                                        plan.batch_count))
    else:
        offsets, done = target.create(outputs, kept, plan, checked.attrs), set()
    job = Job(config, checked.sha256, checked.source, plan, checked.bindings,
              tuple(outputs[:-1]), checked.output_sources, tuple(kept), target, offsets,
              checked.attrs, checked.stamp, lock, checked.warnings(config),
              scorer.data_stamps, tuple(scorer.layouts.items()))
    return job, done


def check_job(config: JobConfig, model_bytes: bytes, scorer: Scorer) -> Checked:
    """Every check of the job, reading only: inputs, binding, plan, probe, output place,
    resumability. Nothing is created or changed."""
    inputs = scorer.inputs
    source = resolve_input(config, inputs)
    files, fields, kept = describe(source)
    if sum(f.rows for f in files) == 0:
        more = f" ... and {len(files) - 3} more files" if len(files) > 3 else ""
        raise InputError(f"{', '.join(f.path for f in files[:3])}{more}: input has no rows")
    raw = config.scorer_kind == "script"  # an entry script takes the columns as read
    if raw:
        bindings: tuple[InputBinding, ...] = ()
        row_nbytes = sum(f.row_nbytes for f in [*fields.values(), *kept])
        kept = [f for name in config.keep_columns for f in kept if f.name == name]
    else:
        bindings = bind_inputs(str(config.model), inputs, fields, config.session.cast)
        row_nbytes = sum(field.row_nbytes for field in fields.values())
    plan = plan_batches(config, source, files, row_nbytes)
    plan = replace(plan, files=tuple(stamped(plan.files)))  # the one file table, stamped
    probe: dict[str, Any] = {}
    model_outputs: list[Field] = []
    if config.output_action == "rows":  # the output's columns, from scoring a few rows
        probe, probe_rows = _probe(scorer, bindings, source, plan, raw)
        model_outputs = output_fields(probe, dict(config.rename), probe_rows,
                                      str(config.scorer_file), scorer.columns,
                                      scorer.label_width)
    outputs = [*model_outputs, ROW_STATUS]
    target = OutputTarget.of(config)
    sha256 = model_digest(model_bytes)
    data_sha256 = data_digests(scorer.data_files)  # the files this process loaded, still
    check_same_data(str(config.scorer_file), data_stamps(scorer.data_files),
                    scorer.data_stamps, "while the job started")
    # the weights beside the model decide its scores as much as the .onnx does; in
    # sha256sum's format, which checks them from the model's folder
    data_attr = {"model_data_sha256": "\n".join(
        f"{digest}  {name}" for name, digest in sorted(data_sha256.items()))} if data_sha256 else {}
    attrs = {"model": str(config.scorer_file), "model_sha256": sha256, **data_attr,
             "mpiscore_version": __version__,
             "inputs": "\n".join(input_names(source)), "batch_rows": plan.batch_rows,
             "batches": plan.batch_count, "rows": plan.total_rows}
    # absolute paths: the same files, however spelled (RUN_DIR/config.toml has them absolute)
    stamp = fingerprint(sha256, plan.files, plan, plan.batch_rows,
                        os.path.abspath(config.output), target.format,
                        [(f.name, f.dtype, f.shape) for f in outputs + kept],
                        data_sha256, _scoring(config, source))
    if not config.overwrite and _already_complete(config, target, stamp):
        raise AlreadyComplete(
            f"{target.final}: already complete, from the same model, inputs and plan "
            f"({config.resolved_run_dir / FINGERPRINT}); nothing to do")
    target.check(outputs, kept, config.resume, [f.path for f in files],
                 (config.resolved_run_dir / FINGERPRINT).exists())
    if target.in_place and not (config.resume or config.overwrite):
        _refuse_recorded_run(config, target)
    if config.resume:
        check_resumable(config.resolved_run_dir, stamp)
        # as recorded: the journal of a run directory an earlier mpiscore made is bound to
        # the fingerprint it wrote (without the keys added since), and stays trusted
        stamp = as_recorded(read_json_object(config.resolved_run_dir / FINGERPRINT) or {},
                            stamp)
    elif not config.overwrite:
        check_run_dir_is_this_jobs(config.resolved_run_dir, stamp["output"]["path"])
    return Checked(source, plan, bindings, outputs, tuple(probe), kept, target, sha256, attrs,
                   stamp, row_nbytes, raw)


def dry_run(config: JobConfig, model_bytes: bytes, scorer: Scorer, seconds: float,
            started: float, threads: int, open_seconds: float = 0.0, rank: int = 0
            ) -> DryRun:
    """``--dry-run``: every check of the job, then a few real batches read and scored
    for about ``seconds`` (calibrate.py), without taking the locks or writing
    anything. ``started``: when the dry run began (time.time()), for its set-up;
    ``threads``: this process's intra-op threads; ``open_seconds``: how long opening
    the scorer took, which the job's set-up has once more (every other scoring
    process opens its own once the job is broadcast); ``rank``: which rank times the
    batches, so that each rank starts on other batches (and other pages)."""
    check_free(lock_paths(config.output, config.resolved_run_dir), LockOwner.here())
    checked = check_job(config, model_bytes, scorer)
    plan = checked.plan
    done = completed(config.resolved_run_dir, journal_token(checked.stamp),
                     plan.batch_count) if config.resume else set()
    todo = [b for b in plan.batches if b.batch_id not in done] or list(plan.batches)
    shift = rank * max(1, len(todo) // 7) % len(todo)
    setup = time.time() - started + open_seconds
    calibration = calibrate(open_reader(checked.source), scorer, checked.bindings,
                            checked.raw, todo[shift:] + todo[:shift], seconds, setup,
                            threads)
    item = "file" if checked.source.kind == "files" else "row"
    return DryRun(len(plan.files), plan.total_rows, plan.total_rows * checked.row_nbytes,
                  plan.batch_count, plan.batch_rows,
                  sum(b.rows for b in plan.batches if b.batch_id in done), item,
                  str(config.output), calibration, checked.warnings(config))


SMALL_BATCH_BYTES = 64 * 1024  # below this, or SMALL_BATCH_ROWS rows, a batch is mostly overhead
SMALL_BATCH_ROWS = 64
BATCH_OVERHEAD_SECONDS = 1e-3  # a batch's fixed cost: dispatch, read, session run, write, flush


def small_batches(config: JobConfig, plan: Plan, row_nbytes: int) -> str | None:
    """A warning when the chosen batch size makes a large job mostly per-batch overhead."""
    rows, batches = plan.batch_rows, plan.batch_count
    nbytes = rows * row_nbytes
    if (nbytes >= SMALL_BATCH_BYTES and rows >= SMALL_BATCH_ROWS) or batches < 1000:
        return None
    chosen = config.batch_size.rows or f"{config.batch_size.nbytes}B"
    return (f"--mini-batch-size {chosen}: batches of {rows:,} row{'s' * (rows != 1)} "
            f"({size_text(nbytes)} of input) make {batches:,} batches, each with a fixed cost "
            f"(~{BATCH_OVERHEAD_SECONDS * 1e3:.0f} ms: dispatch, read, session run, write, "
            f"flush), ~{batches * BATCH_OVERHEAD_SECONDS:,.0f}s in all; pass "
            "--mini-batch-size 4MiB (the default) or more")


def _refuse_recorded_run(config: JobConfig, target: OutputTarget) -> None:
    """An output used in place (summary_only's directory) has no partial name to show
    an earlier run: its run directory does. Running again into it would add the
    script's files a second time (a cut-short run) or mix two jobs' (another job)."""
    run_dir = config.resolved_run_dir
    if not (run_dir / FINGERPRINT).exists():
        return
    summary = read_json_object(run_dir / "summary.json") or {}
    if summary.get("status") == "complete":
        raise OutputError(f"{target.final}: holds the files of another job that completed "
                          f"({run_dir / FINGERPRINT}); pass --overwrite (overwrite=True) to "
                          "run this one into it anyway, or choose another --output")
    raise OutputError(f"{target.final}: an interrupted run of a job writing into it is "
                      f"recorded in {run_dir}; rerun with --resume (resume=True) to finish "
                      "it, or with --overwrite (overwrite=True) to start over")


def _scoring(config: JobConfig, source: InputSource) -> dict[str, Any]:
    """What decides the rows besides the model, the input files, the plan and the output
    columns (journal.SCORING_KEYS); an entry script's options only for a script."""
    scoring: dict[str, Any] = {"feeds": input_feeds(source), "on_nan": config.on_nan}
    if config.entry_script is not None:
        scoring |= {"script_args": list(config.script_args),
                    "batch_format": config.batch_format}
    return scoring


def _already_complete(config: JobConfig, target: OutputTarget, stamp: dict[str, Any]) -> bool:
    """Whether this very job finished before: its output is complete and the run
    directory's fingerprint is this job's. A requeued or resubmitted job then has
    nothing to do; another job's output still needs --overwrite.

    Complete means no partial beside the output; for an output used in place
    (summary_only's directory, which never has a partial name) it means the run
    directory's summary says the job completed (a new run first rewrites it as
    running, so a run cut short never counts)."""
    run_dir = config.resolved_run_dir
    if target.in_place:
        summary = read_json_object(run_dir / "summary.json") or {}
        if not target.final.is_dir() or summary.get("status") != "complete":
            return False
    elif not target.final.exists() or target.partial.exists():
        return False
    recorded = read_json_object(run_dir / FINGERPRINT)
    if recorded is None:
        return False
    stamp = as_recorded(recorded, stamp)
    if not all(recorded.get(key) == stamp[key] for key in stamp):
        return False
    damage = target.sink.damage(target.final, stamp["plan"]["batches"])
    if damage is not None:  # this job's output, damaged since it completed
        again = "score it again with --overwrite (overwrite=True)" \
            if target.sink.owned(target.final) else "delete it, then score it again"
        raise OutputError(f"{target.final}: {damage}, although this job completed it; {again}")
    return True


def _probe(scorer: Scorer, bindings: tuple[InputBinding, ...], source: InputSource,
           plan: Plan, raw: bool) -> tuple[dict[str, Any], int]:
    """Score the first rows once, to check the model runs on this data and learn its
    outputs (an entry script's run() is so called once more, on those rows).

    Returns the outputs and how many rows were scored (the model's fixed batch, or 2;
    3 where 2 rows cannot tell an output's layout: AmbiguousRows, _rows_unclear).
    """
    first = plan.batches[0]
    rows = min(first.rows, scorer.fixed_batch or 2)
    try:
        probe = _score_first(scorer, bindings, source, first, rows, raw)
        if scorer.fixed_batch is not None or first.rows <= rows or \
                not _rows_unclear(probe, rows):
            return probe, rows
    except AmbiguousRows as exc:
        if scorer.fixed_batch is not None:  # every batch is that many rows: none can tell
            raise AmbiguousRows(f"{exc}: as many as the model's fixed batch, so mpiscore "
                                "cannot tell one tensor per row from one per target; "
                                "export the model with a dynamic batch") from exc
        if first.rows <= rows:
            raise AmbiguousRows(f"{exc}; give the first mini-batch more rows") from exc
    return _score_first(scorer, bindings, source, first, rows + 1, raw), rows + 1


def _rows_unclear(outputs: dict[str, Any], rows: int) -> bool:
    """Whether an output's rows may lie along another axis than the first: one of its
    other dimensions is as long as the rows scored (a [2, N] output of 2 rows looks like
    [N, 2]; 3 rows then tell them apart, and output_fields refuses the former)."""
    import numpy as np

    return any(rows in np.shape(value)[1:] for value in outputs.values())


def _score_first(scorer: Scorer, bindings: tuple[InputBinding, ...], source: InputSource,
                 first: Batch, rows: int, raw: bool) -> dict[str, Any]:
    reader = open_reader(source)
    try:
        arrays, kept = reader.read(replace(first, stop=first.start + rows))
    finally:
        reader.close()
    try:
        return scorer.score(scorer_feeds(Loaded(arrays, kept, 0.0), bindings, raw))
    except ScoringError as exc:  # before any batch: no error budget applies yet
        raise ScoringError(f"scoring the first {rows} rows of batch 0 to learn the outputs, "
                           f"before the job starts: {exc}") from exc

"""Turn a JobConfig into a checked, ready-to-run Job (rank 0, before any scoring).

Everything that can be wrong with the inputs, the model or the output is
found here, on one rank, and reported once: files and datasets are opened,
the model is loaded and bound to the data, one tiny probe batch is scored to
learn the output shapes, and the output is created. The resulting Job is
broadcast to every rank.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import __version__
from .config import JobConfig
from .errors import InputError, ModelError
from .io.fields import Field
from .io.registry import (
    InputSource,
    OutputTarget,
    describe,
    input_names,
    open_reader,
    resolve_input,
)
from .model import InputBinding, bind_inputs, output_fields, tensor_spec
from .plan import Plan, make_plan
from .score import Scorer, ScorerSettings, open_session


@dataclass(frozen=True)
class Job:
    """A checked job: what every rank needs to score its share."""

    config: JobConfig
    model_bytes: bytes
    model_sha256: str
    source: InputSource
    plan: Plan
    bindings: tuple[InputBinding, ...]
    outputs: tuple[Field, ...]
    output_sources: tuple[str, ...]  # the ONNX output feeding each of ``outputs``
    kept: tuple[Field, ...]
    target: OutputTarget
    offsets: dict[str, int]
    attrs: dict[str, Any]

    @property
    def model_name(self) -> str:
        return str(self.config.model)


def read_model(path: Path) -> bytes:
    """The model file's bytes, read once on rank 0 and broadcast (no start-up storm)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model: {exc.strerror or exc}") from exc


def prepare(config: JobConfig, settings: ScorerSettings) -> tuple[Job, Scorer]:
    """Check everything, plan the batches and create the output (rank 0 only).

    Also returns rank 0's scorer: its session, used for the probe, is kept for
    scoring, so a large model is loaded once per rank, not twice on rank 0.
    """
    model_bytes = read_model(config.model)
    session = open_session(model_bytes, str(config.model), settings)
    inputs = [tensor_spec(node, str(config.model)) for node in session.get_inputs()]
    source = resolve_input(config, [spec.name for spec in inputs])
    files, fields, kept = describe(source)
    if sum(f.rows for f in files) == 0:
        raise InputError(f"{', '.join(f.path for f in files[:3])}: input has no rows")
    bindings = bind_inputs(str(config.model), inputs, fields, config.session.cast)
    row_nbytes = sum(field.row_nbytes for field in fields.values())
    plan = make_plan(files, config.batch_size.rows_for(row_nbytes))
    scorer = Scorer(session, bindings, str(config.model))
    probe = _probe(scorer, source, plan)
    outputs = output_fields(probe, dict(config.rename), _probe_rows(scorer, plan),
                            str(config.model))
    target = OutputTarget(config.resolved_output_format, config.output, config.overwrite)
    target.check(outputs, kept)
    sha256 = hashlib.sha256(model_bytes).hexdigest()
    attrs = {"model": str(config.model), "model_sha256": sha256, "mpiscore_version": __version__,
             "inputs": "\n".join(input_names(source)), "batch_rows": plan.batch_rows,
             "batches": len(plan.batches), "rows": plan.total_rows}
    offsets = target.create(outputs, kept, plan, attrs)
    job = Job(config, model_bytes, sha256, source, plan, bindings, tuple(outputs),
              tuple(probe), tuple(kept), target, offsets, attrs)
    return job, scorer


def _probe_rows(scorer: Scorer, plan: Plan) -> int:
    return min(plan.batches[0].rows, scorer.fixed_batch or 2)


def _probe(scorer: Scorer, source: InputSource, plan: Plan) -> dict[str, Any]:
    """Score the first rows once, to check the model runs on this data and learn its outputs."""
    first = plan.batches[0]
    rows = _probe_rows(scorer, plan)
    reader = open_reader(source)
    try:
        arrays, _ = reader.read(replace(first, stop=first.start + rows))
    finally:
        reader.close()
    return scorer.score(arrays)

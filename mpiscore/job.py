"""A checked job: what every rank and scoring process needs to score its share.

Built by prepare.py; rank 0 keeps it whole (the plan with every batch, the
fingerprint), and broadcasts :meth:`Job.shared` to every rank, which hands it to
every scoring process: the plan's file table and batch count, never its batches,
which travel one by one as they are assigned. The file table is held once: the
input's paths are the plan's (SourceKind.bound). Kept free of onnxruntime, so ranks
can hold it without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .config import JobConfig
from .io.fields import ROW_STATUS, Field
from .io.registry import InputSource, OutputTarget
from .lock import JobLock
from .model import DataStamp, InputBinding
from .plan import Plan


@dataclass(frozen=True)
class Job:
    """A checked job: the model, the plan, how inputs bind and where outputs go."""

    config: JobConfig
    model_sha256: str  # the bytes travel separately: once over MPI, to each process once
    source: InputSource
    plan: Plan
    bindings: tuple[InputBinding, ...]
    outputs: tuple[Field, ...]
    output_sources: tuple[str, ...]  # the ONNX output feeding each of ``outputs``
    kept: tuple[Field, ...]
    target: OutputTarget
    offsets: dict[str, int]
    attrs: dict[str, Any]
    fingerprint: dict[str, Any]  # rank 0's only (journal token, fingerprint.json)
    lock: JobLock  # held by rank 0 for the job's life
    warnings: tuple[str, ...] = ()  # found while preparing; rank 0 logs them once
    model_data: tuple[DataStamp, ...] = ()  # the external data files the job digested
    layouts: tuple[tuple[str, bool], ...] = ()  # Scorer.layouts, as the probe decided them

    def __post_init__(self) -> None:
        """The input's paths are the plan's file table's (stamped after the input was
        resolved, or described in other processes): bound to it, the job holds and
        sends each path once."""
        bound = self.source.bound(self.plan.files)
        if bound is not self.source:
            object.__setattr__(self, "source", bound)

    def shared(self) -> Job:
        """The job as every other process gets it: the plan without its batches, and no
        fingerprint (the file table's stamps serve a scoring process's checks)."""
        return replace(self, plan=self.plan.shared(), fingerprint={})

    @property
    def written_fields(self) -> list[Field]:
        """What every batch writes: the model outputs, then the per-row status."""
        return [*self.outputs, ROW_STATUS]

    @property
    def item(self) -> str:
        """What one unit of the input is, in messages: a row, or (file input) a file."""
        return "file" if self.source.kind == "files" else "row"

    @property
    def model_name(self) -> str:
        return str(self.config.scorer_file)




"""The part-file layout that outputs written a batch at a time share (Parquet, append_row):
each batch's file is written under a temporary name in ``_staging/`` and renamed to its
part name once flushed, so a part file under its name is what ``--resume`` counts."""

from __future__ import annotations

import os
import re
from pathlib import Path

STAGING = "_staging"


def durable_replace(temporary: Path, target: Path) -> None:
    """Flush a staged file to storage, then give it its name: under its name, it is
    whole on disk."""
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)


def written_batches(partial: Path, part: re.Pattern[str]) -> set[int]:
    """Batches whose part file (``part``'s first group: the batch id) is on disk under
    its name (what --resume may skip)."""
    return {int(m.group(1)) for m in map(part.fullmatch, os.listdir(partial)) if m}


def discard_staged(partial: Path, temporary: re.Pattern[str]) -> None:
    """Delete files a killed scoring process left half-written in the staging area."""
    staging = partial / STAGING
    for name in os.listdir(staging) if staging.is_dir() else ():
        if temporary.fullmatch(name):
            (staging / name).unlink()

"""Expand ``--input`` patterns into a sorted list of existing files."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ..config import PARQUET_SUFFIXES, InputSpec
from ..errors import InputError


def expand(spec: InputSpec) -> list[str]:
    """Files matched by one ``--input``: a file, a glob, or a Parquet dataset directory."""
    paths = sorted(glob.glob(spec.pattern, recursive=True)) if glob.has_magic(spec.pattern) \
        else [spec.pattern]
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(_dataset_files(path))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise InputError(f"--input {path}: no such file or directory")
    if not files:
        raise InputError(f"--input {spec.pattern}: matches no files")
    return files


def _dataset_files(directory: str) -> list[str]:
    """Data files of a dataset directory, skipping ``_``/``.`` names as pyarrow does."""
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        found.extend(os.path.join(root, n) for n in sorted(names)
                     if not n.startswith(("_", ".")) and Path(n).suffix.lower() in PARQUET_SUFFIXES)
    if not found:
        raise InputError(f"--input {directory}: directory holds no .parquet files")
    return found

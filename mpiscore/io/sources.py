"""What ``--input`` patterns name: existing files and directories, and the data files of
a dataset directory; and the file suffixes each built-in format is known by.

Light on purpose (no h5py, no pyarrow): ``mpiscore inspect`` tells formats apart
with these tables before it imports anything heavy.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import InputSpec
from ..errors import InputError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


@dataclass(frozen=True)
class Hdf5Source:
    """One input file and the dataset each model input reads from it. Here, not in
    hdf5.py: a job holding it unpickles on a rank without importing h5py."""

    path: str
    datasets: tuple[tuple[str, str], ...]  # (model input name, dataset path)
PARQUET_SUFFIXES = (".parquet", ".pq")


def expand(spec: InputSpec) -> list[str]:
    """Paths matched by one ``--input``, sorted: a file, a glob, or a directory (which
    the input's kind reads as one dataset, see :func:`dataset_files`)."""
    paths = sorted(glob.glob(spec.pattern, recursive=True)) if glob.has_magic(spec.pattern) \
        else [spec.pattern]
    for path in paths:
        if not (os.path.isfile(path) or os.path.isdir(path)):
            raise InputError(f"--input {path}: no such file or directory")
    if not paths:
        raise InputError(f"--input {spec.pattern}: matches no files")
    return paths


def dataset_files(directory: str, suffixes: Sequence[str]) -> list[str]:
    """Data files of a dataset directory, in name order, skipping ``_``/``.`` names as
    pyarrow does; only those with one of ``suffixes`` (in any case)."""
    found: list[str] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        found.extend(os.path.join(root, n) for n in sorted(names)
                     if not n.startswith(("_", ".")) and Path(n).suffix.lower() in suffixes)
    return found

"""Descriptions of tensors in files, shared by readers, writers and the model binding."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..plan import Batch


@dataclass(frozen=True)
class Field:
    """A per-row tensor: its name, NumPy dtype string and shape of one row.

    ``flat`` marks data stored as a flat vector per row (Parquet), which may
    be reshaped to a model input's fixed per-row shape of the same size.
    ``where`` names its origin for error messages (``x.h5:/features``).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    where: str = ""
    flat: bool = False

    @property
    def row_nbytes(self) -> int:
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)


@dataclass(frozen=True)
class ParquetSelection:
    """Which columns feed each model input, and which are carried to the output."""

    features: tuple[tuple[str, tuple[str, ...]], ...]  # (model input, columns)
    keep: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        names = [c for _, cols in self.features for c in cols] + list(self.keep)
        return list(dict.fromkeys(names))


Columns = dict[str, object]
"""Per-batch data by field name: NumPy arrays, or Arrow arrays for carried columns."""


class Reader(Protocol):
    """Reads the model inputs and carried columns of one batch from storage."""

    def read(self, batch: Batch) -> tuple[dict[str, np.ndarray], Columns]: ...

    def close(self) -> None: ...


class Writer(Protocol):
    """Writes one batch's output rows at their place in the output."""

    def write(self, batch: Batch, columns: Columns) -> None: ...

    def finish(self, comm: object | None) -> None: ...

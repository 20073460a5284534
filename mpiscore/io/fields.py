"""Descriptions of tensors in files, shared by readers, writers and the model binding."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import OutputError
from ..plan import Batch

if TYPE_CHECKING:  # numpy is the scoring processes' (and fills'): a rank never needs it
    import numpy as np


def nearest_first(name: str, names: Sequence[str], shown: int = 8) -> str:
    """``f9, f1, f0 ... and 14 more``: the names closest to a wrong ``name`` first (for a
    typo), then the rest in their order; says when the list is cut."""
    close = difflib.get_close_matches(name, names, n=shown, cutoff=0.6)
    ordered = [*close, *(n for n in names if n not in close)]
    text = ", ".join(ordered[:shown]) or "none"
    return f"{text} ... and {len(ordered) - shown} more" if len(ordered) > shown else text


def cut(names: Sequence[object], shown: int = 8) -> str:
    """``a, b, c ... and 12 more``: a list in a message says when it is cut."""
    text = ", ".join(map(str, names[:shown]))
    return f"{text} ... and {len(names) - shown} more" if len(names) > shown else text


@dataclass(frozen=True)
class Field:
    """A per-row tensor: its name, NumPy dtype string and shape of one row.

    ``flat`` marks data stored as a flat vector per row (Parquet), which may
    be reshaped to a model input's fixed per-row shape of the same size.
    ``where`` names its origin for error messages (``x.h5:/features``).
    ``column_dtypes``: for several Parquet columns stacked into one field, each
    column and its own dtype. ``dtype`` is then NumPy's promotion of them, which
    names no column and hides a wrong one (int64 ``id`` with float32 features is
    float64), so the model binding judges each column by its own dtype.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    where: str = ""
    flat: bool = False
    column_dtypes: tuple[tuple[str, str], ...] = ()

    @property
    def row_nbytes(self) -> int:
        import numpy as np

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


ROW_STATUS = Field("row_status", "|u1", (), "per-row status: 0 scored, 1 failed")
"""Written beside the model outputs: which rows hold scores and which hold fill values."""

FILE_PATHS = "mpiscore.paths"
"""For file input, the key of a batch's file paths (a list of str) among its read columns."""

LINES = "mpiscore.lines"
"""For ``--output-action append_row``, the key of a batch's output lines (a list of str)."""

HEADER = "mpiscore.header"
"""For append_row to a ``.csv``, the key of the CSV header line (a str; absent otherwise)."""

Columns = dict[str, object]
"""Per-batch data by field name: NumPy arrays, or Arrow arrays for carried columns."""


def checked_rows(column: object, field: Field, batch: Batch, where: str) -> np.ndarray:
    """A batch's column of output ``field`` as every part of the output holds it: the
    rows x shape and the number kind its first rows had (the probe), in that dtype.
    A model output with a symbolic width, or a script column that changes type from
    batch to batch, is refused in that batch rather than written in another layout
    (Parquet parts of two schemas are one dataset no reader opens)."""
    import numpy as np

    data = np.asarray(column)
    if data.shape != (batch.rows, *field.shape):
        raise OutputError(f"{where} batch {batch.batch_id}: got shape {data.shape}, "
                          f"expected {(batch.rows, *field.shape)}")
    wanted = np.dtype(field.dtype)
    if data.dtype == wanted:
        return data
    if wanted.kind in "SU":  # text as wide as the output's: a batch of shorter values
        return data.astype(wanted) if data.dtype.kind == wanted.kind else data  # is padded
    if wanted.kind not in "biuf":
        return data
    kinds = data.dtype.kind + wanted.kind  # lossless, a float rounded, an integer as a float
    if not (np.can_cast(data.dtype, wanted, "safe") or kinds == "ff" or kinds in ("bf", "if",
                                                                                   "uf")):
        raise OutputError(f"{where} batch {batch.batch_id}: got {data.dtype} values, expected "
                          f"{wanted} (as the first rows had)")
    return data.astype(wanted)


def fill_columns(fields: list[Field], rows: int) -> dict[str, np.ndarray]:
    """Output rows of a batch that failed for good: documented fill values, status 1.

    Floats are NaN, signed integers -1, unsigned integers their maximum, booleans
    False, strings empty.
    """
    import numpy as np

    columns = {}
    for field in fields:
        dtype = np.dtype(field.dtype)
        if dtype.kind == "f":
            value: object = np.nan
        elif dtype.kind == "i":
            value = -1
        elif dtype.kind == "u":
            value = np.iinfo(dtype).max
        elif dtype.kind in "SU":
            value = b"" if dtype.kind == "S" else ""
        else:
            value = 0
        columns[field.name] = np.full((rows, *field.shape), value, dtype=dtype)
    columns[ROW_STATUS.name] = np.ones(rows, dtype=np.uint8)
    return columns


class Reader(Protocol):
    """Reads the model inputs and carried columns of one batch from storage.

    The model input arrays may be reused by the next read (HDF5 reads into
    one buffer per input: fresh 4 MiB arrays cost more in page faults than the
    read itself); carried columns are the caller's to keep.
    """

    def read(self, batch: Batch) -> tuple[dict[str, np.ndarray], Columns]: ...

    def close(self) -> None: ...


class Ranks(Protocol):
    """What finishing an output needs of the world of ranks (rank.world.World has it)."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def barrier(self) -> None: ...


class Writer(Protocol):
    """Writes batches' output rows at their place; every rank finishes it together.

    ``write`` need not reach storage; ``sync`` makes every batch written so far
    durable (only then may the journal record them), so one flush covers many
    batches.
    """

    def write(self, batch: Batch, columns: Columns) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...

    def finish(self, ranks: Ranks, complete: bool) -> None: ...

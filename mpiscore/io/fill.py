"""The output rows of batches that failed for good: fill values, and row_status 1.

A job that finishes within its error budget still gives every input row its
output row, so the output lines up with its input; the rows of failed batches
say so in ``row_status`` (fields.ROW_STATUS), and keep the carried columns
where those can still be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import MpiscoreError
from .fields import Field, Writer, fill_columns
from .registry import open_reader

if TYPE_CHECKING:
    from ..plan import Batch
    from .registry import InputSource


def write_fills(writer: Writer, source: InputSource, batches: Sequence[Batch],
                outputs: Sequence[Field], kept: Sequence[Field]) -> None:
    """Write ``batches`` as failed: fill values for ``outputs``, ``kept`` columns read
    from ``source`` (or filled, if they cannot be read); then sync them."""
    reader = open_reader(source)
    try:
        for batch in batches:
            columns: dict[str, Any] = fill_columns(list(outputs), batch.rows)
            try:
                columns.update(reader.read(batch)[1])
            except MpiscoreError:
                columns.update(fill_columns(list(kept), batch.rows))
            writer.write(batch, columns)
        writer.sync()
    finally:
        reader.close()

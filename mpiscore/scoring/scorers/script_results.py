"""What an entry script's run() is given and what it returns, converted: mini-batches by
``--batch-format``, and results as output columns (rows) or as lines (append_row).

Pure functions of the data; script.py holds the schema a job's results keep.
"""

from __future__ import annotations

import csv
import importlib
import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ...errors import ConfigError, ScoringError

PANDAS_MISSING = "--batch-format pandas needs pandas: pip install 'mpiscore[scripts]'"


def pandas_module() -> Any:
    try:
        return importlib.import_module("pandas")
    except ImportError as exc:
        raise ConfigError(PANDAS_MISSING) from exc


def tabular_batch(feeds: Mapping[str, object], batch_format: str) -> object:
    """Arrow columns (Parquet) as ``--batch-format`` asks: DataFrame, dict or Table."""
    import pyarrow as pa

    if batch_format == "pandas":
        pandas_module()
    table = pa.table(dict(feeds))
    if batch_format == "arrow":
        return table
    if batch_format == "numpy":
        return {name: table.column(name).to_numpy() for name in table.column_names}
    return table.to_pandas()


def result_kind(result: object) -> str:
    """"frame", "series", "table" or "" for other results. pandas and pyarrow are looked
    at only for a result of one of their types (or a subclass), and then imported, not
    taken from ``sys.modules``: the writer thread may be importing one of them right now,
    and an import waits until the module is whole, where ``sys.modules`` holds it half
    made."""
    packages = {cls.__module__.partition(".")[0] for cls in type(result).__mro__}
    if "pandas" in packages:
        pandas = importlib.import_module("pandas")
        if isinstance(result, pandas.DataFrame):
            return "frame"
        if isinstance(result, pandas.Series):
            return "series"
    if "pyarrow" in packages:
        pyarrow = importlib.import_module("pyarrow")
        if isinstance(result, pyarrow.Table):
            return "table"
    return ""


def result_columns(result: Any, script: str) -> dict[str, object]:
    """Named columns of a rows result: an array or list is one column, ``result``."""
    kind = result_kind(result)
    if kind == "frame":
        names = [str(name) for name in result.columns]
        if not names or len(set(names)) < len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ScoringError(f"{script}: run() returned a DataFrame with "
                               + (f"more than one column named {', '.join(twice)}" if twice
                                  else "no columns") + "; return one named column per output")
        return {name: _values(result.iloc[:, index], name, script)
                for index, name in enumerate(names)}
    if kind == "series":
        name = "result" if result.name is None else str(result.name)
        return {name: _values(result, name, script)}
    if kind == "table":
        return {name: result.column(name).to_numpy() for name in result.column_names}
    if isinstance(result, dict):
        return {str(key): value for key, value in result.items()}
    if isinstance(result, np.ndarray | list | tuple):
        return {"result": result}
    raise ScoringError(f"{script}: run() returned a {type(result).__name__}; return one result "
                       "per item (a list, array, dict of arrays or DataFrame)")


def _values(series: Any, name: str, script: str) -> object:
    """A pandas column's values. A nullable integer or boolean column (``Int64``) with
    missing values would become float64 with NaN, rounding integers beyond 2**53:
    refused, naming the column and its first missing row."""
    dtype = series.dtype
    if getattr(dtype, "kind", "") in "iub" and not isinstance(dtype, np.dtype) \
            and series.hasnans:
        first = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise ScoringError(f"{script}: run() returned column {name!r} ({dtype}) with missing "
                           f"values (first at row {first}); output columns hold no missing "
                           "values: fill them, or return floats")
    return series.to_numpy()


def result_rows(result: Any, script: str, items: int
                 ) -> tuple[list[str] | None, list[object]]:
    """A lines result as (column names or None, elements); a table's rows, and an N-D
    array's, are :class:`Row` tuples of their values."""
    kind = result_kind(result)
    if kind == "frame":
        names = [str(name) for name in result.columns]
        return names, [Row(row) for row in result.itertuples(index=False, name=None)]
    if kind == "table":
        data = [result.column(n).to_pylist() for n in result.column_names]
        return list(result.column_names), [Row(row) for row in zip(*data, strict=True)]
    if isinstance(result, dict):
        data = [list(value) for value in result.values()]
        if len({len(column) for column in data}) > 1:
            raise ScoringError(f"{script}: run() returned a dict of columns of lengths "
                               f"{', '.join(str(len(c)) for c in data)}; they must be equal")
        return [str(key) for key in result], [Row(row) for row in zip(*data, strict=True)]
    if kind == "series":
        return None, list(result.tolist())
    if isinstance(result, np.ndarray) and result.ndim > 1:
        return None, [Row(row.reshape(-1).tolist()) for row in result]
    if isinstance(result, np.ndarray | list | tuple):
        return None, list(result)
    if result is None:
        raise ScoringError(f"{script}: run() returned None for {items} items; return one "
                           "result per item (a list, array or DataFrame)")
    raise ScoringError(f"{script}: run() returned a {type(result).__name__}; append_row takes "
                       "a list, array or DataFrame with one element per item")


class Row(tuple[object, ...]):
    """The values of one row of a tabular result (an element of a list is not one)."""


def csv_lines(rows: Iterable[object]) -> list[str]:
    """Each row as one CSV record (quoted as the csv module does), without its newline."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    lines = []
    for row in rows:
        writer.writerow(row if isinstance(row, Row) else (row,))
        lines.append(buffer.getvalue()[:-1])
        buffer.seek(0)
        buffer.truncate()
    return lines


def fits_integers(array: np.ndarray, dtype: np.dtype[Any]) -> bool:
    """Whether integers cast to a narrower integer type keep their values."""
    if dtype.kind not in "iu" or array.dtype.kind not in "iu" or array.size == 0 or \
            np.can_cast(array.dtype, dtype, "safe"):
        return True
    info = np.iinfo(dtype)
    return bool(info.min <= array.min() and array.max() <= info.max)

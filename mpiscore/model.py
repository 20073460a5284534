"""What a model expects, and how input data is fitted to it.

Binding happens once on rank 0 before scoring starts, so a model that does
not fit the data fails with one clear line instead of on every batch:
inputs are matched by name, ranks and fixed dimensions are checked, dtypes
are cast only as ``--cast`` allows (lossless by default), and flat Parquet
vectors may be reshaped to a model's fixed per-row shape.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import CastPolicy
from .errors import ConfigError, ModelError
from .io.fields import Field, cut, nearest_first

if TYPE_CHECKING:  # numpy only where data is bound (a scoring process): ranks hold bindings
    import numpy as np

RESERVED = "row_status"  # io.fields.ROW_STATUS, written beside every output

ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


def read_model(path: Path, kind: str = "onnx") -> bytes:
    """The model's (or, ``kind`` "script", the entry script's) bytes: rank 0 reads them
    once and broadcasts them, so there is no start-up storm of every rank reading one
    file."""
    what = "entry script" if kind == "script" else "model"
    if path.is_dir():
        raise ModelError(f"{path}: a directory, not the {what}; name the {what}'s file "
                         f"({path / ('score.py' if kind == 'script' else 'model.onnx')}, say)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc


def model_digest(model_bytes: bytes) -> str:
    """The model's SHA-256, recorded in the output and checked on --resume."""
    return hashlib.sha256(model_bytes).hexdigest()


def data_digests(files: Mapping[str, Path]) -> dict[str, str]:
    """The SHA-256 of each file beside the model that its scores depend on (its external
    data), by name: checked on --resume as the model's own digest is. Read in pieces,
    as such files run to many GB."""
    digests = {}
    for name, path in files.items():
        try:
            with open(path, "rb") as handle:
                digests[name] = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            raise ModelError(f"{path}: cannot read the model's external data: "
                             f"{exc.strerror or exc}") from exc
    return digests


DataStamp = tuple[str, int, int, int]  # an external data file: path, bytes, mtime_ns, inode


def data_stamps(files: Mapping[str, Path]) -> tuple[DataStamp, ...]:
    """Each external data file's size, modification time and inode, in name order: what
    every scoring process checks the files it loaded against, cheaply (digesting many GB
    in each process would cost as much as loading them)."""
    stamps = []
    for _, path in sorted(files.items()):
        try:
            info = os.stat(path)
        except OSError as exc:
            raise ModelError(f"{path}: cannot stat the model's external data: "
                             f"{exc.strerror or exc}") from exc
        stamps.append((str(path), info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(stamps)


def check_same_data(model: str, loaded: tuple[DataStamp, ...],
                    checked: tuple[DataStamp, ...], when: str) -> None:
    """Refuse a session whose external data are not the files the job digested: a
    checkpoint written in place while the job starts would otherwise have some
    processes score with the old weights and some with the new, under one provenance."""
    for (path, *got), (_, *want) in zip(loaded, checked, strict=True):
        if got != want:
            raise ModelError(f"{path}: the external data of {model} changed {when} (its "
                             "size, modification time or inode differs); score again with "
                             "--overwrite once the files stay in place")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, NumPy dtype, shape (None for symbolic dimensions)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model insists on, if its first dimension is a number."""
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None


def tensor_spec(node: object, model: str) -> TensorSpec:
    """Describe an ONNX Runtime ``NodeArg``; non-tensor types cannot be scored in bulk."""
    name, ort_type, shape = node.name, node.type, node.shape  # type: ignore[attr-defined]
    if ort_type not in ORT_TYPES:
        raise ModelError(f"{model}: input {name!r} has type {ort_type}; mpiscore feeds "
                         "numeric tensor inputs only")
    dims = tuple(d if isinstance(d, int) and d > 0 else None for d in (shape or ()))
    return TensorSpec(name, ORT_TYPES[ort_type], dims)


@dataclass(frozen=True)
class InputBinding:
    """How one batch array becomes one model input: dtype and per-row shape."""

    name: str
    dtype: str
    row_shape: tuple[int, ...]


def bind_inputs(model: str, inputs: list[TensorSpec], fields: dict[str, Field],
                cast: CastPolicy) -> tuple[InputBinding, ...]:
    """Check every model input against its data field; say exactly what does not fit."""
    missing = [spec.name for spec in inputs if spec.name not in fields]
    extra = sorted(set(fields) - {spec.name for spec in inputs})
    if missing or extra:
        raise ModelError(
            f"{model}: model inputs {', '.join(s.name for s in inputs)} vs data for "
            f"{', '.join(fields)}: missing {', '.join(missing) or 'none'}, unknown "
            f"{', '.join(extra) or 'none'}; "
            "map each input with --map NAME=SOURCE")
    return tuple(_bind(model, spec, fields[spec.name], cast) for spec in inputs)


def _bind(model: str, spec: TensorSpec, field: Field, cast: CastPolicy) -> InputBinding:
    where = f"{field.where} -> {model} input {spec.name!r}"
    if len({dtype for _, dtype in field.column_dtypes}) > 1:
        _check_columns(where, spec.dtype, field.column_dtypes, cast)
    else:
        _check_cast(where, field.dtype, spec.dtype, cast)
    return InputBinding(spec.name, spec.dtype, _row_shape(where, spec, field))


def _can_cast(data: np.dtype, wanted: np.dtype, cast: CastPolicy) -> bool:
    """NumPy's rule, except that ``safe`` means lossless: NumPy calls int64 to float64
    safe, yet integers beyond 2**53 round in it."""
    import numpy as np

    if cast == "safe" and data.kind in "iu" and wanted.kind == "f":
        bits = data.itemsize * 8 - (data.kind == "i")
        if bits > np.finfo(wanted).nmant + 1:
            return False
    return bool(np.can_cast(data, wanted, casting=cast))


def _check_cast(where: str, dtype: str, wanted_dtype: str, cast: CastPolicy) -> None:
    """Data of one dtype (a dataset, a list column, columns all alike)."""
    import numpy as np

    data, wanted = np.dtype(dtype), np.dtype(wanted_dtype)
    if not _can_cast(data, wanted, cast):
        raise ModelError(f"{where}: cannot cast {data} to {wanted} under --cast {cast}: the "
                         f"data is {data}, the model input {wanted}; "
                         f"{_advice(data, wanted, 'it', str(data))}")


def _check_columns(where: str, wanted_dtype: str, columns: tuple[tuple[str, str], ...],
                   cast: CastPolicy) -> None:
    """Stacked columns of several dtypes, each judged by its own: their promotion is
    float64 for an int64 ``id`` among float32 features, which used to advise rounding.

    Under ``--cast safe`` an integer or boolean column among float columns is refused
    even where NumPy calls the cast safe (int64 to float64, bool to float32): the mix is
    how an ``id`` or ``label`` column in a feature list looks. ``--cast same_kind`` (or
    ``unsafe``) says its values are meant, and each column is then cast as if alone."""
    import numpy as np

    wanted = np.dtype(wanted_dtype)
    own = [(column, np.dtype(dtype)) for column, dtype in columns]
    floats = [d for _, d in own if d.kind == "f"]
    strays = [(c, d) for c, d in own if d.kind in "biu"] \
        if wanted.kind == "f" and floats and cast == "safe" else []
    if strays:
        raise ModelError(_refusal(where, strays, wanted, cast, f"{_column_list(strays)} "
                                  f"among {_dtypes(floats)} columns", "among float columns "
                                  f"{'they are' if len(strays) > 1 else 'it is'} usually the "
                                  "wrong column: "))
    lossy = sorted([(c, d) for c, d in own if not _can_cast(d, wanted, cast)],
                   key=lambda item: item[1].kind == wanted.kind)  # another kind first
    if lossy:
        first = [(c, d) for c, d in lossy if d == lossy[0][1]]
        others = [d for _, d in own if d != lossy[0][1]]
        raise ModelError(_refusal(where, first, wanted, cast, f"{_column_list(first)} "
                                  f"(the others {_dtypes(others)})"))


def _refusal(where: str, refused: list[tuple[str, np.dtype]], wanted: np.dtype,
             cast: CastPolicy, what: str, why: str = "") -> str:
    data, names = refused[0][1], [c for c, _ in refused]
    advice = _advice(data, wanted, "them" if len(names) > 1 else "it", cut(names))
    return (f"{where}: cannot cast {data} to {wanted} under --cast {cast}: {what}, the model "
            f"input {wanted}; {why}{advice}")


def _dtypes(dtypes: list[np.dtype]) -> str:
    return "/".join(sorted({str(d) for d in dtypes}))


def _column_list(columns: list[tuple[str, np.dtype]]) -> str:
    """``column id is int64``, ``columns a, b are int64``, ``columns id (int64), flag (bool)
    are``: what the message says of the columns it refuses."""
    names = [c for c, _ in columns]
    dtypes = {str(d) for _, d in columns}
    if len(dtypes) == 1:
        verb = "is" if len(names) == 1 else "are"
        return f"column{'s' * (len(names) > 1)} {cut(names)} {verb} {dtypes.pop()}"
    return f"columns {cut([f'{c} ({d})' for c, d in columns])} are"


def _advice(data: np.dtype, wanted: np.dtype, it: str, values: str) -> str:
    """--cast same_kind is the fix only for a loss of precision (float64 data, float32
    model); another kind of number usually means the wrong data feeds the input
    (an int64 id column stacked with float features), which a cast would hide."""
    import numpy as np

    if data.kind == wanted.kind == "f":
        return f"pass --cast same_kind to round {it} to {wanted}"
    needed = "same_kind" if np.can_cast(data, wanted, casting="same_kind") else "unsafe"
    return (f"check which data feeds this input (--columns, --map) and pass --cast {needed} "
            f"only if {values} values are meant for it")


def _row_shape(where: str, spec: TensorSpec, field: Field) -> tuple[int, ...]:
    wanted = spec.shape[1:]
    fits = len(wanted) == len(field.shape) and all(
        w is None or w == d for w, d in zip(wanted, field.shape, strict=True))
    if fits:
        return field.shape
    fixed = all(w is not None for w in wanted)
    if field.flat and fixed and math.prod(wanted) == math.prod(field.shape):  # type: ignore[arg-type]
        return tuple(wanted)  # type: ignore[arg-type]
    shown = tuple("N" if w is None else w for w in spec.shape)
    raise ModelError(f"{where}: data rows have shape {field.shape} ({len(field.shape) + 1}-D "
                     f"with the batch), model wants {shown} ({len(shown)}-D)")


@dataclass(frozen=True)
class Column:
    """Where one output column comes from: an ONNX output, and the class for one
    class's probabilities of a sequence of maps (None for a whole output)."""

    output: str
    label: str | None = None


def output_fields(outputs: dict[str, np.ndarray], rename: dict[str, str],
                  rows: int, model: str, columns: Mapping[str, Column] | None = None,
                  label_width: int = 0) -> list[Field]:
    """Output fields from a probe run: per-row shape and dtype of each output column.

    ``columns`` names the ONNX output (and class) behind each column (the
    scorer's ``columns``; by default each column is an output of its own name).
    Strings become fixed-length UTF-8 (``|S<width>``) as wide as the longest
    probe value or ``label_width`` (the model's longest class label), so that
    HDF5 can hold them in fixed-size rows.
    """
    columns = columns or {key: Column(key) for key in outputs}
    fields = []
    for key, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise ModelError(f"{model}: output {key!r} has shape {array.shape} for {rows} "
                             "input rows; mpiscore needs one output row per input row")
        dtype = _string_dtype(array, label_width) if array.dtype.kind in "OU" else array.dtype.str
        column = columns[key]
        where = f"output {column.output!r}" + ("" if column.label is None
                                                else f" class {column.label!r}")
        fields.append(Field(column_name(column, rename), dtype, array.shape[1:], where))
    sources = {column.output for column in columns.values()}
    unknown = sorted(set(rename) - sources)
    if unknown:
        known = list(dict.fromkeys(c.output for c in columns.values()))
        raise ModelError(f"{model}: --rename {', '.join(unknown)}: not an output of the model; "
                         f"its outputs: {nearest_first(unknown[0], known)}")
    names = [f.name for f in fields]
    clashes = sorted({n for n in names if names.count(n) > 1} | ({RESERVED} & set(names)))
    if clashes:
        makers = "; ".join(f"{n} by {', '.join(f.where for f in fields if f.name == n)}"
                           for n in clashes)
        raise ConfigError(f"output name {', '.join(clashes)} is taken ({makers}; names must "
                          f"differ, and {RESERVED} is mpiscore's own); choose another with "
                          "--rename OUTPUT=NAME")
    return fields


def column_name(column: Column, rename: dict[str, str]) -> str:
    """The written name of a column: its output's name (``--rename`` applies to the ONNX
    output), then ``_<class>`` for one class of a map output; '/' (HDF5's group
    separator) becomes '_' in the names mpiscore makes."""
    base = rename.get(column.output, column.output.replace("/", "_"))
    return base if column.label is None else f"{base}_{column.label.replace('/', '_')}"


def _string_dtype(array: np.ndarray, label_width: int) -> str:
    longest = max((len(str(value).encode()) for value in array.reshape(-1)), default=0)
    return f"|S{max(longest, label_width, 1)}"

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, ModelError
from .io.fields import Field

RESERVED = "row_status"  # io.fields.ROW_STATUS, written beside every output

ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


def read_model(path: Path) -> bytes:
    """The model file's bytes (rank 0 reads them once and broadcasts them: no start-up
    storm of every rank reading one file)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model: {exc.strerror or exc}") from exc


def model_digest(model_bytes: bytes) -> str:
    """The model's SHA-256, recorded in the output and checked on --resume."""
    return hashlib.sha256(model_bytes).hexdigest()


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
        raise ModelError(f"{model}: {name!r} has type {ort_type}; mpiscore handles numeric "
                         "tensors only (export classifiers without ZipMap, e.g. zipmap=False)")
    dims = tuple(d if isinstance(d, int) and d > 0 else None for d in (shape or ()))
    return TensorSpec(name, ORT_TYPES[ort_type], dims)


@dataclass(frozen=True)
class InputBinding:
    """How one batch array becomes one model input: dtype and per-row shape."""

    name: str
    dtype: str
    row_shape: tuple[int, ...]


def bind_inputs(model: str, inputs: list[TensorSpec], fields: dict[str, Field],
                cast: str) -> tuple[InputBinding, ...]:
    """Check every model input against its data field; say exactly what does not fit."""
    missing = [spec.name for spec in inputs if spec.name not in fields]
    extra = sorted(set(fields) - {spec.name for spec in inputs})
    if missing or extra:
        raise ModelError(
            f"{model}: model inputs {', '.join(s.name for s in inputs)} vs data for "
            f"{', '.join(fields)}: missing {missing or 'none'}, unknown {extra or 'none'}; "
            "map each input with --map NAME=SOURCE")
    return tuple(_bind(model, spec, fields[spec.name], cast) for spec in inputs)


def _bind(model: str, spec: TensorSpec, field: Field, cast: str) -> InputBinding:
    where = f"{field.where} -> {model} input {spec.name!r}"
    if not np.can_cast(np.dtype(field.dtype), np.dtype(spec.dtype), casting=cast):
        raise ModelError(
            f"{where}: cannot cast {np.dtype(field.dtype)} to {spec.dtype} under --cast {cast}"
            "; pass --cast same_kind to allow precision loss")
    return InputBinding(spec.name, spec.dtype, _row_shape(where, spec, field))


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
    raise ModelError(f"{where}: data rows have shape {field.shape} (rank {len(field.shape) + 1} "
                     f"with the batch), model wants {shown}")


def output_fields(outputs: dict[str, np.ndarray], rename: dict[str, str],
                  rows: int, model: str) -> list[Field]:
    """Output fields from a probe run: per-row shape and dtype of each model output."""
    fields = []
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise ModelError(f"{model}: output {name!r} has shape {array.shape} for {rows} "
                             "input rows; mpiscore needs one output row per input row")
        target = rename.get(name, name.replace("/", "_"))
        fields.append(Field(target, array.dtype.str, array.shape[1:], f"output {name!r}"))
    unknown = sorted(set(rename) - set(outputs))
    if unknown:
        raise ModelError(f"{model}: --rename names unknown outputs {unknown}; "
                         f"outputs are {list(outputs)}")
    names = [f.name for f in fields]
    clashes = sorted({n for n in names if names.count(n) > 1} | ({RESERVED} & set(names)))
    if clashes:
        raise ConfigError(f"output name {', '.join(clashes)} is taken (by another output, or "
                          f"reserved for mpiscore's {RESERVED}); choose another with --rename")
    return fields

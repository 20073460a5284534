"""``mpiscore inspect PATH``: what a model, an HDF5 file or a Parquet dataset holds.

Runs in no rank and imports no MPI: onnxruntime, h5py and pyarrow are imported
only for the kind of file asked about, so it answers in a fraction of a second.
Every description is plain data (:func:`inspect_path`), printed as text
(:func:`describe`) or JSON by the command.
"""

from __future__ import annotations

import glob
import mmap
import os
from pathlib import Path
from typing import Any

from .errors import InputError
from .io.sources import HDF5_SUFFIXES, PARQUET_SUFFIXES, dataset_files
from .report import size_text

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PARQUET_MAGIC = b"PAR1"


def inspect_path(path: str) -> dict[str, Any]:
    """Describe ``path``: an .onnx model, an HDF5 file, or Parquet files (a file, a
    dataset directory or a glob). Raises InputError for a missing or unreadable one."""
    kind = _kind(path)
    return {"model": inspect_model, "hdf5": inspect_hdf5, "parquet": inspect_parquet}[kind](path)


def _kind(path: str) -> str:
    if glob.has_magic(path) or os.path.isdir(path):
        return "parquet"
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "model"
    if suffix in HDF5_SUFFIXES or head == HDF5_SIGNATURE:
        return "hdf5"
    if suffix in PARQUET_SUFFIXES or head[:4] == PARQUET_MAGIC:
        return "parquet"
    raise InputError(f"{path}: not an .onnx model, an HDF5 file or Parquet (by its suffix "
                     "and first bytes)")


def inspect_model(path: str) -> dict[str, Any]:
    """Inputs, outputs, opsets, producer and size of an ONNX model, the execution
    providers this onnxruntime offers, and which of those cannot load here."""
    import onnxruntime as ort

    from .scoring.scorers.providers import library_problems

    header = _model_header(path)
    data = _external_data(path)  # first: a missing weights file is named, with what to do
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes, all Exceptions
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable ONNX model: {first}") from exc
    return {"kind": "model", "path": path, "size_bytes": os.path.getsize(path), **header,
            "external_data": data,
            "inputs": [_node(n) for n in session.get_inputs()],
            "outputs": [_node(n) for n in session.get_outputs()],
            "execution_providers": ort.get_available_providers(),
            "providers_not_loading": library_problems(ort.get_available_providers()),
            "onnxruntime_version": ort.__version__}


def _external_data(path: str) -> list[dict[str, Any]]:
    """The files beside the model holding its weights (a model over 2 GB has them): the
    .onnx alone is then a small part of what every scoring process loads."""
    from .scoring.scorers.onnx_data import external_data

    with open(path, "rb") as handle:
        files = external_data(handle.read(), path)
    return [{"location": location, "size_bytes": file.stat().st_size}
            for location, file in sorted(files.items())]


def _node(node: Any) -> dict[str, Any]:
    from .model import ORT_TYPES

    entry: dict[str, Any] = {"name": node.name, "type": node.type}
    if node.type.startswith("tensor("):
        entry["dtype"] = ORT_TYPES.get(node.type, node.type[7:-1])
        entry["shape"] = [d if isinstance(d, (int, str)) else None for d in node.shape or ()]
    return entry


def _model_header(path: str) -> dict[str, Any]:
    """ModelProto's top-level fields (producer, versions, opsets), read from the
    protobuf without the onnx package and without reading the graph."""
    header: dict[str, Any] = {"producer": "", "producer_version": "", "ir_version": None,
                              "model_version": None, "opset": {}}
    try:
        with open(path, "rb") as handle, \
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for number, value in _fields(data, 0, len(data)):
                if number == 1:
                    header["ir_version"] = value
                elif number in (2, 3):
                    header["producer" if number == 2 else "producer_version"] = \
                        bytes(data[value[0]:value[1]]).decode(errors="replace")
                elif number == 5:
                    header["model_version"] = value
                elif number == 8:
                    opset = dict(_fields(data, *value))
                    domain = opset.get(1)
                    name = bytes(data[domain[0]:domain[1]]).decode() if domain else ""
                    header["opset"][name or "ai.onnx"] = opset.get(2)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, IndexError) as exc:  # empty, or not a protobuf
        raise InputError(f"{path}: not a readable ONNX model: {exc or 'empty file'}") from None
    return header


def _fields(data: Any, start: int, stop: int) -> Any:
    """(field number, value) of a protobuf message: varints as ints, length-delimited
    fields as (start, stop) offsets; other wire types are skipped."""
    at = start
    while at < stop:
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, value
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > stop:
                raise ValueError("truncated protobuf")
            yield number, (at, at + length)
            at += length
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"not a protobuf (wire type {wire})")


def _varint(data: Any, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("not a protobuf (bad varint)")


def inspect_hdf5(path: str) -> dict[str, Any]:
    """Every dataset of an HDF5 file: path, shape, dtype, chunks, compression."""
    import h5py

    datasets: list[dict[str, Any]] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            datasets.append({"path": "/" + name, "shape": list(item.shape),
                             "dtype": str(item.dtype),
                             "chunks": None if item.chunks is None else list(item.chunks),
                             "compression": item.compression,
                             "compression_opts": item.compression_opts})

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
            attrs = {key: _plain(value) for key, value in handle.attrs.items()}
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file: {exc}") from None
    return {"kind": "hdf5", "path": path, "size_bytes": os.path.getsize(path),
            "datasets": datasets, "attrs": attrs}


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON can hold it."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value.tolist() if hasattr(value, "tolist") else value


def inspect_parquet(path: str) -> dict[str, Any]:
    """Schema, rows, row groups and files of Parquet files (a file, a dataset directory
    whose ``_``/``.`` entries are skipped as pyarrow does, or a glob)."""
    import pyarrow.parquet as pq

    files = _parquet_files(path)
    schema, rows, groups, described, differ = None, 0, 0, [], []
    for name in files:
        try:
            meta = pq.read_metadata(name)
            file_schema = meta.schema.to_arrow_schema()
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"{name}: not a readable Parquet file: {exc}") from None
        if schema is None:
            schema = file_schema
        elif not file_schema.equals(schema, check_metadata=False):
            differ.append(name)
        rows += meta.num_rows
        groups += meta.num_row_groups
        described.append({"path": name, "rows": meta.num_rows,
                          "row_groups": meta.num_row_groups,
                          "size_bytes": os.path.getsize(name)})
    assert schema is not None
    return {"kind": "parquet", "path": path,
            "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
            "rows": rows, "row_groups": groups, "files": described,
            "schema_differs_in": differ}


def _parquet_files(path: str) -> list[str]:
    paths = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]
    files: list[str] = []
    for entry in paths:
        if os.path.isdir(entry):
            files += dataset_files(entry, PARQUET_SUFFIXES)
        elif os.path.isfile(entry):
            files.append(entry)
        else:
            raise InputError(f"{entry}: no such file or directory")
    if not files:
        raise InputError(f"{path}: holds no .parquet files" if os.path.isdir(path)
                         else f"{path}: matches no files")
    return files


def describe(info: dict[str, Any]) -> str:
    """The description as text for people."""
    return {"model": _describe_model, "hdf5": _describe_hdf5,
            "parquet": _describe_parquet}[info["kind"]](info)


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def _shape(shape: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _describe_model(info: dict[str, Any]) -> str:
    producer = " ".join(filter(None, [info["producer"], info["producer_version"]])) or "unknown"
    opsets = ", ".join(f"{domain} {version}" for domain, version in info["opset"].items())
    data = info["external_data"]
    beside = (f"; external data {size_text(sum(f['size_bytes'] for f in data))} in "
              + ", ".join(f["location"] for f in data)) if data else ""
    lines = [f"model {info['path']} ({size_text(info['size_bytes'])}{beside})",
             f"  producer: {producer}; IR version {info['ir_version']}; opsets: {opsets or 'none'}"]
    for what in ("inputs", "outputs"):
        lines.append(f"{what}:")
        lines += _table([[n["name"], n["type"], n.get("dtype", ""),
                          _shape(n["shape"]) if "shape" in n else ""] for n in info[what]])
    lines.append(f"execution providers (onnxruntime {info['onnxruntime_version']}): "
                 + ", ".join(info["execution_providers"]))
    lines += [f"  {provider} cannot start here: {why}"
              for provider, why in info["providers_not_loading"].items()]
    return "\n".join(lines)


def _describe_hdf5(info: dict[str, Any]) -> str:
    lines = [f"HDF5 {info['path']} ({size_text(info['size_bytes'])}): "
             f"{len(info['datasets'])} dataset{'s' * (len(info['datasets']) != 1)}"]
    lines += _table([["dataset", "shape", "dtype", "chunks", "compression"]] + [
        [d["path"], _shape(d["shape"]), d["dtype"],
         "contiguous" if d["chunks"] is None else _shape(d["chunks"]),
         (f"{d['compression']} ({d['compression_opts']})" if d["compression_opts"] is not None
          else d["compression"]) if d["compression"] else "none"]
        for d in info["datasets"]])
    return "\n".join(lines)


def _describe_parquet(info: dict[str, Any]) -> str:
    files = info["files"]
    lines = [f"Parquet {info['path']}: {info['rows']:,} rows, {info['row_groups']:,} row "
             f"group{'s' * (info['row_groups'] != 1)}, {len(files):,} file"
             f"{'s' * (len(files) != 1)} ({size_text(sum(f['size_bytes'] for f in files))})",
             "columns:"]
    lines += _table([[c["name"], c["type"]] for c in info["schema"]])
    if len(files) > 1:
        shown = files[:5]
        lines.append("files:")
        lines += _table([[f["path"], f"{f['rows']:,} rows", f"{f['row_groups']} row groups"]
                         for f in shown])
        if len(files) > len(shown):
            lines.append(f"  ... and {len(files) - len(shown):,} more")
    if info["schema_differs_in"]:
        differ = info["schema_differs_in"]
        lines.append(f"schema differs from the first file's in {len(differ)} file(s): "
                     + ", ".join(differ[:3]) + (" ..." if len(differ) > 3 else ""))
    return "\n".join(lines)

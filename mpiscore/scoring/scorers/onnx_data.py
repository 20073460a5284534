"""An ONNX model's external data: the files beside the ``.onnx`` holding its tensors.

Models over protobuf's 2 GB limit must be saved so (``onnx.save_model(...,
save_as_external_data=True)``); each such tensor names its file by a location
relative to the model's folder. mpiscore opens sessions from the model's bytes,
which tell onnxruntime nothing of that folder, so the scorer says where it is
(onnx.py); the files are found here, from the protobuf, so that a missing one
stops the job in one line naming it, and that the job's fingerprint can digest
them (prepare.py). No onnxruntime here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ...errors import ModelError
from .protobuf import fields, message

EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def model_folder(model: str) -> Path:
    """The folder the model's external data locations are relative to: its own."""
    return Path(os.path.abspath(model)).parent


def external_data(model_bytes: bytes, model: str) -> dict[str, Path]:
    """The files of the model at path ``model`` that hold its external data, by the
    location the model names them; raises ModelError naming a missing one."""
    folder = model_folder(model)
    files = {}
    for location, tensor in external_locations(model_bytes).items():
        path = folder / location
        if not path.is_file():
            raise ModelError(f"{model}: external data file {path} not found (the model keeps "
                             f"tensor {tensor!r} in {location!r}, relative to its folder); "
                             "put the file back beside the model")
        files[location] = path
    return files


def external_locations(model_bytes: bytes) -> dict[str, str]:
    """Each external data location the model's tensors name, with the first tensor kept
    there, in the model's order; none for a model the walk cannot read (onnxruntime
    then says what is wrong with it)."""
    try:
        graph = message(memoryview(model_bytes), 7)  # ModelProto.graph
        found: dict[str, str] = {}
        for tensor in _tensors(graph) if graph is not None else ():
            location, name = _location(tensor)
            if location:
                found.setdefault(location, name)
        return found
    except (ValueError, IndexError, UnicodeDecodeError):
        return {}


def _tensors(graph: memoryview) -> Iterator[memoryview]:
    """The TensorProtos of a graph and its subgraphs: initializers (GraphProto field 5),
    sparse ones (15), and those of node attributes (AttributeProto t = 5, tensors = 10,
    sparse_tensor = 22, sparse_tensors = 23), where onnx puts external data too."""
    for number, value in fields(graph):
        if number == 5 and isinstance(value, memoryview):
            yield value
        elif number == 15 and isinstance(value, memoryview):
            yield from _sparse(value)
    for attribute in _attributes(graph):
        for number, value in fields(attribute):
            if not isinstance(value, memoryview):
                continue
            if number in (5, 10):
                yield value
            elif number in (22, 23):
                yield from _sparse(value)
            elif number in (6, 11):  # g, graphs: an If's branches, a Loop's body
                yield from _tensors(value)


def _attributes(graph: memoryview) -> Iterator[memoryview]:
    """The AttributeProtos (NodeProto field 5) of a graph's nodes (GraphProto field 1)."""
    for number, node in fields(graph):
        if number == 1 and isinstance(node, memoryview):
            yield from (v for n, v in fields(node) if n == 5 and isinstance(v, memoryview))


def _sparse(tensor: memoryview) -> Iterator[memoryview]:
    """A SparseTensorProto's values (field 1) and indices (2), each a TensorProto."""
    yield from (v for n, v in fields(tensor) if n in (1, 2) and isinstance(v, memoryview))


def _location(tensor: memoryview) -> tuple[str, str]:
    """(external data location or "", name) of a TensorProto: its data_location (field
    14) and external_data entries (13: key 1, value 2), its name (8)."""
    parts = list(fields(tensor))
    name = next((bytes(v).decode() for n, v in parts if n == 8 and isinstance(v, memoryview)),
                "")
    if not any(n == 14 and v == EXTERNAL for n, v in parts):
        return "", name
    for number, entry in parts:
        if number == 13 and isinstance(entry, memoryview):
            pair = {n: bytes(v).decode() for n, v in fields(entry) if isinstance(v, memoryview)}
            if pair.get(1) == "location":
                return pair.get(2, ""), name
    return "", name

"""Reading an ONNX model's protobuf without the ``onnx`` package (not a dependency):
the fields of a message, for the walks that find a model's labels, operator domains
and external data."""

from __future__ import annotations

from collections.abc import Iterator


def message(buffer: memoryview, number: int) -> memoryview | None:
    """The first length-delimited field ``number`` of a message (a sub-message), or None."""
    return next((v for n, v in fields(buffer) if n == number and isinstance(v, memoryview)),
                None)


def fields(buffer: memoryview) -> Iterator[tuple[int, memoryview | int]]:
    """(field number, value) of a protobuf message: bytes for length-delimited fields."""
    position, end = 0, len(buffer)
    while position < end:
        key, position = _varint(buffer, position)
        number, wire = key >> 3, key & 7
        value: memoryview | int = 0
        if wire == 0:
            value, position = _varint(buffer, position)
        elif wire == 2:
            size, position = _varint(buffer, position)
            value, position = buffer[position:position + size], position + size
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if position > end:
            raise ValueError("protobuf field runs past its message")
        yield number, value


def _varint(buffer: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return value, position

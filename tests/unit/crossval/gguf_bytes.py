"""GGUF files byte by byte, for the tests of bad headers that no writer would produce.

Independent of the parser under test and of gguf-py: each piece is packed with ``struct`` from
the format's description (a string is a uint64 length and its bytes; an array a uint32 element
type, a uint64 count and the elements; a tensor entry a name, a uint32 dimension count, uint64
dimensions, a uint32 type id and a uint64 offset).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

UINT32, FLOAT32, STRING, ARRAY, UINT64 = 4, 6, 8, 9, 10


def string(text: str | bytes, *, order: str = "<", length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(order + "Q", len(raw) if length is None else length) + raw


def key_value(key: str | bytes, value_type: int, payload: bytes, *, order: str = "<") -> bytes:
    return string(key, order=order) + struct.pack(order + "I", value_type) + payload


def uint32_key(key: str, value: int, *, order: str = "<") -> bytes:
    return key_value(key, UINT32, struct.pack(order + "I", value), order=order)


def string_key(key: str, value: str, *, order: str = "<") -> bytes:
    return key_value(key, STRING, string(value, order=order), order=order)


def tensor_entry(name: str, ne: tuple[int, ...], type_id: int, offset: int, *, order: str = "<") -> bytes:
    dims = struct.pack(order + f"{len(ne)}Q", *ne)
    return (
        string(name, order=order)
        + struct.pack(order + "I", len(ne))
        + dims
        + struct.pack(order + "IQ", type_id, offset)
    )


def gguf(
    keys: list[bytes],
    tensors: Sequence[bytes] = (),
    *,
    data: bytes = b"",
    version: int = 3,
    order: str = "<",
    n_keys: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
) -> bytes:
    """A whole file: header, keys, tensor entries, padding to ``alignment``, then ``data``."""
    head = b"GGUF" + struct.pack(
        order + "IQQ",
        version,
        len(tensors) if n_tensors is None else n_tensors,
        len(keys) if n_keys is None else n_keys,
    )
    body = head + b"".join(keys) + b"".join(tensors)
    return body + b"\0" * (-len(body) % alignment) + data


def small_model(*, order: str = "<") -> bytes:
    """A complete small file: a few keys of each kind and two F32 tensors (values 0..7, 8..11)."""
    keys = [
        string_key("general.architecture", "llama", order=order),
        uint32_key("llama.block_count", 1, order=order),
        key_value("test.floats", ARRAY, struct.pack(order + "IQ3f", FLOAT32, 3, 0.5, -1.25, 3.0), order=order),
        key_value(
            "test.strings",
            ARRAY,
            struct.pack(order + "IQ", STRING, 3) + b"".join(string(s, order=order) for s in ("a", "héllo", "")),
            order=order,
        ),
    ]
    tensors = [
        tensor_entry("a.weight", (4, 2), 0, 0, order=order),
        tensor_entry("b.weight", (4,), 0, 32, order=order),
    ]
    a = struct.pack(order + "8f", *range(8))
    b = struct.pack(order + "4f", *range(8, 12))
    return gguf(keys, tensors, data=a + b"\0" * (32 - len(a)) + b, order=order)

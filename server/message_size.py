r"""The bytes a Flower message puts on the wire, computed without hashing its objects.

Flower 1.41 ships a message as a tree of *inflatable objects* (message, record dict, records,
arrays, array chunks). Each is sent once per distinct content, as its deflated bytes

    ``<type> <child ids, comma-separated> <body length>\0<body>``

where a child id is the SHA-256 hex digest (64 characters) of the child's deflated bytes. A
message's size is the sum of the deflated sizes of its distinct objects:
``sum(len(o.deflate()) for o in get_all_nested_objects(message).values())``. Flower's own
path hashes every object to name it, in Python, object by object (for a model of a hundred
arrays, milliseconds per message). The size needs the ids' count, not their values: an
object's identity here is its content (its chunks' bytes, its type, shape and names), equal
contents being equal ids. Record bodies that are small (metrics, configs) and the message's
metadata are deflated by Flower itself; arrays, array records and record dicts are measured
from their parts. ``tests/server/test_message_size.py`` holds this to Flower's sum, object for
object, on generated messages.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Hashable, Iterable

from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.app.message import array as flower_array
from flwr.common.serde_utils import error_to_proto, metadata_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.supercore.constant import HEAD_BODY_DIVIDER, HEAD_VALUE_DIVIDER

OBJECT_ID_CHARS = 2 * hashlib.sha256().digest_size
"""Characters of an object id (a SHA-256 hex digest)."""
_PLACEHOLDER_ID = "0" * OBJECT_ID_CHARS


def message_bytes(message: Message) -> int:
    """Serialized size of ``message``: its content and metadata, as Flower sends them."""
    sizes: dict[Hashable, int] = {}
    children = 0
    if message.has_content():
        _record_dict(message.content, sizes)
        children = 1
    proto_metadata = metadata_to_proto(message.metadata)
    proto_metadata.message_id = ""  # as Message.deflate: the id is not part of the content
    body = ProtoMessage(metadata=proto_metadata, content=None,
                        error=error_to_proto(message.error) if message.has_error() else None
                        ).SerializeToString(deterministic=True)
    return sum(sizes.values()) + _deflated(type(message), children, len(body))


def _deflated(kind: type, children: int, body: int) -> int:
    """Length of an object of ``kind`` deflated with ``children`` distinct children."""
    ids = children * (OBJECT_ID_CHARS + 1) - 1 if children else 0  # comma-separated
    header = (f"{kind.__qualname__}{HEAD_VALUE_DIVIDER}{HEAD_VALUE_DIVIDER}{body}"
              .encode())
    return len(header) + ids + len(HEAD_BODY_DIVIDER) + body


def _record_dict(records: RecordDict, sizes: dict[Hashable, int]) -> Hashable:
    """Add ``records``' objects to ``sizes``; its identity."""
    return _references(records, tuple(
        (name, _array_record(record, sizes) if isinstance(record, ArrayRecord)
         else _leaf(record, sizes)) for name, record in records.items()), sizes)


def _leaf(record: object, sizes: dict[Hashable, int]) -> Hashable:
    """A record without children (metrics, configs): Flower deflates it; its bytes name it."""
    content = record.deflate()  # type: ignore[attr-defined]  # MetricRecord, ConfigRecord
    sizes[content] = len(content)
    return content


def _array_record(record: ArrayRecord, sizes: dict[Hashable, int]) -> Hashable:
    """Add an ``ArrayRecord``'s objects to ``sizes``; its identity."""
    return _references(record, tuple(
        (name, _array(array, sizes)) for name, array in record.items()), sizes)


def _references(container: object, parts: tuple[tuple[str, Hashable], ...],
                sizes: dict[Hashable, int]) -> Hashable:
    """Add a record dict or array record, whose body is JSON ``{name: child id}``; its identity.

    ``parts`` are its ``(name, child identity)`` pairs, in order.
    """
    key = (type(container), parts)
    if key not in sizes:
        sizes[key] = _deflated(type(container), len({part for _, part in parts}),
                               _references_length(name for name, _ in parts))
    return key


def _array(array: Array, sizes: dict[Hashable, int]) -> Hashable:
    """Add an ``Array`` and its chunks to ``sizes``; its identity.

    Flower cuts ``array.data`` into chunks of ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`` bytes,
    each an ``ArrayChunk`` object; the array's body is JSON of its dtype, shape, stype and,
    per chunk, the index of its content among the distinct ones.
    """
    data, step = array.data, flower_array.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    chunks = [data] if len(data) <= step else [
        data[start:start + step] for start in range(0, len(data), step)]
    distinct: dict[bytes, int] = {}
    for chunk in chunks:
        if chunk and chunk not in distinct:
            distinct[chunk] = len(distinct)
            chunk_key = ("ArrayChunk", chunk)
            if chunk_key not in sizes:
                sizes[chunk_key] = _deflated(flower_array.ArrayChunk, 0, len(chunk))
    indices = [distinct[chunk] for chunk in chunks if chunk]
    key = (type(array), array.dtype, tuple(array.shape), array.stype, tuple(distinct), *indices)
    if key not in sizes:
        sizes[key] = _deflated(type(array), len(distinct), _array_body_length(
            array.dtype, tuple(array.shape), array.stype, tuple(indices)))
    return key


@functools.lru_cache(maxsize=4096)
def _array_body_length(dtype: str, shape: tuple[int, ...], stype: str,
                       indices: tuple[int, ...]) -> int:
    """Length of an ``Array``'s JSON body (the same few dozen shapes recur every message)."""
    return len(json.dumps({"dtype": dtype, "shape": shape, "stype": stype,
                           "arraychunk_ids": list(indices)}).encode("utf-8"))


def _references_length(names: Iterable[str]) -> int:
    """Length of the JSON ``{name: child id}`` body of a record or record dict."""
    return len(json.dumps(dict.fromkeys(names, _PLACEHOLDER_ID)).encode("utf-8"))

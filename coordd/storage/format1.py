"""Format 1 (the release before issue 14), read only, for the upgrade: ``snapshot.json``
(one JSON document, no checksum) and a ``journal.wal`` of ``[u32 length][u32 crc32]
[msgpack Record]`` frames after a 20-byte header. Nothing here writes format 1."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import msgspec

from coordd.core.model import Agent, Completion, Record, WorkItem
from coordd.storage import frames
from coordd.storage.files import Corrupt

SNAPSHOT_V1_NAME = "snapshot.json"
SNAPSHOT_V1_FORMAT = "coordd-snapshot"
HEADER_V1 = struct.Struct(">8sIQ")  # magic, format version (1), generation
FRAME_V1 = struct.Struct(">II")  # payload length, crc32 of the payload
MAX_RECORD_V1 = 64 * 1024 * 1024


class SnapshotV1(msgspec.Struct, kw_only=True):
    """``snapshot.json``, one JSON object; format 2's document (``snapshot.Snapshot``)
    is this plus what later releases keep."""

    format: str = SNAPSHOT_V1_FORMAT
    version: int = 1
    created_at: float = 0.0
    wal_generation: int = 0
    wal_offset: int = 0
    lease_seq: int = 0
    items: list[WorkItem] = []
    agents: list[Agent] = []
    completions: list[Completion] = []
    team_velocity: dict[str, int] = {}


_snap_decoder = msgspec.json.Decoder(SnapshotV1)
_record_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Record)


def read_snapshot_v1(path: Path) -> SnapshotV1 | None:
    """The format-1 snapshot in ``path`` (None if there is none); raises Corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        snap = _snap_decoder.decode(data)
    except frames.DECODE_ERRORS as e:
        raise Corrupt(path, 0, f"not a valid format-1 snapshot ({e})") from None
    if snap.format != SNAPSHOT_V1_FORMAT or snap.version != 1:
        raise Corrupt(path, 0, f"format {snap.format!r} version {snap.version} is not format 1")
    return snap


def read_journal_v1(path: Path, data: bytes) -> tuple[int, list[tuple[int, Record]], int]:
    """(generation, [(offset, record)], end) of a format-1 journal. Format 1 cannot tell
    a damaged length from a torn write; as that release did, a bad frame that reaches
    the end is its torn tail (``end`` is where it starts), a bad frame before more data
    is damage and raises Corrupt."""
    _magic, _version, generation = HEADER_V1.unpack_from(data, 0)
    records: list[tuple[int, Record]] = []
    pos = HEADER_V1.size
    while pos < len(data):
        problem, rec, nxt = _frame_v1(data, pos)
        if problem:
            if not data[nxt:].strip(b"\0"):
                return generation, records, pos
            raise Corrupt(path, pos, f"format-1 journal: {problem}")
        assert rec is not None
        records.append((pos, rec))
        pos = nxt
    return generation, records, pos


def _frame_v1(data: bytes, pos: int) -> tuple[str, Record | None, int]:
    if pos + FRAME_V1.size > len(data):
        return "incomplete frame header", None, len(data)
    length, crc = FRAME_V1.unpack_from(data, pos)
    start, nxt = pos + FRAME_V1.size, pos + FRAME_V1.size + length
    if length == 0 or length > MAX_RECORD_V1 or nxt > len(data):
        return f"impossible record length {length}", None, len(data)
    payload = data[start:nxt]
    if zlib.crc32(payload) != crc:
        return "checksum mismatch", None, nxt
    try:
        return "", _record_decoder.decode(payload), nxt
    except frames.DECODE_ERRORS as e:
        return f"undecodable record ({e})", None, nxt

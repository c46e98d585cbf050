"""The one frame format of format 2, shared by the journal and the snapshot.

A frame is a 16-byte header, then its payload::

    magic "\\xc0\\xdf" | kind u8 | flags u8 | length u32 | payload crc32 | header crc32

The header carries its own checksum (over its first 12 bytes), so a damaged length is
seen as damage: it is never trusted to say where the next frame starts or that the file
ends here. A header of zeros is where the written part of a preallocated file ends.
Nothing in a frame depends on where it lies, so a frame copied to another file (a
journal's tail carried into the next generation) stays valid.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import msgspec

MAGIC = b"\xc0\xdf"
FRAME = struct.Struct(">2sBBIII")
_HEAD = struct.Struct(">2sBBII")  # the part the header checksum covers
SIZE = FRAME.size

# kinds
RECORD = 1  # a journal record (msgpack ``Record``)
META = 2  # a snapshot's description (what it covers)
ITEMS = 3  # a block of a snapshot's work items
AGENTS = 4  # a block of a snapshot's agents
COMPLETIONS = 5  # a block of a snapshot's completion log
END = 6  # a snapshot's last frame: how many of each it holds
APPLIED = 7  # a block of a snapshot's remembered request ids and replies (optional)

# What decoding checked bytes that no coordd wrote can raise (bad UTF-8 included).
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError)

# A frame longer than this is garbage, not a record (a record is one item or agent;
# a snapshot block is a few hundred).
MAX_PAYLOAD = 64 * 1024 * 1024


def encode(kind: int, payload: bytes) -> bytes:
    """One frame holding ``payload``."""
    head = _HEAD.pack(MAGIC, kind, 0, len(payload), zlib.crc32(payload))
    return head + struct.pack(">I", zlib.crc32(head)) + payload


class Frame:
    """A frame found at ``pos``: ``problem`` is "" when it is whole and checked."""

    __slots__ = ("kind", "nxt", "payload", "pos", "problem", "zero")

    def __init__(
        self,
        pos: int,
        problem: str,
        kind: int = 0,
        payload: memoryview = memoryview(b""),  # noqa: B008 - immutable, never written
        nxt: int = 0,
        zero: bool = False,
    ) -> None:
        self.pos, self.problem, self.kind, self.payload = pos, problem, kind, payload
        self.nxt, self.zero = nxt, zero


def read(buf: memoryview, pos: int, limit: int) -> Frame:
    """The frame at ``pos`` (of a buffer whose meaningful bytes end at ``limit``)."""
    if pos + SIZE > limit:
        if zeros(buf, pos, limit):
            return Frame(pos, "end", zero=True)
        return Frame(pos, f"incomplete frame header ({limit - pos} bytes)")
    magic, kind, _flags, length, crc, hcrc = FRAME.unpack_from(buf, pos)
    if magic != MAGIC:
        if zeros(buf, pos, pos + SIZE):
            return Frame(pos, "zero header", zero=True)
        return Frame(pos, "no frame starts here (bad magic)")
    if zlib.crc32(buf[pos : pos + 12]) != hcrc:
        return Frame(pos, "frame header checksum mismatch")
    start, nxt = pos + SIZE, pos + SIZE + length
    if length > MAX_PAYLOAD or nxt > limit:
        return Frame(pos, f"frame of {length} bytes runs past the end of the file")
    payload = buf[start:nxt]
    if zlib.crc32(payload) != crc:
        return Frame(pos, "frame payload checksum mismatch", kind, payload, nxt)
    return Frame(pos, "", kind, payload, nxt)


def zeros(buf: memoryview, start: int, end: int) -> bool:
    """Nothing but zero bytes in ``buf[start:end]`` (without copying them)."""
    data = buf.obj if hasattr(buf.obj, "count") else bytes(buf)
    return bool(data.count(0, start, end) == end - start)


def last_nonzero(buf: memoryview, start: int, end: int) -> int:
    """The offset after the last non-zero byte of ``buf[start:end]`` (``start`` if none)."""
    return start + len(bytes(buf[start:end]).rstrip(b"\0"))


def next_good(buf: memoryview, pos: int, limit: int) -> int | None:
    """The offset of the first whole, checked frame after ``pos`` (None if there is none)."""
    data = buf.obj if hasattr(buf.obj, "find") else bytes(buf)
    at = pos
    while True:
        at = data.find(MAGIC, at + 1, limit)
        if at < 0:
            return None
        if not read(buf, at, limit).problem:
            return at


def good_run(
    buf: memoryview, pos: int, limit: int
) -> tuple[list[tuple[int, int, memoryview]], int]:
    """The whole, checked frames from ``pos`` as (offset, kind, payload), up to the first
    that is not; and where that one starts. The fast path of a start: ``read`` then
    says what is wrong at the place returned."""
    out = []
    unpack, crc = FRAME.unpack_from, zlib.crc32
    while pos + SIZE <= limit:
        magic, kind, _flags, length, pcrc, hcrc = unpack(buf, pos)
        nxt = pos + SIZE + length
        if magic != MAGIC or crc(buf[pos : pos + 12]) != hcrc or nxt > limit:
            break
        payload = buf[pos + SIZE : nxt]
        if crc(payload) != pcrc:
            break
        out.append((pos, kind, payload))
        pos = nxt
    return out, pos


def scan(buf: memoryview, pos: int, limit: int) -> Iterator[Frame]:
    """Every frame from ``pos``, stopping at the first that is not whole (yielded too)."""
    while True:
        fr = read(buf, pos, limit)
        yield fr
        if fr.problem:
            return
        pos = fr.nxt


def salvage(buf: memoryview, pos: int, limit: int) -> Iterator[Frame]:
    """Every good frame from ``pos``, and one bad Frame per damaged stretch (its ``nxt``
    is where the next good frame starts, or ``limit``): what a repair can keep."""
    while pos < limit:
        fr = read(buf, pos, limit)
        if not fr.problem:
            yield fr
            pos = fr.nxt
            continue
        if fr.zero and zeros(buf, pos, limit):
            return
        good = next_good(buf, pos, limit)
        fr.nxt = limit if good is None else good
        yield fr
        pos = fr.nxt

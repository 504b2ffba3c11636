"""eventmp.messages: named message types and Connection-compatible framing."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import struct
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from eventmp.messages import (
    BatchDone,
    BatchRejected,
    EventBatch,
    EventFailed,
    FrameReader,
    HandlerCounters,
    HandlerUpdate,
    WorkerReady,
    WorkerRetiring,
    batch_frame_head,
    decode_result,
    decode_task,
    encode_batch,
    encode_done,
    encode_handler_update,
    encode_result,
    frame,
    plain_batch,
)

# Sizes on both sides of Connection's small-message path (it concatenates below 16 KiB).
PAYLOADS = [b"", b"x", b"hello world", bytes(range(256)) * 64, os.urandom(100_000)]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A fresh os.pipe(); tests hand Connections dup()s, and both ends are closed after."""
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def write_all_in_thread(fd: int, data: bytes) -> threading.Thread:
    """Write ``data`` to ``fd`` from a thread, so a payload bigger than the pipe cannot block."""

    def write() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def read_exactly(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        assert chunk, "pipe closed early"
        out += chunk
    return bytes(out)


def test_frame_is_read_by_connection_recv_bytes(pipe: tuple[int, int]) -> None:
    """Frames written with frame() are read back one by one by Connection.recv_bytes()."""
    r, w = pipe
    thread = write_all_in_thread(w, b"".join(frame(p) for p in PAYLOADS))
    conn = Connection(os.dup(r))
    try:
        for payload in PAYLOADS:
            assert conn.poll(10)
            assert conn.recv_bytes() == payload
    finally:
        conn.close()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: f"{len(p)}B")
def test_frame_matches_connection_send_bytes_exactly(payload: bytes, pipe: tuple[int, int]) -> None:
    """frame(payload) is byte for byte what Connection.send_bytes(payload) writes."""
    r, w = pipe
    expected = frame(payload)
    received: list[bytes] = []
    reader = threading.Thread(
        target=lambda: received.append(read_exactly(r, len(expected))), daemon=True
    )
    reader.start()
    conn = Connection(os.dup(w))
    try:
        conn.send_bytes(payload)
    finally:
        conn.close()
    reader.join(10)
    assert received == [expected]


def test_frame_header_is_big_endian_length() -> None:
    """A frame is a 4-byte big-endian signed length followed by the payload."""
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00"


def test_long_frame_form_is_read_by_connection_and_frame_reader(pipe: tuple[int, int]) -> None:
    """The -1 + 8-byte length form used for huge payloads is read by Connection and FrameReader."""
    r, w = pipe
    long_frame = struct.pack("!i", -1) + struct.pack("!Q", 5) + b"large"
    os.write(w, long_frame)
    conn = Connection(os.dup(r))
    try:
        assert conn.poll(10)
        assert conn.recv_bytes() == b"large"
    finally:
        conn.close()
    reader = FrameReader()
    assert reader.feed(long_frame[:7]) == []
    assert reader.partial
    assert reader.feed(long_frame[7:]) == [b"large"]
    assert not reader.partial


def test_frame_reader_reassembles_connection_frames_fed_byte_by_byte(
    pipe: tuple[int, int],
) -> None:
    """Bytes written by Connection.send_bytes, fed one at a time, come out as the same frames."""
    r, w = pipe
    payloads = [b"first", b"", b"third" * 50]
    conn = Connection(os.dup(w))
    try:
        for payload in payloads:
            conn.send_bytes(payload)
    finally:
        conn.close()
    raw = read_exactly(r, sum(4 + len(p) for p in payloads))
    reader = FrameReader()
    frames: list[bytes] = []
    for i in range(len(raw)):
        frames.extend(reader.feed(raw[i : i + 1]))
    assert frames == payloads
    assert not reader.partial


def test_frame_reader_returns_several_frames_from_one_feed() -> None:
    """One feed holding several whole frames returns them all, in order."""
    reader = FrameReader()
    assert reader.feed(frame(b"a") + frame(b"bb") + frame(b"") + frame(b"ccc")) == [
        b"a",
        b"bb",
        b"",
        b"ccc",
    ]
    assert not reader.partial


def test_frame_reader_keeps_split_frames_until_complete() -> None:
    """A frame split across feeds (header split too) is returned once its last byte arrives."""
    data = frame(b"hello") + frame(b"world")
    reader = FrameReader()
    assert reader.feed(data[:2]) == []  # half a header
    assert reader.feed(data[2:6]) == []  # header done, payload started
    assert reader.feed(data[6:12]) == [b"hello"]  # first frame done, next header begun
    assert reader.feed(data[12:]) == [b"world"]


def test_frame_reader_partial_tracks_buffered_bytes() -> None:
    """`partial` is true exactly while part of a frame is buffered."""
    reader = FrameReader()
    assert not reader.partial
    reader.feed(frame(b"abcdef")[:3])
    assert reader.partial
    reader.feed(frame(b"abcdef")[3:7])
    assert reader.partial
    assert reader.feed(frame(b"abcdef")[7:]) == [b"abcdef"]
    assert not reader.partial


def test_frame_reader_of_empty_feed_returns_nothing() -> None:
    """Feeding no bytes returns no frames and leaves no partial frame."""
    reader = FrameReader()
    assert reader.feed(b"") == []
    assert not reader.partial


def test_frame_reader_handles_a_large_frame_in_chunks() -> None:
    """A 1 MB frame fed in 64 KiB chunks comes out whole, exactly once."""
    payload = os.urandom(1 << 20)
    data = frame(payload)
    reader = FrameReader()
    frames: list[bytes] = []
    for start in range(0, len(data), 1 << 16):
        frames.extend(reader.feed(data[start : start + (1 << 16)]))
    assert frames == [payload]


@pytest.mark.parametrize(
    "message",
    [
        WorkerReady(1234, 0),
        EventFailed(1 << 16, 7, b"", "ValueError", "bad", "Traceback..."),
        BatchRejected(3, "UnpicklingError: truncated"),
        WorkerRetiring("processed max_events_per_worker=3 events"),
        BatchDone(4, 1 << 20),
        HandlerCounters({"evicted_keys": 7}),
    ],
    ids=lambda m: type(m).__name__,
)
def test_results_round_trip_through_their_codec(message: tuple[object, ...]) -> None:
    """Each worker-to-parent message comes out of its frame as the same named type and fields."""
    (payload,) = FrameReader().feed(encode_result(message))
    loaded = decode_result(payload)
    assert type(loaded) is type(message)
    assert loaded == message


@pytest.mark.parametrize("resync", [False, True])
def test_batches_round_trip_through_their_codec(resync: bool) -> None:
    """An EventBatch keeps its number, its events blob and its resync mark through the wire."""
    events = pickle.dumps([(1, 2, "origin", {"k": 1}, 3.5)], 5)
    (payload,) = FrameReader().feed(encode_batch(2**40 + 7, events, resync))
    batch = decode_task(payload)
    assert type(batch) is EventBatch
    assert (batch.batch_no, bytes(batch.events), batch.resync) == (2**40 + 7, events, resync)


@pytest.mark.parametrize("payload", PAYLOADS, ids=len)
def test_a_batch_head_then_its_events_is_one_frame_a_connection_reads(payload: bytes) -> None:
    """batch_frame_head and the blob written after it arrive as one Connection message."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    with reader, writer:
        done = threading.Thread(
            target=os.write, args=(writer.fileno(), batch_frame_head(9, len(payload)) + payload)
        )
        done.start()
        received = reader.recv_bytes()
        done.join(10)
    assert received == encode_batch(9, payload)[4:]
    assert plain_batch(received) is not None
    assert bytes(plain_batch(received)[1]) == payload  # type: ignore[index]


def test_handler_updates_round_trip_through_their_codec() -> None:
    """A HandlerUpdate keeps its definitions and forgotten ids through the wire."""
    update = HandlerUpdate([(5, b"dill bytes")], [3, 4])
    (payload,) = FrameReader().feed(encode_handler_update(update))
    assert decode_task(payload) == update


def test_plain_batch_reads_an_ordinary_batch_and_declines_every_other_frame() -> None:
    """plain_batch gives (batch_no, events) for an ordinary batch, None for resync or handlers."""
    events = pickle.dumps([(1, 2, "origin", None, 3.5)], 5)
    (ordinary,) = FrameReader().feed(encode_batch(2**40 + 7, events))
    (resync,) = FrameReader().feed(encode_batch(8, events, resync=True))
    (handlers,) = FrameReader().feed(encode_handler_update(HandlerUpdate([(5, b"x")], [])))
    decoded = plain_batch(ordinary)
    assert decoded is not None
    assert (decoded[0], bytes(decoded[1])) == (2**40 + 7, events)
    assert plain_batch(resync) is None
    assert plain_batch(handlers) is None


def test_encode_done_frames_a_batch_done_without_building_one() -> None:
    """encode_done gives the very frame encode_result gives for the same BatchDone."""
    done = BatchDone(2**40 + 3, 123_456_789, 5_000)
    framed = encode_done(done.batch_no, done.rss, done.busy_ns)
    assert framed == encode_result(done)
    (payload,) = FrameReader().feed(framed)
    assert decode_result(payload) == done


def test_event_batch_resync_defaults_to_false() -> None:
    """An EventBatch is an ordinary batch unless marked resync."""
    assert EventBatch(1, b"").resync is False


def test_frame_reader_returns_a_lone_whole_frame_without_buffering() -> None:
    """A read holding exactly one frame comes back at once, leaving nothing partial."""
    reader = FrameReader()
    assert reader.feed(frame(b"abc")) == [b"abc"]
    assert not reader.partial

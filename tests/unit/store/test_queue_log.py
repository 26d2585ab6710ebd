"""QueueLog: a durable queue's persistent messages on disk. What was committed
comes back after a restart, in order and byte for byte; acked messages do not;
settled segments are deleted; torn or corrupt tails are cut, never misread;
files of another format stop recovery without being touched."""

from __future__ import annotations

import functools
import logging
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amqpy.store.message_store import MessageStore
from amqpy.store.queue_log import (
    ACKS_MAGIC,
    FILE_HEADER,
    FORMAT_VERSION,
    SEGMENT_MAGIC,
    LogFormatError,
    QueueLog,
    StoredMessage,
    encode_message,
)

SEGMENT = 4096
HEADER = FILE_HEADER.size
ACK_SIZE = 12  # u64 seq | u32 crc (docs/storage-format.md)
CUT = "cutting the tail off"
# Raw content-header properties as published (opaque to the log), with zeros.
PROPERTIES = b"\x98\x00\x0atext/plain\x00\x00\x00\x05\x01x\x53\x00\x00\x02"


def msg(
    seq: int,
    body: bytes | None = None,
    *,
    exchange: str = "amq.direct",
    routing_key: str = "key",
    properties: bytes = PROPERTIES,
) -> StoredMessage:
    if body is None:
        body = f"message {seq}".encode()
    return StoredMessage(seq, exchange, routing_key, properties, body)


def append(log: QueueLog, message: StoredMessage) -> None:
    log.append(
        message.seq,
        message.exchange,
        message.routing_key,
        message.properties_raw,
        message.body,
    )


def commit(log: QueueLog) -> None:
    log.take_batch().run()


def reopen(
    directory: Path, segment_max_bytes: int = SEGMENT
) -> tuple[QueueLog, list[StoredMessage]]:
    """What a restarted broker sees."""
    log = QueueLog(directory, segment_max_bytes)
    return log, log.recover()


def names(directory: Path, kind: str = "msgs") -> list[str]:
    return sorted(path.name for path in directory.glob(f"{kind}.*"))


def seg(segment_id: int, kind: str = "msgs") -> str:
    return f"{kind}.{segment_id:010d}"


def record_size(message: StoredMessage) -> int:
    return len(
        encode_message(
            message.seq,
            message.exchange,
            message.routing_key,
            message.properties_raw,
            message.body,
        )
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# -- round trips ---------------------------------------------------------------


def test_committed_messages_come_back_in_order_byte_for_byte(tmp_path: Path) -> None:
    messages = [
        msg(1, b""),
        msg(2, bytes(range(256)) * 4, exchange="", routing_key="ключ.🐇.é"),
        msg(3, b"\x00" * 2000, exchange="биржа-✓" * 18, routing_key="r" * 255),
        msg(4, b"no properties", properties=b""),
        msg(5, "тело ✓".encode()),
    ]
    log = QueueLog(tmp_path / "q", SEGMENT)
    for message in messages:
        append(log, message)
    commit(log)

    _, recovered = reopen(tmp_path / "q")
    assert recovered == messages


def test_nothing_is_on_disk_until_the_batch_runs(tmp_path: Path) -> None:
    changes: list[bool] = []
    log = QueueLog(
        tmp_path / "q", SEGMENT, on_change=lambda _, new: changes.append(new)
    )
    append(log, msg(1))
    append(log, msg(2))
    log.ack(1)
    assert changes == [True, True, False]
    assert log.pending_bytes > 0

    batch = log.take_batch()
    assert log.pending_bytes == 0
    assert reopen(tmp_path / "q")[1] == []  # taken, not yet written

    batch.run()
    assert reopen(tmp_path / "q")[1] == [msg(2)]


def test_acked_messages_do_not_come_back(tmp_path: Path) -> None:
    log = QueueLog(tmp_path / "q", SEGMENT)
    for seq in range(1, 11):
        append(log, msg(seq))
    log.ack(2)
    commit(log)
    log.ack(5)
    log.ack(10)
    log.ack(99)  # not in the log (a transient message, say): ignored
    commit(log)

    _, recovered = reopen(tmp_path / "q")
    assert [message.seq for message in recovered] == [1, 3, 4, 6, 7, 8, 9]


def test_recovered_messages_can_be_acked_and_new_ones_follow(tmp_path: Path) -> None:
    log = QueueLog(tmp_path / "q", SEGMENT)
    for seq in range(1, 6):
        append(log, msg(seq))
    commit(log)

    log, recovered = reopen(tmp_path / "q")
    assert [message.seq for message in recovered] == [1, 2, 3, 4, 5]
    log.ack(1)
    log.ack(4)
    append(log, msg(6, b"after the restart"))
    commit(log)

    _, recovered = reopen(tmp_path / "q")
    assert recovered == [msg(2), msg(3), msg(5), msg(6, b"after the restart")]


def test_messages_spread_over_many_segments_come_back_in_order(
    tmp_path: Path,
) -> None:
    messages = [msg(seq, bytes([seq]) * 1000) for seq in range(1, 41)]
    log = QueueLog(tmp_path / "q", SEGMENT)
    for message in messages:
        append(log, message)
        if message.seq % 7 == 0:
            commit(log)
    commit(log)
    assert len(names(tmp_path / "q")) >= 10

    _, recovered = reopen(tmp_path / "q")
    assert recovered == messages


# -- segments and garbage collection -----------------------------------------------


def two_per_segment(seq: int) -> StoredMessage:
    message = msg(seq, b"b" * 1500)
    assert 2 * record_size(message) <= SEGMENT < 3 * record_size(message)
    return message


def test_a_settled_segment_is_deleted_and_the_current_one_kept(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "q"
    log = QueueLog(directory, SEGMENT)
    for seq in range(1, 5):
        append(log, two_per_segment(seq))
    commit(log)
    assert names(directory) == [seg(1), seg(2)]

    log.ack(1)
    commit(log)
    assert names(directory) == [seg(1), seg(2)]  # message 2 still needs it
    log.ack(2)
    commit(log)
    assert names(directory) == [seg(2)]
    assert names(directory, "acks") == []

    # The segment being written is kept even when everything in it is acked...
    log.ack(3)
    log.ack(4)
    commit(log)
    assert names(directory) == [seg(2)]
    # ...and goes once the log moves on.
    append(log, two_per_segment(5))
    commit(log)
    assert names(directory) == [seg(3)]
    assert names(directory, "acks") == []
    assert reopen(directory)[1] == [two_per_segment(5)]


def test_a_segment_settled_before_it_was_written_never_reaches_disk(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "q"
    log = QueueLog(directory, SEGMENT)
    for seq in range(1, 4):
        append(log, two_per_segment(seq))
    log.ack(1)
    log.ack(2)
    commit(log)
    assert names(directory) == [seg(2)]
    assert reopen(directory)[1] == [two_per_segment(3)]


def directory_usage(directory: Path) -> tuple[int, int]:
    files = list(directory.iterdir())
    return len(files), sum(path.stat().st_size for path in files)


def test_disk_use_stays_bounded_under_steady_publish_and_ack(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    log = QueueLog(directory, SEGMENT)
    stuck = msg(1, b"never acked")  # keeps its own segment, and only that one
    append(log, stuck)
    backlog = 5
    worst = (0, 0)
    for seq in range(2, 3002):
        append(log, msg(seq, b"p" * 400))
        if seq - backlog > 1:
            log.ack(seq - backlog)
        if seq % 10 == 0:
            commit(log)
            usage = directory_usage(directory)
            worst = max(worst[0], usage[0]), max(worst[1], usage[1])
    commit(log)

    last_segment = int(names(directory)[-1].split(".")[1])
    assert last_segment > 250  # the log went through hundreds of segments
    # The stuck message's segment, plus the current one or two, with acks.
    assert worst[0] <= 8, worst
    assert worst[1] <= 5 * SEGMENT, worst
    _, recovered = reopen(directory)
    assert recovered == [stuck, *(msg(s, b"p" * 400) for s in range(2997, 3002))]


def test_recovery_deletes_settled_segments_and_writes_to_a_fresh_one(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "q"
    log = QueueLog(directory, SEGMENT)
    for seq in range(1, 6):
        append(log, two_per_segment(seq))
    commit(log)
    assert names(directory) == [seg(1), seg(2), seg(3)]
    log.ack(1)  # segment 1 half settled
    log.ack(5)  # segment 3, the current one, fully settled: kept while running
    commit(log)
    assert names(directory) == [seg(1), seg(2), seg(3)]

    log, recovered = reopen(directory)
    assert [message.seq for message in recovered] == [2, 3, 4]
    assert names(directory) == [seg(1), seg(2)]
    assert names(directory, "acks") == [seg(1, "acks")]
    append(log, two_per_segment(6))
    commit(log)
    # Never back into a recovered segment, whose tail may have been torn.
    assert names(directory) == [seg(1), seg(2), seg(4)]
    assert [m.seq for m in reopen(directory)[1]] == [2, 3, 4, 6]


def test_destroy_removes_the_folder_and_drops_pending_writes(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    log = QueueLog(directory, SEGMENT)
    for seq in range(1, 6):
        append(log, two_per_segment(seq))
    commit(log)
    append(log, msg(6))
    log.destroy()
    commit(log)
    assert not directory.exists()
    assert tmp_path.exists()
    assert reopen(directory)[1] == []


def test_destroy_of_a_log_that_never_wrote(tmp_path: Path) -> None:
    log = QueueLog(tmp_path / "q", SEGMENT)
    log.destroy()
    commit(log)
    assert list(tmp_path.iterdir()) == []


def test_a_queue_deleted_and_declared_again_within_one_commit_keeps_new_messages(
    tmp_path: Path,
) -> None:
    # queue.delete, queue.declare of the same name and a confirmed publish
    # can all happen while the committer is busy with the previous fsync:
    # the next batch then holds both the old folder's removal and the new
    # queue's first writes.
    store = MessageStore(tmp_path, SEGMENT)
    old = store.open_log("q")
    append(old, msg(1, b"old"))
    store.take_batch()[0].run()
    old.destroy()
    new = store.open_log("q")
    append(new, msg(1, b"new"))
    batch, _ = store.take_batch()
    batch.run()

    _, recovered = reopen(new.directory)
    assert recovered == [msg(1, b"new")]


def test_an_ack_file_left_without_its_segment_does_not_hide_new_messages(
    tmp_path: Path,
) -> None:
    # A crash between the two unlinks of a settled segment leaves acks.N
    # behind. Once everything is settled a restarted queue numbers its
    # messages from 1 again and writes segment 1 again: the stale acks must
    # not settle the new messages.
    directory = tmp_path / "q"
    log = QueueLog(directory, SEGMENT)
    append(log, msg(1, b"old"))
    append(log, msg(2, b"old"))
    log.ack(1)
    log.ack(2)
    commit(log)
    (directory / seg(1)).unlink()  # the crash: acks.1 was not unlinked yet

    log, recovered = reopen(directory)
    assert recovered == []
    append(log, msg(1, b"new"))
    commit(log)

    assert reopen(directory)[1] == [msg(1, b"new")]


# -- torn and corrupt files ------------------------------------------------------


def test_a_torn_last_record_is_cut_at_every_byte(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [msg(1), msg(2, b"second"), msg(3, b"the last record " * 4)]
    log = QueueLog(tmp_path / "original", SEGMENT)
    for message in messages:
        append(log, message)
    commit(log)
    data = (tmp_path / "original" / seg(1)).read_bytes()
    last_start = len(data) - record_size(messages[-1])
    assert last_start > HEADER

    for cut in range(last_start, len(data)):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / seg(1)).write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            log, recovered = reopen(directory)
        assert recovered == messages[:2], cut
        assert (directory / seg(1)).stat().st_size == last_start, cut
        torn = cut > last_start
        assert (CUT in caplog.text) is torn, (cut, caplog.text)
        if torn:
            assert seg(1) in caplog.text

        # The queue carries on after the last message it recovered.
        append(log, msg(3, b"written after the restart"))
        commit(log)
        assert reopen(directory)[1] == [
            *messages[:2],
            msg(3, b"written after the restart"),
        ], cut


def test_a_torn_file_header_loses_only_that_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = QueueLog(tmp_path / "original", SEGMENT)
    for seq in range(1, 4):
        append(log, two_per_segment(seq))
    commit(log)
    first = (tmp_path / "original" / seg(1)).read_bytes()
    second = (tmp_path / "original" / seg(2)).read_bytes()
    assert second[:HEADER] == FILE_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION)

    for cut in range(HEADER + 1):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / seg(1)).write_bytes(first)
        (directory / seg(2)).write_bytes(second[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            log, recovered = reopen(directory)
        assert recovered == [two_per_segment(1), two_per_segment(2)], cut
        assert (CUT in caplog.text) is (cut < HEADER), (cut, caplog.text)
        assert not (directory / seg(2)).exists() or (
            (directory / seg(2)).stat().st_size == 0
        )
        append(log, msg(3, b"after"))
        commit(log)
        assert reopen(directory)[1] == [
            two_per_segment(1),
            two_per_segment(2),
            msg(3, b"after"),
        ], cut


@functools.cache
def seven_in_two_segments() -> tuple[list[StoredMessage], bytes, bytes]:
    """Messages 1-5 in segment 1, 6-7 in segment 2 (the current one)."""
    messages = [msg(seq, bytes([seq]) * 700) for seq in range(1, 8)]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        log = QueueLog(directory, SEGMENT)
        for message in messages:
            append(log, message)
        commit(log)
        assert names(directory) == [seg(1), seg(2)]
        return (
            messages,
            (directory / seg(1)).read_bytes(),
            (directory / seg(2)).read_bytes(),
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, 6),
    where=st.floats(0, 1, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_a_corrupt_record_and_the_rest_of_its_segment_are_cut(
    index: int, where: float, mask: int
) -> None:
    messages, first, second = seven_in_two_segments()
    in_second = index >= 5
    damaged = bytearray(second if in_second else first)
    start = HEADER + sum(
        record_size(m) for m in messages[5 if in_second else 0 : index]
    )
    offset = start + int(where * record_size(messages[index]))
    damaged[offset] ^= mask

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / seg(1)).write_bytes(first)
        (directory / seg(2)).write_bytes(second)
        (directory / seg(2 if in_second else 1)).write_bytes(damaged)
        _, recovered = reopen(directory)
        expected = messages[:index] + ([] if in_second else messages[5:])
        assert recovered == expected
        path = directory / seg(2 if in_second else 1)
        if start > HEADER:
            assert path.stat().st_size == start
        else:  # nothing left in that segment
            assert not path.exists() or path.stat().st_size <= HEADER
        # Cut for good: the next recovery agrees without cutting again.
        assert reopen(directory)[1] == expected


def acked_segment(directory: Path) -> None:
    """Messages 1-4 in segment 1, 1-3 acked."""
    log = QueueLog(directory, SEGMENT)
    for seq in range(1, 5):
        append(log, msg(seq))
    commit(log)
    for seq in (1, 2, 3):
        log.ack(seq)
    commit(log)


def test_a_torn_ack_file_loses_only_the_torn_acks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acked_segment(tmp_path / "original")
    messages = (tmp_path / "original" / seg(1)).read_bytes()
    acks = (tmp_path / "original" / seg(1, "acks")).read_bytes()
    assert len(acks) == HEADER + 3 * ACK_SIZE

    for cut in range(len(acks)):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / seg(1)).write_bytes(messages)
        (directory / seg(1, "acks")).write_bytes(acks[:cut])
        whole_acks = max(0, (cut - HEADER) // ACK_SIZE)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            log, recovered = reopen(directory)
        # An ack that did not make it: its message comes back (at least once).
        assert [m.seq for m in recovered] == list(range(whole_acks + 1, 5)), cut
        torn = cut < HEADER or (cut - HEADER) % ACK_SIZE != 0
        assert (CUT in caplog.text) is torn, (cut, caplog.text)

        # Acks written after the restart land on a clean record boundary.
        log.ack(4)
        commit(log)
        expected = list(range(whole_acks + 1, 4))
        assert [m.seq for m in reopen(directory)[1]] == expected, cut


@pytest.mark.parametrize("index", range(3))
@pytest.mark.parametrize("offset", range(ACK_SIZE))
def test_a_corrupt_ack_cuts_it_and_later_acks(
    tmp_path: Path, index: int, offset: int
) -> None:
    directory = tmp_path / "q"
    acked_segment(directory)
    acks_path = directory / seg(1, "acks")
    acks = bytearray(acks_path.read_bytes())
    acks[HEADER + index * ACK_SIZE + offset] ^= 0x40
    acks_path.write_bytes(acks)

    _, recovered = reopen(directory)
    assert [m.seq for m in recovered] == list(range(index + 1, 5))
    assert acks_path.stat().st_size == HEADER + index * ACK_SIZE


FOREIGN_HEADERS = {
    "unknown magic": FILE_HEADER.pack(b"NOTAMQPY", FORMAT_VERSION),
    "newer version": None,  # the right magic, FORMAT_VERSION + 1
    "the other kind": None,  # a segment's magic on an ack file and back
}


@pytest.mark.parametrize("kind", ["msgs", "acks"])
@pytest.mark.parametrize("header", FOREIGN_HEADERS)
def test_a_file_of_another_format_stops_recovery_untouched(
    tmp_path: Path, kind: str, header: str
) -> None:
    directory = tmp_path / "q"
    acked_segment(directory)
    path = directory / seg(1, kind)
    magic, other = (
        (SEGMENT_MAGIC, ACKS_MAGIC) if kind == "msgs" else (ACKS_MAGIC, SEGMENT_MAGIC)
    )
    raw = {
        "unknown magic": FOREIGN_HEADERS["unknown magic"],
        "newer version": FILE_HEADER.pack(magic, FORMAT_VERSION + 1),
        "the other kind": FILE_HEADER.pack(other, FORMAT_VERSION),
    }[header]
    # A tail that this version would take for a torn record and cut.
    path.write_bytes(raw + path.read_bytes()[HEADER:] + b"\x00\x00\x00")
    before = path.read_bytes()

    with pytest.raises(LogFormatError, match=seg(1, kind)):
        reopen(directory)
    assert path.read_bytes() == before


def test_a_file_of_another_format_stops_recovery_before_anything_changes(
    tmp_path: Path,
) -> None:
    # docs/storage-format.md: "nothing is changed" -- not even the repairs
    # recovery would make to the files it reads before the foreign one.
    directory = tmp_path / "q"
    log = QueueLog(directory, SEGMENT)
    for seq in range(1, 5):
        append(log, two_per_segment(seq))
    log.ack(1)
    commit(log)
    assert names(directory) == [seg(1), seg(2)]
    # Segment 1 and its acks have torn tails; segment 2 is newer than us.
    for name in (seg(1), seg(1, "acks")):
        with open(directory / name, "ab") as file:
            file.write(b"\x00\x00\x01")
    newer = directory / seg(2)
    newer.write_bytes(
        FILE_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION + 1)
        + newer.read_bytes()[HEADER:]
    )
    before = snapshot(directory)

    with pytest.raises(LogFormatError, match=seg(2)):
        reopen(directory)
    assert snapshot(directory) == before


# -- against a model ---------------------------------------------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 1500)),
        st.tuples(st.just("ack"), st.integers(0, 1000)),
        st.tuples(st.just("commit"), st.just(0)),
        st.tuples(st.just("crash"), st.just(0)),  # pending writes are lost
        st.tuples(st.just("restart"), st.just(0)),  # commit first
    ),
    max_size=80,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS, seed=st.integers(0, 2**32 - 1))
def test_recovery_returns_exactly_the_committed_unacked_messages(
    operations: list[tuple[str, int]], seed: int
) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "q"
        log = QueueLog(directory, SEGMENT)
        next_seq = 0
        unacked: dict[int, StoredMessage] = {}  # in the running queue
        durable: dict[int, StoredMessage] = {}  # what a recovery must return
        pending_appends: dict[int, StoredMessage] = {}
        pending_acks: set[int] = set()

        def restart(*, clean: bool) -> None:
            nonlocal log, next_seq, unacked
            if clean:
                commit_all()
            pending_appends.clear()
            pending_acks.clear()
            log, recovered = reopen(directory)
            assert recovered == [durable[seq] for seq in sorted(durable)]
            unacked = dict(durable)
            # As Queue.restore does: numbering goes on after the last one.
            next_seq = max(durable, default=0)

        def commit_all() -> None:
            commit(log)
            durable.update(pending_appends)
            for seq in pending_acks:
                durable.pop(seq)
            pending_appends.clear()
            pending_acks.clear()

        for name, value in operations:
            if name == "publish":
                next_seq += 1
                message = msg(next_seq, rng.randbytes(value))
                append(log, message)
                unacked[next_seq] = message
                pending_appends[next_seq] = message
            elif name == "ack" and unacked:
                seq = sorted(unacked)[value % len(unacked)]
                del unacked[seq]
                log.ack(seq)
                if pending_appends.pop(seq, None) is None:
                    pending_acks.add(seq)
            elif name == "commit":
                commit_all()
            elif name in ("crash", "restart"):
                restart(clean=name == "restart")
        restart(clean=False)
        restart(clean=True)

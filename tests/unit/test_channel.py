"""wire.py: pickled messages over a pipe pair, as between a rank and a scoring process,
and the typed messages each end accepts."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from mpiscore.plan import Batch
from mpiscore.wire import (
    Channel,
    Close,
    Done,
    Durable,
    Flushed,
    ProtocolError,
    Score,
    Scored,
    StageTimes,
    pipe,
    recv_at_rank,
    recv_in_scorer,
    wait,
)


def connected() -> tuple[Channel, Channel]:
    """Both ends in this process: ours, and the one a child would get."""
    ours, (read_fd, write_fd) = pipe()
    return ours, Channel(read_fd, write_fd)


def test_messages_go_both_ways_in_order() -> None:
    ours, theirs = connected()
    ours.send(("batch", 1))
    ours.send(None)
    theirs.send({"done": [1, 2]})
    assert theirs.recv() == ("batch", 1)
    assert theirs.recv() is None
    assert ours.recv() == {"done": [1, 2]}
    ours.close()
    theirs.close()
    assert ours.closed and theirs.closed


def test_a_message_larger_than_the_pipe_arrives_whole() -> None:
    """A model's bytes (megabytes) are written while the other end reads."""
    ours, theirs = connected()
    payload = np.random.default_rng(0).bytes(5 << 20)
    received: list[object] = []
    reader = threading.Thread(target=lambda: received.append(theirs.recv()))
    reader.start()
    ours.send(payload)
    reader.join(10)
    assert received == [payload]


def test_poll_and_wait_tell_which_channel_has_a_message() -> None:
    first, first_peer = connected()
    second, second_peer = connected()
    assert not first.poll() and wait([first, second], 0.01) == []
    second_peer.send("ready")
    assert wait([first, second], 1.0) == [second]
    assert second.poll(1.0) and not first.poll(0.0)
    assert second.recv() == "ready"
    first_peer.close()
    assert first.poll(1.0)  # the peer's end closing is something to read: EOF


def test_a_gone_peer_shows_as_eof_and_broken_pipe() -> None:
    ours, theirs = connected()
    theirs.close()
    with pytest.raises(EOFError):
        ours.recv()
    with pytest.raises(BrokenPipeError):
        ours.send("anyone?")


def test_each_end_takes_its_own_messages_and_refuses_any_other() -> None:
    ours, theirs = connected()  # ours: the rank's end
    batch = Batch(3, 0, 0, 10, 0)
    ours.send(Score((batch,), (1,)))
    ours.send(("scored", 3))  # an untyped message: a bug, not a failed batch
    theirs.send(Flushed(Durable.of([Done(3, StageTimes(0.1, 0.2, 0.3))])))
    theirs.send(Done(3, StageTimes(0.1, 0.2, 0.3)))  # an entry of a report, not a message
    theirs.send(Score((batch,), (0,)))  # a message for a scoring process sent to the rank
    assert recv_in_scorer(theirs) == Score((batch,), (1,))
    with pytest.raises(ProtocolError, match="tuple received; expected a message to a scoring"):
        recv_in_scorer(theirs)
    assert recv_at_rank(ours) == Flushed(Durable((3,), (0.1, 0.2, 0.3)))
    with pytest.raises(ProtocolError, match="Done received; expected a message to a rank"):
        recv_at_rank(ours)
    with pytest.raises(ProtocolError, match="Score received; expected a message to a rank"):
        recv_at_rank(ours)
    ours.close()
    assert isinstance(recv_in_scorer(theirs), Close)  # the rank is gone: close
    theirs.close()


def test_durable_batches_cross_as_columns_of_numbers_and_come_back_one_by_one() -> None:
    """A report's durable batches are one object of tuples, not a Done and a StageTimes
    per batch: the rank unpickles numbers only (wire.Durable)."""
    done = [Done(4, StageTimes(0.1, 0.2, 0.3)), Done(5, StageTimes(0.4, 0.5, 0.6), 2)]
    durable = Durable.of(done)
    assert durable == Durable((4, 5), (0.1, 0.2, 0.3, 0.4, 0.5, 0.6), (0, 2))
    assert list(durable.each()) == [(4, (0.1, 0.2, 0.3), 0), (5, (0.4, 0.5, 0.6), 2)]
    assert Durable.of(done[:1]).failed_items == ()  # none failed: no column
    assert list(Durable.of(done[:1]).each()) == [(4, (0.1, 0.2, 0.3), 0)]
    assert list(Durable().each()) == []
    ours, theirs = connected()
    theirs.send(Scored((6,), durable))
    data = pickle.dumps(Scored((6,), durable), pickle.HIGHEST_PROTOCOL)
    assert b"Done" not in data and b"StageTimes" not in data
    assert recv_at_rank(ours) == Scored((6,), durable)
    ours.close()
    theirs.close()

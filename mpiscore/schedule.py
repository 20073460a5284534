"""Which batch goes to which worker, retries and the error budget: a pure state machine.

The coordinator drives it with :meth:`Scheduler.assign`, :meth:`complete`
and :meth:`fail`; it knows nothing about messages or MPI, so unit tests can
step it directly. Batches are handed out in row order (pull-based). A failed
batch is retried up to ``max_retries`` times, preferably on a rank where it
has not failed yet; after that it is given up, and the :class:`FailurePolicy`
decides whether the job may go on.

Every step costs O(1) in the number of ranks and of batches: the coordinator
calls it on every message, at thousands of ranks. Only the first RETRY_LOOKAHEAD
retries are searched for one that did not fail on the asking rank.

Its memory does not grow with the plan either: batches not yet handed out are a
cursor over the plan's batches (:class:`PendingBatches`; a ``BatchTable`` makes
each Batch as it is taken), the batches done are a bitmap (:class:`BatchIds`),
and only what is in flight, given back or failed is held as Batch objects.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, MutableSet, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

from .plan import Batch, BatchTable

# How many queued retries assign() looks through for one that has not failed on the
# asking rank (beyond them it hands out a new batch, or nothing): a rank whose every
# batch fails would otherwise scan the whole queue of retries on each request.
RETRY_LOOKAHEAD = 16

# How many batches PendingBatches makes at a time from the plan's table: enough that
# making them together costs less each, few enough that holding them costs nothing.
MADE_AHEAD = 64

_S = TypeVar("_S")


@dataclass(frozen=True)
class FailurePolicy:
    """How much failure a job tolerates, in Azure's terms (run_max_try, error_threshold,
    mini_batch_error_threshold, allowed_failed_percent), so an Azure user keeps her numbers.

    ``error_threshold``: items (rows, or files for file input) that may fail for
    good (-1: any number); a batch given up fails all its items, and a batch
    whose script returned fewer results than items fails the difference.
    ``mini_batch_error_threshold``: batches that may fail for good (-1: no limit
    of its own). ``allowed_failed_percent``: items as a share of all (None: no
    limit). ``items``: what an item is, for messages.
    """

    max_retries: int = 3
    error_threshold: int = 0
    allowed_failed_percent: float | None = None
    mini_batch_error_threshold: int = -1
    item: str = "row"

    def exceeded(self, failed_batches: int, failed_items: int, total_items: int,
                 short_batches: int = 0) -> str | None:
        """Why the failures so far are too many, or None while within budget.
        ``short_batches``: completed batches that returned fewer results than items."""
        if 0 <= self.mini_batch_error_threshold < failed_batches:
            return (f"{_count(failed_batches, 'batch', 'batches')} failed for good, more "
                    f"than --mini-batch-error-threshold {self.mini_batch_error_threshold}")
        where = [f"in {_count(failed_batches, 'batch', 'batches')}" if failed_batches else "",
                 f"{_count(short_batches, 'batch', 'batches')} short of results"
                 if short_batches else ""]
        detail = f" ({', '.join(filter(None, where))})"
        if 0 <= self.error_threshold < failed_items:
            return (f"{_count(failed_items, self.item)} failed for good{detail}, more than "
                    f"--error-threshold {self.error_threshold}")
        if self.allowed_failed_percent is not None and \
                100 * failed_items > self.allowed_failed_percent * total_items:
            return (f"{failed_items:,} of {_count(total_items, self.item)} failed{detail}, "
                    f"more than --allowed-failed-percent {self.allowed_failed_percent:g}")
        return None


def _count(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


@dataclass(frozen=True)
class Attempt:
    """One failed try of a batch: where, and what went wrong."""

    rank: int
    error: str
    traceback: str = ""


class BatchIds(MutableSet[int]):
    """A set of batch ids below ``count`` as a bitmap: count/8 bytes however many it
    holds (a set of a million ints takes ~60 MB). Operators with other sets give sets."""

    def __init__(self, count: int, ids: Iterable[int] = ()) -> None:
        self.count = count
        self.bits = bytearray((count + 7) // 8)
        self.size = 0
        self.update(ids)

    def __contains__(self, batch_id: object) -> bool:
        return isinstance(batch_id, int) and 0 <= batch_id < self.count and \
            bool(self.bits[batch_id >> 3] >> (batch_id & 7) & 1)

    def add(self, batch_id: int) -> None:
        if not 0 <= batch_id < self.count:
            raise ValueError(f"batch {batch_id}: not in a plan of {self.count:,} batches")
        byte, bit = batch_id >> 3, 1 << (batch_id & 7)
        if not self.bits[byte] & bit:
            self.bits[byte] |= bit
            self.size += 1

    def discard(self, batch_id: int) -> None:
        if batch_id in self:
            self.bits[batch_id >> 3] &= ~(1 << (batch_id & 7)) & 0xFF
            self.size -= 1

    def update(self, ids: Iterable[int]) -> None:
        for batch_id in ids:
            self.add(batch_id)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        """The ids in order."""
        for byte, bits in enumerate(self.bits):
            if bits:
                yield from (byte * 8 + bit for bit in range(8) if bits >> bit & 1)

    @classmethod
    def _from_iterable(cls, ids: Iterable[_S]) -> set[_S]:
        return set(ids)

    def __repr__(self) -> str:
        return f"BatchIds({self.count}, {sorted(self)!r})" if self.size <= 20 else \
            f"<BatchIds: {self.size:,} of {self.count:,}>"


class PendingBatches:
    """The batches not handed out yet, in the order they go: those given back (in
    front), then the plan's own from a cursor, skipping those in ``done`` (written
    before a resume). Holds the plan's sequence and a position, never a copy of it,
    and at most MADE_AHEAD Batches made ahead of the cursor (in ``front``, behind
    those given back): made together, they cost less each than made one by one.
    Batch ids are positions in ``batches``, as in every plan."""

    def __init__(self, batches: Sequence[Batch], done: Collection[int] = ()) -> None:
        self.batches = batches
        self.next = 0  # the cursor: the plan's batches from here on are pending
        self.done = done  # looked at as the cursor passes; a live set may grow behind it
        self.front: deque[Batch] = deque()  # given back, then made ahead: handed out first
        self.left = self.count = count = len(batches)
        self.take: Callable[[int, int], Sequence[Batch]] = \
            batches.take if isinstance(batches, BatchTable) else \
            lambda first, stop: batches[first:stop]
        self.done_below = 0  # from here on, nothing is skipped
        for batch_id in done:
            if 0 <= batch_id < count:
                self.left -= 1
                self.done_below = max(self.done_below, batch_id + 1)
        self._skip_done()

    def _skip_done(self) -> None:
        done = self.done
        while self.next < self.done_below and self.next in done:
            self.next += 1

    def popleft(self) -> Batch | None:
        """The next batch (taken off), or None when none is left."""
        front = self.front
        if not front and not self._make_ahead():
            return None
        self.left -= 1
        return front.popleft()

    def _make_ahead(self) -> bool:
        """Make the next batches from the cursor into ``front``; False if none is left."""
        first = self.next
        if first >= self.count:
            return False
        if first < self.done_below:  # a resume's done batches lie ahead: one at a time
            self.front.append(self.batches[first])
            self.next += 1
            self._skip_done()
        else:
            self.next = stop = min(first + MADE_AHEAD, self.count)
            self.front.extend(self.take(first, stop))
        return True

    def appendleft(self, batch: Batch) -> None:
        """``batch`` goes out next (it was handed out and came back unfinished)."""
        self.front.appendleft(batch)
        self.left += 1

    def __len__(self) -> int:
        return self.left

    def rows(self) -> int:
        """The rows (items, for file input) of what is left, without making every Batch
        of a BatchTable."""
        table, first = self.batches, self.next
        if not isinstance(table, BatchTable):
            return sum(batch.rows for batch in self)
        skipped = [position for position in self.done if first <= position < len(table)] \
            if first < self.done_below else []
        return (table.rows_between(first) + sum(batch.rows for batch in self.front)
                - sum(table.batch(i).rows for i in skipped))

    def __iter__(self) -> Iterator[Batch]:
        """What is left, in the order it goes (each Batch made as it is reached)."""
        yield from self.front
        batches, done = self.batches, self.done
        for position in range(self.next, len(batches)):
            if position >= self.done_below or position not in done:
                yield batches[position]


@dataclass
class Scheduler:
    """Tracks pending, in-flight, completed and failed batches."""

    pending: PendingBatches
    total_rows: int
    policy: FailurePolicy = field(default_factory=FailurePolicy)
    retries: deque[Batch] = field(default_factory=deque)
    in_flight: dict[int, tuple[Batch, int]] = field(default_factory=dict)  # id -> batch, rank
    held: Counter[int] = field(default_factory=Counter)  # batches in flight, by rank
    completed: MutableSet[int] = field(default_factory=set)  # BatchIds from for_batches
    short: dict[int, int] = field(default_factory=dict)  # completed id -> items without result
    attempts: dict[int, list[Attempt]] = field(default_factory=dict)
    failed: dict[int, Batch] = field(default_factory=dict)
    stop_reason: str | None = None
    stop_error: str | None = None  # the MpiscoreError class a halt ends the job with
    failed_rows: int = 0  # items failed for good: every item of a batch given up, and
    # those a completed batch returned no result for (kept as they happen: O(1) to read)

    @classmethod
    def for_batches(cls, batches: Iterable[Batch], total_rows: int,
                    policy: FailurePolicy | None = None, done: Collection[int] = ()
                    ) -> Scheduler:
        """A scheduler handing out ``batches`` (a plan's, ids their positions) in order,
        but those in ``done``, which count as completed (a resume)."""
        batches = batches if isinstance(batches, Sequence) else tuple(batches)
        completed = BatchIds(len(batches), done)
        return cls(pending=PendingBatches(batches, completed), total_rows=total_rows,
                   policy=policy or FailurePolicy(), completed=completed)

    def assign(self, rank: int) -> Batch | None:
        """The next batch for ``rank``: a retry that did not fail there, else a new one."""
        if self.stop_reason is not None:
            return None
        if self.retries:
            batch = self._retry_for(rank) or self.pending.popleft()
            if batch is None and not self.in_flight:
                batch = self.retries.popleft()  # no other rank is busy: retry where it failed
            if batch is None:
                return None
        else:
            batch = self.pending.popleft()
            if batch is None:
                return None
        self.in_flight[batch.batch_id] = (batch, rank)
        self.held[rank] += 1
        return batch

    def assign_many(self, rank: int, count: int, ranks: int) -> list[Batch]:
        """Up to ``count`` batches for ``rank`` (of ``ranks``) in row order, as many as
        :meth:`may_take` lets it hold: a bundle for one message."""
        taken: list[Batch] = []
        while len(taken) < count and self.may_take(rank, ranks):
            batch = self.assign(rank)
            if batch is None:
                break
            taken.append(batch)
        return taken

    @property
    def has_work(self) -> bool:
        """Whether there is anything to hand out (pending or retries, and not stopping)."""
        return self.stop_reason is None and bool(self.pending.left or self.retries)

    def fair_share(self, ranks: int) -> int:
        """The most batches a rank should hold before taking one more, of ``ranks``
        (see :meth:`may_take`)."""
        return max(1, -(-(self.pending.left + len(self.retries)) // ranks))

    def may_take(self, rank: int, ranks: int) -> bool:
        """Whether ``rank`` may take another batch (of ``ranks``): at the tail each holds
        little more than its share of what is left to hand out (guided
        self-scheduling), so the last batches go to the ranks that free up first
        instead of queueing behind a busy one. A lone rank always may."""
        return ranks == 1 or self.held[rank] <= self.fair_share(ranks)

    def _retry_for(self, rank: int) -> Batch | None:
        for index, batch in enumerate(islice(self.retries, RETRY_LOOKAHEAD)):
            if all(a.rank != rank for a in self.attempts[batch.batch_id]):
                del self.retries[index]
                return batch
        return None

    def attempt(self, batch_id: int) -> int:
        """How many times the batch has failed so far (0 on its first try)."""
        return len(self.attempts.get(batch_id, ()))

    def complete(self, batch_id: int, rank: int, failed_items: int = 0) -> Batch:
        """Record that ``rank`` finished ``batch_id`` and its output is written, short of
        results for ``failed_items`` of its items (they count against the budget)."""
        batch = self._take(batch_id, rank)
        self.completed.add(batch_id)
        if failed_items:
            self.short[batch_id] = failed_items
            self.failed_rows += failed_items
            self._check_budget()
        return batch

    def fail(self, batch_id: int, attempt: Attempt) -> bool:
        """Record a failed try; True if the batch is given up for good."""
        batch = self._take(batch_id, attempt.rank)
        tries = self.attempts.setdefault(batch_id, [])
        tries.append(attempt)
        if len(tries) <= self.policy.max_retries:
            self.retries.append(batch)
            return False
        self.failed[batch_id] = batch
        self.failed_rows += batch.rows
        self._check_budget()
        return True

    def _check_budget(self) -> None:
        reason = self.policy.exceeded(len(self.failed), self.failed_rows, self.total_rows,
                                      len(self.short))
        if reason:
            self.halt(f"error budget exceeded: {reason}", "ScoringError")

    def give_back(self, batch_id: int, rank: int) -> None:
        """A batch returned unfinished at a stop: hand it out again later, no try counted."""
        batch = self._take(batch_id, rank)
        if self.attempts.get(batch_id):
            self.retries.appendleft(batch)
        else:
            self.pending.appendleft(batch)

    def stop(self, reason: str) -> None:
        """Hand out nothing more (graceful stop); in-flight batches may still report."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def halt(self, reason: str, error: str) -> None:
        """Stop as :meth:`stop` does, because of an error that ends the job with the
        MpiscoreError class named ``error`` (the first such reason wins)."""
        if self.stop_error is None:
            self.stop_reason, self.stop_error = reason, error

    def _take(self, batch_id: int, rank: int) -> Batch:
        batch, owner = self.in_flight.pop(batch_id, (None, None))
        if batch is None or owner != rank:
            raise RuntimeError(
                f"batch {batch_id} reported by rank {rank}, but was assigned to {owner}")
        self.held[rank] -= 1
        return batch

    @property
    def finished(self) -> bool:
        """Nothing in flight and nothing more to hand out."""
        if self.in_flight:
            return False
        return self.stop_reason is not None or not (self.pending.left or self.retries)

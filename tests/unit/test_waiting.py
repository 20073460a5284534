"""How ranks wait: the pacer's polls, what a worker is owed, and how seldom it looks at MPI."""

from __future__ import annotations

import pytest

from mpiscore.plan import Batch, SourceFile, make_plan
from mpiscore.rank.coordinator import RemoteWait, _events_in
from mpiscore.rank.messages import Assign, Completed, Failed, Finished, Message, Request, Stop
from mpiscore.rank.pool import Outcome, depth_for, kept_for, low_mark
from mpiscore.rank.worker import RankWorker, work
from mpiscore.rank.world import Pacer
from mpiscore.tuning import (
    IDLE_POLL_SHARE,
    LONGEST_WAIT_SECONDS,
    MAX_SLEEP_SECONDS,
    PROMPT_WAIT_SECONDS,
    STARTING_SECONDS,
)
from mpiscore.wire import StageTimes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_starts_small_and_doubles_up_to_its_most_before_any_interval() -> None:
    clock = Clock()
    pacer = Pacer(0.25, first=1e-5, most=0.05, clock=clock)
    clock.now += STARTING_SECONDS
    delays = [pacer.next_delay() for _ in range(16)]
    assert delays[0] == 1e-5 and delays[1] == 2e-5
    assert max(delays) == 0.05 and delays[-1] == 0.05


def test_before_its_first_event_a_starting_pacer_waits_no_longer_than_a_prompt_wait() -> None:
    """A rank's first Request, and rank 0's first Assign, are looked for every few ms
    (they start the rank) for STARTING_SECONDS; then as long as any other silence. After
    its first, no wait is under MAX_SLEEP_SECONDS: poll(2) would wait that anyway."""
    clock = Clock()
    pacer = Pacer(0.25, first=1e-5, most=0.05, clock=clock)
    delays, start = [], clock.now
    while clock.now < start + STARTING_SECONDS:
        delays.append(pacer.next_delay())
        clock.now += delays[-1]
    assert delays[0] == 1e-5 and max(delays) == PROMPT_WAIT_SECONDS
    assert delays[1:3] == [MAX_SLEEP_SECONDS, PROMPT_WAIT_SECONDS]
    assert max(pacer.next_delay() for _ in range(16)) == 0.05


def test_after_its_first_event_a_starting_pacer_stays_prompt_until_it_knows_a_pace() -> None:
    """A rank's first report (and its request for more as its processes deepen) comes
    one batch after its first Request: rank 0 looks for it within an eighth of the
    silence so far, not after waits doubled to its most; once two events give a pace,
    the pace rules."""
    clock = Clock()
    pacer = Pacer(0.25, first=1e-5, most=0.05, clock=clock)
    pacer.event()
    start, delays = clock.now, []
    while clock.now < start + 0.1:  # 0.1 s with no second event: prompt, then an eighth
        delays.append(pacer.next_delay())  # of the silence so far, no more
        clock.now += delays[-1]
    assert PROMPT_WAIT_SECONDS in delays
    assert all(delay <= max(PROMPT_WAIT_SECONDS, 0.101 / 8) for delay in delays)
    assert len(delays) < 40
    pacer.event()
    assert pacer.interval is not None and pacer.interval > 0.05
    assert max(pacer.next_delay() for _ in range(16)) == 0.05


def test_pacer_polls_a_share_of_the_interval_after_an_event_and_no_longer_apart() -> None:
    clock = Clock()
    pacer = Pacer(0.25, first=1e-5, most=0.05, clock=clock)
    for _ in range(3):  # events every 10 ms
        pacer.event()
        clock.now += 0.01
    pacer.event()
    assert pacer.interval == pytest.approx(0.01)
    delays = []
    for _ in range(4):  # the next event is due: waits grow to the interval, no further
        delays.append(pacer.next_delay())
        clock.now += delays[-1]
    assert delays == pytest.approx([0.0025, 0.005, 0.01, 0.01])


def test_rank_zero_paces_a_rank_that_may_run_dry_by_its_batches_else_by_its_reports(
        ) -> None:
    """A report of 4 batches every 40 ms: 10 ms between events from a rank that may run
    dry (answered at its batches' pace), 40 ms from one whose processes hold plenty."""
    for running_low, interval in ((True, 0.01), (False, 0.04)):
        clock = Clock()
        pacer = Pacer(0.25, first=1e-5, most=0.05, clock=clock)
        report = Completed((1, 2, 3, 4), running_low=running_low)
        for _ in range(3):
            pacer.event(_events_in(report))
            clock.now += 0.04
        pacer.event(_events_in(report))
        assert pacer.interval == pytest.approx(interval)
    assert _events_in(Request(5)) == 1


def test_rank_zero_waits_its_longest_while_no_other_rank_may_run_dry() -> None:
    """Ranks 1 and 2 start wanting work (paced); once each has said its processes hold
    plenty, rank 0 waits its longest; a report that says low, or a failure, paces it
    again."""
    remote = RemoteWait([1, 2])
    for rank in (1, 2):
        remote.heard(rank, Completed((rank,), running_low=True))
    assert remote.next_delay() < LONGEST_WAIT_SECONDS
    remote.heard(1, Completed((3, 4), running_low=False))
    assert remote.next_delay() < LONGEST_WAIT_SECONDS  # rank 2 may still run dry
    remote.heard(2, Completed((5, 6), running_low=False))
    assert [remote.next_delay() for _ in range(3)] == [LONGEST_WAIT_SECONDS] * 3
    remote.heard(2, Failed(7, "boom"))
    assert remote.low == {2}
    remote.heard(2, Completed((8,), running_low=False))
    remote.heard(1, Completed((9,), running_low=True))
    assert remote.low == {1}


def test_short_batches_deepen_to_three_reports_and_the_rank_keeps_their_writes_too(
        ) -> None:
    """10 ms batches: a report every 0.1 s says ~10, so a process holds 31 and two thirds
    are still there when it reports (not low even before the answer to its last report
    comes); the rank keeps half as many again written and waiting for the Done in the
    next report. Long batches stay at SCORING_DEPTH; the depth is bounded."""
    assert depth_for(0.01) == 31
    assert kept_for(31) == 31 + 14
    assert low_mark(31) == 10 < 31 - 2 * 10  # two reports' 10 taken away: not low
    assert low_mark(2) == low_mark(5) == 2
    assert depth_for(0.1) == depth_for(0.5) == depth_for(0.0) == 2 and kept_for(2) == 2
    assert depth_for(0.05) == 7
    assert depth_for(1e-6) == 32


def test_pacer_waits_up_to_its_most_once_events_have_stopped() -> None:
    clock = Clock()
    pacer = Pacer(0.25, first=1e-5, most=0.05, clock=clock)
    clock.now += STARTING_SECONDS  # past the start's prompt waits
    pacer.event()
    clock.now += 0.01
    pacer.event()
    clock.now += 0.05  # five intervals without an event: the job's tail, or a stop
    delays = [pacer.next_delay() for _ in range(6)]
    assert delays[-1] == 0.05


def test_a_report_of_several_batches_moves_the_mean_as_their_events_one_by_one_would(
        ) -> None:
    """Events every 10 ms, then every 1 ms: one pacer sees them one by one, the other in
    reports of 4 every 4 ms (a worker's wake-up, a rank's Completed). Both learn the
    faster pace alike; a report weighing as one event would leave the second at ~2x the
    first's interval, and its rank polling for a reply half as often."""
    clock = Clock()
    single, bundled = (Pacer(1.0, first=1e-5, most=0.05, clock=clock) for _ in range(2))
    for _ in range(8):
        clock.now += 0.01
        single.event(), bundled.event()
    for step in range(8):
        clock.now += 0.001
        single.event()
        if step % 4 == 3:
            bundled.event(4)
    assert single.interval == pytest.approx(bundled.interval)
    assert single.interval < 0.007


def test_a_silence_between_bursts_is_no_stop() -> None:
    """Seven ranks answer each hand-out with two reports each within 2 ms, every 20 ms:
    the mean interval is ~3 ms, but a silence of 20 ms is the pace, and the pacer
    keeps polling within the interval through it. Taken for a stop, the waits would
    back off to 50 ms, the other ranks would back off waiting for the answer, and each
    round trip would take the longest wait on both sides for good."""
    clock = Clock()
    pacer = Pacer(0.25, first=1e-5, most=0.05, clock=clock)
    clock.now += STARTING_SECONDS  # past the start's prompt waits
    for _ in range(20):
        for _ in range(14):
            pacer.event()
            clock.now += 0.00015
        clock.now += 0.018
    pacer.event()
    assert pacer.interval is not None and pacer.interval < 0.003
    waited, delays = 0.0, []
    while waited < 0.02:
        delays.append(pacer.next_delay())
        waited += delays[-1]
        clock.now += delays[-1]
    assert max(delays) <= pacer.interval
    clock.now += 0.2  # ten bursts missed: now the ranks have stopped
    assert max(pacer.next_delay() for _ in range(8)) == 0.05


def test_a_slow_job_polls_every_most_seconds() -> None:
    clock = Clock()
    pacer = Pacer(0.25, first=1e-5, most=0.05, clock=clock)
    pacer.event()
    clock.now += 4.0  # 4 s batches
    pacer.event()
    assert pacer.next_delay() == 0.05


class Link:
    """A worker's link with the coordinator's side scripted: each poll takes the next
    message given, and counts."""

    def __init__(self) -> None:
        self.inbox: list[Message] = []
        self.sent: list[Message] = []
        self.polls = 0

    def poll(self) -> Message | None:
        self.polls += 1
        return self.inbox.pop(0) if self.inbox else None

    def send(self, message: Message) -> None:
        self.sent.append(message)


class Pool:
    """One process holding any number of batches; ``poll`` ends the oldest at the
    ``wakes`` given (one wake-up per poll), and counts its waits."""

    def __init__(self, ends: list[bool], deeper: int = 0) -> None:
        self.held: list[Batch] = []
        self.ends, self.timeouts = ends, []
        self.deeper = deeper  # what deepen allows once
        self.seconds_seen: list[float] = []

    @property
    def idle(self) -> list[int]:
        return [0]

    @property
    def running_low(self) -> bool:
        return bool(self.idle)

    @property
    def holding(self) -> bool:
        return bool(self.held)

    def hand_over(self) -> None:
        pass

    def deepen(self, seconds_per_batch: float) -> int:
        self.seconds_seen.append(seconds_per_batch)
        more, self.deeper = self.deeper, 0
        return more

    def submit_to(self, proc: int, batch: Batch, attempt: int) -> None:
        self.held.append(batch)

    def poll(self, timeout: float) -> list[Outcome]:
        self.timeouts.append(timeout)
        if self.ends and self.ends.pop(0) and self.held:
            return [Outcome(self.held.pop(0), True, times=StageTimes(0.001, 0.002, 0.003))]
        return []

    def abandon(self) -> list[Batch]:
        return []


BATCHES = make_plan([SourceFile("a.h5", 100)], 10).batches


def test_a_worker_is_owed_what_it_asked_for_and_was_not_assigned() -> None:
    link, pool = Link(), Pool([True])
    worker = RankWorker(pool, link, window=3)
    worker.start()
    assert link.sent == [Request(3)] and worker.owed == 3
    worker.handle(Assign(BATCHES[:2], (1, 1)))
    assert worker.owed == 1
    assert worker.patience() < LONGEST_WAIT_SECONDS  # an answer is due: look again soon
    worker.handle(Assign(BATCHES[2:3], (1,)))
    assert worker.owed == 0 and worker.patience() == LONGEST_WAIT_SECONDS
    worker.poll(0.0)  # a batch ended: reported, and one more is owed
    assert isinstance(link.sent[-1], Completed) and worker.owed == 1


def test_a_worker_that_asked_before_its_processes_were_ready_asks_once() -> None:
    """A rank other than 0 starts its worker (its first Request) before its scoring
    processes are ready (api.run), then its loop starts it again: no second Request."""
    link, pool = Link(), Pool([True])
    worker = RankWorker(pool, link, window=3)
    worker.start()
    link.inbox.append(Stop())
    work(worker, lambda: None)
    assert link.sent == [Request(3), Finished()] and worker.requested == 3


def test_short_batches_deepen_the_processes_and_the_window_grows_to_match() -> None:
    """Once batches prove short the pool lets its processes hold more: the worker asks
    for as many more at once, after its report, and keeps them in its window."""
    link, pool = Link(), Pool([True, True], deeper=5)
    worker = RankWorker(pool, link, window=3)
    worker.start()
    worker.handle(Assign(BATCHES[:3], (0, 0, 0)))
    worker.poll(0.0)
    assert link.sent == [Request(3), Completed((BATCHES[0].batch_id,)), Request(5)]
    assert pool.seconds_seen == [pytest.approx(0.006)]  # read + score + write a batch
    assert worker.window == 8 and worker.owed == 1 + 5
    worker.poll(0.0)  # no deeper: nothing more asked
    assert link.sent[-1] == Completed((BATCHES[1].batch_id,))


def test_a_worker_with_its_window_full_looks_at_mpi_only_every_longest_wait() -> None:
    link, pool = Link(), Pool([False] * 50)
    worker = RankWorker(pool, link, window=2)
    link.inbox = [Assign(BATCHES[:2], (1, 1))]
    stopped = []

    def stop_requested() -> str | None:  # 50 wake-ups of the pipes with nothing ending
        if not pool.ends and not stopped:
            stopped.append(True)
            link.inbox.append(Stop())
        return None

    polls_before = link.polls
    work(worker, stop_requested)
    # the window is full from the first assignment on: no probe of MPI per wake-up
    assert link.polls - polls_before < 10
    assert all(timeout == LONGEST_WAIT_SECONDS for timeout in pool.timeouts)


class HoldingPool(Pool):
    """A Pool that runs low when it holds fewer than two batches."""

    @property
    def running_low(self) -> bool:
        return len(self.held) < 2


def test_a_report_says_low_only_after_the_waiting_answer_is_taken_in() -> None:
    """The answer to the worker's last report is waiting on the link when the next batch
    ends: the worker hands it to its process before it reports, so the report says
    what the process holds then (not low) and rank 0 need not hurry. A Stop met so is
    kept for the loop, which says Finished."""
    link, pool = Link(), HoldingPool([True, True])
    worker = RankWorker(pool, link, window=3)
    worker.start()
    worker.handle(Assign(BATCHES[:3], (0, 0, 0)))
    worker.poll(0.0)  # one ended; two held, one more owed
    assert link.sent[-1] == Completed((BATCHES[0].batch_id,), running_low=False)
    link.inbox = [Assign(BATCHES[3:4], (0,))]
    worker.poll(0.0)  # the second ended: one held, until the answer waiting is fed
    assert link.sent[-1] == Completed((BATCHES[1].batch_id,), running_low=False)
    assert len(pool.held) == 2 and not link.inbox
    link.inbox = [Stop()]
    worker.take_in()
    assert worker.stopped
    work(worker, lambda: None)
    assert link.sent[-1] == Finished()


def paced_every_10_ms(clock: Clock) -> Pacer:
    """A worker's pacer (a whole interval's share) whose last event came just now, past
    the start's prompt waits."""
    pacer = Pacer(1.0, first=1e-5, most=0.05, clock=clock)
    clock.now += STARTING_SECONDS
    for _ in range(4):
        clock.now += 0.01
        pacer.event()
    return pacer


def test_an_idle_caller_s_waits_grow_to_an_eighth_of_the_interval_while_the_pace_holds(
        ) -> None:
    """Nothing but MPI can wake a rank that holds no batch (the Stop, the last reports):
    it polls at an eighth of the interval, or of the silence once longer, not at the
    whole interval, until the pace is lost."""
    clock = Clock()
    busy, idle = paced_every_10_ms(Clock()), paced_every_10_ms(clock)
    assert [busy.next_delay() for _ in range(3)] == pytest.approx([0.01] * 3)
    assert [idle.next_delay(idle=True) for _ in range(3)] == pytest.approx([0.00125] * 3)
    clock.now += 0.03  # longer than the interval: up to an eighth of the silence
    assert max(idle.next_delay(idle=True) for _ in range(4)) == pytest.approx(0.03 / 8)
    clock.now += 0.02  # five intervals of silence: the pace is lost, waits grow again
    assert max(idle.next_delay(idle=True) for _ in range(8)) == 0.05


def test_a_worker_that_holds_no_batch_is_idle_and_looks_sooner() -> None:
    link, pool = Link(), Pool([True] * 4)
    worker = RankWorker(pool, link, window=2)
    worker.start()
    worker.handle(Assign(BATCHES[:1], (0,)))
    assert not worker.idle and worker.owed == 1
    worker.pacer = paced_every_10_ms(Clock())
    assert worker.patience() == pytest.approx(0.01)
    worker.pacer = paced_every_10_ms(Clock())
    worker.poll(0.0)  # its one batch ended: it holds none, and is owed two
    assert worker.idle and worker.owed == 2
    assert worker.pacer.interval is not None
    assert worker.patience() == pytest.approx(worker.pacer.interval * IDLE_POLL_SHARE)


def test_rank_zero_idle_looks_for_ranks_whose_processes_hold_plenty() -> None:
    remote = RemoteWait([1])
    remote.heard(1, Completed((1,), running_low=True))
    remote.heard(1, Completed((2, 3), running_low=False))
    assert remote.next_delay() == LONGEST_WAIT_SECONDS
    assert remote.next_delay(idle=True) < LONGEST_WAIT_SECONDS


@pytest.mark.parametrize(("interval", "idle_most"), [(0.002, 0.001), (0.0005, 0.0005)])
def test_an_idle_caller_of_a_fast_pace_waits_no_shorter_than_a_sleep_or_its_interval(
        interval: float, idle_most: float) -> None:
    """Batches of a few ms or less: idle waits grow to MAX_SLEEP_SECONDS, or to the
    interval where that is shorter (as busy ones do), not to an eighth of it: ranks
    that wait for instant batches (benchmarks/dispatch.py) would spin."""
    clock = Clock()
    pacer = Pacer(1.0, first=1e-5, most=0.05, clock=clock)
    for _ in range(4):
        clock.now += interval
        pacer.event()
    assert max(pacer.next_delay(idle=True) for _ in range(12)) == pytest.approx(idle_most)


def test_while_starting_a_pace_lost_at_once_still_polls_an_eighth_of_the_silence() -> None:
    """At -n 3 and more, two ranks' first Requests come microseconds apart: a pace that
    is lost at once. Their first reports, a batch later, are still looked for within an
    eighth of the silence, not after waits doubled to the most (a 0.24 s batch's report
    was seen 115 ms late)."""
    clock = Clock()
    pacer = Pacer(0.25, first=1e-5, most=0.15, clock=clock)
    pacer.event()
    clock.now += 1e-5
    pacer.event()
    polls = 0
    while clock.now < 100.24:  # a batch of 0.24 s, its report due at its end
        clock.now += pacer.next_delay()
        polls += 1
    assert clock.now < 100.24 + 0.24 / 8 + 1e-9 and polls < 60

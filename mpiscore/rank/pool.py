"""The scoring processes of a rank: start, feed, watch, replace.

Each rank drives ``procs`` scoring processes: fresh interpreters running
scoring/main.py (never ``fork`` of an MPI process), the first started before the
rank even imports MPI (see __main__.py), so their interpreter start and
imports (onnxruntime) overlap with the rank's own. Rank 0's first process also
checks and plans the job (scoring/prepare.py), so no rank ever loads onnxruntime.
A scoring process opens its own reader, scorer and writer once, then reads,
scores and writes whole batches itself; only batch descriptors and small
results cross the pipe (wire.py: the messages, exchange by exchange), never
arrays. A process that dies (segfault, OOM kill) or runs past the batch timeout
is killed and replaced, and its batch reported failed so the coordinator can
retry it. Scoring processes ignore SIGINT/SIGTERM (their rank decides how to
stop) and die with their rank (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import math
import select
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..errors import Interrupted, ModelError, ScoringProcessError
from ..lock import JobLock, LockOwner, lock_paths
from ..placement import layout, scorer_settings
from ..plan import Batch
from ..tuning import (
    CLOSE_TIMEOUT_SECONDS,
    LONGEST_WAIT_SECONDS,
    MAX_SCORING_DEPTH,
    REPORT_SECONDS,
    SCORING_DEPTH,
    SHUTDOWN_TIMEOUT_SECONDS,
    START_TIMEOUT_SECONDS,
)
from ..wire import (
    BatchFailed,
    Close,
    Closed,
    DryRunDone,
    Durable,
    Flushed,
    JobPrepared,
    Preopen,
    PrepareFailed,
    PrepareRequest,
    Ready,
    Scored,
    ScorerSpec,
    StageSeconds,
    StartFailed,
    ToRank,
    recv_at_rank,
    unexpected,
    wait,
)
from .process import ScorerProcess
from .signals import early_stop

if TYPE_CHECKING:  # this module stays light: the rank imports it before anything heavy
    from ..config import JobConfig, ScorerSettings
    from ..estimate import DryRun
    from ..job import Job
    from .recorder import Recorder
    from .world import World



class Outcome(NamedTuple):
    """How a batch ended in a scoring process (one per batch, made between a rank's
    waits: a NamedTuple costs a third of a frozen dataclass to make)."""

    batch: Batch
    ok: bool
    error: str = ""
    traceback: str = ""
    times: StageSeconds | None = None
    returned: bool = False  # lost with a process killed for another batch: no try counted
    fatal: str = ""  # the error is not the batch's (messages.Failed.fatal)
    failed_items: int = 0  # done, but without results for so many items (wire.Done)


def start_pool(config: JobConfig, world: World,
               started: Sequence[ScorerProcess] = ()) -> ScorerPool:
    """This rank's scoring processes for ``config``: as many as the layout gives each rank
    of its node, with the session settings of the rank's place on the node."""
    local_rank, ranks_on_node = world.node_local()
    return ScorerPool(layout(config, ranks_on_node).procs, config.batch_timeout,
                      scorer_settings(config, local_rank, ranks_on_node, world.rank), started,
                      rank=world.rank)


class ScorerPool:
    """``size`` scoring processes of one rank, replaced when they crash or hang."""

    def __init__(self, size: int, batch_timeout: float | None, settings: ScorerSettings,
                 started: Sequence[ScorerProcess] = (), rank: int = 0) -> None:
        """Start the processes now (adopting ``started`` ones, launched even earlier);
        they get their job from :meth:`start`. ``settings``: their sessions'; ``rank``:
        this rank's number, naming its events file (recorder.py)."""
        self.batch_timeout, self.settings = batch_timeout, settings
        self.procs = [*started, *(ScorerProcess() for _ in range(size - len(started)))]
        self.size = size
        self.spec: ScorerSpec | None = None
        self.restarts = 0
        self.cpu_seconds = 0.0  # of the processes that closed normally
        self.run_rows: list[int] = []  # of the processes that closed normally (Closed)
        self.peak_rss_mib = 0.0
        self.shutdown_errors: list[str] = []  # scripts' shutdown() that failed or hung
        # batches that ended while :meth:`start` waited for the other processes (a rank
        # asks for work before they are ready): the next poll returns them
        self.ended_while_starting: list[Outcome] = []
        self.preparing: PrepareRequest | None = None
        self.closing: list[ScorerProcess] = []
        self.rank = rank
        self.recorder: Recorder | None = None  # from start(): each try, resource samples
        self.poller = select.poll()  # on the pipes in ``watched``, kept while they are the same
        self.watched: tuple[int, ...] = ()
        self.next_look = 0.0  # when to look again whether processes that said nothing live
        self.preopening = False
        self.preopened = 0  # processes whose Ready said their session was the preopened one
        self.depth = SCORING_DEPTH  # batches each process may hold not yet Scored (deepen)

    def preopen(self, config: JobConfig) -> None:
        """Have every process but the one preparing the job (rank 0's first) open the ONNX
        model's session from its path now, while rank 0 prepares the job (wire.Preopen);
        :meth:`start` then finds it open if it is the job's. Once; an entry script never
        (its init() runs only once the job's lock is taken). Not for a dry run: its
        processes time batches with sessions of their own."""
        if self.preopening or config.scorer_kind != "onnx":
            return
        self.preopening = True
        request = Preopen(config.scorer_kind, str(config.scorer_file), self.settings)
        for proc in self.procs[1 if self.rank == 0 else 0:]:
            with contextlib.suppress(OSError):  # it died starting: start() replaces it
                proc.conn.send(request)

    def prepare(self, config: JobConfig, dry_run_seconds: float = 0.0,
                settings: ScorerSettings | None = None) -> None:
        """Rank 0: ask the first scoring process to check the job, plan it and create the
        output (prepare.py); :meth:`prepared` waits for the answer. Asks once.

        That process loads the model anyway, keeping its session for scoring; the
        rank never imports onnxruntime, and can import the rest meanwhile. For a dry
        run (``dry_run_seconds`` > 0, :meth:`dry_run_done` waits) it checks the job
        and times batches instead, with ``settings`` if given.
        """
        if self.preparing is None:
            self.preparing = PrepareRequest(config, settings or self.settings,
                                            LockOwner.here(), dry_run_seconds, time.time())
            try:
                self.procs[0].conn.send(self.preparing)
            except OSError:  # it died starting (killed, out of memory): one fresh try
                self.procs[0].kill()
                self.procs[0] = ScorerProcess()
                self.procs[0].conn.send(self.preparing)

    def prepared(self) -> tuple[Job, set[int]]:
        """The job :meth:`prepare` asked for, and the batches an interrupted run already
        wrote; raises the error the checks found."""
        answer = self._answer()
        if not isinstance(answer, JobPrepared):
            raise unexpected(answer, "JobPrepared or PrepareFailed")
        return answer.job, answer.done

    def dry_run_done(self) -> DryRun:
        """What the dry run :meth:`prepare` asked for found; raises the error the checks
        found."""
        answer = self._answer()
        if not isinstance(answer, DryRunDone):
            raise unexpected(answer, "DryRunDone or PrepareFailed")
        return answer.dry

    def _answer(self) -> ToRank:
        assert self.preparing is not None, "prepare() first"
        first, request = self.procs[0], self.preparing
        config = request.config
        lock = JobLock(lock_paths(config.output, config.resolved_run_dir), request.owner)
        stop_by = None
        while not wait([first.conn], 1.0):
            if not request.dry_run_seconds:  # a dry run takes no lock
                lock.refresh(taken=False)  # planning 10,000 files may take minutes: stay alive
            if not first.alive():
                break
            if stop_by is None and early_stop() is not None:
                stop_by = time.monotonic() + config.stop_grace
            if stop_by is not None and time.monotonic() > stop_by:
                first.process.kill()  # its pipe stays for close(), which sees it ended
                first.join(5)
                lock.release()  # taken by it for this rank, if it got that far
                raise Interrupted(
                    f"{early_stop()}: {config.scorer_file} was still being loaded and the job "
                    f"checked --stop-grace {config.stop_grace:g}s later (an entry script's "
                    "init() that does not return?); nothing was scored: rerun it") from None
        try:
            answer = recv_at_rank(first.conn)
        except (EOFError, OSError):
            first.join(1)
            lock.release()  # taken by it for this rank, if it got that far: nobody else will
            code = first.process.returncode
            if config.entry_script is not None and code is not None and code > 0:
                raise ModelError(  # a signal would be the node's; an exit code, the script's
                    f"{config.scorer_file}: the scoring process exited with code {code} while "
                    "the entry script was loaded (os._exit or exit from C in its init() or "
                    "at import?); see its log in the run directory") from None
            raise ScoringProcessError(
                f"{config.scorer_file}: the scoring process died while loading the "
                f"{'model' if config.entry_script is None else 'entry script'} and checking "
                f"the job ({first.exit_text()})") from None
        if isinstance(answer, PrepareFailed):
            raise answer.error
        return answer

    def start(self, spec: ScorerSpec, stopping: Callable[[], bool] = lambda: False) -> None:
        """Hand every process the job and wait until each has its scorer ready, or until
        a stop comes (a signal, or ``stopping``: rank 0's Drain): the loop then stops
        the job, and closing the pool ends the processes still starting, so that one
        whose entry script's init() does not return holds no rank past a stop."""
        self.spec = spec
        if self.recorder is None:
            self.recorder = self._open_recorder(spec)
        for index, proc in enumerate(self.procs):
            prepared = index == 0 and self.preparing is not None
            try:
                proc.conn.send(spec._replace(model_bytes=None) if prepared else
                               spec if index == 0 else spec._replace(records_death=False))
            except OSError:  # it died since it started: a fresh one, given the model
                self._replace(index)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not all(p.ready for p in self.procs):
            if time.monotonic() > deadline:
                config = spec.job.config
                what = (f"the entry script {config.scorer_file}'s init() did not return"
                        if config.scorer_kind == "script" else
                        f"the model {config.scorer_file} did not load")
                raise ScoringProcessError(f"{spec.where}: scoring processes did not start "
                                          f"in {START_TIMEOUT_SECONDS:.0f}s: {what}; see "
                                          "their log, then --resume")
            if early_stop() is not None or stopping():
                return
            ended = self.poll(1.0)  # a ready process's batches (poll takes those kept
            self.ended_while_starting.extend(ended)  # before, so += would add them twice)
    def _open_recorder(self, spec: ScorerSpec) -> Recorder:
        from .recorder import Recorder  # json and the events format: after the start-up

        config = spec.job.config
        return Recorder(config.resolved_run_dir, self.rank, spec.job.lock.owner.token,
                        self.size, not config.resume, config.monitor_seconds,
                        lambda: [p.process.pid for p in self.procs])

    def submit_to(self, proc: ScorerProcess, batch: Batch, attempt: int) -> None:
        """Give ``proc`` a batch; :meth:`hand_over` sends it."""
        if self.recorder is not None:
            self.recorder.sent(self.procs.index(proc), batch, attempt)
        proc.submit(batch, attempt)

    def hand_over(self) -> None:
        """Send each process what :meth:`submit_to` gave it since, in one message."""
        for proc in self.procs:
            proc.send()

    def deepen(self, seconds_per_batch: float) -> int:
        """Let each process hold three times the batches it scores in about
        REPORT_SECONDS (depth_for), as its Scored of short batches wait that long
        (scoring/main.py _Sender): when it reports, two thirds are still there, so it
        is not low (:attr:`running_low`) and neither this rank nor rank 0 hurries to
        refill it. Only ever more. The batches the rank may now keep beyond
        what it could, in all (it asks for as many): the deeper share of each process,
        and half as many again for its written batches, whose Done rides in its next
        report."""
        depth = depth_for(seconds_per_batch)
        if depth <= self.depth:
            return 0
        before, self.depth = self.depth, depth
        return (kept_for(depth) - kept_for(before)) * len(self.procs)

    @property
    def where(self) -> str:
        return self.spec.where if self.spec else "this rank"

    @property
    def idle(self) -> list[ScorerProcess]:
        """Processes that can take another batch now, the least loaded first."""
        depth = self.depth
        return sorted((p for p in self.procs if p.ready and len(p.scoring) < depth),
                      key=lambda p: len(p.scoring))

    @property
    def holding(self) -> bool:
        return any(proc.busy for proc in self.procs)

    @property
    def running_low(self) -> bool:
        """Whether a process holds fewer batches than SCORING_DEPTH (the one it scores and
        the next), or than a third of its depth once deepened (low_mark): it may run
        dry before the rank's next assignment reaches it. Not low, its rank and
        rank 0 answer on their own next wake-ups, within LONGEST_WAIT_SECONDS each."""
        low = low_mark(self.depth)
        return any(p.ready and len(p.scoring) < low for p in self.procs)

    def poll(self, timeout: float) -> list[Outcome]:
        """Wait up to ``timeout`` seconds for batches to end; replace dead or hung processes.

        Only a process's pipe wakes the rank (its messages, or its end when it dies);
        whether processes that said nothing are alive is looked at every
        LONGEST_WAIT_SECONDS, as each look is a system call per process.
        """
        procs = self.procs
        outcomes, self.ended_while_starting = self.ended_while_starting, []
        if outcomes:  # already waited for: report them at once
            timeout = 0.0
        waiting = [p for p in procs if p.scoring or p.writing or not p.ready]
        ready = self._wait(waiting, timeout) if waiting else ()
        if not waiting:
            time.sleep(timeout)
        now = time.monotonic()
        look = now >= self.next_look
        if look:
            self.next_look = now + LONGEST_WAIT_SECONDS
        recorded = len(outcomes)  # those kept while starting were recorded then
        for index, proc in enumerate(procs):  # _replace swaps in place: no copy needed
            # the end of its pipe (it died) shows as something to read, then EOF
            gone = proc.conn.read_fd in ready and self._receive_all(proc, outcomes)
            if not (proc.scoring or proc.writing):
                if gone or look:
                    self._check_idle(proc, gone)
                continue
            lost = self._lost(proc, look, gone)
            if lost:
                outcomes.extend(lost)
                self._replace(index)
        if self.recorder is not None:
            self._record(self.recorder, outcomes[recorded:])
        return outcomes

    def _wait(self, procs: list[ScorerProcess], timeout: float) -> list[int]:
        """The pipes of ``procs`` with something to read, waiting up to ``timeout`` s (at
        the system's millisecond: poll(2)); one poller while the pipes stay the same."""
        fds = tuple(proc.conn.fileno() for proc in procs)
        if fds != self.watched:
            self.poller = select.poll()
            for fd in fds:
                self.poller.register(fd, select.POLLIN)
            self.watched = fds
        return [fd for fd, _ in self.poller.poll(max(0.0, timeout) * 1000)]

    @staticmethod
    def _record(recorder: Recorder, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            recorder.ended(outcome.batch, "ok" if outcome.ok else
                           "returned" if outcome.returned else "failed", outcome.times)
        recorder.tick()

    def _receive_all(self, proc: ScorerProcess, outcomes: list[Outcome]) -> bool:
        """Take in every message waiting in ``proc``'s pipe; True if the pipe ended (the
        process died: _lost or _check_idle reports it)."""
        conn = proc.conn
        try:
            while True:
                self._message(proc, recv_at_rank(conn), outcomes)
                if not proc.pending():
                    return False
        except (EOFError, OSError):
            return True

    def _check_idle(self, proc: ScorerProcess, gone: bool = False) -> None:
        """Raise if ``proc``, holding no batch, died (``gone``: its pipe ended, so its exit
        is awaited a moment)."""
        if gone:
            proc.join(1)
        if not proc.alive():
            raise ScoringProcessError(f"{self.where}: a scoring process died while idle or "
                                      f"starting ({proc.exit_text()})")

    def _lost(self, proc: ScorerProcess, look: bool = True, gone: bool = False
              ) -> list[Outcome]:
        """The busy process's batches, if it died (``gone``: its pipe ended; else looked at
        if ``look``) or overran the timeout (then it is killed).

        The batch it was on is charged with the failure (its Scoreboard says which;
        the first it holds if it was on none); the others are handed back without
        counting a try.
        """
        if gone or (look and (not proc.alive() or proc.conn.closed)):
            proc.join(1)
            why = f"scoring process on {self.where} died ({proc.exit_text()})"
        elif self.batch_timeout is not None and (on := proc.current()) is not None and \
                time.monotonic() - on[1] > self.batch_timeout:
            why = (f"batch timed out after {time.monotonic() - on[1]:.1f}s "
                   f"(--batch-timeout {self.batch_timeout:g}) on {self.where}")
        else:
            return []
        batches = proc.release()
        return [Outcome(batches[0], False, why)] + [
            Outcome(b, False, why, returned=True) for b in batches[1:]]

    def _message(self, proc: ScorerProcess, message: ToRank, outcomes: list[Outcome]) -> None:
        """Take in one message of ``proc``, adding the batches it ends to ``outcomes``."""
        match message:
            case Scored(batch_ids, done):  # now being written; the process has room again
                for batch_id in batch_ids:
                    proc.writing[batch_id] = proc.take(batch_id)
                    if self.recorder is not None:
                        self.recorder.scored(batch_id)
                if done.batch_ids:  # made durable while they were scored
                    self._done(proc, done, outcomes)
            case Flushed(done):
                self._done(proc, done, outcomes)
            case BatchFailed(batch_id, error, traceback, fatal):  # the process goes on
                outcomes.append(Outcome(proc.take(batch_id), False, error, traceback,
                                        fatal=fatal))
            case Ready(preopened):
                proc.ready = True
                self.preopened += preopened
            case StartFailed(error):
                raise ScoringProcessError(f"{self.where}: scoring process failed to start: "
                                          f"{error}")
            case _:
                raise unexpected(message, "Ready, StartFailed, Scored, Flushed or BatchFailed")

    @staticmethod
    def _done(proc: ScorerProcess, done: Durable, outcomes: list[Outcome]) -> None:
        take = proc.take
        outcomes.extend(Outcome(take(batch_id), True, times=times, failed_items=items)
                        for batch_id, times, items in done.each())

    def _replace(self, index: int) -> None:
        self.procs[index].kill()
        self.procs[index] = ScorerProcess()
        assert self.spec is not None
        self.procs[index].conn.send(self.spec if index == 0 else
                                    self.spec._replace(records_death=False))
        self.restarts += 1

    def abandon(self) -> list[Batch]:
        """Kill the busy processes (at a stop past its grace period); their batches."""
        batches = []
        for index, proc in enumerate(list(self.procs)):
            if proc.busy:
                batches += proc.release()
                self._replace(index)
        if self.recorder is not None:
            for batch in batches:
                self.recorder.ended(batch, "abandoned")
        return batches

    def close(self) -> None:
        """Ask every process to finish, and kill those that do not (once; idempotent).

        A process says when it has closed its files, with what it used; its exit
        is awaited only by :meth:`reap`, so the rank can finish the job meanwhile.
        """
        recorder, self.recorder = self.recorder, None
        if recorder is not None:  # its last sample sees the processes still running
            recorder.close()
        starting = [proc for proc in self.procs if not proc.ready]
        for proc in starting:  # a stop came while it started (an init() that does not
            proc.kill()        # return?): it holds no batch and wrote nothing
        procs, self.procs = [proc for proc in self.procs if proc.ready], []
        self.closing += procs
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.conn.send(Close())
        script = self.spec is not None and self.spec.job.config.scorer_kind == "script"
        # a script's shutdown() runs in a process that closes idle; one still in run()
        # (the job failed meanwhile) has nothing to wait for
        waits = [SHUTDOWN_TIMEOUT_SECONDS if script and not proc.busy else
                 CLOSE_TIMEOUT_SECONDS for proc in procs]
        closing = time.monotonic()
        for proc, allowed in zip(procs, waits, strict=True):
            closed = _closing_message(proc, closing + allowed)
            if closed is None:
                proc.kill()
                if allowed == SHUTDOWN_TIMEOUT_SECONDS:  # its shutdown() did not do its work
                    self.shutdown_errors.append(
                        f"{self.where}: the entry script's shutdown() did not return in "
                        f"{allowed:.0f}s; its process was killed")
                continue
            self.cpu_seconds += closed.cpu_seconds
            self.peak_rss_mib = max(self.peak_rss_mib, closed.peak_rss_mib)
            self.run_rows.append(closed.run_rows)
            if closed.shutdown_error:
                self.shutdown_errors.append(closed.shutdown_error)

    def reap(self) -> None:
        """Wait for closed processes to exit (killing those that hang)."""
        closing, self.closing = self.closing, []
        for proc in closing:
            proc.join(CLOSE_TIMEOUT_SECONDS)
            if proc.alive():
                proc.kill()


def depth_for(seconds_per_batch: float) -> int:
    """How many batches a process may hold where they take this long (ScorerPool.deepen):
    the one it scores and three times what it scores in REPORT_SECONDS (tuning.py),
    within SCORING_DEPTH and MAX_SCORING_DEPTH. Batches of REPORT_SECONDS or more are
    reported one by one: they stay at SCORING_DEPTH, and a job's tail is not held up
    in one process."""
    wanted = SCORING_DEPTH if not 0 < seconds_per_batch < REPORT_SECONDS else \
        1 + 3 * math.ceil(REPORT_SECONDS / seconds_per_batch)
    return min(MAX_SCORING_DEPTH, max(SCORING_DEPTH, wanted))


def low_mark(depth: int) -> int:
    """Held batches under which a process of ``depth`` runs low (ScorerPool.running_low):
    SCORING_DEPTH, or a third of a deepened depth (~0.1 s of short batches: a report,
    every ~0.1 s, takes a third of them, so a process that has just reported, and been
    given the answer to its last report, is not low)."""
    return max(SCORING_DEPTH, depth // 3)


def kept_for(depth: int) -> int:
    """Batches a rank keeps for a process of ``depth`` beyond the window's fixed part
    (placement.window_for): those it holds, and for a deepened one half as many again,
    written and waiting for the report that carries their Done."""
    return depth + (depth - SCORING_DEPTH) // 2


def _closing_message(proc: ScorerProcess, deadline: float) -> Closed | None:
    """A closing process's last word (what it used), or None if it did not close by
    ``deadline``; other messages left in its pipe are dropped."""
    with contextlib.suppress(EOFError, OSError):
        while proc.conn.poll(max(0.0, deadline - time.monotonic())):
            message = recv_at_rank(proc.conn)
            if isinstance(message, Closed):
                return message
    return None

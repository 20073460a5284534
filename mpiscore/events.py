"""The run directory's events: what each try of a batch did where and when, and how busy
each rank and its scoring processes were. Both ends of the file live here.

Every rank appends to its own file, ``RUN_DIR/events/rank-NNNNN.jsonl`` (nothing
funnels through rank 0), written by rank/recorder.py and read by ``mpiscore
report`` (run_report.py). One JSON object a line, buffered and appended every
FLUSH_SECONDS (never an fsync), so recording costs the job microseconds a batch::

    {"k":"start","run":TOKEN,"t":T,"rank":R,"host":H,"procs":K}   a run begins on rank R
    {"k":"b","p":P,"id":B,"try":A,"rows":N,"out":OUT,              one try of batch B on the
     "sent":T,"scored":T,"end":T,"read":S,"score":S,"write":S}     rank's scoring process P
    {"k":"s","t":T,"cpu":PCT,"rss":MIB,"scpu":PCT,"srss":MIB,"n":K} a resource sample

The times (``t``, ``sent``, ``scored``, ``end``: seconds since the epoch) are
the rank's view: when it handed the batch to its scoring process, when that
process said the batch was scored (it then writes it while scoring the next),
and when it said the batch was written, or failed, or the rank found it lost.
``read``/``score``/``write`` are the stage durations the scoring process
measured (wire.StageTimes; absent for a try that did not finish). The scoring
process reads ahead and writes behind, so :func:`stages` places each stage
from these: score ends when ``scored`` came, read ends where score begins,
write ends at ``end``; a try without ``scored`` is one ``span`` from ``sent``
to ``end``. ``try`` counts the batch's failed tries before this one.

``out``: ``ok``; ``failed`` (the try failed; the batch may be retried);
``returned`` (lost with a process killed for another batch, no try counted);
``abandoned`` (killed past the stop's grace period, left for ``--resume``).
A reader calls an ``ok`` try with ``try`` > 0 ``retried``. ``p`` is the
process's slot: a replacement for a dead process takes its slot. A resumed run
appends to the files (a fresh one starts them anew); :func:`read_events` keeps
the last run only, by the ``run`` token rank 0 broadcast. A line torn by a
kill is skipped on reading, never merged with the next.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

EVENTS_DIR = "events"
FLUSH_SECONDS = 2.0  # how stale the file may be: `mpiscore report` on a running job sees this
OUTCOMES = ("ok", "retried", "failed", "returned", "abandoned")


def events_path(run_dir: Path, rank: int) -> Path:
    return run_dir / EVENTS_DIR / f"rank-{rank:05d}.jsonl"


class EventLog:
    """One rank's events file, appended in buffered chunks; silent when the disk refuses
    it (the job's own writes then stop it on that disk's error, naming the path)."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.buffer: list[str] = []
        self.flushed = time.monotonic()
        self.handle: TextIO | None = None
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("w" if fresh else "a", encoding="utf-8")

    def add(self, record: dict[str, Any]) -> None:
        self.add_line(json.dumps(record, separators=(",", ":")))

    def add_line(self, line: str) -> None:
        """A record already formatted as its JSON line (:func:`try_line`)."""
        self.buffer.append(line)

    def due(self, now: float) -> bool:
        return now - self.flushed >= FLUSH_SECONDS

    def flush(self) -> None:
        self.flushed = time.monotonic()
        lines, self.buffer = self.buffer, []
        if self.handle is None or not lines:
            return
        try:
            self.handle.write("\n".join(lines) + "\n")
            self.handle.flush()
        except OSError:
            self._give_up()

    def close(self) -> None:
        self.flush()
        self._give_up()

    def _give_up(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()


def start_record(run: str, rank: int, host: str, procs: int) -> dict[str, Any]:
    return {"k": "start", "run": run, "t": round(time.time(), 4), "rank": rank,
            "host": host, "procs": procs}


def try_line(lane: int, batch_id: int, attempt: int, rows: int, outcome: str,
             times: tuple[float, float | None, float],
             stages: tuple[float, float, float] | None) -> str:
    """One try's line; ``times``: sent, scored (or None), end; ``stages``: read, score,
    write s. Formatted directly rather than by json.dumps of a dict, which costs a rank
    four times as much, once per batch: every value is a number (times at 0.1 ms,
    stages at 10 us) or ``outcome``, one of OUTCOMES, so nothing needs escaping."""
    sent, scored, end = times
    line = (f'{{"k":"b","p":{lane},"id":{batch_id},"try":{attempt},"rows":{rows},'
            f'"out":"{outcome}","sent":{sent:.4f}')
    if scored is not None:
        line += f',"scored":{scored:.4f}'
    line += f',"end":{end:.4f}'
    if stages is not None:
        line += f',"read":{stages[0]:.5f},"score":{stages[1]:.5f},"write":{stages[2]:.5f}'
    return line + "}"


def sample_record(cpu: float, rss: float, scorers_cpu: float, scorers_rss: float,
                  scorers: int) -> dict[str, Any]:
    return {"k": "s", "t": round(time.time(), 3), "cpu": round(cpu, 1), "rss": round(rss, 1),
            "scpu": round(scorers_cpu, 1), "srss": round(scorers_rss, 1), "n": scorers}


@dataclass
class Events:
    """A run's events from every rank's file (its last run only). Each try and sample
    has its ``rank`` added; ``out`` of an ok try after failed ones is ``retried``."""

    run: str
    started: float  # the earliest start record: scoring processes got the job then
    tries: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    lanes: dict[int, int] = field(default_factory=dict)  # rank -> scoring processes
    hosts: dict[int, str] = field(default_factory=dict)


def read_events(run_dir: Path) -> Events | None:
    """The last run's events, or None when the run directory has none."""
    segments = [segment for path in sorted((run_dir / EVENTS_DIR).glob("rank-*.jsonl"))
                for segment in _segments(_records(path))]
    if not segments:
        return None
    # the last run is rank 0's last start (any rank's, if rank 0's file is gone)
    zero = [start for start, _ in segments if start.get("rank") == 0] or \
        [start for start, _ in segments]
    run = max(zero, key=lambda start: start["t"])["run"]
    mine = [(start, body) for start, body in segments if start["run"] == run]
    events = Events(run, min(start["t"] for start, _ in mine))
    for start, body in mine:
        rank = start["rank"]
        events.lanes[rank] = start.get("procs", 1)
        events.hosts[rank] = start.get("host", "")
        for record in body:
            record["rank"] = rank
            if record["k"] == "b":
                if record["out"] == "ok" and record.get("try", 0) > 0:
                    record["out"] = "retried"
                events.tries.append(record)
            else:
                events.samples.append(record)
    events.tries.sort(key=begins)
    events.samples.sort(key=lambda s: s["t"])
    return events


def stages(record: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Where a try's stages lie in time (seconds since the epoch): ``read``, ``score``,
    ``write`` for a try that was scored, else one ``span`` from sent to end."""
    sent, end, scored = record["sent"], record["end"], record.get("scored")
    if scored is None or "score" not in record:
        return {"span": (sent, end)}
    score_start = max(sent, scored - record["score"])
    read_start = max(sent, score_start - record["read"])
    write_start = min(end, max(scored, end - record["write"]))
    return {"read": (read_start, score_start), "score": (score_start, scored),
            "write": (write_start, end)}


def begins(record: dict[str, Any]) -> float:
    """When a try began in its scoring process, as best known (its read, else sent)."""
    return min(start for start, _ in stages(record).values())


def ends(record: dict[str, Any]) -> float:
    return float(record["end"])


def _segments(records: Iterable[dict[str, Any]]
              ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(start record, the records after it) for each run in one rank's file."""
    start: dict[str, Any] | None = None
    body: list[dict[str, Any]] = []
    for record in records:
        kind = record.get("k")
        if kind == "start" and {"run", "t", "rank"} <= set(record):
            if start is not None:
                yield start, body
            start, body = record, []
        elif start is not None and _valid(record):
            body.append(record)
    if start is not None:
        yield start, body


def _valid(record: dict[str, Any]) -> bool:
    if record.get("k") == "b":
        return isinstance(record.get("sent"), int | float) and \
            isinstance(record.get("end"), int | float) and record.get("out") in OUTCOMES
    return record.get("k") == "s" and isinstance(record.get("t"), int | float)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn by a kill
        if isinstance(record, dict):
            yield record

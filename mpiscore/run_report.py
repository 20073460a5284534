"""``mpiscore report RUN_DIR``: what happened in a run, where the time went, who straggled.

Reads the run directory only (``summary.json``, ``failed_batches.json`` and
the events every rank wrote, events.py), so it works from any node that sees
the filesystem, after the job or while it runs. :func:`build_report` returns
plain data (rows, wall and rows/s are ``summary.json``'s once the job ended);
:func:`describe_report` prints it; :func:`draw` writes the two pictures with
matplotlib (the ``report`` extra), imported only there (run_plots.py):

- ``timeline.png``: one lane per rank x scoring process, each try of a batch a
  bar coloured by outcome. Stragglers, idle lanes, a slow start or a long tail
  show at a glance.
- ``throughput.png``: rows/s over time with the share of scoring processes
  busy, and the resource samples (CPU %, resident memory) of each rank.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError, OutputError
from .events import EVENTS_DIR, Events, begins, ends, read_events
from .report import plural, read_json_object

STRAGGLER_FACTOR = 3.0  # a try this many times the median try's length straggles,
STRAGGLER_MARGIN = 0.25  # and at least this many seconds longer (tiny batches jitter)
LATE_RANK_SHARE = 0.1  # a rank ending this share of the scoring time after the median is late
TAIL_SHARE = 0.1  # the last this share of the wall, to tell a long tail
BINS = 60  # throughput is drawn in this many time steps


def build_report(run_dir: Path) -> dict[str, Any]:
    """A run's report as plain data; InputError for a directory that is not a run
    directory, or one whose run never started scoring."""
    events = _events(run_dir)
    summary = _summary(run_dir)
    tries = events.tries
    finished = max(ends(b) for b in tries)
    span = max(1e-9, finished - events.started)
    done = [b for b in tries if b["out"] in ("ok", "retried")]
    ended = summary.get("status") in ("complete", "stopped", "failed")
    rows = summary["rows_scored"] if ended else sum(b["rows"] for b in done)
    wall = summary["wall_seconds"] if ended else span
    per_rank = [_rank_line(rank, events, span) for rank in sorted(events.lanes)]
    return {
        "run_dir": str(run_dir), "status": summary.get("status", "running"),
        "rows": rows, "wall_seconds": round(wall, 3),
        "rows_per_second": round(summary["rows_per_second"] if ended else rows / wall, 1),
        "setup_seconds": summary.get("setup_seconds"),
        "scoring_seconds": round(span, 3), "batches": len(done), "tries": len(tries),
        "per_rank": per_rank, "stragglers": _stragglers(tries),
        "late_ranks": _late_ranks(per_rank, span),
        "tail_seconds": _tail(tries, events.started, span),
        "failures": _failures(run_dir, tries),
        "samples": len(events.samples),
    }


def _events(run_dir: Path) -> Events:
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a run directory (no such directory)")
    if not any((run_dir / name).exists() for name in ("summary.json", "plan.json", EVENTS_DIR)):
        raise InputError(f"{run_dir}: not a run directory (no summary.json, plan.json or "
                         f"{EVENTS_DIR}/): give the directory a job wrote, e.g. OUTPUT.run")
    events = read_events(run_dir)
    if events is None or not events.tries:
        status = (read_json_object(run_dir / "summary.json") or {}).get("status")
        why = "the run never started scoring" if status not in ("died", "running") else \
            f"summary.json says {status}: it was killed before its ranks wrote their records"
        raise InputError(f"{run_dir}: no batch was recorded in {run_dir / EVENTS_DIR}: {why}")
    return events


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    return data if isinstance(data, dict) else {}


def _rank_line(rank: int, events: Events, span: float) -> dict[str, Any]:
    """One rank: its rows, how busy its scoring processes were, its stage seconds."""
    tries = [b for b in events.tries if b["rank"] == rank]
    samples = [s for s in events.samples if s["rank"] == rank]
    lanes = max(1, events.lanes.get(rank, 1))
    stage = {name: sum(b.get(name, 0.0) for b in tries) for name in ("read", "score", "write")}
    busy = _busy_seconds(tries)
    return {"rank": rank, "host": events.hosts.get(rank, ""), "procs": lanes,
            "rows": sum(b["rows"] for b in tries if b["out"] in ("ok", "retried")),
            "batches": sum(b["out"] in ("ok", "retried") for b in tries),
            "busy_share": round(min(1.0, busy / (span * lanes)), 3),
            "idle_seconds": round(max(0.0, span * lanes - busy), 3),
            **{f"{name}_seconds": round(value, 3) for name, value in stage.items()},
            "ends_at_seconds": round(max((ends(b) for b in tries), default=events.started)
                                     - events.started, 3),
            "cpu_percent_peak": max((s["cpu"] + s["scpu"] for s in samples), default=None),
            "rss_mib_peak": max((s["rss"] + s["srss"] for s in samples), default=None)}


def _busy_seconds(tries: list[dict[str, Any]]) -> float:
    """Seconds each lane held at least one try, summed over lanes (tries overlap in a
    lane: one is written while the next is scored)."""
    by_lane: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for b in tries:
        by_lane[b["p"]].append((begins(b), ends(b)))
    total = 0.0
    for spans in by_lane.values():
        reach = float("-inf")
        for start, stop in sorted(spans):
            total += max(0.0, stop - max(start, reach))
            reach = max(reach, stop)
    return total


def _stragglers(tries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tries that took STRAGGLER_FACTOR x the median try or more, the slowest first."""
    lengths = [ends(b) - begins(b) for b in tries]
    if len(lengths) < 3:
        return []
    median = statistics.median(lengths)
    slow = sorted(((length, b) for length, b in zip(lengths, tries, strict=True)
                   if length >= STRAGGLER_FACTOR * median
                   and length >= median + STRAGGLER_MARGIN),
                  key=lambda pair: -pair[0])
    return [{"batch_id": b["id"], "rank": b["rank"], "proc": b["p"], "out": b["out"],
             "seconds": round(length, 3), "median_seconds": round(median, 3)}
            for length, b in slow[:10]]


def _late_ranks(per_rank: list[dict[str, Any]], span: float) -> list[int]:
    """Ranks whose last batch ended well after most ranks' did."""
    median = statistics.median(r["ends_at_seconds"] for r in per_rank)
    return [r["rank"] for r in per_rank
            if r["ends_at_seconds"] - median > max(LATE_RANK_SHARE * span, 0.5)]


def _tail(tries: list[dict[str, Any]], started: float, span: float) -> float:
    """Seconds the last TAIL_SHARE of the rows took to be written (a long tail: much more
    than TAIL_SHARE of the scoring time)."""
    done = sorted((ends(b), b["rows"]) for b in tries if b["out"] in ("ok", "retried"))
    total, reached = sum(rows for _, rows in done), 0
    for at, rows in done:
        reached += rows
        if reached >= (1 - TAIL_SHARE) * total:
            return round(started + span - at, 3)
    return 0.0


def _failures(run_dir: Path, tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The failed tries, and the batches given up: failed_batches.json's (a batch whose
    retry was still due when the job stopped is not given up), else those of the
    events that never succeeded."""
    failed = [b for b in tries if b["out"] == "failed"]
    recorded = (read_json_object(run_dir / "failed_batches.json") or {}).get("failed")
    if isinstance(recorded, list):
        given_up = sorted(entry["batch_id"] for entry in recorded if entry.get("attempts"))
    else:
        given_up = sorted({b["id"] for b in failed} - {b["id"] for b in tries
                                                      if b["out"] in ("ok", "retried")})
    lost = [b for b in tries if b["out"] in ("returned", "abandoned")]
    return {"failed_tries": len(failed), "batches": sorted({b["id"] for b in failed}),
            "given_up": given_up, "returned_or_abandoned": len(lost),
            "tracebacks": str(run_dir / "failed_batches.json") if failed else None}


def describe_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    setup = report["setup_seconds"]
    lines = [f"{report['run_dir']}: {report['status']}, {plural(report['rows'], 'row')} in "
             f"{report['wall_seconds']:.1f}s ({report['rows_per_second']:,.0f} rows/s); "
             f"{plural(report['batches'], 'batch', 'batches')} in "
             f"{plural(report['tries'], 'try', 'tries')}"
             + (f"; set-up {setup:.1f}s" if setup is not None else "")
             + f", scoring {report['scoring_seconds']:.1f}s",
             "rank  host          procs          rows  busy  idle s   read s  score s  "
             "write s  ends at s"]
    for r in report["per_rank"]:
        lines.append(f"{r['rank']:>4}  {r['host'][:12]:<12}  {r['procs']:>5}  {r['rows']:>12,}"
                     f"  {100 * r['busy_share']:>3.0f}%  {r['idle_seconds']:>6.1f}"
                     f"  {r['read_seconds']:>7.1f}  {r['score_seconds']:>7.1f}"
                     f"  {r['write_seconds']:>7.1f}  {r['ends_at_seconds']:>9.1f}")
    slow = report["stragglers"]
    lines.append("stragglers: none" if not slow else "stragglers: " + ", ".join(
        f"batch {s['batch_id']} on rank {s['rank']} proc {s['proc']} ({s['seconds']:.2f}s, "
        f"median {s['median_seconds']:.2f}s)" for s in slow[:5])
        + (f" and {len(slow) - 5} more" if len(slow) > 5 else ""))
    if report["late_ranks"]:
        lines.append("late ranks (ending well after the others): " +
                     ", ".join(map(str, report["late_ranks"])))
    scoring = max(report["scoring_seconds"], 1e-9)
    lines.append(f"tail: the last {100 * TAIL_SHARE:.0f}% of the rows took "
                 f"{report['tail_seconds']:.1f}s, {100 * report['tail_seconds'] / scoring:.0f}% "
                 "of the scoring time")
    failures = report["failures"]
    lines.append("failures: none" if not failures["failed_tries"] else
                 f"failures: {plural(failures['failed_tries'], 'failed try', 'failed tries')} "
                 f"of batches {', '.join(map(str, failures['batches'][:10]))}"
                 + (" ..." if len(failures["batches"]) > 10 else "")
                 + (f" ({len(failures['given_up'])} given up)" if failures["given_up"] else "")
                 + f"; tracebacks in {failures['tracebacks']}")
    if failures["returned_or_abandoned"]:
        lines.append(f"returned or abandoned at a stop or a crash: "
                     f"{failures['returned_or_abandoned']} tries")
    return "\n".join(lines)


def draw(run_dir: Path, out: Path) -> list[Path]:
    """Write timeline.png and throughput.png into ``out``; their paths."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("mpiscore report draws with matplotlib: pip install "
                          "'mpiscore[report]'") from None
    matplotlib.use("Agg")
    from . import run_plots

    events = _events(run_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return [run_plots.timeline(events, out / "timeline.png"),
                run_plots.throughput(events, out / "throughput.png", BINS)]
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the pictures ({exc.strerror or exc})") from None

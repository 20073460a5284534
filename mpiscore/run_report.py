"""``mpiscore report RUN_DIR``: what happened in a run, where the time went, who straggled.

Reads the run directory only (``summary.json``, ``failed_batches.json`` and
the events every rank wrote, events.py), so it works from any node that sees
the filesystem, after the job or while it runs. :func:`build_report` returns
plain data; :func:`describe_report` prints it; :func:`draw` writes the two
pictures with matplotlib (the ``report`` extra), imported only here:

- ``timeline.png``: one lane per rank x scoring process, each try of a batch a
  bar from its read to the end of its write, coloured by outcome. Stragglers,
  idle lanes, a slow start or a long tail show at a glance.
- ``throughput.png``: rows/s over time with the share of lanes busy, and the
  resource samples (CPU %, resident memory) of each rank and its scorers.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
from .events import Events, begins, ends, read_events
from .report import plural

STRAGGLER_FACTOR = 1.5  # a rank whose work ends this much later than the median ends straggles
BINS = 60  # throughput is shown in this many time steps
COLOURS = {"ok": "#4c9a2a", "retried": "#e69f00", "failed": "#d62728",
           "returned": "#9e9e9e", "abandoned": "#6a3d9a"}


def build_report(run_dir: Path) -> dict[str, Any]:
    """A run's report as plain data; InputError when ``run_dir`` is not a run directory
    or holds no events (a run that never started scoring)."""
    summary = _read_json(run_dir / "summary.json", run_dir)
    events = read_events(run_dir)
    if events is None or not events.batches:
        raise InputError(f"{run_dir}: no batch events recorded (the run never started "
                         "scoring, or ran before events were recorded)")
    tries = _classified(events)
    ok = [b for b in tries if b["out"] in ("ok", "retried")]
    finished = max(ends(b) for b in tries)
    wall = max(1e-9, finished - events.started)
    rows = sum(b["rows"] for b in ok)
    return {
        "run_dir": str(run_dir), "status": summary.get("status"),
        "rows": rows, "batches": len(ok), "tries": len(tries),
        "wall_seconds": round(wall, 3), "rows_per_second": round(rows / wall, 1),
        "per_rank": _per_rank(events, tries, wall),
        "stragglers": _stragglers(tries),
        "failures": _failures(run_dir, tries),
        "summary_rows_scored": summary.get("rows_scored"),
    }


def _read_json(path: Path, run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{run_dir}: not a run directory (no {path.name}); give the "
                         "directory a job wrote, e.g. OUTPUT.run") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a summary mpiscore wrote")
    return data


def _classified(events: Events) -> list[dict[str, Any]]:
    """Each try, with ``out`` ``retried`` for a try that succeeded after failed ones."""
    failed_before = {b["id"] for b in events.batches if b["out"] == "failed"}
    return [{**b, "out": "retried" if b["out"] == "ok" and b["id"] in failed_before
             else b["out"]} for b in events.batches]


def _per_rank(events: Events, tries: list[dict[str, Any]], wall: float) -> list[dict]:
    """Per rank: rows, busy share of its lanes, seconds in each stage, resources seen."""
    by_rank: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in tries:
        by_rank[record["rank"]].append(record)
    samples: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for sample in events.samples:
        samples[sample["rank"]].append(sample)
    ranks = sorted(set(events.lanes) | set(by_rank))
    return [_rank_line(rank, events, by_rank[rank], samples[rank], wall) for rank in ranks]


def _rank_line(rank: int, events: Events, tries: list[dict[str, Any]],
               samples: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    lanes = max(1, events.lanes.get(rank, 1))
    stage = {name: sum(b[name][1] - b[name][0] for b in tries if name in b)
             for name in ("read", "score", "write")}
    busy = sum(ends(b) - begins(b) for b in tries)
    return {"rank": rank, "host": events.hosts.get(rank, ""), "lanes": lanes,
            "rows": sum(b["rows"] for b in tries if b["out"] in ("ok", "retried")),
            "busy_share": round(min(1.0, busy / (wall * lanes)), 3),
            "idle_seconds": round(max(0.0, wall * lanes - busy), 3),
            **{f"{name}_seconds": round(value, 3) for name, value in stage.items()},
            "last_end_seconds": round(max((ends(b) for b in tries), default=events.started)
                                      - events.started, 3),
            "cpu_percent_peak": max((s["cpu"] for s in samples), default=None),
            "rss_mib_peak": max((s["rss"] for s in samples), default=None),
            "scorers_cpu_percent_peak": max((s["scorers_cpu"] for s in samples), default=None),
            "scorers_rss_mib_peak": max((s["scorers_rss"] for s in samples), default=None)}


def _stragglers(tries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tries that took STRAGGLER_FACTOR x the median try or more, the slowest first (10)."""
    lengths = [ends(b) - begins(b) for b in tries]
    if len(lengths) < 3:
        return []
    median = statistics.median(lengths)
    slow = sorted(((length, b) for length, b in zip(lengths, tries, strict=True)
                   if length >= STRAGGLER_FACTOR * median and length > 0),
                  key=lambda pair: -pair[0])
    return [{"batch_id": b["id"], "rank": b["rank"], "proc": b["proc"],
             "seconds": round(length, 3), "median_seconds": round(median, 3)}
            for length, b in slow[:10]]


def _failures(run_dir: Path, tries: list[dict[str, Any]]) -> dict[str, Any]:
    failed = [b for b in tries if b["out"] == "failed"]
    return {"failed_tries": len(failed), "batches": sorted({b["id"] for b in failed}),
            "tracebacks": str(run_dir / "failed_batches.json") if failed else None}


def describe_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [f"{report['run_dir']}: {report['status']}, "
             f"{plural(report['rows'], 'row')} in {plural(report['batches'], 'batch', 'batches')}"
             f" ({report['tries']} tries), {report['wall_seconds']:.1f}s, "
             f"{report['rows_per_second']:,.0f} rows/s",
             "rank  host          lanes  rows          busy  idle s   read s  score s  write s"
             "  ends at s"]
    for r in report["per_rank"]:
        lines.append(f"{r['rank']:>4}  {r['host'][:12]:<12}  {r['lanes']:>5}  {r['rows']:>12,}"
                     f"  {100 * r['busy_share']:>3.0f}%  {r['idle_seconds']:>6.1f}"
                     f"  {r['read_seconds']:>7.1f}  {r['score_seconds']:>7.1f}"
                     f"  {r['write_seconds']:>7.1f}  {r['last_end_seconds']:>9.1f}")
    slow = report["stragglers"]
    lines.append("stragglers: none" if not slow else "stragglers: " + ", ".join(
        f"batch {s['batch_id']} on rank {s['rank']} ({s['seconds']:.2f}s, median "
        f"{s['median_seconds']:.2f}s)" for s in slow[:5]))
    failures = report["failures"]
    lines.append("failures: none" if not failures["failed_tries"] else
                 f"failures: {failures['failed_tries']} failed tries of batches "
                 f"{', '.join(map(str, failures['batches'][:10]))}; tracebacks in "
                 f"{failures['tracebacks']}")
    return "\n".join(lines)


def draw(run_dir: Path, out: Path) -> list[Path]:
    """Write timeline.png and throughput.png into ``out``; their paths."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("mpiscore report draws with matplotlib: pip install "
                          "'mpiscore[report]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    from . import run_plots

    events = read_events(run_dir)
    assert events is not None, "build_report checks first"
    out.mkdir(parents=True, exist_ok=True)
    tries = _classified(events)
    return [run_plots.timeline(events, tries, out / "timeline.png"),
            run_plots.throughput(events, tries, out / "throughput.png")]

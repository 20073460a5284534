"""The pictures of ``mpiscore report``, drawn with matplotlib (imported by run_report.draw)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from .events import Events, begins, ends
from .run_report import BINS, COLOURS


def timeline(events: Events, tries: list[dict[str, Any]], path: Path) -> Path:
    """One lane per rank x scoring process; each try a bar, the read part lighter."""
    lanes = sorted({(b["rank"], b["proc"]) for b in tries} |
                   {(rank, proc) for rank, procs in events.lanes.items() for proc in range(procs)})
    row = {lane: index for index, lane in enumerate(lanes)}
    figure, axes = plt.subplots(figsize=(12, max(2.5, 0.35 * len(lanes) + 1.5)))
    t0 = events.started
    for b in tries:
        y, colour = row[(b["rank"], b["proc"])], COLOURS[b["out"]]
        if "read" in b:
            axes.barh(y, b["read"][1] - b["read"][0], left=b["read"][0] - t0, height=0.8,
                      color=colour, alpha=0.35, linewidth=0)
            start = b["score"][0]
        else:
            start = begins(b)
        axes.barh(y, ends(b) - start, left=start - t0, height=0.8, color=colour,
                  edgecolor="white", linewidth=0.3)
    axes.set_yticks(range(len(lanes)), [f"rank {r} proc {p}" for r, p in lanes], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the run started")
    axes.set_title("batches per scoring process (light: reading)")
    seen = sorted({b["out"] for b in tries}, key=list(COLOURS).index)
    axes.legend(handles=[Patch(color=COLOURS[name], label=name) for name in seen],
                loc="upper right", fontsize=8)
    return _save(figure, path)


def throughput(events: Events, tries: list[dict[str, Any]], path: Path) -> Path:
    """Rows/s over time and the share of lanes busy; below, each rank's CPU and memory."""
    t0, end = events.started, max(ends(b) for b in tries)
    step = max(1e-3, (end - t0) / BINS)
    rows, busy = [0.0] * BINS, [0.0] * BINS
    for b in tries:
        if b["out"] in ("ok", "retried"):
            rows[min(BINS - 1, int((ends(b) - t0) / step))] += b["rows"] / step
        _spread(busy, begins(b) - t0, ends(b) - t0, step)
    lanes = max(1, sum(events.lanes.values()))
    centres = [(i + 0.5) * step for i in range(BINS)]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    top.plot(centres, rows, color="#1f77b4", label="rows/s")
    top.set_ylabel("rows/s")
    share = top.twinx()
    share.plot(centres, [100 * b / (step * lanes) for b in busy], color="#ff7f0e",
               label="lanes busy %")
    share.set_ylim(0, 105)
    share.set_ylabel("scoring processes busy (%)")
    top.set_title("throughput and utilisation")
    _resources(bottom, events, t0)
    bottom.set_xlabel("seconds since the run started")
    return _save(figure, path)


def _spread(bins: list[float], start: float, stop: float, step: float) -> None:
    """Add the busy time of [start, stop) to the bins it overlaps."""
    first, last = max(0, int(start / step)), min(len(bins) - 1, int(stop / step))
    for index in range(first, last + 1):
        overlap = min(stop, (index + 1) * step) - max(start, index * step)
        bins[index] += max(0.0, overlap)


def _resources(axes: Any, events: Events, t0: float) -> None:
    by_rank: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for sample in events.samples:
        by_rank[sample["rank"]].append(sample)
    if not by_rank:
        axes.text(0.5, 0.5, "no resource samples (--monitor-seconds 0)", ha="center",
                  transform=axes.transAxes)
        return
    memory = axes.twinx()
    for rank, samples in sorted(by_rank.items()):
        times = [s["t"] - t0 for s in samples]
        axes.plot(times, [s["cpu"] + s["scorers_cpu"] for s in samples], label=f"rank {rank}")
        memory.plot(times, [s["rss"] + s["scorers_rss"] for s in samples], linestyle="--")
    axes.set_ylabel("CPU % (rank + scorers)")
    memory.set_ylabel("resident MiB (dashed)")
    axes.legend(loc="upper left", fontsize=7, ncol=4)


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

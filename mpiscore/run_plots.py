"""The pictures of ``mpiscore report``, drawn with matplotlib (imported by run_report.draw,
after it chose the Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from .events import Events, begins, ends, stages

COLOURS = {"ok": "#4c9a2a", "retried": "#e69f00", "failed": "#d62728",
           "returned": "#8c8c8c", "abandoned": "#6a3d9a"}


def timeline(events: Events, path: Path) -> Path:
    """One lane per rank x scoring process; each try a bar coloured by its outcome: its
    read light, its score solid, its write a thin strip below (it overlaps the next
    batch's read and score: the process writes behind). A try that was not scored is
    one bar from when the rank handed it over to its end: full height when it failed,
    a thin strip when it was returned or abandoned (it mostly waited behind another);
    failures are drawn last, on top."""
    tries = events.tries
    lanes = sorted({(rank, proc) for rank, procs in events.lanes.items()
                    for proc in range(procs)} | {(b["rank"], b["p"]) for b in tries})
    row = {lane: index for index, lane in enumerate(lanes)}
    figure, axes = plt.subplots(figsize=(12, min(30.0, max(3.0, 0.3 * len(lanes) + 1.8))))
    t0 = events.started
    order = {"returned": 0, "abandoned": 0, "ok": 1, "retried": 2, "failed": 3}
    for b in sorted(tries, key=lambda b: order[b["out"]]):
        y, colour = row[(b["rank"], b["p"])], COLOURS[b["out"]]
        for name, (start, stop) in stages(b).items():
            width = max(stop - start, 1e-4)
            if name == "read":
                axes.barh(y - 0.05, width, left=start - t0, height=0.7, color=colour,
                          alpha=0.35, linewidth=0)
            elif name == "write":
                axes.barh(y + 0.33, width, left=start - t0, height=0.14, color=colour,
                          alpha=0.8, linewidth=0)
            elif name == "span" and b["out"] in ("returned", "abandoned"):
                axes.barh(y - 0.3, width, left=start - t0, height=0.2, color=colour,
                          alpha=0.9, linewidth=0)
            else:  # score, or the span of a try that failed
                axes.barh(y - 0.05, width, left=start - t0, height=0.7, color=colour,
                          edgecolor="white", linewidth=0.2)
    axes.set_yticks(range(len(lanes)), [f"rank {r} proc {p}" for r, p in lanes],
                    fontsize=7 if len(lanes) < 40 else 5)
    axes.set_ylim(len(lanes) - 0.5, -0.5)
    axes.set_xlim(left=0)
    axes.set_xlabel("seconds since the scoring processes got the job")
    axes.set_title("batches per scoring process (light: read, solid: score, strip: write)")
    seen = [name for name in COLOURS if any(b["out"] == name for b in tries)]
    axes.legend(handles=[Patch(color=COLOURS[name], label=name) for name in seen],
                loc="lower right", fontsize=8, framealpha=0.8)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def throughput(events: Events, path: Path, bins: int) -> Path:
    """Rows/s over time and the share of scoring processes busy; below, each rank's CPU
    and resident memory (its own and its scoring processes')."""
    tries, t0 = events.tries, events.started
    end = max(ends(b) for b in tries)
    step = max(1e-3, (end - t0) / bins)
    rows, busy = [0.0] * bins, [0.0] * bins
    for b in tries:
        if b["out"] in ("ok", "retried"):
            rows[min(bins - 1, int((ends(b) - t0) / step))] += b["rows"] / step
        _spread(busy, begins(b) - t0, ends(b) - t0, step)
    lanes = max(1, sum(events.lanes.values()))
    centres = [(i + 0.5) * step for i in range(bins)]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    top.fill_between(centres, rows, step="mid", color="#1f77b4", alpha=0.35)
    top.plot(centres, rows, color="#1f77b4", drawstyle="steps-mid", label="rows/s written")
    top.set_ylabel("rows/s written")
    top.set_ylim(bottom=0)
    share = top.twinx()
    share.plot(centres, [min(100.0, 100 * b / (step * lanes)) for b in busy],
               color="#ff7f0e", drawstyle="steps-mid", label="scoring processes busy %")
    share.set_ylim(0, 105)
    share.set_ylabel("scoring processes busy (%)")
    handles = top.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
    top.legend(handles=handles, loc="lower center", fontsize=8)
    top.set_title(f"throughput and utilisation ({lanes} scoring processes on "
                  f"{len(events.lanes)} ranks)")
    _resources(bottom, events, t0)
    bottom.set_xlabel("seconds since the scoring processes got the job")
    bottom.set_xlim(0, end - t0)
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
        axes.text(0.5, 0.5, "no resource samples (--monitor-seconds 0, or a run shorter "
                  "than one interval)", ha="center", transform=axes.transAxes)
        axes.set_yticks([])
        return
    memory = axes.twinx()
    for rank, samples in sorted(by_rank.items()):
        times = [s["t"] - t0 for s in samples]
        line = axes.plot(times, [s["cpu"] + s["scpu"] for s in samples], marker=".",
                         label=f"rank {rank}")[0]
        memory.plot(times, [s["rss"] + s["srss"] for s in samples], linestyle="--",
                    color=line.get_color())
    axes.set_ylabel("CPU % (rank + its scoring processes)")
    axes.set_ylim(bottom=0)
    memory.set_ylabel("resident MiB (dashed)")
    memory.set_ylim(bottom=0)
    axes.legend(loc="lower left", fontsize=7, ncol=8)


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

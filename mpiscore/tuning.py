"""The constants a user or a benchmark may tune, each with why it has its value.

They are not options: the values below suit every machine measured so far, and a
change is a decision for the whole installation (or one benchmark's experiment),
not for one job. Everything else numeric stays beside the code it belongs to.
Pure: imports nothing, so both kinds of process (ranks and scoring processes) may
read it.
"""

from __future__ import annotations

# Batches a scoring process holds before writing: the one it scores, and the next,
# which its reader thread reads meanwhile, so it never waits for its rank between
# batches. More would only lengthen what a dying process takes with it.
SCORING_DEPTH = 2

# Written batches that one flush to storage makes durable together, at most; so many
# are held after writing until they are reported done. Groups of four kept most of
# what no flush at all gains (the light loop: 2.20 s flushing each batch, 2.13 s with
# no flush; benchmarks/README.md), and each one more adds a batch per process to
# every rank's window.
SYNC_GROUP = 4

# A Slurm job's start-up when no earlier run of it measured one: start-up took 4-37 s
# on a loaded node, so 60 s leaves room before the stop signal (mpiscore slurm).
DEFAULT_STARTUP_SECONDS = 60

# What a stopped job needs after its drain: journal, summary and closing the output;
# part of how early Slurm is asked to signal the job (mpiscore slurm).
FINISH_SECONDS = 15

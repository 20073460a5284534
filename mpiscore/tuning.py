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

# The longest the Scored of a short batch waits in its scoring process for those of the
# next ones, while they are there to score (scoring/main.py _Sender); the rank lets a
# process hold three times as many batches (rank/pool.py deepen), so two thirds are
# still there when it reports, and the rank's answer may wait for its next wake-up, the
# next report. One report, one wake-up of the rank, for ~0.1 s of batches: ~10 batches
# of 10 ms, where a wake-up and its Python (100-400 us here) would otherwise take 1-4%
# of a core per batch. What a process holds beyond SCORING_DEPTH is so ~0.3 s of work.
REPORT_SECONDS = 0.1

# Most batches a scoring process may hold not yet reported scored, however short they are.
MAX_SCORING_DEPTH = 32

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

# How long a rank waits for its scoring processes to start (interpreter, onnxruntime,
# the model's session): a 1 GB model on a loaded node's cold filesystem takes minutes.
START_TIMEOUT_SECONDS = 600.0

# How long a closing scoring process may take to say it closed before it is killed:
# closing is flushing what was already written, well under a second normally.
CLOSE_TIMEOUT_SECONDS = 10.0
# After --stop-grace, what a rank may take to abandon its batches and say so; batches
# still out on rank 0's books then are left for --resume (Coordinator.give_up_overdue):
# a rank whose word about them was lost never holds the stop up.
OVERDUE_MARGIN_SECONDS = 60.0
# An entry script's shutdown() runs while its process closes: it may write what the
# script gathered (summary_only's files), so it gets longer; one that does not return
# in time is killed, and the job ends with an error (its output may be short).
SHUTDOWN_TIMEOUT_SECONDS = 300.0

# Readers taking turns in a scoring process: the next batch is read while one is
# scored, and a batch's arrays stay put while it is scored.
READ_AHEAD = 2

# The longest a written batch waits for its group's flush to storage (SYNC_GROUP):
# what a short job's last batches, and the journal, lag behind the writes.
SYNC_SECONDS = 0.1

# Waits that poll a non-blocking MPI call (the barrier before a broadcast, rank 0's
# wait for the workers' last word) sleep from 10 us growing to this: they are short,
# and 1 ms keeps them prompt at almost no CPU.
MAX_SLEEP_SECONDS = 1e-3

# The longest a rank waits on its scoring processes' pipes before it looks at MPI, the
# stop signals and the batch timeouts again: how late a stop, a Drain or a timeout is
# seen at worst. A pipe wakes the rank at once when a batch ends, so this costs no
# latency; but each wake-up of a rank costs 200-300 us of CPU on the caches a scoring
# process has just emptied: every 50 ms, that was 0.5% of a core per rank, half of what
# a rank may spend in all (benchmarks/README.md, "Fourth pass"). Longer than
# REPORT_SECONDS: while short batches flow, their reports wake the rank first and the
# timer seldom fires (at 100 ms it raced them, and fired almost as often).
LONGEST_WAIT_SECONDS = 0.15

# While a reply over MPI is due, MPI is polled again after a share of the usual
# interval between the events that call for one, the wait doubling while nothing
# comes (rank/world.py Pacer). Each poll that wakes a rank costs far more than the
# probe: ~30 us of the kernel's sleep and wake-up, then Python and MPI running on
# caches the scoring process has just emptied (~100-200 us per wake-up measured on
# 10 ms batches, where a hot probe costs 0.2 us). Rank 0 (POLL_SHARE): a quarter of
# the interval between other ranks' messages, so a rank that reports a batch is
# answered within a quarter of a batch, long before its processes run dry (a rank
# holds a batch more than they score, and each process the next one). A worker
# (WORKER_POLL_SHARE): one whole interval between its batch ends, because its pipes
# wake it twice a batch anyway (Scored, Done) and each wake-up looks at MPI too, so
# the timer only fires when batches stop coming.
POLL_SHARE = 0.25
WORKER_POLL_SHARE = 1.0

# A rank whose scoring processes hold no batch has no pipe left to wake it: what it
# waits for (the other ranks' last reports on rank 0, the Stop on the others) is the
# end of the job, and it comes over MPI. While the pace is kept its waits grow only to
# this share of the interval between events: at the end of a heavy -n 2 job (0.24 s
# batches) rank 0 saw rank 1's last report 113 ms late and rank 1 the Stop 120 ms
# late, up to one interval each. Once the silence is longer than the interval the
# waits grow to its eighth, so a long tail costs a few polls per doubling of it. While
# a pacer starts (PROMPT_WAIT_SECONDS) it waits the same share of the silence.
IDLE_POLL_SHARE = 0.125

# While it keeps no pace (none known, or lost), for at most STARTING_SECONDS after the
# loop starts, a pacer's waits grow only to PROMPT_WAIT_SECONDS, or an eighth of the
# silence (IDLE_POLL_SHARE) once that is longer: the first exchange (a rank's
# Request, rank 0's Assign) is what every rank's start waits on, and with no pace known
# yet the waits had doubled past it (rank 1's first batch began 80-100 ms after rank
# 0's, at -n 2 on 16,384-row batches). So is the next one: a rank's first report, with
# its request for more as its processes deepen, waited 128 ms for rank 0 while its
# 2 batches ran out (light -n 2, 20 ms batches). A rank given nothing (more ranks than
# batches) returns to the longest waits after STARTING_SECONDS.
PROMPT_WAIT_SECONDS = 2e-3
STARTING_SECONDS = 1.0

# How often rank 0 replaces RUN_DIR/status.json (mpiscore status): often enough to
# watch, rare enough to cost nothing on a parallel filesystem.
STATUS_SECONDS = 2.0

# Rank 0 marks its locks alive this often; a lock not refreshed for STALE_SECONDS
# (eight missed refreshes) is stale: its job is gone, or its node is.
REFRESH_SECONDS = 15.0
STALE_SECONDS = 120.0

# How long --dry-run reads and scores real batches to time them: long enough to leave
# the warm-up batch out and sample several files, short enough to run before every
# submission.
DRY_RUN_SECONDS = 2.5

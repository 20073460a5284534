"""estimate.py and scoring/calibrate.py: scaling a calibration to an allocation."""

from __future__ import annotations

import pytest

from mpiscore.estimate import Calibration, DryRun, estimate, slurm_time, suggested_seconds
from mpiscore.plan import Batch
from mpiscore.scoring.calibrate import spread


def dry(rows: int = 1_000_000, batch_rows: int = 10_000, done: int = 0,
        rate_rows: int = 100_000, threads: int = 2) -> DryRun:
    """A job whose calibration measured ``rate_rows`` rows per second in one process."""
    calibration = Calibration(batches=10, rows=rate_rows, read_seconds=0.25, score_seconds=0.75,
                              setup_seconds=3.0, threads=threads)
    return DryRun(files=4, rows=rows, input_bytes=rows * 64, batches=rows // batch_rows,
                  batch_rows=batch_rows, rows_done=done, item="row", output="y.h5",
                  calibration=calibration)


def test_the_wall_is_set_up_plus_rows_over_every_process_plus_one_batch() -> None:
    guess = estimate(dry(), ranks=4, procs_per_rank=2, threads=2)
    assert guess.scoring_seconds == pytest.approx(1_000_000 / (100_000 * 8))
    assert guess.tail_seconds == pytest.approx(0.1)  # one batch of 10,000 rows alone
    assert guess.wall_seconds == pytest.approx(3.0 + 1.25 + 0.1)
    assert guess.core_hours == pytest.approx(guess.wall_seconds * 16 / 3600)


def test_rows_done_by_an_earlier_run_are_not_estimated_again() -> None:
    full, half = (estimate(dry(done=d), 1, 1, 2) for d in (0, 500_000))
    assert half.scoring_seconds == pytest.approx(full.scoring_seconds / 2)
    assert estimate(dry(done=1_000_000), 1, 1, 2).wall_seconds == pytest.approx(3.0)


def test_no_tail_when_every_batch_has_a_process() -> None:
    assert estimate(dry(rows=80_000), ranks=8, procs_per_rank=1, threads=2).tail_seconds == 0


def test_other_thread_counts_are_said_to_be_assumed() -> None:
    same = estimate(dry(threads=2), 2, 1, threads=2).assumptions
    other = estimate(dry(threads=2), 2, 1, threads=8).assumptions
    assert any("gets 2 cores, as here" in a for a in same)
    assert any("8 threads is as fast as the one timed here with 2" in a for a in other)


@pytest.mark.parametrize(("wall", "text"), [(0.2, "00:15:00"), (3600, "01:40:00"),
                                            (86_000, "1-12:00:00")])
def test_suggested_time_is_the_estimate_with_a_margin_in_slurm_form(wall, text) -> None:
    assert slurm_time(suggested_seconds(wall)) == text
    assert suggested_seconds(wall) >= wall * 1.5 + 600


def test_calibration_samples_the_whole_plan_early_and_each_batch_once() -> None:
    batches = [Batch(i, 0, i, i + 1, i) for i in range(9)]
    order = [b.batch_id for b in spread(batches)]
    assert order[:3] == [0, 8, 4] and sorted(order) == list(range(9))
    assert spread([]) == [] and [b.batch_id for b in spread(batches[:1])] == [0]

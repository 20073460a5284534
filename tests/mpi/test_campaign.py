"""The randomized fault campaign (tests/mpi/campaign.py), a few runs: never a wrong output.

``MPISCORE_CAMPAIGN_RUNS`` and ``MPISCORE_CAMPAIGN_SEED`` make it longer or different;
``python -m tests.mpi.campaign --runs 200`` runs the long campaign on its own.
"""

from __future__ import annotations

import os

import pytest

from tests.mpi.campaign import campaign

RUNS = int(os.environ.get("MPISCORE_CAMPAIGN_RUNS", "4"))
SEED = int(os.environ.get("MPISCORE_CAMPAIGN_SEED", "2026"))


@pytest.mark.timeout(120 + 60 * RUNS)
def test_random_faults_never_leave_a_wrong_output() -> None:
    result = campaign(RUNS, SEED)
    bad = [d for d in result["details"] if d["outcome"] in ("wrong", "unclear")]
    assert not bad, bad
    assert result["attempts_with_traceback"] == 0, result["details"]
    assert sum(result["outcomes"].values()) == RUNS

"""``mpiscore`` as a rank runs it, recording what plan each rank and scoring process gets.

Run under mpiexec by test_plan_withheld.py: every rank writes, to the folder
named by ``PLAN_PROBE_DIR``, whether the job it was broadcast and the job it
sends its scoring processes hold the plan's batches, then scores as usual; at
its exit, which of the format libraries it had imported.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

from mpiscore.rank import pool as pool_module
from mpiscore.rank import world as world_module

FOLDER = Path(os.environ["PLAN_PROBE_DIR"])
broadcast_original = world_module.World.from_rank_zero
start_original = pool_module.ScorerPool.start
seen: dict[str, Any] = {}


def own_paths(job: Any) -> int | None:
    """File input: how many paths its source holds besides the plan's file table (the
    table is the plan's own tuple when bound); None for other kinds."""
    if job.source.kind != "files":
        return None
    resolved = job.source.resolved
    return len(resolved.paths) + (0 if resolved.files is job.plan.files else len(job.plan.files))


def from_rank_zero(self: world_module.World, step: Any, what: str) -> Any:
    value = broadcast_original(self, step, what)
    job = value[0]
    seen.update(rank=self.rank, broadcast_holds_batches=job.plan.holds_batches,
                batches=job.plan.batch_count, broadcast_bytes=len(pickle.dumps(value)),
                broadcast_own_paths=own_paths(job))
    return value


def start(self: pool_module.ScorerPool, spec: Any, *more: Any) -> None:
    seen.update(spec_holds_batches=spec.job.plan.holds_batches,
                spec_job_bytes=len(pickle.dumps(spec.job)), fingerprint=spec.job.fingerprint,
                spec_own_paths=own_paths(spec.job))
    (FOLDER / f"rank-{seen['rank']}.json").write_text(json.dumps(seen))
    start_original(self, spec, *more)


def record_libraries() -> None:
    loaded = {name: name in sys.modules for name in ("numpy", "h5py", "pyarrow")}
    (FOLDER / f"rank-{seen['rank']}-libraries.json").write_text(json.dumps(loaded))


atexit.register(record_libraries)
world_module.World.from_rank_zero = from_rank_zero  # type: ignore[method-assign]
pool_module.ScorerPool.start = start  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv = ["mpiscore", *sys.argv[1:]]
    from mpiscore.cli import main

    main()

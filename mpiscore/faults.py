"""Fault injection for testing the failure paths with real processes (MPISCORE_FAULTS).

A comma-separated list of ``ACTION:TARGET``; batch actions fire in the scoring
process once its reader thread has read the batch (or failed to), just before the
batch is scored, on the batch's first try only unless noted:

    raise:B        batch B raises on its first try (then succeeds when retried)
    raise-always:B batch B raises on every try
    kill:B         the scoring process SIGKILLs itself on batch B
    hang:B         batch B sleeps for an hour (for --batch-timeout)
    sleep:S        every batch sleeps S seconds first (makes jobs long enough to signal)
    kill-rank:R    rank R SIGKILLs itself after its first completed batch
    raise-rank:R   rank R raises after its first completed batch

Used by the test suite; harmless when unset.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from .errors import ConfigError


class InjectedFault(RuntimeError):
    """The error an injected ``raise`` fault raises."""


@dataclass(frozen=True)
class FaultPlan:
    """Parsed ``MPISCORE_FAULTS``."""

    actions: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        actions = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            action, _, target = item.partition(":")
            if action not in {*_BATCH_ACTIONS, *_RANK_ACTIONS, "sleep"} or not target:
                raise ConfigError(f"MPISCORE_FAULTS: cannot parse {item!r}")
            actions.append((action, float(target)))
        return cls(tuple(actions))

    def before_batch(self, batch_id: int, attempt: int) -> None:
        """Called by the scoring loop with a batch just read, before scoring it."""
        for action, target in self.actions:
            if action == "sleep":
                time.sleep(target)
            elif action in _BATCH_ACTIONS and target == batch_id and (
                    attempt == 0 or action == "raise-always"):
                _BATCH_ACTIONS[action](batch_id)

    def after_rank_batch(self, rank: int) -> None:
        """Called by a rank's main process after it reported a completed batch."""
        for action, target in self.actions:
            if action in _RANK_ACTIONS and target == rank:
                _RANK_ACTIONS[action](rank)


def _raise(batch_id: int) -> None:
    raise InjectedFault(f"injected fault in batch {batch_id}")


def _kill_self(_: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _hang(_: int) -> None:
    time.sleep(3600)


def _raise_rank(rank: int) -> None:
    raise InjectedFault(f"injected fault on rank {rank}")


_BATCH_ACTIONS = {"raise": _raise, "raise-always": _raise, "kill": _kill_self, "hang": _hang}
_RANK_ACTIONS = {"kill-rank": _kill_self, "raise-rank": _raise_rank}

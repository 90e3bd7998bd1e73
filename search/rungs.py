"""The rungs of a multi-fidelity search as its trials recorded them: configs measured, stopped and gone on at each,
and the training tokens spent to reach it (what the run summary and the report tell of the ladder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .outcome import is_stopped
from .storage import StoredTrial


@dataclass(frozen=True)
class Rung:
    """What happened at one rung of a multi-fidelity search."""

    rung: int
    tokens: int  # the tokens behind its results (the most any trial trained to it)
    reached: int  # configs measured there
    stopped: int  # configs stopped there by the scheduler
    spent: Optional[int] = None  # training tokens spent from the rung below up to this one (None: a study older than
    # the record of it)


def rungs_of(trials: Sequence[StoredTrial]) -> list[Rung]:
    """Configs measured and stopped at each rung, and the tokens spent to reach it, from the rung results the trials
    recorded (each with the trial's tokens spent so far: a rung's share is what was spent since the rung below)."""
    reached: dict[int, int] = {}
    stopped: dict[int, int] = {}
    tokens: dict[int, int] = {}
    shares: dict[int, list[Optional[int]]] = {}  # rung -> each trial's tokens spent since the rung below (None: unknown)
    for trial in trials:
        attrs = trial.user_attrs
        if not trial.finished or not trial.outcome.counts:
            continue
        before: Optional[int] = 0
        for rung, entry in sorted((int(r), entry) for r, entry in (attrs.get("rungs") or {}).items()):
            reached[rung] = reached.get(rung, 0) + 1
            tokens[rung] = max(tokens.get(rung, 0), entry["tokens_trained"])
            so_far = entry.get("tokens_spent")
            shares.setdefault(rung, []).append(None if so_far is None or before is None else so_far - before)
            before = so_far
        if is_stopped(attrs):
            stopped[attrs["rung"]] = stopped.get(attrs["rung"], 0) + 1
    return [Rung(r, tokens[r], reached[r], stopped.get(r, 0), None if None in shares[r] else sum(shares[r]))
            for r in sorted(reached)] if len(reached) > 1 else []

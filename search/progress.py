"""The live console display of a search: one line per finished trial with the running totals."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Mapping, Sequence


def plural(count: int, noun: str) -> str:
    """'1 trial', '2 trials'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts and prints trial outcomes. verbosity 0 prints nothing, 1 a line per measured trial, 2 adds the params
    and a line for each repeated suggestion that reused a measurement."""

    def __init__(self, total: int, done_before: int, objectives: Sequence[str], verbosity: int = 1) -> None:
        self.total, self.done_before, self.objectives = total, done_before, list(objectives)
        self.verbosity = verbosity
        self.start = time.monotonic()
        self.done = 0
        self.running = 0
        self.reused = 0
        self.failures: Counter = Counter()

    def say(self, text: str) -> None:
        if self.verbosity > 0:
            print(text, flush=True)  # sys.stdout at call time: Ray pickles this object with the searcher

    def started(self) -> None:
        self.running += 1

    def finished(self, number: int, params: Mapping[str, Any], metrics: Mapping[str, Any], front_size: int) -> None:
        """One line for a measured trial, then the running totals."""
        self.running = max(0, self.running - 1)
        self.done += 1
        if metrics.get("status") != "ok":
            self.failures[metrics.get("reason", "error")] += 1
        count = self.done_before + self.done
        elapsed = time.monotonic() - self.start
        remaining = self.total - count
        eta = f" · ~{_clock(elapsed / self.done * remaining)} left" if remaining > 0 else ""
        reused = f" · {plural(self.reused, 'repeat')} reused" if self.reused else ""
        self.say(f"[{count:>{len(str(self.total))}}/{self.total}] #{number:<3} {_outcome(metrics, self.objectives)}")
        self.say(f"        done {count} · failed {sum(self.failures.values())}{reused} · running {self.running} · "
                 f"front {front_size} · {_clock(elapsed)} elapsed{eta}")
        if self.verbosity > 1:
            self.say("        " + " ".join(f"{k}={v}" for k, v in params.items()))

    def repeated(self, number: int, metrics: Mapping[str, Any]) -> None:
        """A suggestion that repeated a measured config and reused its result: counted apart, shown with -v."""
        self.reused += 1
        if self.verbosity > 1:
            self.say(f"[{'=':>{len(str(self.total))}}/{self.total}] #{number:<3} {_outcome(metrics, self.objectives)}  "
                     f"(same config as #{metrics['reused_from']}: reused, not counted)")


def _outcome(metrics: Mapping[str, Any], objectives: Sequence[str]) -> str:
    """'ok   val_loss 2.3  latency_ms 1.1' or 'FAIL reason: message'."""
    if metrics.get("status") == "ok":
        outcome = "ok   " + "  ".join(f"{name} {metrics[name]:.4g}" for name in objectives if name in metrics)
        return outcome + (f"  (infeasible: {metrics['violations']})" if metrics.get("violations") else "")
    return f"FAIL {metrics.get('reason', 'error')}: {metrics.get('message', '')}"[:165]

"""The live console display of a search: one line per finished trial with the running totals."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Mapping, Sequence

from .metrics import NOTE_METRICS, SD_SUFFIX, with_sd
from .outcome import MEASURED, PREDICTED, STOPPED, outcome_of


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
        self.refused: Counter = Counter()  # refusals before training, by reason: they cost no budget
        self.at_rung: Counter = Counter()  # results recorded at each rung short of the full budget (multi-fidelity)
        self.stopped = 0  # trials a multi-fidelity scheduler stopped at a rung

    def say(self, text: str) -> None:
        if self.verbosity > 0:
            print(text, flush=True)  # sys.stdout at call time: Ray pickles this object with the searcher

    def started(self) -> None:
        self.running += 1

    def finished(self, number: int, params: Mapping[str, Any], metrics: Mapping[str, Any], front_size: int,
                 counted: bool = True) -> None:
        """One line for a trial back from its worker, then the running totals. One that used no budget (refused
        before training, its worker lost) shows '-' for its count."""
        self.running = max(0, self.running - 1)
        if not counted:
            self._tally_free(metrics)
            self.say(f"[{'-':>{len(str(self.total))}}/{self.total}] #{number:<3} {_outcome(metrics, self.objectives)}")
            return
        self.done += 1
        kind = outcome_of(metrics).kind
        if kind in (STOPPED, PREDICTED):
            self.stopped += 1
        elif kind is not MEASURED:
            self.failures[kind.name] += 1
        count = self.done_before + self.done
        elapsed = time.monotonic() - self.start
        remaining = self.total - count
        eta = f" · ~{_clock(elapsed / self.done * remaining)} left" if remaining > 0 else ""
        free = "".join(f" · {plural(n, noun)} {what}" for n, noun, what in (
            (self.reused, "repeat", "reused"), (sum(self.refused.values()), "candidate", "refused")) if n)
        self.say(f"[{count:>{len(str(self.total))}}/{self.total}] #{number:<3} {_outcome(metrics, self.objectives)}")
        rungs = f" · stopped {self.stopped} · at rungs " + "/".join(str(self.at_rung[r]) for r in sorted(self.at_rung)) \
            if self.at_rung else ""
        self.say(f"        done {count} · failed {sum(self.failures.values())}{rungs}{free} · running {self.running} · "
                 f"front {front_size} · {_clock(elapsed)} elapsed{eta}")
        if self.verbosity > 1:
            self.say("        " + " ".join(f"{k}={v}" for k, v in params.items()))

    def rung(self, number: int, rung: int, result: Mapping[str, Any], goes_on: bool) -> None:
        """A trial measured at a rung short of the full budget, and whether it goes on now or waits there."""
        self.at_rung[rung] += 1
        verdict = "goes on" if goes_on else "waits"
        self.say(f"[{'r' + str(rung):>{len(str(self.total))}}/{self.total}] #{number:<3} rung {rung} at "
                 f"{result['tokens_trained']:,} tokens: " + "  ".join(
                     f"{name} {with_sd(result[name], result.get(name + SD_SUFFIX))}" for name in self.objectives
                     if name in result) + f"  -> {verdict}")

    def promoted(self, number: int, rung: int) -> None:
        """A trial waiting at a rung now ranks well enough there to go on."""
        self.say(f"[{'r' + str(rung):>{len(str(self.total))}}/{self.total}] #{number:<3} rung {rung}: now among the best "
                 f"there -> goes on")

    def _tally_free(self, metrics: Mapping[str, Any]) -> None:
        told = outcome_of(metrics)
        if told.reused_from is not None:
            self.reused += 1
        elif told.kind is not MEASURED:
            self.refused[told.kind.name] += 1

    def free(self, number: int, metrics: Mapping[str, Any]) -> None:
        """A suggestion settled without training (it repeated a settled config, or the cheap screen refused it):
        counted apart, a line each with -v."""
        self._tally_free(metrics)
        if self.verbosity > 1:
            note = f"  (same config as #{metrics['reused_from']}: reused, not counted)" if "reused_from" in metrics \
                else "  (refused before training, not counted)"
            self.say(f"[{'=':>{len(str(self.total))}}/{self.total}] #{number:<3} {_outcome(metrics, self.objectives)}{note}")


def _outcome(metrics: Mapping[str, Any], objectives: Sequence[str]) -> str:
    """'ok   val_loss 2.3  latency_ms 1.1', 'stop val_loss 2.9 ... (stopped at rung 0 ...)' or 'FAIL reason: message'."""
    kind = outcome_of(metrics).kind
    if kind in (STOPPED, PREDICTED):
        return ("stop " if kind is STOPPED else "pred ") + "  ".join(
            f"{name} {with_sd(metrics[name], metrics.get(name + SD_SUFFIX))}" for name in objectives if name in metrics) + \
            f"  ({metrics.get('message', 'stopped at a rung')})"
    if kind is MEASURED:
        outcome = "ok   " + "  ".join(f"{name} {with_sd(metrics[name], metrics.get(name + SD_SUFFIX))}"
                                      for name in objectives if name in metrics)
        for note in NOTE_METRICS:
            if metrics.get(note):
                timing = note.removesuffix("_noisy")
                outcome += f"  ({timing} noisy: ±{100 * metrics.get(timing + '_ci', float('nan')):.0f}%)"
        return outcome + (f"  (infeasible: {metrics['violations']})" if metrics.get("violations") else "")
    return f"FAIL {kind.name}: {metrics.get('message', '')}"[:165]

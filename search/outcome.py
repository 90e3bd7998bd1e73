"""How a trial ended, declared once: every kind of outcome, and for each whether it takes a place of the `--trials`
budget, whether it may be on the Pareto front, whether its config is owed again, and whether a later suggestion of
the same config reuses it instead of training again. Every writer and reader of a trial's outcome goes through here.

A trial stores its outcome in its user attributes: `status` ('ok', 'stopped' or 'failed'), with `reason` (the kind's
name) and `message` when it failed, and `reused_from` when it repeated a settled config and was told that trial's
result. A trial with no status was failed by its stopped heartbeat: its driver died, and it was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"  # the Optuna trial states an outcome is told as


@dataclass(frozen=True)
class Kind:
    """One way a trial can end."""

    name: str
    state: str  # COMPLETE, PRUNED or FAIL
    counts: bool  # takes a place of the --trials budget: it trained (or failed while training) on its own
    owed: bool  # its config is owed again: a new trial measures it
    settles: bool  # a later suggestion of the same config is told this result instead of training again
    description: str

    @property
    def front(self) -> bool:
        """Whether a trial that ended so may be on the front (when it also meets the constraints)."""
        return self.state == COMPLETE

    @property
    def refusal(self) -> bool:
        """Refused before training: it cost no budget, and a repeat of its config is refused the same way."""
        return self.settles and not self.counts


def _kinds(*kinds: Kind) -> dict[str, Kind]:
    return {kind.name: kind for kind in kinds}


KINDS = _kinds(
    Kind("measured", COMPLETE, counts=True, owed=False, settles=True, description="trained the full budget and measured"),
    Kind("stopped", PRUNED, counts=True, owed=False, settles=True,
         description="stopped at a rung by successive halving: measured there, not at the full budget"),
    Kind("predicted", COMPLETE, counts=True, owed=False, settles=True,
         description="stopped at a rung short of the ladder's top; its loss at the target is predicted"),
    Kind("oom", FAIL, counts=True, owed=False, settles=True, description="ran out of memory"),
    Kind("nan_loss", FAIL, counts=True, owed=False, settles=True, description="its loss became NaN or infinite"),
    Kind("diverged", FAIL, counts=True, owed=False, settles=True,
         description="its validation loss rose above the uniform guess"),
    Kind("bad_metric", FAIL, counts=True, owed=False, settles=True, description="an objective was not a finite number"),
    Kind("error", FAIL, counts=True, owed=False, settles=True, description="the trial raised an unexpected error"),
    Kind("export", FAIL, counts=True, owed=False, settles=True,
         description="its export to probes.runtime failed, or its outputs differed from the eager model's"),
    Kind("worker_died_twice", FAIL, counts=True, owed=False, settles=True,
         description="its worker died, as the worker of its first try did"),
    Kind("rejected", FAIL, counts=False, owed=False, settles=True,
         description="refused before training: the config does not build or run"),
    Kind("constraint", FAIL, counts=False, owed=False, settles=True,
         description="refused before training: a cheap metric breaks a constraint"),
    Kind("leaks_future", FAIL, counts=False, owed=False, settles=True,
         description="refused before training: an output reads a later position"),
    Kind("screened", FAIL, counts=False, owed=False, settles=False,
         description="refused before training: its timing, predicted from the study's, breaks a timing constraint by far"),
    Kind("interrupted", FAIL, counts=False, owed=True, settles=False,
         description="stopped by Ctrl-C, SIGTERM or its driver's death before it ended"),
    Kind("worker_died", FAIL, counts=False, owed=True, settles=False,
         description="its worker process died (killed, crashed, node lost): the config is run once more"),
    Kind("withdrawn", FAIL, counts=False, owed=False, settles=False,
         description="asked, but not needed: the budget was taken by then"),
)
MEASURED, STOPPED, PREDICTED = KINDS["measured"], KINDS["stopped"], KINDS["predicted"]
INTERRUPTED, WORKER_DIED, WITHDRAWN, ERROR = KINDS["interrupted"], KINDS["worker_died"], KINDS["withdrawn"], KINDS["error"]
STATUS = {MEASURED.name: "ok", STOPPED.name: "stopped", PREDICTED.name: "predicted"}  # every other kind is 'failed'


@dataclass(frozen=True)
class Outcome:
    """A finished trial's outcome: its kind, the trial whose result it reused (if it repeated a settled config), and
    the baseline it measures (a fixed config of the space, measured like any trial to compare the front with)."""

    kind: Kind
    reused_from: Optional[int] = None
    baseline: Optional[str] = None

    @property
    def counts(self) -> bool:
        """Takes a place of the budget: a repeat and a baseline do not."""
        return self.kind.counts and self.reused_from is None and self.baseline is None

    @property
    def state(self) -> str:
        """The Optuna state it is told as: a repeat that reused a measurement, and a baseline, are PRUNED, so that
        Optuna's own front holds each searched config once while the sampler still sees their params."""
        aside = self.reused_from is not None or self.baseline is not None
        return PRUNED if aside and self.kind.state == COMPLETE else self.kind.state

    @property
    def front(self) -> bool:
        return self.kind.front and self.reused_from is None and self.baseline is None

    @property
    def settles(self) -> bool:
        return self.kind.settles and self.reused_from is None

    @property
    def owed(self) -> bool:
        return self.kind.owed


def outcome_of(attrs: Mapping[str, Any]) -> Outcome:
    """The outcome a trial's user attributes (or a record it was told) describe."""
    status = attrs.get("status")
    if status is None:
        kind = INTERRUPTED  # failed by its stopped heartbeat: its driver died
    elif status == STATUS[MEASURED.name]:
        kind = MEASURED
    elif status == STATUS[STOPPED.name]:
        kind = STOPPED
    elif status == STATUS[PREDICTED.name]:
        kind = PREDICTED
    else:
        kind = KINDS.get(attrs.get("reason"), ERROR)
    return Outcome(kind, attrs.get("reused_from"), attrs.get("baseline"))


def is_stopped(attrs: Mapping[str, Any]) -> bool:
    """Stopped at a rung short of the full budget (and, with a target, predicted from there)."""
    return attrs.get("status") in (STATUS[STOPPED.name], STATUS[PREDICTED.name])


def is_measured(attrs: Mapping[str, Any]) -> bool:
    """A record that measured its config at some budget (the full one, or a rung where it was stopped)."""
    return attrs.get("status") in STATUS.values()


def measured(**metrics: Any) -> dict[str, Any]:
    """The record of a trial that measured its config at the full budget."""
    return {"status": STATUS[MEASURED.name], **metrics}


def stopped(message: str, /, **metrics: Any) -> dict[str, Any]:
    """The record of a trial that successive halving stopped at a rung."""
    return {**metrics, "status": STATUS[STOPPED.name], "message": message}


def predicted(message: str, /, **metrics: Any) -> dict[str, Any]:
    """The record of a trial stopped at a rung whose loss at the target budget is predicted (on the front)."""
    return {**metrics, "status": STATUS[PREDICTED.name], "message": message}


def failed(kind: str | Kind, message: str, /, **metrics: Any) -> dict[str, Any]:
    """The record of a trial that ended without a measurement, for a reason declared in KINDS."""
    name = kind.name if isinstance(kind, Kind) else kind
    if name not in KINDS or name in STATUS:
        raise ValueError(f"unknown failure kind {name!r}; declared: {', '.join(k for k in KINDS if k not in STATUS)}")
    return {**metrics, "status": "failed", "reason": name, "message": message}


def reused(result: Mapping[str, Any], number: int) -> dict[str, Any]:
    """What a repeat of a settled config is told: that trial's record, marked as reused from it."""
    return {**result, "reused_from": number}


def reason(attrs: Mapping[str, Any]) -> str:
    """A finished trial's reason in a few words, for tables: the twin it reused, the rung it stopped at, or why it
    failed; '' for a measured trial."""
    if "baseline" in attrs and outcome_of(attrs).kind.front:
        return f"baseline {attrs['baseline']}"
    if "reused_from" in attrs:
        return f"same config as #{attrs['reused_from']}"
    if attrs.get("status") == STATUS[PREDICTED.name]:
        return f"predicted from rung {attrs.get('rung')}"
    if is_stopped(attrs):
        return f"stopped at rung {attrs.get('rung')}"
    kind = outcome_of(attrs).kind
    return "" if kind is MEASURED else kind.name

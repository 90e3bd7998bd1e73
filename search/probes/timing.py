"""How every timing probe measures: with the device to itself (the device gate pauses the trials that share it), on
the CPU with probes.threads threads (one by default: the setting that stays steady beside other busy processes), and
against a fixed reference model (reference.py) on the same runtime: after warm-up, each timed call is paired with a
call of the reference, which of the two goes first alternating, and the median of the ratios call / reference, scaled
by the reference's time on this machine, is the timing. Whatever slows the machine while it measures slows both
calls of a pair, and cancels. Rounds of pairs are timed until the median ratio's 95% interval is within CI_WIDTH of
it, up to MAX_ROUNDS; a timing whose interval stayed wider is marked noisy."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ..devicegate import DeviceGate
from ..steps import autocast

CI_WIDTH = 0.02  # a median ratio known within 2% (its 95% interval's half-width) is steady: no more pairs
MAX_ROUNDS = 6  # rounds of pairs at most; the interval narrows as the square root of the pairs
MIN_PAIRS = 6  # fewer pairs than this bound no interval of their median


@dataclass(frozen=True)
class Timing:
    """A timed call's time (ms: the median ratio to the reference, scaled by the reference's time here), the
    coefficient of variation of its ratios, the rounds of pairs it took, and how wide the median's interval is."""

    median_ms: float
    cv: float
    rounds: int
    alone: bool = True  # whether the device was to itself (False: it could not be had in time; others ran beside)
    export_diff: Optional[float] = None  # the runtime's export against the eager model: largest logit difference
    ci: float = 0.0  # the half-width of the median ratio's 95% interval, as a share of the median

    @property
    def noisy(self) -> bool:
        return self.ci > CI_WIDTH or not self.alone

    def metrics(self, name: str) -> dict[str, float | int | bool]:
        """As a probe reports it: 'decode_ms', 'decode_cv', 'decode_ci', 'decode_rounds', 'decode_noisy' for name
        'decode', and 'decode_export_diff' on a runtime that exports the model."""
        metrics = {f"{name}_ms": self.median_ms, f"{name}_cv": self.cv, f"{name}_ci": self.ci,
                   f"{name}_rounds": self.rounds, f"{name}_noisy": self.noisy}
        return metrics if self.export_diff is None else {**metrics, f"{name}_export_diff": self.export_diff}


def cv(times: list[float]) -> float:
    return statistics.pstdev(times) / statistics.mean(times) if len(times) > 1 else 0.0


def median_interval(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95% interval of the median of `values`: the order statistics of ranks
    floor(n/2 - 1.96 sqrt(n) / 2) and ceil(1 + n/2 + 1.96 sqrt(n) / 2) (1-based; the binomial's normal
    approximation). Under MIN_PAIRS values it is unbounded: so few say nothing of the median."""
    n = len(values)
    if n < MIN_PAIRS:
        return -math.inf, math.inf
    ordered, half = sorted(values), 1.96 * math.sqrt(n) / 2
    return ordered[max(0, math.floor(n / 2 - half) - 1)], ordered[min(n - 1, math.ceil(1 + n / 2 + half) - 1)]


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Torch's CPU threads set to `count` for the duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def timing_on(model: torch.nn.Module, device: torch.device, threads: int = 1, exclusive: bool = True) -> Iterator[bool]:
    """The conditions every timing runs in: the device to itself, `threads` CPU threads, inference mode, autocast
    on CUDA. Yields whether the device was had alone. Not `exclusive`: the same but beside the trainers (for an
    export or a compile before the timing, which would hold them up for seconds)."""
    was_training = model.training
    model.eval()
    try:
        with (DeviceGate.of(device).exclusive() if exclusive else contextlib.nullcontext(False)) as alone, \
                (cpu_threads(threads) if device.type == "cpu" else contextlib.nullcontext()), torch.no_grad(), autocast(device):
            yield alone
    finally:
        model.train(was_training)


def timed(call: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call, the device synchronised around it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    sync(device)
    start = time.perf_counter()
    call()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def paired(call: Callable[[], object], reference: Callable[[], object], device: torch.device,
           reference_first: bool) -> tuple[float, float]:
    """One pair: (the reference's ms, the call's ms), in the order asked."""
    if reference_first:
        ref = timed(reference, device)
        return ref, timed(call, device)
    ms = timed(call, device)
    return timed(reference, device), ms


def measure(round_of_pairs: Callable[[], list[tuple[float, float]]], reference_ms: Callable[[list[float]], float],
            alone: bool = True, export_diff: Optional[float] = None) -> Timing:
    """Rounds of (reference ms, call ms) pairs (each round already past its warm-up) until the median ratio's 95%
    interval is within CI_WIDTH of it or MAX_ROUNDS are spent; the time is that median times `reference_ms` (given
    the reference's times, the reference's time on this machine)."""
    pairs: list[tuple[float, float]] = []
    rounds, ci = 0, math.inf
    while rounds < MAX_ROUNDS and ci > CI_WIDTH:
        pairs += round_of_pairs()
        rounds += 1
        ratios = [ms / ref for ref, ms in pairs]
        median = statistics.median(ratios)
        low, high = median_interval(ratios)
        ci = (high - low) / 2 / median
    return Timing(median * reference_ms([ref for ref, _ in pairs]), cv(ratios), rounds, alone, export_diff, ci)

"""How every timing probe measures: with the device to itself (the device gate pauses the trials that share it), on
the CPU with probes.threads threads (one by default: the setting that stays steady beside other busy processes), after warm-up, a median over
repeats; a round noisier than MAX_CV is measured again, up to ROUNDS, the steadiest round kept and marked noisy if
even it stayed over."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ..devicegate import DeviceGate
from ..steps import autocast

MAX_CV = 0.25  # a round noisier than this was disturbed (idle CPUs vary by a few to twenty percent): measure again
ROUNDS = 3


@dataclass(frozen=True)
class Timing:
    """A timed call's median (ms), the coefficient of variation of the round it came from, the rounds it took."""

    median_ms: float
    cv: float
    rounds: int
    alone: bool = True  # whether the device was to itself (False: it could not be had in time; others ran beside)
    export_diff: Optional[float] = None  # the runtime's export against the eager model: largest logit difference

    @property
    def noisy(self) -> bool:
        return self.cv > MAX_CV or not self.alone

    def metrics(self, name: str) -> dict[str, float | int | bool]:
        """As a probe reports it: 'decode_ms', 'decode_cv', 'decode_rounds', 'decode_noisy' for name 'decode', and
        'decode_export_diff' on a runtime that exports the model."""
        metrics = {f"{name}_ms": self.median_ms, f"{name}_cv": self.cv, f"{name}_rounds": self.rounds,
                   f"{name}_noisy": self.noisy}
        return metrics if self.export_diff is None else {**metrics, f"{name}_export_diff": self.export_diff}


def cv(times: list[float]) -> float:
    return statistics.pstdev(times) / statistics.mean(times) if len(times) > 1 else 0.0


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
def timing_on(model: torch.nn.Module, device: torch.device, threads: int = 1) -> Iterator[bool]:
    """The conditions every timing runs in: the device to itself, `threads` CPU threads, inference mode, autocast
    on CUDA. Yields whether the device was had alone."""
    was_training = model.training
    model.eval()
    try:
        with DeviceGate.of(device).exclusive() as alone, \
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


def measure(round_of_times: Callable[[], list[float]], alone: bool = True, export_diff: Optional[float] = None) -> Timing:
    """Rounds of timings (each already past its warm-up) until one is steady or ROUNDS are spent."""
    rounds: list[list[float]] = []
    while len(rounds) < ROUNDS and (not rounds or cv(rounds[-1]) > MAX_CV):
        rounds.append(round_of_times())
    steadiest = min(rounds, key=cv)
    return Timing(statistics.median(steadiest), cv(steadiest), len(rounds), alone, export_diff)

"""Exclusive device time for latency probes among trials packed on one GPU.

Trials share a GPU while they train; a latency probe must have it to itself, or its numbers measure the
neighbours. Two lock files per device make a readers-writer lock that cannot starve the probe: trainers hold
'use' shared while they train, and test 'gate' without blocking at each step (one system call). A probe closes
'gate', then takes 'use' exclusively; each trainer, finding the gate closed, finishes its queued GPU work, lets go
of 'use', and waits at the gate until the probe is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch


def _lock_path(device: torch.device, role: str) -> Path:
    index = "" if device.index is None else device.index
    return Path(tempfile.gettempdir()) / f"configaformer-{device.type}{index}-{role}.lock"


class DeviceGate:
    """`sharing()` for training (yields a per-step checkpoint), `exclusive()` for a latency probe."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @contextlib.contextmanager
    def sharing(self) -> Iterator[Callable[[], None]]:
        if self.device.type != "cuda":  # CPU probes run single-threaded instead of pausing the neighbours
            yield lambda: None
            return
        with open(_lock_path(self.device, "gate"), "a") as gate, open(_lock_path(self.device, "use"), "a") as use:
            fcntl.flock(use, fcntl.LOCK_SH)

            def checkpoint() -> None:
                try:
                    fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # a probe is waiting: step aside until it is done
                    torch.cuda.synchronize(self.device)
                    fcntl.flock(use, fcntl.LOCK_UN)
                    fcntl.flock(gate, fcntl.LOCK_SH)
                    fcntl.flock(use, fcntl.LOCK_SH)
                fcntl.flock(gate, fcntl.LOCK_UN)

            try:
                yield checkpoint
            finally:
                fcntl.flock(use, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with open(_lock_path(self.device, "gate"), "a") as gate, open(_lock_path(self.device, "use"), "a") as use:
            fcntl.flock(gate, fcntl.LOCK_EX)
            fcntl.flock(use, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(use, fcntl.LOCK_UN)
                fcntl.flock(gate, fcntl.LOCK_UN)

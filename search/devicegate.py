"""A device to itself for the timing probes, among trials that share it: several trials packed on one GPU, or all the
trials and the driver's drawing on one machine's CPUs.

Two lock files per device and machine make a readers-writer lock that cannot starve a probe. Trainers hold 'use'
shared while they train and test 'gate' without blocking at each step (one system call). A probe lets go of its
own 'use', closes 'gate', then takes 'use' exclusively; each trainer, finding the gate closed, finishes its queued
work, lets go of 'use' and waits at the gate until the probe is done. Short work (a suggestion drawn by the driver)
holds 'use' shared for its duration, and a trainer lets go of 'use' while it waits on its driver (reporting a
result), so that no probe waits on a trainer that waits on something else. Each thread has its own gate per device
(its own open lock files, which lock apart from any other's): a probe run inside a trial's training steps aside for
its own thread rather than waiting on its own lock, and threads of one process exclude each other as processes do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch


def device_name(device: torch.device) -> str:
    """The device as the machine knows it: the CPU, or the physical GPU (a Ray worker sees its GPU as cuda:0)."""
    if device.type != "cuda":
        return device.type
    index = device.index or 0
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return f"cuda{visible[index] if index < len(visible) else index}"


class DeviceGate:
    """`sharing()` for training (yields a per-step checkpoint; `aside()` inside it for a wait that does no work),
    `shared()` for a short piece of work, `exclusive()` for a timing probe. One per device in a thread:
    `DeviceGate.of(device)`."""

    _gates: ClassVar[dict[tuple, DeviceGate]] = {}
    _made = threading.Lock()
    WAIT_S: ClassVar[float] = 120.0  # past this, a wait for the device gives up and goes on: a stuck process
    # elsewhere on the machine (a probe that hangs, a trainer stopped) slows others' timings, never halts them

    def __init__(self, device: torch.device, folder: Path) -> None:
        self.device = device
        name = device_name(device)
        self._gate = open(folder / f"configaformer-{name}-gate.lock", "a")
        self._use = open(folder / f"configaformer-{name}-use.lock", "a")
        self._mutex = threading.RLock()
        self._sharers = 0  # holders of 'use' in this thread (nested work)

    @classmethod
    def of(cls, device: torch.device | str, folder: Path | None = None) -> DeviceGate:
        """This thread's gate of `device` (lock files in `folder`, default the temporary folder)."""
        device = torch.device(device)
        folder = Path(folder or tempfile.gettempdir())
        with cls._made:
            key = (str(folder), device_name(device), os.getpid(), threading.get_ident())
            if key not in cls._gates:
                cls._gates[key] = cls(device, folder)
            return cls._gates[key]

    @classmethod
    def cpu(cls) -> DeviceGate:
        return cls.of("cpu")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _lock(self, file: Any, mode: int) -> bool:
        """Take a lock, waiting up to WAIT_S; False when it could not be had in that time."""
        deadline, pause = time.monotonic() + self.WAIT_S, 0.002
        while True:
            try:
                fcntl.flock(file, mode | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def _pass_gate(self) -> None:
        """Wait while a probe has the gate closed."""
        if self._lock(self._gate, fcntl.LOCK_SH):
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def _share(self) -> None:
        with self._mutex:
            if not self._sharers:
                self._pass_gate()
                self._lock(self._use, fcntl.LOCK_SH)
            self._sharers += 1

    def _unshare(self) -> None:
        with self._mutex:
            self._sharers -= 1
            if not self._sharers:
                fcntl.flock(self._use, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the device for a short piece of work: a probe that wants it waits until the work is done."""
        self._share()
        try:
            yield
        finally:
            self._unshare()

    @contextlib.contextmanager
    def sharing(self) -> Iterator[Callable[[], None]]:
        """Hold the device for training; yields a checkpoint to call between steps, where the trainer steps aside
        while a probe (of any process on this machine) has the device."""
        def checkpoint() -> None:
            try:
                fcntl.flock(self._gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(self._gate, fcntl.LOCK_UN)
            except BlockingIOError:  # a probe is waiting: finish the queued work, step aside until it is done
                self._sync()
                with self._mutex:
                    fcntl.flock(self._use, fcntl.LOCK_UN)
                    self._pass_gate()
                    self._lock(self._use, fcntl.LOCK_SH)

        self._share()
        try:
            yield checkpoint
        finally:
            self._unshare()

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Inside `sharing()`: let go of the device for a wait that does no work on it (a trainer reporting to its
        driver, which may take a while to ask for more), and take it again afterwards, after any probe waiting."""
        with self._mutex:
            held = self._sharers > 0
            if held:
                self._sync()
                fcntl.flock(self._use, fcntl.LOCK_UN)
        try:
            yield
        finally:
            if held:
                with self._mutex:
                    self._pass_gate()
                    self._lock(self._use, fcntl.LOCK_SH)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[bool]:
        """Have the device to itself: every trainer on it steps aside at its next step, no new work starts. Yields
        whether it did: False when the device could not be had within WAIT_S (the work goes on beside others)."""
        with self._mutex:
            held = self._sharers > 0
            if held:  # this thread trains: step aside first, or the probe would wait on its own lock
                self._sync()
                fcntl.flock(self._use, fcntl.LOCK_UN)
            gate = self._lock(self._gate, fcntl.LOCK_EX)
            alone = gate and self._lock(self._use, fcntl.LOCK_EX)
            try:
                yield alone
            finally:
                fcntl.flock(self._use, fcntl.LOCK_UN)
                if held:
                    self._lock(self._use, fcntl.LOCK_SH)
                if gate:
                    fcntl.flock(self._gate, fcntl.LOCK_UN)

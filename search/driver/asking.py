"""Asking ahead: threads that keep a few suggestions ready while the trials run, so that a free slot never waits for
the sampler and the screen. One thread draws in the driver, or one per drawing process (drawers.py). Should they
all fail (the storage, say), the driver goes back to asking itself, and meets the same fault where it is reported.
A draw waits while a timing probe on this machine has the device gate closed, so that the probe times alone."""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from ..devicegate import DeviceGate
from .searcher import Driver
from .suggestions import Suggestion, draw


@dataclass(frozen=True)
class Drawing:
    """Where suggestions are drawn: in the driver (processes 0: one thread), or in that many processes of their own
    over the study's storage (`url`), each with the sampler `sampler` seeded from `seed` on."""

    processes: int = 0
    url: str = ""
    sampler: str = "tpe"
    seed: int = 0


class AskAhead:
    """Keeps up to `depth` suggestions ready for `driver` while the block runs."""

    def __init__(self, driver: Driver, depth: int, drawing: Drawing = Drawing()) -> None:
        self.driver, self.depth, self.drawing = driver, max(depth, drawing.processes), drawing
        self._stop = threading.Event()
        self._processes: list = []
        self._threads: list[threading.Thread] = []
        self._running = 0

    def __enter__(self) -> AskAhead:
        driver = self.driver
        if self.drawing.processes:
            from .drawers import DrawingProcess

            self._processes = [DrawingProcess(self.drawing.url, driver.store.name, driver.space, self.drawing.sampler,
                                              self.drawing.seed + i, driver.trials, driver.vocab_size,
                                              driver.store.patience.seconds)
                               for i in range(self.drawing.processes)]
            drawers = [functools.partial(process.draw, driver.store) for process in self._processes]
        else:
            drawers = [functools.partial(draw, driver.store, driver.space, driver.vocab_size)]
        with driver.lock:
            driver.depth, driver.asking_ahead, self._running = self.depth, True, len(drawers)
        self._threads = [threading.Thread(target=self._run, args=(drawer,), name=f"configaformer-ask-ahead-{i}", daemon=True)
                         for i, drawer in enumerate(drawers)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:  # each ends once its draw in flight is settled
            thread.join()
        for process in self._processes:
            process.close()
        with self.driver.lock:
            self.driver.asking_ahead = False

    def _run(self, drawer: Callable[[], Suggestion]) -> None:
        gate = DeviceGate.cpu()
        try:
            while not self._stop.is_set():
                with gate.shared():
                    asked = self.driver.ask_ahead(drawer)
                if not asked:
                    self._stop.wait(0.05)
        except Exception:
            logging.getLogger(__name__).warning("a thread asking ahead stopped; the driver asks itself", exc_info=True)
            with self.driver.lock:
                self._running -= 1
                if not self._running:
                    self.driver.asking_ahead = False

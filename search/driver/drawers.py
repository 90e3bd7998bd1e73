"""Suggestions drawn in processes of their own, for searches whose sampler outgrows a share of one core.

A sampler's cost per suggestion grows with the trials it has seen (TPE's Parzen estimators run over all of them),
and a thread of the driver shares one interpreter lock with Ray Tune's calls. So each process here opens the study
on the shared storage with its own sampler (its own seed), as Optuna's distributed optimisation does, and draws and
screens one suggestion at a time when asked. The driver settles what comes back exactly as it settles its own draws.
A trial gets a heartbeat as soon as it is asked: should the process die before the driver takes it, it is failed as
stale like any dead driver's trial.
"""

from __future__ import annotations

import multiprocessing
import signal
import warnings
from typing import Any

import optuna

from ..space import SearchSpace
from ..storage import StudyStore
from .samplers import make_sampler
from .suggestions import Suggestion, draw


class DrawingProcess:
    """One process that asks the sampler and screens a suggestion each time `draw` is called."""

    def __init__(self, url: str, study_name: str, space: SearchSpace, sampler: str, seed: int, budget: int,
                 vocab_size: int, patience: float = 0.0) -> None:
        context = multiprocessing.get_context("spawn")  # no copy of the driver's threads, locks or Ray state
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, url, study_name, space, sampler, seed, budget, vocab_size, patience),
                                        name=f"configaformer-draw-{seed}", daemon=True)
        self._process.start()
        child.close()

    def draw(self, store: StudyStore) -> Suggestion:
        """The next suggestion, as a trial of `store` (the driver's handle on the same stored study). Raises
        EOFError when the process has died, and what the process met (a storage fault) as a RuntimeError."""
        self._connection.send(True)
        reply = self._connection.recv()
        if isinstance(reply, str):
            raise RuntimeError(reply)
        trial_id, params, key, refusal, attrs, metrics = reply
        return Suggestion(store.trial(trial_id), trial_id, params, key, refusal, attrs, metrics)

    def close(self) -> None:
        """Stop the process: at once if it is drawing (its trial's heartbeat then goes stale)."""
        try:
            self._connection.send(False)
        except (OSError, ValueError):
            pass
        self._process.join(timeout=2)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._connection.close()


def _serve(connection: Any, url: str, study_name: str, space: SearchSpace, sampler: str, seed: int, budget: int,
           vocab_size: int, patience: float) -> None:
    """The process's loop: a suggestion drawn for each request, until told to stop or the driver is gone."""
    from ..storage import StudyStore, open_storage
    from ..storage.patience import Patience

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C at the terminal is the driver's to handle: it closes us
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        storage = open_storage(url)
        store = StudyStore(storage, optuna.load_study(study_name=study_name, storage=storage))
        store.use_sampler(make_sampler(space, sampler, seed, budget))
        store.patience = Patience(patience)  # an outage is waited out here too, quietly (the driver says so)
        while connection.recv():
            drawn = draw(store, space, vocab_size)
            connection.send((drawn.trial_id, drawn.params, drawn.key, drawn.refusal, drawn.attrs, drawn.metrics))
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the driver is gone
    except Exception as err:  # a storage fault: the driver meets it again when it asks itself
        try:
            connection.send(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        except OSError:
            pass

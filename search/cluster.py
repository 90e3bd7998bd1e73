"""The Ray cluster a command runs on: joining one (--address) or starting a quiet local one, the resources each trial
takes and how many run at once, and Ray's own logs sent to a file in the run folder, so that the console shows the
project's one-line messages, never Ray's tracebacks."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import UsageError

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's console output stays off unless asked for
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/JSON/TensorBoard files
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops the search at once (see run.py)

RAY_LOG = "ray.log"  # Ray's and Ray Tune's messages, and the search's own warnings, in the run folder
RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.air", "ray.data", "configaformer_search")


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float
    gpus_per_trial: float
    concurrency: int

    def request(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


def check_address(address: Optional[str]) -> None:
    """Fail fast on a HOST:PORT (or ray://HOST:PORT) that nothing answers, before Ray retries it for minutes."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UsageError(f"--address {address}: nothing answers there ({err.strerror or err})") from None


@contextlib.contextmanager
def ray_session(address: Optional[str], log_folder: Optional[Path] = None) -> Iterator[None]:
    """Ray joined (or started quietly here) for the duration, its loggers writing to `log_folder`/ray.log instead of
    the console; a Ray started here is shut down afterwards."""
    import ray
    import ray.tune  # noqa: F401  (its loggers exist before they are pointed at the file)

    started = False
    if not ray.is_initialized():
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UsageError(f"--address {address}: cannot join the Ray cluster ({str(err).splitlines()[0]})") from None
        finally:
            signal.signal(signal.SIGTERM, sigterm)  # ray.init installs its own, which exits at once
        started = True
    with _logs_to(log_folder / RAY_LOG if log_folder else None):
        try:
            yield
        finally:
            if started:
                ray.shutdown()


@contextlib.contextmanager
def _logs_to(path: Optional[Path]) -> Iterator[None]:
    """Ray's loggers write to `path` (nowhere, without one) for the duration, and nothing of theirs reaches the console."""
    handler: logging.Handler = logging.FileHandler(path, encoding="utf-8") if path else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        top = "." not in name
        logger.handlers = [handler] if top else []
        logger.propagate = not top  # children reach the file through their top logger
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


def plan_resources(space: Any, gpus_per_trial: Optional[float], concurrency: Optional[int]) -> Resources:
    """Per-trial resources from the space or the flags, and how many trials run at once on this cluster."""
    import ray

    cpus = float(space.resources["cpus_per_trial"])
    gpus = float(space.resources["gpus_per_trial"] if gpus_per_trial is None else gpus_per_trial)
    available = ray.cluster_resources()
    if gpus > 0 and available.get("GPU", 0) == 0:
        raise UsageError(f"--gpus-per-trial {gpus:g}: the Ray cluster has no GPU")
    if cpus > available.get("CPU", 0):
        raise UsageError(f"resources.cpus_per_trial {cpus:g}: the Ray cluster has only {available.get('CPU', 0):g} CPUs")
    fit = math.floor(available.get("CPU", 1) / cpus)
    if gpus > 0:
        fit = min(fit, math.floor(available["GPU"] / gpus + 1e-9))
    chosen = concurrency or space.resources["concurrency"] or max(1, fit)
    return Resources(cpus, gpus, chosen)


def describe_cluster() -> dict[str, Any]:
    import ray

    resources = ray.cluster_resources()
    return {"nodes": len([n for n in ray.nodes() if n.get("Alive")]), "cpus": resources.get("CPU", 0),
            "gpus": resources.get("GPU", 0)}

"""The fixed reference model every timing is measured against, and its time on this machine.

A timing probe times its candidate interleaved with this model on the same runtime (timing.py), so that whatever
slows the machine while it measures (a busy neighbour, a frequency change) slows both and cancels in their ratio.
The ratio becomes milliseconds through the reference's own time on this machine, measured once, the first time a
probe asks for it with the device to itself, and kept beside the device gate's lock files (the temporary folder), so
that every trial a machine times shares one scale.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from configaformer import ConfigaFormer

from .runtimes import served

REFERENCE_WIDTH, REFERENCE_DEPTH = 64, 2  # a small GPT-style stack: cheap beside any candidate, same kind of work


def reference_model(vocab_size: int, max_length: int) -> ConfigaFormer:
    """The reference: learned positions, pre-norm attention and FFN blocks, its weights drawn from seed 0."""
    config = {"dim_model": REFERENCE_WIDTH, "vocab_size": vocab_size, "max_length": max_length, "position": "learned",
              "layers": [{"type": "Attention", "heads": 2}, {"type": "FFN", "ff_mult": 4}] * REFERENCE_DEPTH}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ConfigaFormer.from_config(config, verbose=False).eval()


@lru_cache(maxsize=8)
def served_reference(vocab_size: int, max_length: int, runtime: str, threads: int, device: torch.device) -> Any:
    """The reference on `runtime`, made once per process (an export is made at its first call)."""
    return served(reference_model(vocab_size, max_length).to(device), runtime, threads, device)


def reference_scale(key: str) -> Callable[[list[float]], float]:
    """What a probe's measure() scales its median ratio by: the reference's time here for `key`, which the first
    probe to ask on this machine sets to the median of its own reference times."""
    return lambda times: nominal_ms(key, lambda: statistics.median(times))


def nominal_ms(key: str, measure: Callable[[], float], folder: Path | None = None) -> float:
    """The reference's time (ms) for `key` (the call, its shape, runtime and threads) on this machine: read back, or
    measured now with `measure` and kept for every later probe (written whole or not at all)."""
    path = Path(folder or tempfile.gettempdir()) / f"configaformer-reference-{key}.json"
    try:
        return float(json.loads(path.read_text())["ms"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ms = measure()
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"ms": ms}))
    partial.replace(path)
    return ms

"""The fixed reference model every timing is measured against, and its time on this machine.

A timing probe times its candidate interleaved with this model on the same runtime (timing.py), so that whatever
slows the machine while it measures (a busy neighbour, a frequency change) slows both and cancels in their ratio.
The ratio becomes milliseconds through the reference's own time on this machine, measured once, the first time a
probe asks for it with the device to itself, and kept beside the device gate's lock files (the temporary folder), so
that every trial a machine times shares one scale. The file names the device, the call, its shape, the runtime, the
threads and the versions that shape a timing; the first probe to write it wins, and every probe uses what is on disk.
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

from ..devicegate import device_name
from .runtimes import served

REFERENCE_WIDTH, REFERENCE_DEPTH = 64, 2  # a small GPT-style stack: cheap beside any candidate, same kind of work
REFERENCE_VERSION = 1  # moves on whenever the reference model changes, so that no scale of the old one is reused


def reference_model(vocab_size: int, max_length: int) -> ConfigaFormer:
    """The reference: learned positions, pre-norm attention and FFN blocks, its weights drawn from seed 0."""
    config = {"dim_model": REFERENCE_WIDTH, "vocab_size": vocab_size, "max_length": max_length, "position": "learned",
              "layers": [{"type": "Attention", "heads": 2}, {"type": "FFN", "ff_mult": 4}] * REFERENCE_DEPTH}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ConfigaFormer.from_config(config, verbose=False).eval()


@lru_cache(maxsize=8)
def served_reference(vocab_size: int, max_length: int, runtime: str, threads: int, device: torch.device,
                     shape: tuple[int, ...]) -> Any:
    """The reference on `runtime` for calls of `shape`, made once per process (an export is made at its first
    call, at that shape)."""
    return served(reference_model(vocab_size, max_length).to(device), runtime, threads, device)


def reference_scale(call: str, shape: tuple[int, ...], vocab_size: int, runtime: str, threads: int,
                    device: torch.device, alone: bool) -> Callable[[list[float]], float]:
    """What a probe's measure() scales its median ratio by: the reference's time here for this call, which the first
    probe on this machine to time it with the device to itself sets to the median of its own reference times (a
    probe that was not alone uses a scale on disk, or its own without keeping it)."""
    versions = f"torch{torch.__version__}" + (f"-ort{_onnxruntime_version()}" if runtime == "onnxruntime" else "")
    key = (f"r{REFERENCE_VERSION}-{device_name(device)}-{runtime}-{threads}t-{call}-{'x'.join(map(str, shape))}"
           f"-v{vocab_size}-{versions}")
    return lambda times: nominal_ms(key, lambda: statistics.median(times), keep=alone)


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def nominal_ms(key: str, measure: Callable[[], float], folder: Path | None = None, keep: bool = True) -> float:
    """The reference's time (ms) for `key` on this machine: read back, or measured now with `measure` and, if
    `keep`, kept for every later probe. The first writer wins: a file is made whole under a name of its own, then
    linked into place only if no other probe's is there, and whatever is in place is what every probe uses."""
    path = Path(folder or tempfile.gettempdir()) / f"configaformer-reference-{key}.json"
    try:
        return float(json.loads(path.read_text())["ms"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ms = measure()
    if not keep:
        return ms
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"ms": ms}))
    try:
        os.link(partial, path)  # fails if another probe's scale got there first
    except FileExistsError:
        pass
    finally:
        partial.unlink(missing_ok=True)
    return float(json.loads(path.read_text())["ms"])

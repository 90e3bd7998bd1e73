"""Errors of the search service: a bad space (user input) and a failed trial (recorded, never fatal)."""

from __future__ import annotations


class SpaceError(ValueError):
    """Bad user input: one line naming the file, the field path, what was found and what was expected."""


class UsageError(ValueError):
    """Bad command-line input (a flag, a run folder, a trial number): one line, exit status 2."""


class TrialFailure(Exception):
    """A trial that cannot finish: `kind` is a short reason code (oom, nan_loss, rejected, constraint, error)."""

    def __init__(self, kind: str, message: str, metrics: dict | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.metrics = metrics or {}  # whatever was measured before the failure

    def __reduce__(self) -> tuple:  # pickled whole (to and from processes), not from its message alone
        return type(self), (self.kind, self.message, self.metrics)


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation that failed on any device: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    import torch

    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("can't allocate memory" in text or "DefaultCPUAllocator" in text))

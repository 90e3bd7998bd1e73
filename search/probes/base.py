"""The probe interface: a small object that a trial runs after training, measuring metrics beside the loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from configaformer import ConfigaFormer

from ..metrics import made_by


@dataclass
class ProbeContext:
    """What a probe may look at: the trained model on its device, the shapes it trained and is probed at."""

    model: ConfigaFormer
    model_config: dict[str, Any]
    device: torch.device
    train: dict[str, Any]  # the trial's resolved train section (batch_size, seq_len, ...)
    probes: dict[str, Any]  # the space's probes section
    vocab_size: int
    measured_peak_mb: Optional[float] = None  # the training run's own peak, where the device can tell (CUDA)


class Probe:
    """Measures the metrics declared with `source = name` in search/metrics.py. `enabled` says whether a space
    asks for it (its probes section, or an objective or constraint on one of its metrics). A `timing` probe runs
    where the model will be served (the space's probes.target, when it names one)."""

    name: ClassVar[str]
    timing: ClassVar[bool] = False

    @classmethod
    def metrics(cls) -> tuple[str, ...]:
        return made_by(cls.name)

    def enabled(self, space: Any) -> bool:
        wanted = set(space.objectives) | set(space.constraints)
        return bool(space.probes.get(self.name)) or bool(wanted & set(self.metrics()))

    def measure(self, context: ProbeContext) -> dict[str, Any]:
        raise NotImplementedError

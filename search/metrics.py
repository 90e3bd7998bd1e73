"""Every metric a trial can report, declared once: what it measures, its unit, and whether it is known before any
training (cheap: from the model's shapes) or only after. Objectives, constraints, tables and plot labels derive
their names and units from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # '' for a pure number
    description: str
    cheap: bool = False  # known from the model before any weight exists

    def label(self) -> str:
        """'latency_ms (ms)', for axes and headers."""
        return f"{self.name} ({self.unit})" if self.unit else self.name


METRICS = {m.name: m for m in (
    Metric("val_loss", "nats/token", "cross-entropy on the space's validation windows after the training budget"),
    Metric("val_bpb", "bits/byte", "val_loss in bits per byte, on byte corpora"),
    Metric("train_tok_s", "tokens/s", "training throughput"),
    Metric("flops", "MACs", "multiply-adds of a forward pass at the probe shape (fvcore)", cheap=True),
    Metric("params", "", "all parameters", cheap=True),
    Metric("nonemb_params", "", "parameters outside token and position embedding tables", cheap=True),
    Metric("peak_mem_mb", "MiB", "peak memory of a training step at the train batch size"),
    Metric("latency_ms", "ms", "median forward time at the probe batch and length"),
)}
CHEAP_METRICS = tuple(name for name, metric in METRICS.items() if metric.cheap)


def label(name: str) -> str:
    """A metric's axis label with its unit; an unknown name as it is."""
    return METRICS[name].label() if name in METRICS else name

"""Every metric a trial can report, declared once: what it measures, its unit, which part of a trial makes it, and
whether the tables show it. Objectives, constraints, the cheap screen, table columns and plot labels derive their
names and units from here; a new metric is one line here and the probe that measures it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SHAPE = "shape"  # known from the model's shapes before any weight exists: the cheap screen measures it
TRAINING = "training"  # made by the training run (at each rung of a multi-fidelity search)
TARGET = "val_loss_at_target"  # the accuracy objective of a space with train.target_tokens


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # '' for a pure number or a label
    description: str
    source: str  # SHAPE, TRAINING, or the name of the probe that measures it (search/probes/)
    key: bool = False  # a column of the front table beside the objectives
    note: bool = False  # a caution shown beside a trial's outcome wherever it appears
    seeded: bool = False  # varies with the training seed: seed-confirmed trials report its mean and its sd

    @property
    def cheap(self) -> bool:
        return self.source == SHAPE

    def label(self) -> str:
        """'latency_ms (ms)', for axes and headers."""
        return f"{self.name} ({self.unit})" if self.unit else self.name


def timed(name: str, description: str, probe: str) -> tuple[Metric, ...]:
    """The metrics of a timing (probes/timing.py): its time, the spread of its ratios to the reference and how well
    their median is known, how many rounds of pairs it took, whether it stayed noisy, and on a runtime that exports
    the model, how far the export's logits were from the eager model's."""
    return (Metric(f"{name}_ms", "ms", description, probe),
            Metric(f"{name}_cv", "", f"coefficient of variation of the {name} call's ratios to the reference's", probe),
            Metric(f"{name}_ci", "", f"half-width of the 95% interval of the {name} median ratio, as a share of it",
                   probe, key=name == "latency"),
            Metric(f"{name}_rounds", "", f"rounds of pairs timed before the {name} median was steady enough", probe),
            Metric(f"{name}_noisy", "", f"the {name} time stayed noisier than the probes accept, or was taken beside other "
                                        f"work (the device could not be had alone in time)", probe, key=True, note=True),
            Metric(f"{name}_export_diff", "", f"largest absolute difference of the logits timed ({name}) between the "
                                              f"probes.runtime export and the eager model, checked before timing", probe))


METRICS = {m.name: m for m in (
    Metric("val_loss", "nats/token", "cross-entropy on the space's validation windows after the training budget", TRAINING,
           seeded=True),
    Metric(TARGET, "nats/token", "val_loss at train.target_tokens: measured where the config reached it, "
                                               "else predicted from the study's measurements (its sd beside it)", "predictor"),
    Metric("target_measured", "", "whether val_loss_at_target was measured at the target rather than predicted",
           "predictor", key=True),
    Metric("target_reach", "", "the target as a multiple of the longest budget the config was measured at",
           "predictor", key=True),
    Metric("val_bpb", "bits/byte", "val_loss in bits per byte, on byte corpora", TRAINING, key=True, seeded=True),
    Metric("train_loss", "nats/token", "the last training batch's loss", TRAINING, seeded=True),
    Metric("train_tok_s", "tokens/s", "training throughput", TRAINING),
    Metric("tokens_trained", "tokens", "training tokens behind the reported val_loss", TRAINING),
    Metric("tokens_spent", "tokens", "training tokens the trial spent, the decay branches of its rungs included", TRAINING),
    Metric("rung", "", "the multi-fidelity rung of the reported val_loss (0 = the fewest tokens)", TRAINING),
    Metric("flops", "MACs", "multiply-adds of a forward pass at the probe shape (fvcore)", SHAPE, key=True),
    Metric("params", "", "all parameters", SHAPE, key=True),
    Metric("nonemb_params", "", "parameters outside token and position embedding tables", SHAPE, key=True),
    Metric("peak_mem_mb", "MiB", "peak memory of a training step at the train batch size", "memory"),
    Metric("peak_mem_source", "", "'measured' on CUDA, 'estimated' (FakeTensor tracking) elsewhere", "memory", key=True),
    *timed("latency", "forward time at the probe batch and length: the median ratio to the reference model's, in "
                      "the reference's ms on this machine", "latency"),
    Metric("kv_cache_mb", "MiB", "bytes of the decoding cache at the probe batch and probes.decode_context tokens", "decode"),
    *timed("decode", "time of one cached decoding step at that context, after a prefill (as latency_ms: against the "
                     "reference)", "decode"),
    *timed("prefill", "time of the prefill up to that context (as latency_ms: against the reference)", "decode"),
)}
CHEAP_METRICS = tuple(name for name, metric in METRICS.items() if metric.cheap)
KEY_COLUMNS = tuple(name for name, metric in METRICS.items() if metric.key)
NOTE_METRICS = tuple(name for name, metric in METRICS.items() if metric.note)
SEEDED_METRICS = tuple(name for name, metric in METRICS.items() if metric.seeded)
SD_SUFFIX = "_sd"  # val_loss_sd: the seed-to-seed standard deviation recorded beside a seeded metric's mean


def label(name: str) -> str:
    """A metric's axis label with its unit; an unknown name as it is."""
    return METRICS[name].label() if name in METRICS else name


def made_by(source: str) -> tuple[str, ...]:
    """The metrics that one source (a probe's name, TRAINING or SHAPE) makes."""
    return tuple(name for name, metric in METRICS.items() if metric.source == source)


def with_sd(value: float, sd: Optional[float]) -> str:
    """'2.713 ± 0.021': a seed-confirmed mean as the tables print it; the value alone without an sd."""
    return f"{value:.4g}" + (f" ± {sd:.2g}" if isinstance(sd, (int, float)) and sd == sd else "")

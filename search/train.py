"""The brief training run: AdamW with gradient clipping and bf16 autocast on CUDA, a learning rate that is a pure
function of the step, and the validation loss on the fixed validation windows after each budget it is measured at.

With one budget (the default) the schedule is warm-up then cosine decay. A multi-fidelity search measures a trial at
several budgets (rungs) on one run: a warmup-stable-decay schedule trains at a stable rate, and each rung branches a
short decay off it (the last `decay` fraction of that rung's steps), measures, and goes back to the stable state.
A rung's val_loss is then exactly what a run with that budget alone would have measured, and a rung costs its
decay steps and one evaluation on top of the trial's own budget.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from configaformer import ConfigaFormer

from .data import Corpus, train_batch, val_set
from .errors import TrialFailure, is_out_of_memory
from .steps import autocast, lm_loss, make_optimizer

NAN_CHECK_EVERY = 10  # steps between loss checks: each one waits for the device


@dataclass
class Measurement:
    """The model measured after one budget: what a rung (the last rung being the full budget) reports."""

    rung: int
    tokens_trained: int
    tokens_spent: int  # training tokens this trial has spent so far, rungs' decay branches included
    steps: int
    val_loss: float
    val_bpb: Optional[float]
    train_loss: float
    train_tok_s: float
    peak_mem_mb: Optional[float]  # measured on CUDA: the peak of the real training steps
    val_set: str  # fingerprint of the validation windows scored
    curve: dict[str, float] = field(default_factory=dict)  # val_loss at every budget measured so far (tokens -> loss)

    def metrics(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "peak_mem_mb"}


Report = Callable[[Measurement], bool]  # told each measurement; answers whether training should go on


@dataclass
class Snapshot:
    """The stable-phase state at a rung's branch point: where training goes on after the rung is measured, and where
    a resumed trial starts (model and optimizer state on the CPU)."""

    step: int
    rung: int  # the rung measured from this point
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    measurement: Optional[Measurement] = None  # that rung's, once measured

    def save(self, path: Any) -> None:
        """Plain containers of tensors and numbers, which `load` reads back without running code from the file."""
        torch.save({"step": self.step, "rung": self.rung, "model": self.model, "optimizer": self.optimizer,
                    "measurement": None if self.measurement is None else asdict(self.measurement)}, path)

    @classmethod
    def load(cls, path: Any) -> Snapshot:
        data = torch.load(path, weights_only=True)
        measurement = data["measurement"]
        return cls(data["step"], data["rung"], data["model"], data["optimizer"],
                   None if measurement is None else Measurement(**measurement))


def budget_steps(rungs: Sequence[int], cfg: Mapping) -> list[int]:
    """Optimizer steps at each rung's token budget (at least one)."""
    return [max(1, tokens // (cfg["batch_size"] * cfg["seq_len"])) for tokens in rungs]


def warmup_steps(cfg: Mapping, shortest: int) -> int:
    """Warm-up: a fraction of the shortest budget the trial is measured at, so that every budget shares it."""
    return max(1, int(shortest * cfg["warmup"]))


def decay_steps(steps: int, cfg: Mapping) -> int:
    """The warmup-stable-decay schedule's decay: the last `decay` fraction of a budget's steps (at least one)."""
    return max(1, int(steps * cfg["decay"]))


def learning_rate(step: int, steps: int, warmup: int, cfg: Mapping) -> float:
    """The rate at `step` of a run of `steps` steps: linear warm-up over `warmup` steps, then cosine decay to min_lr
    (schedule cosine), or a stable rate and a linear decay to min_lr over the last `decay` fraction (wsd)."""
    peak, floor = cfg["lr"], cfg["lr"] * cfg["min_lr"]
    if step < warmup:
        return peak * (step + 1) / warmup
    if cfg["schedule"] == "wsd":
        start = steps - decay_steps(steps, cfg)
        return peak if step < start else peak - (peak - floor) * (step - start + 1) / (steps - start)
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: ConfigaFormer, batches: list, device: torch.device) -> float:
    """Mean cross-entropy (nats per token) over the fixed validation windows."""
    model.eval()
    total, count = 0.0, 0
    for inputs, targets in batches:
        with autocast(device):
            loss = lm_loss(model, inputs.to(device), targets.to(device))
        total += loss.item() * targets.numel()
        count += targets.numel()
    model.train()
    return total / count


def train(model: ConfigaFormer, corpus: Corpus, cfg: Mapping, device: torch.device,
          rungs: Optional[Sequence[int]] = None, report: Report = lambda measurement: True,
          checkpoint: Callable[[], None] = lambda: None, save: Optional[Callable[[Snapshot], None]] = None,
          start: Optional[Snapshot] = None, warmup_budget: Optional[int] = None,
          points: Sequence[int] = ()) -> Optional[Measurement]:
    """Train on the batches of cfg['seed'] and measure the model at each budget in `rungs` (token counts, the last
    the full budget; default cfg['tokens']), telling `report` each measurement. Returns the full budget's, or None
    when `report` answered stop. Under warmup-stable-decay, `points` are further budgets (below the first rung)
    measured on the way without being told: each measurement's `curve` holds every budget measured so far. `checkpoint` is called between steps (where a packed trial yields the GPU to a
    latency probe); `save` is given the stable state at each rung with the rung's measurement; `start` resumes from
    one, telling `report` its measurement again first. Warm-up is a fraction of `warmup_budget` tokens (default
    the first rung), so that a run measured only at its full budget can keep a multi-fidelity trial's schedule.
    Raises TrialFailure('nan_loss', 'diverged' or 'oom')."""
    rungs = list(rungs or [cfg["tokens"]])
    steps_at = budget_steps(rungs, cfg)
    warm = warmup_steps(cfg, budget_steps([warmup_budget or rungs[0]], cfg)[0])
    wsd = cfg["schedule"] == "wsd"
    branches = {steps - decay_steps(steps, cfg): rung for rung, steps in enumerate(steps_at[:-1])} if wsd else {}
    curve_at = {steps - decay_steps(steps, cfg): (tokens, steps) for tokens, steps in zip(points, budget_steps(points, cfg))
                if steps < steps_at[0] and steps - decay_steps(steps, cfg) > 0} if wsd else {}
    torch.manual_seed(cfg["seed"])
    model.to(device).train()
    optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
    run = _Run(model, optimizer, corpus, cfg, device, warm, checkpoint)
    step, measured = 0, -1
    if start is not None:
        run.restore(start)
        step, measured = start.step, start.rung
        run.spent_before = start.measurement.tokens_spent
        run.curve.update(start.measurement.curve)
        if not report(start.measurement):
            return None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # workers are reused: never report an earlier trial's peak
    try:
        while True:
            if step in curve_at and str(curve_at[step][0]) not in run.curve:  # a curve point: measured, not told
                tokens, steps = curve_at[step]
                stable = run.snapshot(step, -1)
                run.steps(step, steps, steps)
                run.curve_point(tokens)
                run.restore(stable)
            rung = branches.get(step)
            if rung is not None and rung > measured:  # a rung's budget: branch a decay off the stable phase
                stable = run.snapshot(step, rung)
                run.steps(step, steps_at[rung], steps_at[rung])
                stable.measurement = run.measure(rung, steps_at[rung])
                run.restore(stable)
                measured = rung
                if save is not None:
                    save(stable)
                if not report(stable.measurement):
                    return None
            if step == steps_at[-1]:
                break
            run.steps(step, step + 1, steps_at[-1])
            step += 1
        measurement = run.measure(len(rungs) - 1, steps_at[-1])
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(err):
            raise
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise TrialFailure("oom", str(err).splitlines()[0]) from None
    report(measurement)
    return measurement


class _Run:
    """One training run's moving parts: steps at a given schedule, measurements, and stable-phase snapshots."""

    def __init__(self, model: ConfigaFormer, optimizer: torch.optim.Optimizer, corpus: Corpus, cfg: Mapping,
                 device: torch.device, warmup: int, checkpoint: Callable[[], None]) -> None:
        self.model, self.optimizer, self.corpus, self.cfg, self.device = model, optimizer, corpus, cfg, device
        self.warmup, self.checkpoint = warmup, checkpoint
        self.loss = torch.zeros(())
        self.trained_s, self.trained_steps = 0.0, 0
        self.spent_before = 0  # tokens a resumed run had spent before its snapshot
        self.peak_mb: Optional[float] = None
        self.curve: dict[str, float] = {}  # val_loss at every budget measured so far

    def steps(self, first: int, end: int, budget: int) -> None:
        """Optimizer steps first..end-1 of a run of `budget` steps."""
        cfg, start = self.cfg, time.perf_counter()
        for step in range(first, end):
            self.checkpoint()
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(step, budget, self.warmup, cfg)
            inputs, targets = train_batch(self.corpus, cfg["batch_size"], cfg["seq_len"], cfg["seed"], step, self.device)
            with autocast(self.device):
                loss = lm_loss(self.model, inputs, targets)
            loss.backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"], foreach=True)  # CPU default: per tensor
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if step % NAN_CHECK_EVERY == 0 or step == end - 1:
                value = loss.item()
                if not math.isfinite(value):
                    raise TrialFailure("nan_loss", f"training loss became {value} at step {step + 1} of {budget}")
            self.loss = loss.detach()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.trained_s += time.perf_counter() - start
        self.trained_steps += end - first

    def measure(self, rung: int, steps: int) -> Measurement:
        """The validation loss now, after `steps` steps; a loss above the uniform guess is a diverged run."""
        cfg, corpus = self.cfg, self.corpus
        self._keep_peak()
        scored = val_set(corpus, cfg["eval_seq_len"], cfg["eval_tokens"])
        val_loss = evaluate(self.model, scored.batches, self.device)
        tokens = steps * cfg["batch_size"] * cfg["seq_len"]
        if not math.isfinite(val_loss):
            raise TrialFailure("nan_loss", f"validation loss is {val_loss} after {tokens:,} tokens",
                               {"rung": rung, "tokens_trained": tokens})
        uniform = math.log(corpus.vocab_size)
        if val_loss > uniform:  # worse than guessing every token alike: the run diverged, whatever it reports
            raise TrialFailure("diverged", f"validation loss {val_loss:.4g} is above the uniform guess ln({corpus.vocab_size}) = "
                                           f"{uniform:.4g} after {tokens:,} tokens",
                               {"val_loss": val_loss, "val_set": scored.fingerprint, "rung": rung, "tokens_trained": tokens})
        trained = self.trained_steps * cfg["batch_size"] * cfg["seq_len"]
        self.curve[str(tokens)] = val_loss
        return Measurement(rung, tokens, self.spent_before + trained, steps, val_loss,
                           val_loss / math.log(2) if corpus.is_bytes else None, self.loss.item(),
                           trained / max(self.trained_s, 1e-9), self.peak_mb, scored.fingerprint, dict(self.curve))

    def curve_point(self, tokens: int) -> None:
        """The validation loss now, kept on the curve (a loss that is not finite, this early, is left out rather
        than failing the trial: the rungs judge the run)."""
        self._keep_peak()
        scored = val_set(self.corpus, self.cfg["eval_seq_len"], self.cfg["eval_tokens"])
        val_loss = evaluate(self.model, scored.batches, self.device)
        if math.isfinite(val_loss):
            self.curve[str(tokens)] = val_loss

    def _keep_peak(self) -> None:
        """The training steps' peak memory, read before the first evaluation adds its own."""
        if self.peak_mb is None and self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

    def snapshot(self, step: int, rung: int) -> Snapshot:
        """The state now, copied to the CPU (so that a GPU's measured peak memory stays the training's own)."""
        to_cpu = lambda value: value.detach().to("cpu", copy=True) if torch.is_tensor(value) else value  # noqa: E731
        optimizer = self.optimizer.state_dict()
        state = {index: {k: to_cpu(v) for k, v in entry.items()} for index, entry in optimizer["state"].items()}
        return Snapshot(step, rung, {k: to_cpu(v) for k, v in self.model.state_dict().items()},
                        {"state": state, "param_groups": [dict(g) for g in optimizer["param_groups"]]})

    def restore(self, snapshot: Snapshot) -> None:
        """Back to a snapshot, which stays as it was (the optimizer would otherwise adopt and update its tensors)."""
        self.model.load_state_dict(snapshot.model)
        self.optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer))

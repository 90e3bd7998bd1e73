"""The brief training run: AdamW with warm-up and cosine decay, gradient clipping, bf16 autocast on CUDA,
then the validation loss on the fixed validation windows."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from configaformer import ConfigaFormer

from .data import Corpus, train_batches, val_set
from .errors import TrialFailure, is_out_of_memory

NAN_CHECK_EVERY = 10  # steps between loss checks: each one waits for the device


@dataclass
class TrainResult:
    val_loss: float
    val_bpb: Optional[float]
    train_loss: float
    train_tok_s: float
    steps: int
    peak_mem_mb: Optional[float]  # measured on CUDA: the peak of the real training steps
    val_set: str  # fingerprint of the validation windows scored


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def lm_loss(model: ConfigaFormer, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model({"emb_ids": inputs})[model.outputs[0]]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or scales), fused on the CPU as on CUDA: at
    the small space's sizes a CPU step's update takes 0.7-1.3 ms fused against 1.6-3.8 ms one parameter at a time."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: float, min_lr: float) -> SequentialLR:
    warm = max(1, int(steps * warmup))
    return SequentialLR(optimizer, [LinearLR(optimizer, start_factor=1.0 / warm, total_iters=warm),
                                    CosineAnnealingLR(optimizer, T_max=max(1, steps - warm), eta_min=optimizer.defaults["lr"] * min_lr)],
                        milestones=[warm])


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
          checkpoint: Callable[[], None] = lambda: None) -> TrainResult:
    """Train on cfg['tokens'] tokens, calling `checkpoint` between steps (where a packed trial yields the GPU to
    a latency probe); raises TrialFailure('nan_loss' or 'oom')."""
    batch, seq = cfg["batch_size"], cfg["seq_len"]
    steps = max(1, cfg["tokens"] // (batch * seq))
    torch.manual_seed(cfg["seed"])
    model.to(device).train()
    optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
    schedule = _schedule(optimizer, steps, cfg["warmup"], cfg["min_lr"])
    batches = train_batches(corpus, batch, seq, cfg["seed"], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # workers are reused: never report an earlier trial's peak
    try:
        start = time.perf_counter()
        for step in range(steps):
            checkpoint()
            inputs, targets = next(batches)
            with autocast(device):
                loss = lm_loss(model, inputs, targets)
            loss.backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"], foreach=True)  # CPU default: per tensor
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if step % NAN_CHECK_EVERY == 0 or step == steps - 1:
                value = loss.item()
                if not math.isfinite(value):
                    raise TrialFailure("nan_loss", f"training loss became {value} at step {step + 1} of {steps}")
        train_loss = loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        scored = val_set(corpus, cfg["eval_seq_len"], cfg["eval_tokens"])
        val_loss = evaluate(model, scored.batches, device)
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(err):
            raise
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise TrialFailure("oom", str(err).splitlines()[0]) from None
    if not math.isfinite(val_loss):
        raise TrialFailure("nan_loss", f"validation loss is {val_loss}")
    uniform = math.log(corpus.vocab_size)
    if val_loss > uniform:  # worse than guessing every token alike: the run diverged, whatever it reports
        raise TrialFailure("diverged", f"validation loss {val_loss:.4g} is above the uniform guess ln({corpus.vocab_size}) = "
                                       f"{uniform:.4g} after training", {"val_loss": val_loss, "val_set": scored.fingerprint})
    return TrainResult(val_loss, val_loss / math.log(2) if corpus.is_bytes else None, train_loss,
                       steps * batch * seq / elapsed, steps, peak, scored.fingerprint)

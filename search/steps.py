"""One training step's parts, shared by the training run and the memory probe: bf16 autocast on CUDA, the next-token
loss, and the optimizer."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from configaformer import ConfigaFormer


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def lm_loss(model: ConfigaFormer, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model({"emb_ids": inputs})[model.outputs[0]]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or scales), fused on the CPU as on CUDA (fused
    is the faster update on both)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)

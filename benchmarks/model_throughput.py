"""Training-step throughput and peak memory of four models of one shape, eager and under torch.compile:

  (a) a ConfigaFormer built from an op config (rope on 16 dims, causal attention_offset),
  (b) the same model from a layer config,
  (c) a hand-written GPT of the same shape on scaled_dot_product_attention (the reference, below),
  (d) x-transformers' TransformerWrapper, when it is importable.

Each figure is printed with its ratio to (c), measured in the same process: all models of a mode are built and
warmed up, then timed in rounds that take them in turn, and each model's median over the rounds is reported with its
spread (max/min), so that a drift of the machine falls on every model alike. bf16 autocast on CUDA, fp32 on a CPU.
Modes: eager, compile (torch.compile's default), cudagraphs (its reduce-overhead mode: CUDA graphs, which a
launch-bound search-scale model needs).

Targets, for each shape and mode run: (a) and (b) at least 0.97x of (c)'s tokens per second and 1.05x of (d)'s (when
x-transformers is installed), their peak memory at most 1.05x of (c)'s (on CUDA, where it is measured), and no graph
breaks in a compiled (a). The README quotes them at GPT-2 small.

    python benchmarks/model_throughput.py                      # both shapes on CUDA; the search shape on a CPU
    python benchmarks/model_throughput.py --shapes gpt2 --modes eager
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, device_name, median, print_table, target, timed, write_results  # noqa: E402

from configaformer import ConfigaFormer  # noqa: E402
from configaformer_search.probes import LogitsOnly  # noqa: E402

SHAPES = {  # name: (width, depth, heads, seq_len, batch, vocab)
    "gpt2": (768, 12, 12, 1024, 16, 50304),
    "search": (256, 4, 4, 256, 32, 256),  # a byte-level model of 3.3M parameters, as the search trains
}
ROPE = 16
VS_REFERENCE_GOAL, VS_XTRANSFORMERS_GOAL, MEMORY_GOAL = 0.97, 1.05, 1.05  # (a), (b) against (c) and (d)


# ---- (c) the reference: a GPT written by hand, the way nanoGPT does, with the same rope as the library -------

class Rotary(nn.Module):
    def __init__(self, dim: int, max_length: int) -> None:
        super().__init__()
        inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = torch.outer(torch.arange(max_length, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-2]
        cos, sin = self.cos[:length].to(x.dtype), self.sin[:length].to(x.dtype)
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        first, second = rot.chunk(2, dim=-1)
        return torch.cat([rot * cos + torch.cat([-second, first], dim=-1) * sin, rest], dim=-1)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, max_length: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.rotary = Rotary(ROPE, max_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(self.rotary(q), self.rotary(k), v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, max_length: int, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(Block(width, heads, max_length) for _ in range(depth))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


# ---- (a), (b), (d) ---------------------------------------------------------------------------------------

def op_config(width: int, depth: int, heads: int, vocab: int) -> dict:
    attn = [{"type": "make_stream", "output_name": "residual"}, {"type": "norm", "norm_type": "layer_norm"},
            {"type": "linear", "output_name": "queries"}, {"type": "linear", "output_name": "keys"},
            {"type": "linear", "output_name": "values"},
            {"type": "make_heads", "input_name": "queries", "output_name": "queries", "num_heads": heads},
            {"type": "make_heads", "input_name": "keys", "output_name": "keys", "num_heads": heads},
            {"type": "rope", "input_name": "queries", "output_name": "queries", "rotate_dim": ROPE},
            {"type": "rope", "input_name": "keys", "output_name": "keys", "rotate_dim": ROPE},
            {"type": "mha_dots", "input_name_queries": "queries", "input_name_keys": "keys"},
            {"type": "attention_offset", "offset": "causal"},
            {"type": "mha_sum", "input_name_values": "values"}, {"type": "linear"},
            {"type": "merge_streams", "input_name_1": "residual", "merge_type": "add"}]
    ffn = [{"type": "make_stream", "output_name": "residual"}, {"type": "norm", "norm_type": "layer_norm"},
           {"type": "linear", "output_dim": 4 * width}, {"type": "activation"}, {"type": "linear", "output_dim": width},
           {"type": "merge_streams", "input_name_1": "residual", "merge_type": "add"}]
    head = [{"type": "norm", "norm_type": "layer_norm"}, {"type": "linear", "output_dim": vocab}]
    return {"blocks": [{"config": [{"type": "embedding", "output_dim": width, "num_classes": vocab}]},
                       {"config": attn + ffn, "repeat": depth}, {"config": head}],
            "input_streams": {"emb_ids": ["B", "L_in"]}}


def layer_config(width: int, depth: int, heads: int, max_length: int, vocab: int) -> dict:
    return {"dim_model": width, "vocab_size": vocab, "dim_rope": ROPE, "max_length": max_length,
            "layers": [{"type": "Attention", "heads": heads}, {"type": "FFN", "ff_mult": 4}] * depth}


def build(name: str, width: int, depth: int, heads: int, seq: int, vocab: int) -> nn.Module | None:
    if name == "a_ops":
        return LogitsOnly(ConfigaFormer(op_config(width, depth, heads, vocab), verbose=False))
    if name == "b_layers":
        return LogitsOnly(ConfigaFormer.from_config(layer_config(width, depth, heads, seq, vocab), verbose=False))
    if name == "c_reference":
        return ReferenceGPT(width, depth, heads, seq, vocab)
    try:
        from x_transformers import Decoder, TransformerWrapper
    except ImportError:
        return None
    return TransformerWrapper(num_tokens=vocab, max_seq_len=seq, use_abs_pos_emb=False,
                              attn_layers=Decoder(dim=width, depth=depth, heads=heads, rotary_pos_emb=True,
                                                  rotary_emb_dim=ROPE, attn_flash=True))


def prepare(model: nn.Module, shape: tuple, device: torch.device, mode: str) -> tuple[Callable[[], None], float]:
    """A training step of `model` (eager, compile, or cudagraphs: compile's reduce-overhead), warmed up, and the
    peak memory it added over what was allocated before it was built (so models kept resident do not count)."""
    width, depth, heads, seq, batch, vocab = shape
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    ids = torch.randint(0, vocab, (batch, seq + 1), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def loss_of(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            logits = model(inputs)
        return F.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1))

    # The loss is compiled with the model, as nanoGPT does: left eager, its fp32 copy of the logits alone is
    # 3.3 GB a step at GPT-2 scale, the same cost for every model.
    runner = loss_of if mode == "eager" else torch.compile(loss_of, mode="reduce-overhead" if mode == "cudagraphs" else None)

    def step() -> None:
        if mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        runner(inputs, targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timed(step, device, warmup=3 if mode != "eager" or cuda else 1, repeats=0)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if cuda else float("nan")
    return step, peak


def measure_interleaved(models: dict[str, nn.Module], shape: tuple, device: torch.device, mode: str,
                        steps: int, rounds: int) -> dict[str, dict]:
    """Median training-step throughput of each model over `rounds` rounds that take the models in turn, so a
    drift of the machine (clocks, a busy host) falls on all of them alike; `spread` is max/min over the rounds."""
    width, depth, heads, seq, batch, vocab = shape
    if device.type == "cuda":  # the first model would otherwise be charged for cuBLAS's and SDPA's workspaces
        prepare(build("c_reference", width, 1, heads, seq, vocab), shape, device, "eager")
    prepared = {name: prepare(model, shape, device, mode) for name, model in models.items()}
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, (step, _peak) in prepared.items():
            rates[name].append(batch * seq / median(timed(step, device, warmup=1, repeats=steps)))
    results = {}
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        lookups = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))  # no matmul FLOPs
        tok_s = median(rates[name])
        # CUDA graphs draw on one memory pool shared by every compiled model, so no peak can be told apart there.
        peak = float("nan") if mode == "cudagraphs" else prepared[name][1]
        result = {"tok_s": tok_s, "spread": max(rates[name]) / min(rates[name]), "peak_mb": peak, "params": params}
        if device.type == "cuda":  # model FLOPs utilisation against the dense bf16 peak of an H100 / H200
            flops_per_token = 6 * (params - lookups) + 12 * depth * width * seq  # matmul weights fwd+bwd, attention
            hopper = any(card in torch.cuda.get_device_name(device) for card in ("H100", "H200"))
            result["mfu"] = flops_per_token * tok_s / 989e12 if hopper else float("nan")
        results[name] = result
        print(f"  {mode} {name}: {tok_s:,.0f} tokens/s (spread over rounds {result['spread']:.3f})", flush=True)
    return results


def seeded(make: Callable[..., nn.Module | None], *args: object) -> nn.Module | None:
    torch.manual_seed(0)  # every model starts from the same draw
    return make(*args)


def graph_breaks(shape: tuple, device: torch.device) -> int:
    width, depth, heads, seq, batch, vocab = shape
    model = build("a_ops", width, depth, heads, seq, vocab).to(device)
    ids = torch.randint(0, vocab, (2, min(seq, 64)), device=device)
    torch._dynamo.reset()
    return torch._dynamo.explain(model)(ids).graph_break_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--shapes", default="gpt2,search" if cuda else "search")
    parser.add_argument("--modes", default="eager,compile", help="eager, compile, cudagraphs (CUDA only)")
    parser.add_argument("--models", default="a_ops,b_layers,c_reference,d_xtransformers")
    parser.add_argument("--steps", type=int, default=20 if cuda else 3, help="timed steps per model in each round")
    parser.add_argument("--rounds", type=int, default=5 if cuda else 3, help="rounds taking the models in turn")
    parser.add_argument("--batch", type=int, help="override the shape's batch size (e.g. for a small CPU)")
    add_json_argument(parser, "model_throughput")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device: {device_name(device)}; torch {torch.__version__}; {'bf16 autocast' if cuda else 'fp32'}")
    rows, figures, targets = [], [], {}
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        if args.batch:
            shape = shape[:4] + (args.batch, shape[5])
        width, depth, heads, seq, batch, vocab = shape
        breaks = graph_breaks(shape, device)
        targets[f"{shape_name}/graph_breaks"] = target(breaks, 0, at_least=False)
        print(f"\nshape {shape_name}: width {width}, depth {depth}, heads {heads}, seq {seq}, batch {batch}, vocab {vocab}; "
              f"graph breaks in a compiled (a): {breaks}")
        for mode in args.modes.split(","):
            models = {name: seeded(build, name, width, depth, heads, seq, vocab) for name in args.models.split(",")}
            for name in [n for n, m in models.items() if m is None]:
                print(f"  {name}: not importable, skipped")
                del models[name]
            results = measure_interleaved(models, shape, device, mode, args.steps, args.rounds)
            del models
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            reference = results.get("c_reference")
            for name, r in results.items():
                row = {"shape": shape_name, "mode": mode, "model": name, "params": f"{r['params'] / 1e6:.1f}M",
                       "tokens/s": f"{r['tok_s']:,.0f}",
                       "vs (c)": f"{r['tok_s'] / reference['tok_s']:.3f}" if reference else "",
                       "spread": f"{r['spread']:.3f}",
                       "peak MiB": "n/a" if math.isnan(r["peak_mb"]) else f"{r['peak_mb']:,.0f}",
                       "mem vs (c)": "" if math.isnan(r["peak_mb"]) or not reference else f"{r['peak_mb'] / reference['peak_mb']:.3f}"}
                if "mfu" in r:
                    row["MFU"] = f"{r['mfu']:.3f}"
                if "d_xtransformers" in results and name != "d_xtransformers":
                    row["vs (d)"] = f"{r['tok_s'] / results['d_xtransformers']['tok_s']:.3f}"
                rows.append(row)
                figures.append({"shape": shape_name, "mode": mode, "model": name, **r,
                                "vs_reference": r["tok_s"] / reference["tok_s"] if reference else None,
                                "vs_xtransformers": r["tok_s"] / results["d_xtransformers"]["tok_s"]
                                if "d_xtransformers" in results else None,
                                "mem_vs_reference": r["peak_mb"] / reference["peak_mb"]
                                if reference and not math.isnan(r["peak_mb"]) else None})
                if name not in ("a_ops", "b_layers"):
                    continue
                figure = figures[-1]
                if figure["vs_reference"] is not None:
                    targets[f"{shape_name}/{mode}/{name} vs c_reference"] = target(figure["vs_reference"], VS_REFERENCE_GOAL)
                if figure["vs_xtransformers"] is not None:
                    targets[f"{shape_name}/{mode}/{name} vs d_xtransformers"] = target(figure["vs_xtransformers"],
                                                                                      VS_XTRANSFORMERS_GOAL)
                if figure["mem_vs_reference"] is not None:
                    targets[f"{shape_name}/{mode}/{name} memory vs c_reference"] = target(figure["mem_vs_reference"],
                                                                                         MEMORY_GOAL, at_least=False)
    print()
    print_table(rows, ["shape", "mode", "model", "params", "tokens/s", "spread", "vs (c)", "vs (d)", "peak MiB", "mem vs (c)", "MFU"])
    missed = [name for name, t in targets.items() if not t["met"]]
    print(f"targets: {len(targets) - len(missed)} of {len(targets)} met" + (f"; not met: {', '.join(missed)}" if missed else ""))
    write_results("model_throughput", {"steps": args.steps, "rounds": args.rounds, "rows": figures}, targets, args.json, device)


if __name__ == "__main__":
    main()

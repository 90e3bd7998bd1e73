"""Cached greedy decoding: tokens per second of `ConfigaFormer.generate` against a hand-written KV-cache GPT of the
same shape and weights (below), and x-transformers' cached generate when it is importable, at batch 1 and 8 and
contexts of 128 to 1024 tokens; and the cache's bytes against the analytic 2 x layers x kv_heads x head_dim x
context x batch x dtype bytes.

The model is GPT-2's architecture (learned positions, pre-LayerNorm, GELU, biases) as a layer config: the search
shape on a CPU (256 wide, 4 layers, byte vocabulary) and GPT-2 small on CUDA. At each context, a prompt fills it
but for `--new` tokens, which are then decoded greedily; the time covers the prefill and the decoding, as a user
waits for it. Each model is timed in rounds that take them in turn, and the median of the rounds is reported, with
ratios measured in this one process. fp32 on a CPU, bf16 on CUDA. Both models' tokens are checked to agree (fp32).
Targets: at least 0.95x the hand-written model's tokens per second and 1.0x x-transformers' (geometric means over
the rows), and the cache's bytes equal to the analytic count at every row.

    python benchmarks/decode.py                     # the search shape on a CPU (GPT-2 small too on CUDA)
    python benchmarks/decode.py --contexts 128,512 --batches 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import add_json_argument, device_name, print_table, target, write_results  # noqa: E402

from configaformer import ConfigaFormer, DecodeCache  # noqa: E402
from configaformer.decode import analytic_kv_bytes  # noqa: E402

SHAPES = {"search": (256, 4, 4, 256), "gpt2": (768, 12, 12, 50304)}  # width, depth, heads, vocab
HAND_GOAL, XTRANSFORMERS_GOAL = 0.95, 1.0  # configaformer's tokens/s against each, geometric mean over the rows


def layer_config(width: int, depth: int, heads: int, vocab: int, max_length: int) -> dict:
    return {"dim_model": width, "vocab_size": vocab, "max_length": max_length, "position": "learned",
            "layers": [{"type": "Attention", "heads": heads}, {"type": "FFN", "ff_mult": 4, "activation": "gelu"}] * depth}


# ---- the reference: a GPT-2 with a KV cache, written by hand ----------------------------------------------------

class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        if cache:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        cache[:] = [k, v]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=length > 1)  # one new token sees every cached key
        x = x + self.out(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class HandGPT(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, vocab: int, max_length: int) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(max_length, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor, caches: list, start: int) -> torch.Tensor:
        x = self.tokens(ids) + self.positions.weight[start:start + ids.shape[1]]
        for block, cache in zip(self.blocks, caches):
            x = block(x, cache)
        return self.head(self.ln(x))

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, new: int) -> torch.Tensor:
        caches, start, step = [[] for _ in self.blocks], 0, ids
        for _ in range(new):
            logits = self(step, caches, start)
            start += step.shape[1]
            step = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, step], dim=1)
        return ids


def copy_weights(model: ConfigaFormer, hand: HandGPT) -> None:
    """The ConfigaFormer's weights into the hand-written model (op by op, in order), so both decode the same tokens."""
    from configaformer.ops.dense import Embedding, Linear, PositionEmbedding
    from configaformer.ops.norms import Norm

    norms = iter(op for op in model.ops if isinstance(op, Norm))
    linears = iter(op.proj for op in model.ops if isinstance(op, Linear) and op.proj is not None)
    fused = iter(step.proj for step in model.fused_linears)  # each layer's queries, keys and values as one weight
    pairs = [(hand.tokens.weight, next(op for op in model.ops if isinstance(op, Embedding)).table.weight),
             (hand.positions.weight, next(op for op in model.ops if isinstance(op, PositionEmbedding)).table)]
    for block in hand.blocks:
        for mine, theirs in ((block.ln1, next(norms)), (block.qkv, next(fused)), (block.out, next(linears)),
                             (block.ln2, next(norms)), (block.up, next(linears)), (block.down, next(linears))):
            pairs += [(mine.weight, theirs.weight), (mine.bias, theirs.bias)]
    for mine, theirs in ((hand.ln, next(norms)), (hand.head, next(linears))):
        pairs += [(mine.weight, theirs.weight), (mine.bias, theirs.bias)]
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.copy_(theirs)


def xtransformers(width: int, depth: int, heads: int, vocab: int, max_length: int):
    """x-transformers' decoder of the same shape (its own weights) and its cached greedy generate, or None when it is
    not installed."""
    try:
        from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper
    except ImportError:
        return None
    net = TransformerWrapper(num_tokens=vocab, max_seq_len=max_length,
                             attn_layers=Decoder(dim=width, depth=depth, heads=heads, attn_flash=True))
    wrapper = AutoregressiveWrapper(net).eval()
    return wrapper, lambda ids, new: wrapper.generate(ids, new, cache_kv=True, temperature=0.0)


def seconds(call, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="search,gpt2" if cuda else "search")
    parser.add_argument("--contexts", default="128,256,512,1024")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new", type=int, default=32, help="tokens decoded at each context")
    parser.add_argument("--rounds", type=int, default=5)
    add_json_argument(parser, "decode")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    contexts = [int(c) for c in args.contexts.split(",")]
    rows, figures = [], []
    for shape in args.shapes.split(","):
        width, depth, heads, vocab = SHAPES[shape]
        torch.manual_seed(0)
        model = ConfigaFormer.from_config(layer_config(width, depth, heads, vocab, max(contexts)), verbose=False)
        model = model.to(device, dtype).eval()
        hand = HandGPT(width, depth, heads, vocab, max(contexts)).to(device)
        copy_weights(model, hand)
        hand = hand.to(dtype).eval()
        other = xtransformers(width, depth, heads, vocab, max(contexts))
        if other is not None:
            wrapper, other = other
            wrapper.to(device, dtype)
        for batch in (int(b) for b in args.batches.split(",")):
            for context in contexts:
                prompt = torch.randint(0, vocab, (batch, context - args.new), device=device)
                runs = {"configaformer": lambda: model.generate(prompt, args.new),
                        "hand-written": lambda: hand.generate(prompt, args.new)}
                if other is not None:
                    runs["x-transformers"] = lambda: other(prompt, args.new)
                if not cuda and not torch.equal(runs["configaformer"](), runs["hand-written"]()):  # fp32: the same tokens
                    raise SystemExit(f"the two models decode different tokens at batch {batch}, context {context}")
                times = {name: [] for name in runs}
                for name, run in runs.items():
                    run()  # warm-up
                for _ in range(args.rounds):
                    for name, run in runs.items():
                        times[name].append(seconds(run, device))
                rate = {name: batch * args.new / statistics.median(t) for name, t in times.items()}
                cache = DecodeCache()
                model.step(torch.cat([prompt, prompt[:, :args.new]], 1), cache)
                analytic = analytic_kv_bytes(depth, heads, width // heads, context, batch, dtype)
                row = {"shape": shape, "batch": batch, "context": context,
                       "configaformer tok/s": f"{rate['configaformer']:,.0f}",
                       "hand-written tok/s": f"{rate['hand-written']:,.0f}",
                       "ratio": f"{rate['configaformer'] / rate['hand-written']:.3f}",
                       "cache MiB": f"{cache.nbytes() / 2**20:.2f}", "analytic": "equal" if cache.nbytes() == analytic else f"{analytic / 2**20:.2f}"}
                if other is not None:
                    row["vs x-transformers"] = f"{rate['configaformer'] / rate['x-transformers']:.3f}"
                rows.append(row)
                figures.append({"shape": shape, "batch": batch, "context": context, "tok_s": rate,
                                "vs_hand": rate["configaformer"] / rate["hand-written"],
                                "vs_xtransformers": rate["configaformer"] / rate["x-transformers"] if other is not None else None,
                                "cache_bytes": cache.nbytes(), "analytic_bytes": analytic})
                print(row, flush=True)
    print(f"\ndevice: {device_name(device)}; {args.new} new tokens after a prompt that fills each context; "
          f"median of {args.rounds} rounds")
    columns = ["shape", "batch", "context", "configaformer tok/s", "hand-written tok/s", "ratio", "cache MiB", "analytic"]
    print_table(rows, columns + (["vs x-transformers"] if rows and "vs x-transformers" in rows[0] else []))
    if rows and "vs x-transformers" not in rows[0]:
        print("x-transformers is not installed here: its column is left out")
    geomean = lambda values: math.exp(statistics.mean(map(math.log, values)))  # noqa: E731
    ratios = [f["vs_hand"] for f in figures]
    print(f"configaformer / hand-written: geometric mean {geomean(ratios):.3f}, min {min(ratios):.3f} "
          f"(target >= {HAND_GOAL:g})")
    targets = {"vs_hand_written": target(geomean(ratios), HAND_GOAL),
               "cache_bytes_analytic": target(sum(f["cache_bytes"] == f["analytic_bytes"] for f in figures) / len(figures), 1.0)}
    others = [f["vs_xtransformers"] for f in figures if f["vs_xtransformers"] is not None]
    if others:
        print(f"configaformer / x-transformers: geometric mean {geomean(others):.3f}, min {min(others):.3f} "
              f"(target >= {XTRANSFORMERS_GOAL:g})")
        targets["vs_x_transformers"] = target(geomean(others), XTRANSFORMERS_GOAL)
    write_results("decode", {"new_tokens": args.new, "rounds": args.rounds, "dtype": str(dtype), "rows": figures,
                             "vs_hand_geomean": geomean(ratios), "vs_hand_min": min(ratios),
                             "vs_xtransformers_geomean": geomean(others) if others else None}, targets, args.json, device)


if __name__ == "__main__":
    main()

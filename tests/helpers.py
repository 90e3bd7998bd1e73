"""Small model configs shared by the tests: a GPT-style op config and a layer config, at test scale."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator


def gpt_blocks(dim: int = 64, heads: int = 4, layers: int = 2, vocab: int = 101, rope: int = 8) -> list[dict]:
    """A GPT-style op config with rope and an offset stream (embedding, attn + ffn x layers, ffn + logits)."""
    emb = [{"type": "embedding", "output_dim": dim, "num_classes": vocab}]
    attn = [
        {"type": "make_stream", "output_name": "residual"},
        {"type": "norm", "norm_type": "layer_norm"},
        {"type": "linear", "output_name": "queries"},
        {"type": "linear", "output_name": "keys"},
        {"type": "linear", "output_name": "values"},
        {"type": "make_heads", "input_name": "queries", "output_name": "queries", "num_heads": heads},
        {"type": "make_heads", "input_name": "keys", "output_name": "keys", "num_heads": heads},
        {"type": "rope", "input_name": "queries", "output_name": "queries", "rotate_dim": rope},
        {"type": "rope", "input_name": "keys", "output_name": "keys", "rotate_dim": rope},
        {"type": "mha_dots", "input_name_queries": "queries", "input_name_keys": "keys"},
        {"type": "attention_offset"},
        {"type": "mha_sum", "input_name_values": "values"},
        {"type": "linear"},
        {"type": "merge_streams", "input_name_1": "residual", "merge_type": "add"},
    ]
    ffn = [
        {"type": "make_stream", "output_name": "residual"},
        {"type": "norm", "norm_type": "layer_norm"},
        {"type": "linear", "output_dim": dim * 4},
        {"type": "activation"},
        {"type": "linear", "output_dim": dim},
        {"type": "merge_streams", "input_name_1": "residual", "merge_type": "add"},
    ]
    to_logits = [{"type": "linear", "output_dim": vocab}]
    return [{"config": emb, "repeat": 1}, {"config": attn + ffn, "repeat": layers}, {"config": ffn + to_logits, "repeat": 1}]


def attn_offset_streams(heads: int = 4) -> dict:
    """The input streams of gpt_blocks: token ids and the attention offset (e.g. get_alibi's)."""
    return {"emb_ids": ["B", "L_in"], "attn_offset": ["B", heads, "L_in", "L_in"]}


def layer_config(dim: int = 64, vocab: int = 97, **overrides) -> dict:
    """A layer config at test scale: two classifiers and an embedding narrower than the model."""
    config = {
        "dim_model": dim, "vocab_size": vocab, "dim_rope": 8, "classifiers": [vocab, 6], "input_emb_size": 32,
        "layers": [{"type": "Attention", "heads": 4}, {"type": "FFN", "ff_mult": 4}] * 2,
    }
    config.update(overrides)
    return config


@contextmanager
def counted_calls() -> Iterator[Counter]:
    """Counts, inside the block, each module class's forward calls (by class name) and the calls of
    scaled_dot_product_attention, with how many passed is_causal=True and how many an attn_mask (as keywords, the
    way FusedAttention passes them): which attention path a model ran, not only which it planned."""
    import torch
    import torch.nn.functional as F

    calls: Counter = Counter()
    sdpa = F.scaled_dot_product_attention

    def counted_sdpa(*args, **kwargs):
        calls["scaled_dot_product_attention"] += 1
        calls["is_causal"] += bool(kwargs.get("is_causal"))
        calls["attn_mask"] += kwargs.get("attn_mask") is not None
        return sdpa(*args, **kwargs)

    def count_forward(module, args, output) -> None:
        calls[type(module).__name__] += 1

    F.scaled_dot_product_attention = counted_sdpa
    hook = torch.nn.modules.module.register_module_forward_hook(count_forward)
    try:
        yield calls
    finally:
        hook.remove()
        F.scaled_dot_product_attention = sdpa


TINY_SPACE = """
name: tiny
data: {source: embedded}
params:
  width: {choice: [32, 48]}
  heads: {choice: [2, 4]}
  position: {choice: [rope, alibi]}
  dim_rope: {choice: [4, 8], if: {position: rope}}
model:
  dim_model: $width
  position: $position
  dim_rope: $dim_rope
  layers:
    repeat: 1
    each:
      - {type: Attention, heads: $heads}
      - {type: FFN, ff_mult: 2}
train: {tokens: 49152, batch_size: 16, seq_len: 32, lr: 1e-2, eval_tokens: 4096}
probes: {latency_repeats: 5, latency_warmup: 1}
objectives: {val_loss: min, peak_mem_mb: min, latency_ms: min}
search: {trials: 4, sampler: random}
"""


def write_space(tmp_path, text: str = TINY_SPACE, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def synthetic_run(tmp_path, trials: int = 40, text: str = TINY_SPACE):
    """A run folder whose study holds finished trials written through the project's own recording path, with
    made-up measurements (no training): for the review commands and the storage faults."""
    from configaformer_search import outcome
    from configaformer_search.driver.samplers import make_sampler
    from configaformer_search.space import load_space
    from configaformer_search.storage import StudyStore, default_storage, open_storage

    out = tmp_path / "run"
    out.mkdir()
    space = load_space(write_space(tmp_path, text))
    store = StudyStore.open(open_storage(default_storage(out)), space.name, space.objectives,
                            make_sampler(space, "random", 0, trials))  # the same trials each time
    for i in range(trials):
        trial, trial_id = store.ask()
        space.sample(trial)
        record = outcome.measured(val_loss=3 - i / 100 + (i % 5) / 20, peak_mem_mb=1 + i % 13, latency_ms=1 + i % 7,
                                  config_key=str(i), params=1000 + i,
                                  model_config={"dim_model": 32, "vocab_size": 256, "layers": [{"type": "FFN"}]})
        if i % 9 == 4:
            record = outcome.failed("nan_loss", "training loss became nan", config_key=str(i))
        store.record(trial, trial_id, record)
    store.close()
    return out, space

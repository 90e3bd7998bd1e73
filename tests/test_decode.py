"""Incremental decoding: a prompt then cached single-token steps give the full forward's logits, and greedy
`generate` equals a loop of full forwards with argmax, for every layer option and op-level wirings; ops that
cannot decode are refused by name; the cache holds exactly the keys and values."""

import pytest
import torch
from helpers import attn_offset_streams, counted_calls, gpt_blocks

from configaformer import ConfigaFormer, ConfigError, DecodeCache, get_alibi
from configaformer.decode import analytic_kv_bytes, check_decodable

VOCAB = 61


def layer_model(fuse: bool = True, **options) -> ConfigaFormer:
    model_keys = {k: options.pop(k) for k in ("position", "norm_placement", "classifiers", "input_emb_size") if k in options}
    kind = options.pop("ffn", "FFN")
    layers = [{"type": "Attention", "heads": 4, **options}, {"type": kind, "ff_mult": 2}] * 2
    config = {"dim_model": 32, "vocab_size": VOCAB, "max_length": 24, "dim_rope": 4, "layers": layers, **model_keys}
    return ConfigaFormer.from_config(config, verbose=False, fuse_attention=fuse).eval()


def greedy_by_full_forwards(model: ConfigaFormer, ids: torch.Tensor, steps: int, streams=None) -> torch.Tensor:
    for _ in range(steps):
        logits = model({"emb_ids": ids, **(streams or {})})[model.outputs[0]]
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def assert_decodes_like_full_forwards(model: ConfigaFormer, fused_layers: int, streams=None) -> None:
    """A prompt and then one token at a time through the cache give the full forward's logits, on the fused path
    (one SDPA call per attention layer and step) when `fused_layers` are planned fused."""
    assert model.fused_attention_count == fused_layers
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        full = model({"emb_ids": ids, **(streams or {})})
    cache = DecodeCache()
    with counted_calls() as calls:
        pieces = [model({"emb_ids": ids[:, :6], **(streams or {})}, cache=cache)]
        pieces += [model({"emb_ids": ids[:, i:i + 1], **(streams or {})}, cache=cache) for i in range(6, 10)]
    assert calls["scaled_dot_product_attention"] == len(pieces) * fused_layers
    assert cache.position == 10
    for output in model.outputs:  # every classifier, not just the first
        stepped = torch.cat([piece[output] for piece in pieces], dim=1)
        torch.testing.assert_close(stepped, full[output], atol=1e-5, rtol=1e-5)
    expected = greedy_by_full_forwards(model, ids[:, :3], 7, streams)
    assert torch.equal(model.generate(ids[:, :3], 7, streams=streams), expected)
    assert torch.equal(model.generate(ids[:, :3], 7, use_cache=False, streams=streams), expected)


LAYER_OPTIONS = {
    "rope": {}, "alibi": {"position": "alibi"}, "learned": {"position": "learned"}, "no_position": {"position": "none"},
    "gqa": {"kv_heads": 2}, "mqa_alibi": {"kv_heads": 1, "position": "alibi"}, "token_shift": {"token_shift": True},
    "gmlp": {"ffn": "gMLP"}, "qk_norm_gated": {"qk_norm": True, "gated": True}, "post_norm": {"norm_placement": "post"},
    "sandwich_rms": {"norm_placement": "sandwich", "norm_type": "rms_norm"}, "dim_head": {"dim_head": 12},
    "classifiers": {"classifiers": [VOCAB, 5], "input_emb_size": 16},
}


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "explicit"])
@pytest.mark.parametrize("options", LAYER_OPTIONS.values(), ids=LAYER_OPTIONS.keys())
def test_layer_configs_decode_like_full_forwards(options, fuse):
    assert_decodes_like_full_forwards(layer_model(fuse, **dict(options)), fused_layers=2 if fuse else 0)


def test_op_level_graph_with_an_offset_stream_and_flat_values_decodes():
    blocks = gpt_blocks(dim=32, heads=4, layers=2, vocab=VOCAB, rope=4)  # values stay [B, L, D]: split in mha_sum
    blocks[0]["config"].append({"type": "shift", "instructions": [{"features": [0, 8], "relative_pos": -2}]})
    for fuse in (True, False):
        model = ConfigaFormer({"blocks": blocks, "input_streams": attn_offset_streams(4)}, verbose=False,
                              fuse_attention=fuse).eval()
        assert_decodes_like_full_forwards(model, 2 if fuse else 0, {"attn_offset": get_alibi(4, 24)})


def test_ops_that_cannot_decode_are_refused_by_name():
    hourglass = [{"config": [{"type": "embedding", "output_dim": 16, "num_classes": VOCAB},
                             {"type": "shift", "instructions": [{"features": [0, 16], "relative_pos": -1}]},
                             {"type": "down_sample", "stride": 2}, {"type": "linear", "output_dim": 32},
                             {"type": "up_sample", "num_chunks": 2}, {"type": "linear", "output_dim": VOCAB}], "repeat": 1}]
    model = ConfigaFormer({"blocks": hourglass, "input_streams": {"emb_ids": ["B", "L_in"]}}, verbose=False)
    with pytest.raises(ConfigError, match=r"down_sample at blocks\[0\]\.config\[2\] merges runs of tokens"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), 2)
    for options, why in (({"causal": False}, "mha_dots at .* has no causal offset"),
                         ({"causal": False, "position": "alibi"}, "attention_offset at .*alibi_bidirectional")):
        with pytest.raises(ConfigError, match=why):
            check_decodable(layer_model(**options))
    gmlp = ConfigaFormer.from_config({"dim_model": 32, "vocab_size": VOCAB, "max_length": 24, "layers": [
        {"type": "Attention", "heads": 4}, {"type": "gMLP", "causal": False}]}, verbose=False)
    with pytest.raises(ConfigError, match=r"spatial_gating at blocks\[2\]\.config\[4\] mixes every position with later"):
        check_decodable(gmlp)


def test_the_cache_holds_exactly_the_keys_and_values_of_the_kv_heads():
    sizes = {}
    for kv_heads in (1, 2, 4):
        model = layer_model(kv_heads=kv_heads)
        cache = DecodeCache()
        model.step(torch.randint(0, VOCAB, (3, 20)), cache)
        sizes[kv_heads] = cache.nbytes()
        assert sizes[kv_heads] == analytic_kv_bytes(layers=2, kv_heads=kv_heads, head_dim=8, context=20, batch=3)
    assert sizes[1] * 2 == sizes[2] and sizes[2] * 2 == sizes[4]


def test_sampling_draws_from_the_top_k_and_is_reproducible():
    model = layer_model()
    prompt = torch.randint(0, VOCAB, (2, 4))
    draws = [model.generate(prompt, 6, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1]) and draws[0].shape == (2, 10)
    with torch.no_grad():
        logits = model({"emb_ids": draws[0]})["logits_0"][:, 3:-1]  # those each new token was drawn from
    assert (logits.topk(5).indices == draws[0][:, 4:, None]).any(-1).all()
    greedy = model.generate(prompt, 6)
    assert not torch.equal(draws[0], greedy)
    assert torch.equal(model.generate(prompt, 6, temperature=0.8, top_k=1), greedy)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 2, temperature=-1)


def test_explicit_alibi_attention_in_bfloat16_gives_the_float32_logits():
    model = layer_model(fuse=False, position="alibi")
    ids = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        expected = model({"emb_ids": ids})["logits_0"]
        logits = model.to(torch.bfloat16)({"emb_ids": ids})["logits_0"]
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), expected, atol=2e-2, rtol=2e-2)

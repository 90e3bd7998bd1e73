"""A mha_dots -> [attention_offset] -> mha_sum chain runs as one SDPA call with the explicit chain's numbers, and
sibling linears as one GEMM; each test checks which path actually ran."""

from typing import Mapping

import pytest
import torch
from helpers import attn_offset_streams, counted_calls, gpt_blocks
from torch import Tensor

from configaformer import ConfigaFormer, get_alibi
from configaformer.ops.dense import FusedLinear

ATTENTION_CALLS = ("scaled_dot_product_attention", "is_causal", "attn_mask", "MhaDots", "AttentionOffset", "MhaSum")


def attention_model(offset, kv_heads=4, head_values=True, read_dots=False, fuse=True):
    heads, dim = 4, 32
    dh = dim // heads
    ops = [{"type": "linear", "output_name": "queries"},
           {"type": "linear", "output_name": "keys", "output_dim": kv_heads * dh},
           {"type": "linear", "output_name": "values", "output_dim": kv_heads * dh if head_values else dim},
           {"type": "make_heads", "input_name": "queries", "output_name": "queries", "num_heads": heads},
           {"type": "make_heads", "input_name": "keys", "output_name": "keys", "num_heads": kv_heads},
           {"type": "mha_dots"}]
    if head_values:
        ops.insert(5, {"type": "make_heads", "input_name": "values", "output_name": "values", "num_heads": kv_heads})
    streams = {"x": ["B", "L", dim]}
    if offset == "stream":
        ops.append({"type": "attention_offset"})
        streams["attn_offset"] = ["B", heads, "L", "L"]
    elif offset:
        ops.append({"type": "attention_offset", "offset": offset})
    if read_dots:
        ops.append({"type": "make_stream", "input_name": "attn_dots", "output_name": "dots_copy"})
    ops.append({"type": "mha_sum"})
    if head_values:
        ops.append({"type": "merge_heads"})
    return ConfigaFormer({"blocks": [{"config": ops, "repeat": 2}]}, streams, verbose=False, fuse_attention=fuse)


def attention_calls(model: ConfigaFormer, data: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, int]]:
    """The model's streams, and how often the forward pass ran SDPA (and with which mask) and each op of the chain."""
    with counted_calls() as calls:
        streams = model(data)
    return streams, {name: calls[name] for name in ATTENTION_CALLS}


def fused_calls(layers: int, offset: str | None) -> dict[str, int]:
    """What the fused path runs: one SDPA call per layer, none of the chain's ops; a causal-only offset passes
    is_causal (the flash kernel), any other offset a mask."""
    return {"scaled_dot_product_attention": layers, "is_causal": layers if offset == "causal" else 0,
            "attn_mask": layers if offset not in (None, "causal") else 0,
            "MhaDots": 0, "AttentionOffset": 0, "MhaSum": 0}


def explicit_calls(layers: int, offset: str | None) -> dict[str, int]:
    """What the explicit chain runs: each of its ops once per layer, and no SDPA."""
    return {"scaled_dot_product_attention": 0, "is_causal": 0, "attn_mask": 0, "MhaDots": layers,
            "AttentionOffset": 0 if offset is None else layers, "MhaSum": layers}


@pytest.mark.parametrize("offset", [None, "causal", "alibi", "alibi_bidirectional", "stream"])
@pytest.mark.parametrize("kv_heads, head_values", [(4, True), (2, True), (4, False)])
def test_fused_matches_explicit_outputs_and_gradients(offset, kv_heads, head_values):
    fused = attention_model(offset, kv_heads, head_values)
    explicit = attention_model(offset, kv_heads, head_values, fuse=False)
    explicit.load_state_dict(fused.state_dict())
    assert fused.fused_attention_count == 2 and explicit.fused_attention_count == 0
    x = torch.randn(3, 12, 32, requires_grad=True)
    data = {"x": x}
    if offset == "stream":
        data["attn_offset"] = get_alibi(4, max_length=20)
    streams, calls = attention_calls(fused, data)
    assert calls == fused_calls(2, offset)
    out_f = streams["x"]
    grads_f = torch.autograd.grad(out_f.square().sum(), [x, *fused.parameters()])
    streams, calls = attention_calls(explicit, data)
    assert calls == explicit_calls(2, offset)
    out_e = streams["x"]
    grads_e = torch.autograd.grad(out_e.square().sum(), [x, *explicit.parameters()])
    torch.testing.assert_close(out_f, out_e, atol=1e-5, rtol=1e-5)
    for g_f, g_e in zip(grads_f, grads_e):
        torch.testing.assert_close(g_f, g_e, atol=1e-5, rtol=1e-5)


def test_dots_read_elsewhere_keep_the_explicit_chain():
    model = attention_model("causal", read_dots=True)
    assert model.fused_attention_count == 0
    out, calls = attention_calls(model, {"x": torch.randn(1, 5, 32)})
    assert calls == explicit_calls(2, "causal")
    assert out["dots_copy"].shape == (1, 4, 5, 5)


def test_dots_that_are_a_model_output_stay_explicit():
    ops = [{"type": "make_heads", "output_name": "q", "num_heads": 2},
           {"type": "mha_dots", "input_name_queries": "q", "input_name_keys": "q"},
           {"type": "mha_sum", "input_name_values": "x"}]
    model = ConfigaFormer({"blocks": [{"config": ops}], "outputs": ["x", "attn_dots"]}, {"x": ["B", "L", 8]},
                          verbose=False)
    assert model.fused_attention_count == 0
    out, calls = attention_calls(model, {"x": torch.randn(2, 5, 8)})
    assert calls == explicit_calls(1, None) and out["attn_dots"].shape == (2, 2, 5, 5)


def fused_and_separate_linears() -> tuple[ConfigaFormer, ConfigaFormer]:
    """The same GPT-style model (the same initial weights) with its sibling linears fused, and kept separate."""
    torch.manual_seed(0)
    fused = ConfigaFormer({"blocks": gpt_blocks()}, attn_offset_streams(), verbose=False)
    torch.manual_seed(0)
    separate = ConfigaFormer({"blocks": gpt_blocks()}, attn_offset_streams(), verbose=False, fuse_linears=False)
    return fused, separate


def test_sibling_linears_run_as_one_gemm_with_the_same_numbers():
    fused, separate = fused_and_separate_linears()
    separate.load_state_dict(fused.state_dict())
    groups = [step for step in fused.plan if isinstance(step, FusedLinear)]
    assert [g.outputs for g in groups] == [("queries", "keys", "values")] * 2  # one per attention layer
    data = {"emb_ids": torch.randint(0, 101, (2, 9)), "attn_offset": get_alibi(4)}
    with counted_calls() as fused_calls:
        out_f = fused(data)["x"]
    with counted_calls() as separate_calls:
        out_s = separate(data)["x"]
    assert fused_calls["FusedLinear"] == 2 and separate_calls["FusedLinear"] == 0
    assert fused_calls["Linear"] == separate_calls["Linear"] - 2 * 3  # each group's three linears ran as one
    torch.testing.assert_close(out_f, out_s, atol=1e-5, rtol=1e-5)
    out_f.square().sum().backward()
    out_s.square().sum().backward()
    with torch.no_grad():  # lay the gradients out as parameters, so that load_state_dict maps one layout onto the other
        for model in (fused, separate):
            for param in model.parameters():
                param.copy_(param.grad)
    fused_grads = fused.state_dict()
    fused.load_state_dict(separate.state_dict())
    for name, grad in fused_grads.items():
        torch.testing.assert_close(fused.state_dict()[name], grad, atol=1e-5, rtol=1e-5)


def test_fused_linears_hold_one_weight_per_group_and_load_either_layout():
    fused, separate = fused_and_separate_linears()
    assert len(list(fused.parameters())) == len(list(separate.parameters())) - 2 * 4  # q, k, v: 6 tensors -> 2, twice
    assert fused.num_params() == separate.num_params()
    assert fused.num_params(non_embedding=True) == separate.num_params(non_embedding=True)
    data = {"emb_ids": torch.randint(0, 101, (2, 9)), "attn_offset": get_alibi(4)}
    torch.testing.assert_close(fused(data)["x"], separate(data)["x"])  # same seed, same initial weights
    for source, target in ((fused, separate), (separate, fused)):
        wrapped_source, wrapped_target = torch.nn.Sequential(source), torch.nn.Sequential(target)  # under a prefix
        for param in source.parameters():
            torch.nn.init.normal_(param)
        wrapped_target.load_state_dict(wrapped_source.state_dict())
        torch.testing.assert_close(target(data)["x"], source(data)["x"], atol=1e-5, rtol=1e-5)


def test_a_linear_that_overwrites_its_input_ends_the_group():
    ops = [{"type": "linear", "output_name": "a"}, {"type": "linear"}, {"type": "linear", "output_name": "b"}]
    model = ConfigaFormer({"blocks": [{"config": ops}]}, {"x": ["B", 8]}, verbose=False)
    reference = ConfigaFormer({"blocks": [{"config": ops}]}, {"x": ["B", 8]}, verbose=False, fuse_linears=False)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, 8)
    out, expected = model({"x": x}), reference({"x": x})
    for name in ("a", "x", "b"):
        torch.testing.assert_close(out[name], expected[name])

"""A mha_dots -> [attention_offset] -> mha_sum chain runs as one SDPA call with the explicit chain's numbers."""

import pytest
import torch

from configaformer import ConfigaFormer, get_alibi
from configaformer.ops import FusedAttention


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
    out_f = fused(data)["x"]
    grads_f = torch.autograd.grad(out_f.square().sum(), [x, *fused.parameters()])
    out_e = explicit(data)["x"]
    grads_e = torch.autograd.grad(out_e.square().sum(), [x, *explicit.parameters()])
    torch.testing.assert_close(out_f, out_e, atol=1e-5, rtol=1e-5)
    for g_f, g_e in zip(grads_f, grads_e):
        torch.testing.assert_close(g_f, g_e, atol=1e-5, rtol=1e-5)


def test_dots_read_elsewhere_keep_the_explicit_chain():
    model = attention_model("causal", read_dots=True)
    assert model.fused_attention_count == 0
    out = model({"x": torch.randn(1, 5, 32)})
    assert out["dots_copy"].shape == (1, 4, 5, 5)


def test_dots_that_are_a_model_output_stay_explicit():
    ops = [{"type": "make_heads", "output_name": "q", "num_heads": 2},
           {"type": "mha_dots", "input_name_queries": "q", "input_name_keys": "q"},
           {"type": "mha_sum", "input_name_values": "x"}]
    model = ConfigaFormer({"blocks": [{"config": ops}], "outputs": ["x", "attn_dots"]}, {"x": ["B", "L", 8]}, verbose=False)
    assert model.fused_attention_count == 0


def test_causal_chain_uses_is_causal_for_the_flash_kernel():
    model = attention_model("causal")
    steps = [s for s in model.plan if isinstance(s, FusedAttention)]
    assert [s.offset_kind for s in steps] == ["causal", "causal"]


def test_sibling_linears_run_as_one_gemm_with_the_same_numbers():
    from configaformer.ops.dense import FusedLinear

    fused, separate = fused_and_separate_linears()
    separate.load_state_dict(fused.state_dict())
    groups = [step for step in fused.plan if isinstance(step, FusedLinear)]
    assert [g.outputs for g in groups] == [("queries", "keys", "values")] * 2  # one per attention layer
    data = {"emb_ids": torch.randint(0, 101, (2, 9)), "attn_offset": get_alibi(4)}
    out_f, out_s = fused(data)["x"], separate(data)["x"]
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


def fused_and_separate_linears() -> tuple[ConfigaFormer, ConfigaFormer]:
    from helpers import gpt_blocks, attn_offset_streams

    torch.manual_seed(0)
    fused = ConfigaFormer({"blocks": gpt_blocks()}, attn_offset_streams(), verbose=False)
    torch.manual_seed(0)
    separate = ConfigaFormer({"blocks": gpt_blocks()}, attn_offset_streams(), verbose=False, fuse_linears=False)
    return fused, separate


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

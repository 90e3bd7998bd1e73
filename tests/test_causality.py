"""The causality check: leaky op graphs and layer configs are found and their first leaking op named; causal
ones pass, whatever their wiring."""

import pytest
import torch
from helpers import attn_offset_streams, gpt_blocks, layer_config
from test_wirings import DIM, EMB, HEAD, attention, residual

from configaformer import ConfigaFormer, find_future_leak, get_alibi

SHIFT_BACK = {"type": "shift", "instructions": [{"features": [0, DIM], "relative_pos": -1}]}

CAUSAL = {
    "attention_causal": residual(*attention(offset="causal")),
    "attention_alibi_gqa": residual(*attention(heads=4, kv_heads=2, offset="alibi")),
    "shift_previous_token": [{"type": "shift", "instructions": [{"features": [0, 8], "relative_pos": -1},
                                                                  {"features": [8, 12], "relative_pos": -3}]}],
    "gmlp_causal": residual({"type": "linear", "output_dim": 2 * DIM}, {"type": "activation"},
                            {"type": "spatial_gating", "max_length": 64}),
    # hourglass made causal: each group of two holds the previous token and the current one only
    "hourglass_shifted": [{"type": "make_stream", "output_name": "full"}, SHIFT_BACK,
                          {"type": "down_sample", "stride": 2}, {"type": "linear", "output_dim": DIM},
                          *residual(*attention(offset="causal")), {"type": "linear", "output_dim": 2 * DIM},
                          {"type": "up_sample", "num_chunks": 2},
                          {"type": "merge_streams", "input_name_1": "full", "merge_type": "add"}],
    "cut_cat_features": [{"type": "cut_stream", "start": 0, "end": 16, "cut_dim": -1, "output_name": "left"},
                         {"type": "cat_streams", "input_list": ["left", "left"], "cat_dim": -1}],
}
LEAKY = {  # name -> the op type the message must name
    "attention_no_offset": (residual(*attention(offset=None)), "mha_sum"),
    "attention_alibi_bidirectional": (residual(*attention(offset="alibi_bidirectional")), "mha_sum"),
    "shift_next_token": ([{"type": "shift", "instructions": [{"features": [0, 8], "relative_pos": 1}]}], "shift"),
    "gmlp_bidirectional": (residual({"type": "linear", "output_dim": 2 * DIM}, {"type": "activation"},
                                    {"type": "spatial_gating", "max_length": 64, "causal": False}), "spatial_gating"),
    "hourglass_unshifted": ([{"type": "down_sample", "stride": 2}, {"type": "linear"},
                             {"type": "up_sample", "num_chunks": 2}], "up_sample"),
    "cut_cat_sequence": ([{"type": "cut_stream", "start": 1, "end": 16, "cut_dim": 1, "output_name": "later"},
                          {"type": "cut_stream", "start": 15, "end": 16, "cut_dim": 1, "output_name": "last"},
                          {"type": "cat_streams", "input_list": ["later", "last"], "cat_dim": 1}], "cat_streams"),
}


def op_model(body):
    config = {"blocks": [{"config": EMB}, {"config": body, "repeat": 2}, {"config": HEAD}], "outputs": ["logits"]}
    return ConfigaFormer(config, {"emb_ids": ["B", "L_in"]}, verbose=False)


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_causal_wirings_pass(name):
    assert find_future_leak(op_model(CAUSAL[name])) is None


@pytest.mark.parametrize("name", sorted(LEAKY))
def test_leaky_wirings_are_found_and_their_op_named(name):
    body, op_type = LEAKY[name]
    leak = find_future_leak(op_model(body))
    assert leak is not None
    assert leak.position < leak.source
    assert f"({op_type})" in str(leak) and "blocks[1]" in str(leak)
    assert str(leak).startswith("not causal: output 'logits'")


@pytest.mark.parametrize("overrides, leaky", [
    ({}, False),
    ({"causal": False}, True),
    ({"position": "alibi"}, False),
    ({"position": "alibi", "causal": False}, True),
    ({"layers": [{"type": "Attention", "heads": 4, "token_shift": True}, {"type": "gMLP", "token_shift": True}]}, False),
    ({"layers": [{"type": "Attention", "heads": 4}, {"type": "gMLP", "causal": False}]}, True),
    ({"layers": [{"type": "Attention", "heads": 4, "causal": False}, {"type": "FFN"}]}, True),
])
def test_layer_configs(overrides, leaky):
    model = ConfigaFormer.from_config(layer_config(**overrides), verbose=False)
    assert (find_future_leak(model) is not None) == leaky


def test_a_zero_initialised_leak_is_still_found():
    """Weights are jittered first: a leaky path whose weights start at zero would open in training."""
    model = op_model(LEAKY["attention_no_offset"][0])
    for param in model.parameters():
        param.data.zero_()
    assert find_future_leak(model) is not None


def test_an_offset_stream_is_held_fixed_and_judged_by_its_values():
    model = ConfigaFormer({"blocks": gpt_blocks(dim=32, layers=1)}, attn_offset_streams(), verbose=False)
    ids = torch.randint(0, 101, (1, 12))
    assert find_future_leak(model, inputs={"emb_ids": ids, "attn_offset": get_alibi(4, 12)}) is None
    leak = find_future_leak(model, inputs={"emb_ids": ids, "attn_offset": get_alibi(4, 12, causal=False)})
    assert leak is not None and "mha_sum" in str(leak)

"""Op graphs beyond the plain GPT block: each builds, checks its shapes, and trains a step."""

import pytest
import torch

from configaformer import ConfigaFormer, registered_ops

VOCAB, DIM = 50, 32
EMB = [{"type": "embedding", "num_classes": VOCAB, "output_dim": DIM}]
HEAD = [{"type": "norm", "norm_type": "rms_norm"}, {"type": "linear", "output_dim": VOCAB, "output_name": "logits"}]


def residual(*body):
    return [{"type": "make_stream", "output_name": "residual"}, *body,
            {"type": "merge_streams", "input_name_1": "residual", "merge_type": "add"}]


def attention(heads=4, kv_heads=4, offset="causal", qk_norm=None, head_values=True):
    dh = DIM // heads
    ops = [{"type": "linear", "output_name": "queries"},
           {"type": "linear", "output_name": "keys", "output_dim": kv_heads * dh},
           {"type": "linear", "output_name": "values", "output_dim": kv_heads * dh if head_values else DIM},
           {"type": "make_heads", "input_name": "queries", "output_name": "queries", "num_heads": heads},
           {"type": "make_heads", "input_name": "keys", "output_name": "keys", "num_heads": kv_heads}]
    if head_values:
        ops.append({"type": "make_heads", "input_name": "values", "output_name": "values", "num_heads": kv_heads})
    if qk_norm:
        ops += [{"type": "norm", "norm_type": qk_norm, "input_name": s, "output_name": s} for s in ("queries", "keys")]
    ops.append({"type": "mha_dots"})
    if offset:
        ops.append({"type": "attention_offset", "offset": offset})
    ops.append({"type": "mha_sum"})
    if head_values:
        ops.append({"type": "merge_heads"})
    return ops + [{"type": "linear"}]


WIRINGS = {
    "gqa_qk_norm": residual(*attention(heads=4, kv_heads=2, qk_norm="rms_norm")),
    "alibi_bidirectional_flat_values": residual(*attention(offset="alibi_bidirectional", head_values=False)),
    "swiglu": residual({"type": "linear", "output_dim": 4 * DIM}, {"type": "activation", "activation_function": ["silu", "none"]},
                       {"type": "linear", "output_dim": DIM}),
    "relu2_dropout_scale": residual({"type": "linear", "output_dim": 2 * DIM}, {"type": "activation", "activation_function": "relu2"},
                                    {"type": "dropout", "prob": 0.1}, {"type": "linear", "output_dim": DIM},
                                    {"type": "scale_dim", "dim_to_scale": -1}),
    "three_way_glu_scale_norm": residual({"type": "norm", "norm_type": "scale_norm"}, {"type": "linear", "output_dim": 3 * DIM},
                                         {"type": "activation", "activation_function": ["gelu", "tanh", "sigmoid"]}),
    "gmlp": residual({"type": "linear", "output_dim": 4 * DIM}, {"type": "activation"},
                     {"type": "spatial_gating", "max_length": 64}, {"type": "linear", "output_dim": DIM}),
    "hourglass_shift": [{"type": "shift", "instructions": [{"features": [0, 8], "relative_pos": -1},
                                                             {"features": [8, 12], "relative_pos": 2}]},
                        {"type": "make_stream", "output_name": "full"},
                        {"type": "down_sample", "stride": 2},
                        {"type": "linear", "output_dim": DIM},
                        *residual(*attention(offset="alibi")),
                        {"type": "linear", "output_dim": 2 * DIM},
                        {"type": "up_sample", "num_chunks": 2},
                        {"type": "merge_streams", "input_name_1": "full", "merge_type": "add"}],
    "cut_and_cat": [{"type": "cut_stream", "start": 0, "end": 16, "cut_dim": -1, "output_name": "left"},
                    {"type": "cut_stream", "start": 16, "end": 32, "cut_dim": -1, "output_name": "right"},
                    {"type": "activation", "input_name": "right", "output_name": "right", "activation_function": "tanh"},
                    {"type": "cat_streams", "input_list": ["right", "left"], "cat_dim": -1},
                    {"type": "merge_streams", "input_name_1": "x", "input_name_2": "x", "merge_type": "multiply"}],
    "learned_positions_no_offset": [{"type": "pos_embedding", "max_length": 64}, *residual(*attention(offset=None))],
}


@pytest.mark.parametrize("name", sorted(WIRINGS))
def test_wiring_builds_and_trains_a_step(name):
    config = {"blocks": [{"config": EMB}, {"config": WIRINGS[name], "repeat": 2}, {"config": HEAD}], "outputs": ["logits"]}
    model = ConfigaFormer(config, {"emb_ids": ["B", "L_in"]}, verbose=False)
    assert model.stream_shapes["logits"][-1] == VOCAB
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, VOCAB, (3, 16))
    losses = []
    for _ in range(3):
        logits = model({"emb_ids": ids})["logits"]
        assert logits.shape == (3, 16, VOCAB)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_derived_lengths_are_expressions_over_their_symbol():
    blocks = [{"config": EMB + [{"type": "down_sample", "stride": 4}, {"type": "up_sample", "num_chunks": 2}]}]
    model = ConfigaFormer({"blocks": blocks}, {"emb_ids": ["B", "L_in"]}, verbose=False)
    assert "down_sample -> Input(s): x (B, L_in, 32) - Output(s): x (B, L_in/4, 128)" in model.summary()
    assert "up_sample -> Input(s): x (B, L_in/4, 128) - Output(s): x (B, L_in/2, 64)" in model.summary()


def test_token_shift_reads_the_token_at_relative_position():
    """-1 reads the previous token, +1 the next; other features pass through."""
    model = ConfigaFormer({"blocks": [{"config": [{"type": "shift", "instructions": [{"features": [0, 1], "relative_pos": -1},
                                                                                      {"features": [1, 2], "relative_pos": 1}]}]}]},
                          {"x": ["B", "L", 3]}, verbose=False)
    x = torch.arange(12.0).view(1, 4, 3)
    out = model({"x": x})["x"][0]
    assert out[:, 0].tolist() == [0.0, 0.0, 3.0, 6.0]
    assert out[:, 1].tolist() == [4.0, 7.0, 10.0, 0.0]
    assert out[:, 2].tolist() == x[0, :, 2].tolist()


def test_every_design_op_is_registered():
    design = {"embedding", "linear", "activation", "norm", "scale_dim", "dropout", "make_stream", "merge_streams",
              "cut_stream", "cat_streams", "make_heads", "merge_heads", "rope", "mha_dots", "attention_offset", "mha_sum",
              "shift", "down_sample", "up_sample", "spatial_gating", "pos_embedding"}
    assert design <= set(registered_ops())

"""The layer config compiles to op blocks and builds through the same engine."""

import itertools

import pytest
import torch
from helpers import layer_config

from configaformer import ConfigaFormer, ConfigError, compile_layers


def test_layer_config_has_one_logits_tensor_per_classifier():
    model = ConfigaFormer.from_config(layer_config(), verbose=False)
    assert model.outputs == ["logits_0", "logits_1"]
    ids = torch.randint(0, 97, (2, 10))
    out = model({"emb_ids": ids})
    assert out["logits_0"].shape == (2, 10, 97) and out["logits_1"].shape == (2, 10, 6)
    summary = model.summary()
    assert "embedding -> Input(s): emb_ids (B, L_in) - Output(s): x (B, L_in, 32)" in summary
    assert "linear -> Input(s): x (B, L_in, 32) - Output(s): x (B, L_in, 64)" in summary  # input_emb_size projected up
    assert "Block #2, 2x" in summary  # (Attention, FFN) x 2 became one repeated block
    assert model.fused_attention_count == 2


def test_compiled_blocks_build_as_an_op_config():
    op_config = compile_layers(layer_config())
    direct = ConfigaFormer(op_config, verbose=False)
    assert direct.num_params() == ConfigaFormer.from_config(layer_config(), verbose=False).num_params()


OPTIONS = list(itertools.product(["rope", "alibi", "learned", "none"], ["pre", "post", "sandwich"],
                                 ["layer_norm", "rms_norm", "scale_norm"]))


@pytest.mark.parametrize("position, placement, norm", OPTIONS)
def test_position_placement_and_norm_options_train(position, placement, norm):
    config = layer_config(position=position, norm_placement=placement, norm_type=norm, classifiers=None, max_length=64)
    model = ConfigaFormer.from_config(config, verbose=False)
    ids = torch.randint(0, 97, (2, 12))
    loss = torch.nn.functional.cross_entropy(model({"emb_ids": ids})["logits_0"].reshape(-1, 97), ids.reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)


def test_layer_options_compile_to_the_expected_ops():
    layers = [{"type": "Attention", "heads": 4, "kv_heads": 2, "qk_norm": True, "gated": True, "token_shift": True,
               "causal": False, "dropout": 0.1},
              {"type": "FFN", "activation": ["silu", "none"], "dim_ff": 96},
              {"type": "gMLP", "ff_mult": 2, "activation": "relu2"}]
    model = ConfigaFormer.from_config(layer_config(layers=layers, max_length=32), verbose=False)
    summary = model.summary()
    assert "make_heads -> Input(s): keys (B, L_in, 32) - Output(s): keys (B, 2, L_in, 16)" in summary  # GQA
    assert "norm -> Input(s): queries (B, 4, L_in, 16)" in summary  # QK-norm
    assert "shift -> " in summary and "dropout -> " in summary
    assert "attention_offset" not in summary  # not causal, rope: nothing to add
    assert "activation -> Input(s): x (B, L_in, 192) - Output(s): x (B, L_in, 96)" in summary  # SwiGLU
    assert "spatial_gating -> Input(s): x (B, L_in, 256) - Output(s): x (B, L_in, 128)" in summary
    assert "merge_streams -> Input(s): gate (B, L_in, 64), x (B, L_in, 64)" in summary  # gated output
    ids = torch.randint(0, 97, (2, 16))
    model({"emb_ids": ids})["logits_0"].sum().backward()


def test_causal_layers_do_not_see_the_future():
    model = ConfigaFormer.from_config(layer_config(position="alibi"), verbose=False).eval()
    ids = torch.randint(0, 97, (1, 12))
    full = model({"emb_ids": ids})["logits_0"]
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 97
    torch.testing.assert_close(model({"emb_ids": changed})["logits_0"][:, :8], full[:, :8])


@pytest.mark.parametrize("edit, why", [
    ({"dim_model": "wide"}, "dim_model: expected int, got 'wide'"),
    ({"layers": [{"type": "Attention", "heads": 5}]}, "layers[0].heads: dim_model 64 is not divisible by 5 heads"),
    ({"layers": [{"type": "Attention", "heads": 4, "kv_heads": 3}]}, "layers[0].kv_heads: 4 heads are not a multiple of 3"),
    ({"layers": [{"type": "Attention", "heads": 4, "dim_rope": 32}]}, "layers[0].dim_rope: expected an even number"),
    ({"layers": [{"type": "Atention", "heads": 4}]}, "layers[0].type: expected one of Attention, FFN, gMLP"),
    ({"layers": [{"type": "FFN", "activation": "swish"}]}, "layers[0].activation: unknown activation 'swish'"),
    ({"layers": [{"type": "FFN", "heads": 4}]}, "layers[0].heads: unknown key"),
    ({"position": "sinusoidal"}, "position: expected one of 'rope', 'alibi', 'learned', 'none'"),
    ({"norm_placement": "middle"}, "norm_placement: expected one of 'pre', 'post', 'sandwich'"),
    ({"classifiers": [10, 0]}, "classifiers: expected a non-empty list of positive class counts"),
])
def test_bad_layer_config_names_the_field(edit, why):
    with pytest.raises(ConfigError) as info:
        ConfigaFormer.from_config(layer_config(**edit), verbose=False)
    assert why in str(info.value)


SERVING_BASE = {"dim_model": 64, "vocab_size": 100, "max_length": 32,
                "layers": [{"type": "Attention", "heads": 4}, {"type": "FFN", "ff_mult": 4}] * 2}


def test_tied_embedding_shares_one_table_counted_once_and_survives_a_state_dict(tmp_path):
    untied = ConfigaFormer.from_config(SERVING_BASE, verbose=False)
    tied = ConfigaFormer.from_config({**SERVING_BASE, "tie_embedding": True, "head_bias": False, "classifiers": [100, 3]},
                                     verbose=False)
    head = next(op for op in tied.ops if op.outputs == ("logits_0",))
    assert head.proj.weight is tied.ops[0].table.weight and head.proj.bias is None
    assert untied.num_params() - tied.num_params() == 100 * 64 + 100 - 64 * 3  # no head weight or bias; a 3-class one
    torch.save(tied.state_dict(), tmp_path / "tied.pt")
    again = ConfigaFormer.from_config({**SERVING_BASE, "tie_embedding": True, "head_bias": False, "classifiers": [100, 3]},
                                      verbose=False)
    again.load_state_dict(torch.load(tmp_path / "tied.pt"))
    ids = torch.randint(0, 100, (1, 6))
    assert torch.equal(again({"emb_ids": ids})["logits_0"], tied({"emb_ids": ids})["logits_0"])
    with pytest.raises(ConfigError, match="tie_embedding: the embedding is 32 wide"):
        ConfigaFormer.from_config({**SERVING_BASE, "tie_embedding": True, "input_emb_size": 32}, verbose=False)


def test_scaled_init_shrinks_residual_output_projections_only():
    model = ConfigaFormer.from_config({**SERVING_BASE, "scaled_init": True}, verbose=False)
    outs = [op for op in model.ops if getattr(op, "cfg", {}).get("init_std") not in (None, 0.02) and op.type_name == "linear"]
    assert len(outs) == 4 and all(op.cfg["init_std"] == pytest.approx(0.02 / 2) for op in outs)  # 4 residual layers
    assert all(abs(op.proj.weight.std().item() - 0.01) < 0.002 for op in outs)


def test_matched_glu_keeps_ffn_parameters_across_activations():
    def ffn_params(activation, matched):
        layer = {"type": "FFN", "ff_mult": 4, "activation": activation, "matched_glu": matched, "bias": False}
        return ConfigaFormer.from_config({**SERVING_BASE, "layers": [layer]}, verbose=False).num_params(non_embedding=True)
    plain = ffn_params("gelu", False)
    assert ffn_params(["silu", "none"], False) > 1.3 * plain  # a GLU at the same ff_mult: half as many again
    assert abs(ffn_params(["silu", "none"], True) - plain) / plain < 0.01
    assert ffn_params("gelu", True) == plain  # not a GLU: unchanged


def test_flat_values_under_grouped_query_attention_are_refused_by_name():
    blocks = [{"config": [
        {"type": "embedding", "output_dim": 32, "num_classes": 50},
        {"type": "linear", "output_name": "q"}, {"type": "linear", "output_name": "k", "output_dim": 16},
        {"type": "linear", "output_name": "v", "output_dim": 16},
        {"type": "make_heads", "input_name": "q", "output_name": "q", "num_heads": 4},
        {"type": "make_heads", "input_name": "k", "output_name": "k", "num_heads": 2},
        {"type": "mha_dots", "input_name_queries": "q", "input_name_keys": "k"},
        {"type": "attention_offset", "offset": "causal"},
        {"type": "mha_sum", "input_name_values": "v"}], "repeat": 1}]
    with pytest.raises(ConfigError, match=r"blocks\[0\]\.config\[8\] \(mha_sum\), key 'input_name_values': values 'v' are flat"):
        ConfigaFormer({"blocks": blocks, "input_streams": {"emb_ids": ["B", "L_in"]}}, verbose=False)

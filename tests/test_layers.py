"""The layer config compiles to op blocks and builds through the same engine, and each of its options computes
what it names: norm types, norm placements and position schemes are checked against formulas written out here and
applied to the model's own weights, and every causal option against later tokens."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import layer_config
from torch import Tensor, nn

from configaformer import ConfigaFormer, ConfigError, compile_layers, get_alibi
from configaformer.layers import PLACEMENTS, POSITIONS
from configaformer.ops.norms import NORM_TYPES

VOCAB = 13
ATTENTION_FFN = [{"type": "Attention", "heads": 4, "kv_heads": 2}, {"type": "FFN", "ff_mult": 2}]
# Press et al.'s slopes: 2^(-8i/n) for n a power of 2; for 6 heads, the 4-head ones then every other 8-head one.
ALIBI_SLOPES = {4: [2**-2, 2**-4, 2**-6, 2**-8], 6: [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3],
                8: [2**-1, 2**-2, 2**-3, 2**-4, 2**-5, 2**-6, 2**-7, 2**-8]}


def perturbed_model(layers: list[dict], **options) -> ConfigaFormer:
    """A one-classifier model of width 32 whose parameters are all moved off their initial values (no norm weight
    is one, no bias zero), so that a formula that skipped one would not match. Its linears stay separate ops (the
    fused layout is checked in test_fused_attention), so each op's weight can be read."""
    config = {"dim_model": 32, "vocab_size": VOCAB, "max_length": 16, "dim_rope": 4, "layers": layers, **options}
    model = ConfigaFormer.from_config(config, verbose=False, fuse_linears=False).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return model


def ops_of(model: ConfigaFormer, type_name: str) -> list[nn.Module]:
    return [op for op in model.ops if op.type_name == type_name]


def reference_norm(kind: str, x: Tensor, op: nn.Module) -> Tensor:
    """LayerNorm, RMSNorm and ScaleNorm as their papers define them, with the op's learned weights."""
    if kind == "layer_norm":
        centred = x - x.mean(-1, keepdim=True)
        return centred / (centred.square().mean(-1, keepdim=True) + op.eps).sqrt() * op.weight + op.bias
    if kind == "rms_norm":
        return x / (x.square().mean(-1, keepdim=True) + op.eps).sqrt() * op.weight
    return op.weight * x / x.norm(dim=-1, keepdim=True)


def rotary(x: Tensor, rotate_dim: int, start: int = 0, base: float = 10000.0) -> Tensor:
    """RoPE in complex form: feature pair (i, i + rotate_dim/2) at position p turns by the angle
    p * base^(-2i/rotate_dim); features from rotate_dim on pass through."""
    half = rotate_dim // 2
    positions = torch.arange(start, start + x.shape[-2], dtype=torch.float64)[:, None]
    angles = positions * base ** (-2 * torch.arange(half, dtype=torch.float64) / rotate_dim)
    pairs = torch.complex(x[..., :half].double(), x[..., half:rotate_dim].double())
    turned = pairs * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([turned.real, turned.imag, x[..., rotate_dim:].double()], dim=-1).to(x.dtype)


def reference_alibi(slopes: list[float], length: int, causal: bool) -> Tensor:
    """[H, L, L]: -slope * |i - j|, and -inf where key j comes after query i when causal."""
    bias = torch.tensor([[[-slope * abs(i - j) for j in range(length)] for i in range(length)] for slope in slopes])
    return bias.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf")) if causal else bias


def logits(model: ConfigaFormer, ids: Tensor) -> Tensor:
    return model({"emb_ids": ids})["logits_0"]


@pytest.mark.parametrize("kind", NORM_TYPES)
def test_norm_matches_its_formula_and_starts_at_unit_rms(kind):
    """Each norm type normalises the last dim of a [B, H, L, d] stream (QK-norm's layout) as its formula says; at
    initialisation every one gives vectors of unit RMS."""
    model = ConfigaFormer({"blocks": [{"config": [{"type": "norm", "norm_type": kind}]}]}, {"x": ["B", 3, "L", 8]},
                          verbose=False)
    x = torch.randn(2, 3, 5, 8) * 3 + 1
    rms = model({"x": x})["x"].square().mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    torch.testing.assert_close(model({"x": x})["x"], reference_norm(kind, x, model.ops[0]))


@pytest.mark.parametrize("kind", NORM_TYPES)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_norm_placement_computes_its_residual_formula(placement, kind):
    """pre: x + f(norm(x)); post: norm(x + f(x)); sandwich: x + norm(f(norm(x))). Pre and sandwich models end with
    a final norm before the logits; post-norm ones do not need one."""
    model = perturbed_model([{"type": "FFN", "ff_mult": 2}], position="none", norm_placement=placement, norm_type=kind)
    norms = iter(ops_of(model, "norm"))  # in the order the formula applies them
    up, down, head = (op.proj for op in ops_of(model, "linear"))

    def norm(x: Tensor) -> Tensor:
        return reference_norm(kind, x, next(norms))

    def ffn(x: Tensor) -> Tensor:
        return down(F.gelu(up(x)))

    ids = torch.randint(0, VOCAB, (2, 7))
    x = model.ops[0].table(ids)
    if placement == "pre":
        expected = head(norm(x + ffn(norm(x))))
    elif placement == "post":
        expected = head(norm(x + ffn(x)))
    else:
        expected = head(norm(x + norm(ffn(norm(x)))))
    torch.testing.assert_close(logits(model, ids), expected)
    assert next(norms, None) is None


@pytest.mark.parametrize("qk_norm_gated", [False, True], ids=["plain", "qk_norm_gated"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("position", POSITIONS)
def test_attention_layer_computes_attention_with_its_position_scheme(position, causal, qk_norm_gated):
    """A pre-norm model with one GQA Attention layer (4 query heads, 2 key/value heads), recomputed from its weights:
    learned positions add a table row to each token, rope rotates the first dim_rope features of the queries and keys,
    ALiBi adds its bias to the scores; a causal layer masks later keys."""
    layer = {"type": "Attention", "heads": 4, "kv_heads": 2, "qk_norm": qk_norm_gated, "gated": qk_norm_gated}
    model = perturbed_model([layer], position=position, causal=causal)
    norms = iter(ops_of(model, "norm"))
    wq, wk, wv, *gate, wo, head = (op.proj for op in ops_of(model, "linear"))
    ids = torch.randint(0, VOCAB, (2, 9))
    length = ids.shape[1]

    def heads(t: Tensor, count: int) -> Tensor:
        """[B, L, count * d] -> [B, 4, L, d], each of `count` heads repeated for the query heads it serves."""
        return t.view(*t.shape[:2], count, -1).transpose(1, 2).repeat_interleave(4 // count, dim=1)

    x = model.ops[0].table(ids)
    if position == "learned":
        x = x + ops_of(model, "pos_embedding")[0].table[:length]
    h = reference_norm("layer_norm", x, next(norms))
    q, k, v = heads(wq(h), 4), heads(wk(h), 2), heads(wv(h), 2)
    if qk_norm_gated:
        q, k = reference_norm("layer_norm", q, next(norms)), reference_norm("layer_norm", k, next(norms))
    if position == "rope":
        q, k = rotary(q, 4), rotary(k, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if position == "alibi":
        scores = scores + reference_alibi(ALIBI_SLOPES[4], length, causal)
    elif causal:
        scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    attended = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    if qk_norm_gated:
        attended = attended * torch.sigmoid(gate[0](h))
    expected = head(reference_norm("layer_norm", x + wo(attended), next(norms)))
    torch.testing.assert_close(logits(model, ids), expected)
    assert next(norms, None) is None


def test_rope_turns_the_first_rotate_dim_features_and_keeps_scores_relative():
    """The rope op matches the complex-form rotation; shifting every position alike leaves q.k unchanged."""
    model = ConfigaFormer({"blocks": [{"config": [{"type": "rope", "rotate_dim": 6, "max_length": 32}]}]},
                          {"x": ["B", 2, "L", 10]}, verbose=False)
    rope = model.ops[0]
    q, k = torch.randn(2, 2, 9, 10), torch.randn(2, 2, 9, 10)
    torch.testing.assert_close(model({"x": q})["x"], rotary(q, 6))
    torch.testing.assert_close(rope(q, start=11), rotary(q, 6, start=11))
    scores = rope(q) @ rope(k).transpose(-1, -2)
    torch.testing.assert_close(rope(q, start=11) @ rope(k, start=11).transpose(-1, -2), scores)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("heads", sorted(ALIBI_SLOPES))
def test_alibi_offsets_are_the_standard_bias(heads, causal):
    """The attention_offset op and the get_alibi offset stream both add ALiBi with the standard slopes."""
    offset = {"type": "attention_offset", "offset": "alibi" if causal else "alibi_bidirectional"}
    model = ConfigaFormer({"blocks": [{"config": [offset]}], "outputs": ["attn_dots"]},
                          {"attn_dots": ["B", heads, "L", "L"]}, verbose=False)
    expected = reference_alibi(ALIBI_SLOPES[heads], 7, causal)
    torch.testing.assert_close(model({"attn_dots": torch.zeros(1, heads, 7, 7)})["attn_dots"][0], expected)
    torch.testing.assert_close(get_alibi(heads, max_length=7, causal=causal)[0], expected)


@pytest.mark.parametrize("position", POSITIONS)
def test_only_position_none_leaves_a_bidirectional_model_blind_to_token_order(position):
    """Without a position scheme or a causal mask, rotating the tokens (a permutation that changes distances; a
    reversal would not, and ALiBi sees only distances) rotates the outputs; each scheme breaks that."""
    model = perturbed_model(ATTENTION_FFN, position=position, causal=False)
    ids = torch.randint(0, VOCAB, (1, 8))
    rotated = logits(model, ids.roll(3, dims=1)).roll(-3, dims=1)
    assert torch.allclose(rotated, logits(model, ids), atol=1e-5) == (position == "none")


TOKEN_SHIFT_GMLP = [{"type": "Attention", "heads": 4, "token_shift": True},
                    {"type": "gMLP", "ff_mult": 2, "token_shift": True}]
CAUSAL_OPTIONS = {**{position: (ATTENTION_FFN, {"position": position}) for position in POSITIONS},
                  "token_shift_gmlp": (TOKEN_SHIFT_GMLP, {})}


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", CAUSAL_OPTIONS)
def test_causal_models_do_not_see_later_tokens(name, causal):
    """Changing the tokens from position 6 on changes the output there, and before it only when not causal."""
    layers, options = CAUSAL_OPTIONS[name]
    model = perturbed_model(layers, causal=causal, **options)
    ids = torch.randint(0, VOCAB, (1, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
    before, after = logits(model, ids), logits(model, changed)
    assert not torch.allclose(before[:, 6], after[:, 6], atol=1e-5)
    assert torch.allclose(before[:, :6], after[:, :6], atol=1e-6) == causal


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


def test_compiled_blocks_build_the_same_model_as_an_op_config():
    from_layers = ConfigaFormer.from_config(layer_config(), verbose=False)
    direct = ConfigaFormer(compile_layers(layer_config()), verbose=False)
    direct.load_state_dict(from_layers.state_dict())  # strict: the same parameters under the same names
    ids = torch.randint(0, 97, (2, 10))
    torch.testing.assert_close(direct({"emb_ids": ids})["logits_1"], from_layers({"emb_ids": ids})["logits_1"])


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

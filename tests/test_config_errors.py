"""A bad config fails at build time with one ConfigError naming the block, the op's index and type, and the key."""

import copy

import pytest
from helpers import attn_offset_streams, gpt_blocks

from configaformer import ConfigaFormer, ConfigError


def broken(edit):
    blocks = gpt_blocks()
    edit(blocks[1]["config"])
    return blocks


CASES = {
    "heads_do_not_divide": (lambda ops: ops[5].update(num_heads=7), "op #6, make_heads), key 'num_heads'", "not divisible by 7"),
    "shape_mismatch": (lambda ops: ops[12].update(output_dim=32), "op #14, merge_streams), key 'input_name_2'", "differ"),
    "read_before_write": (lambda ops: ops[11].update(input_name_values="vals"), "op #12, mha_sum), key 'input_name_values'", "'vals' is read before anything writes it"),
    "unknown_type": (lambda ops: ops[1].update(type="nrom"), "op #2, nrom), key 'type'", "did you mean 'norm'"),
    "unknown_key": (lambda ops: ops[1].update(norm_typ="rms_norm"), "op #2, norm), key 'norm_typ'", "did you mean 'norm_type'"),
    "unknown_value": (lambda ops: ops[1].update(norm_type="batch_norm"), "op #2, norm), key 'norm_type'", "'layer_norm', 'rms_norm', 'scale_norm'"),
    "wrong_type": (lambda ops: ops[2].update(output_dim="64"), "op #3, linear), key 'output_dim'", "expected int or null"),
    "missing_required": (lambda ops: ops[5].pop("num_heads"), "op #6, make_heads), key 'num_heads'", "required key is missing"),
    "rope_too_wide": (lambda ops: ops[7].update(rotate_dim=32), "op #8, rope), key 'rotate_dim'", "exceeds the head dim 16"),
    "odd_rope": (lambda ops: ops[7].update(rotate_dim=5), "op #8, rope), key 'rotate_dim'", "positive even int"),
    "bad_glu": (lambda ops: ops[17].update(activation_function=["gelu"] * 5), "op #18, activation), key 'activation_function'", "2 to 4"),
    "gqa_mismatch": (lambda ops: ops[6].update(num_heads=3), "op #7, make_heads), key 'num_heads'", "not divisible by 3"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_op_config_names_block_op_and_key(name):
    edit, where, why = CASES[name]
    with pytest.raises(ConfigError) as info:
        ConfigaFormer({"blocks": broken(edit)}, attn_offset_streams(), verbose=False)
    message = str(info.value)
    assert message.startswith("blocks[1].config[")
    assert f"(block #2, {where}" in message and why in message
    assert "\n" not in message


@pytest.mark.parametrize("config, streams, why", [
    ({"blocks": []}, {"emb_ids": ["B", "L"]}, "blocks: expected a non-empty list"),
    ({"blocks": [{"config": [], "repeat": 0}]}, {"x": ["B", 4]}, "blocks[0].repeat: expected a positive int"),
    ({"blocks": [{"config": ["linear"]}]}, {"x": ["B", 4]}, "blocks[0].config[0]: expected an op dict"),
    ({"blocks": [{"config": [{"type": "linear"}]}]}, {"x": ["B", -4]}, "input_streams.x: a dim must be positive"),
    ({"blocks": [{"config": [{"type": "linear"}]}]}, None, "input_streams: expected a mapping"),
    ({"blocks": [{"config": [{"type": "linear"}]}], "outputs": ["logits"]}, {"x": ["B", 4]}, "outputs: stream 'logits' is never written"),
    ({"blocks": [{"config": [{"type": "linear"}]}], "extra": 1}, {"x": ["B", 4]}, "model_config: unknown key 'extra'"),
    ({"blocks": [{"config": [{"type": "linear"}]}]}, {"x": ["B", "L"]}, "key 'input_name': the input's last dim must be a fixed size"),
])
def test_bad_structure_is_one_line(config, streams, why):
    with pytest.raises(ConfigError, match=None) as info:
        ConfigaFormer(copy.deepcopy(config), streams, verbose=False)
    assert why in str(info.value)


def test_symbols_are_not_interchangeable():
    blocks = [{"config": [{"type": "make_stream", "input_name": "a", "output_name": "c"},
                          {"type": "merge_streams", "input_name_1": "c", "input_name_2": "b", "merge_type": "add"}]}]
    with pytest.raises(ConfigError, match=r"shapes \(B, L, 8\) and \(BSZ, L, 8\) differ"):
        ConfigaFormer({"blocks": blocks}, {"a": ["B", "L", 8], "b": ["BSZ", "L", 8]}, verbose=False)

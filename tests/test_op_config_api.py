"""The op-config API: build from blocks of op dicts, print the summary, run with an offset stream."""

import pytest
import torch
from helpers import attn_offset_streams, gpt_blocks

from configaformer import ConfigaFormer, get_alibi


def test_op_config_prints_its_summary_and_every_parameter_gets_a_gradient(capsys):
    model = ConfigaFormer(model_config={"blocks": gpt_blocks()}, input_streams=attn_offset_streams())
    printed = capsys.readouterr().out
    assert printed.strip() == model.summary().strip()
    lines = printed.strip().splitlines()
    assert lines[0] == "Block #1, 1x"
    assert "Block #2, 2x" in lines and "Block #3, 1x" in lines
    op_lines = [line for line in lines if " -> Input(s): " in line]
    assert len(op_lines) == 1 + 20 + 7  # one line per op of one repeat of each block
    assert "rope -> Input(s): queries (B, 4, L_in, 16), rope_8 (2048, 8) - Output(s): queries (B, 4, L_in, 16)" in lines
    assert "mha_sum -> Input(s): values (B, L_in, 64), attn_dots (B, 4, L_in, L_in) - Output(s): x (B, L_in, 64)" in lines

    ids = torch.randint(0, 101, (2, 24))
    logits = model({"emb_ids": ids, "attn_offset": get_alibi(num_heads=4)})["x"]
    assert logits.shape == (2, 24, 101)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, 101), ids.view(-1))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())  # every parameter is used


def test_verbose_false_is_silent(capsys):
    model = ConfigaFormer({"blocks": gpt_blocks()}, attn_offset_streams(), verbose=False)
    assert capsys.readouterr().out == ""
    assert model.summary().startswith("Block #1, 1x\nembedding -> Input(s): emb_ids (B, L_in)")


def test_one_alibi_offset_serves_every_length_up_to_its_maximum():
    model = ConfigaFormer({"blocks": gpt_blocks()}, attn_offset_streams(), verbose=False)
    offset = get_alibi(num_heads=4, max_length=64)
    assert offset.shape == (1, 4, 64, 64)
    ids = torch.randint(0, 101, (1, 40))
    full = model({"emb_ids": ids, "attn_offset": offset})["x"]
    prefix = model({"emb_ids": ids[:, :17], "attn_offset": offset})["x"]
    torch.testing.assert_close(prefix, full[:, :17], atol=1e-5, rtol=1e-5)  # causal: a prefix sees only itself


def test_alibi_is_causal_and_linear_in_distance():
    offset = get_alibi(num_heads=8, max_length=6)[0]
    assert torch.isinf(offset[:, 0, 1:]).all() and (offset[:, 0, 1:] < 0).all()
    slopes = -offset[:, 5, 4]
    torch.testing.assert_close(offset[:, 5, 0], -5 * slopes)
    torch.testing.assert_close(slopes, torch.tensor([2.0 ** (-i) for i in range(1, 9)]))


def test_missing_input_stream_is_a_clear_error():
    model = ConfigaFormer({"blocks": gpt_blocks()}, attn_offset_streams(), verbose=False)
    with pytest.raises(ValueError, match="input stream 'attn_offset' is missing"):
        model({"emb_ids": torch.zeros(1, 4, dtype=torch.long)})


def test_compiles_without_graph_breaks():
    model = ConfigaFormer({"blocks": gpt_blocks(layers=1)}, attn_offset_streams(), verbose=False)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    data = {"emb_ids": torch.randint(0, 101, (2, 16)), "attn_offset": get_alibi(4, max_length=32)}
    torch.testing.assert_close(compiled(data)["x"], model(data)["x"])
